"""MLflow's filter parser, run where MLflow already is, or else in a short-lived helper process.

Importing MLflow's search utilities costs a process about 150 MB of resident memory for good, and
the worker would pay it only to parse a few filter texts at start-up: the parsed clauses are plain
data (dicts of str, int, float, None and tuples of str). So when ``mlflow`` is already imported
here (tests, the demo), texts are parsed in this process. Otherwise one helper process per
request (this file run as ``__main__`` by the same interpreter) imports MLflow, reads a JSON
list of texts on stdin, writes per text its clauses or the text of the parser's error (exactly
as MLflow raised it) as JSON on stdout, and exits. Tuples, which JSON turns into lists, are
restored. Callers ask once per file (``worker.rules.filters.prepare``), so a worker starts one
helper for its rules and one for its datasets. A helper that cannot start, fails, or does not
answer within ``REPLY_TIMEOUT_S`` raises ``ParserUnavailable``. This module imports only the
standard library, so the helper loads nothing of the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["REPLY_TIMEOUT_S", "Parsed", "ParserUnavailable", "parse_texts"]

Parsed = tuple[dict[str, Any], ...] | str  # the clauses, or the parser's error message

REPLY_TIMEOUT_S = 60.0  # the reply waits for MLflow to be imported (seconds on a busy host)
# Runs this file as __main__ without importing the worker package; argv as for ``-m``.
_BOOT = "import runpy, sys; del sys.argv[0]; runpy.run_path(sys.argv[0], run_name='__main__')"


class ParserUnavailable(Exception):
    """The helper process could not parse: it did not start, failed, or did not answer in time."""


def parse_texts(texts: Sequence[str]) -> list[Parsed]:
    """Each text parsed by MLflow: here when mlflow is imported already, else in the helper."""
    if not texts:
        return []
    if "mlflow" in sys.modules:
        return [parse_here(text) for text in texts]
    return _request(list(texts))


def parse_in_helper(texts: Sequence[str]) -> list[Parsed]:
    """Each text parsed by the helper process, whatever this process has imported."""
    return _request(list(texts)) if texts else []


def parse_here(text: str) -> Parsed:
    """``text`` parsed by MLflow in this process (which imports MLflow)."""
    from mlflow.utils.search_utils import SearchTraceUtils

    parse: Callable[[str], list[dict[str, Any]]] = (  # untyped upstream
        SearchTraceUtils.parse_search_filter_for_search_traces
    )
    try:
        clauses = parse(text)
    except Exception as exc:  # MlflowException, or whatever sqlparse raises
        return str(exc)
    return tuple(clauses)


# --- This side: the client of the helper ---

_started = 0  # helpers started by this process, for tests


def helpers_started() -> int:
    """How many helper processes this process has started."""
    return _started


def _request(texts: list[str]) -> list[Parsed]:
    """``texts`` parsed by a new helper process."""
    global _started
    if not sys.executable:
        raise ParserUnavailable("MLflow's filter parser needs sys.executable, which is unset")
    _started += 1
    try:
        done = subprocess.run(  # noqa: S603 - this interpreter, this file, no shell
            [sys.executable, "-c", _BOOT, os.path.abspath(__file__)],
            input=json.dumps(texts).encode("ascii"), capture_output=True,
            timeout=REPLY_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ParserUnavailable(f"MLflow's filter parser (a helper process) did not answer "
                                f"within {REPLY_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise ParserUnavailable(f"cannot start MLflow's filter parser: {exc}") from exc
    if done.returncode != 0:
        tail = done.stderr[-2000:].decode("utf-8", "replace").strip().splitlines()
        problem = tail[-1] if tail else f"exit status {done.returncode}"
        raise ParserUnavailable(f"MLflow's filter parser (a helper process) exited: {problem}")
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        raise ParserUnavailable("MLflow's filter parser gave a malformed reply") from None
    return _decode(reply, len(texts))


def _decode(reply: Any, count: int) -> list[Parsed]:
    if not isinstance(reply, list) or len(reply) != count:
        raise ParserUnavailable("MLflow's filter parser gave a malformed reply")
    out: list[Parsed] = []
    for item in reply:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list) and all(isinstance(c, dict) for c in item):
            out.append(tuple({**c, "value": _restore(c.get("value"))} for c in item))
        else:
            raise ParserUnavailable("MLflow's filter parser gave a malformed reply")
    return out


def _restore(value: Any) -> Any:
    """MLflow's IN lists are tuples, which JSON gives back as lists."""
    return tuple(value) if isinstance(value, list) else value


# --- The other side: the helper itself ---


def main() -> int:
    """Parse the JSON list of texts on stdin; the replies as one JSON list on stdout."""
    out = os.dup(1)
    os.dup2(2, 1)  # whatever MLflow prints goes to stderr, never into the reply
    texts = json.loads(sys.stdin.buffer.read())
    reply = json.dumps([_encode(parse_here(text)) for text in texts]).encode("ascii")
    with os.fdopen(out, "wb") as stdout:
        stdout.write(reply)
    return 0


def _encode(parsed: Parsed) -> Any:
    return parsed if isinstance(parsed, str) else list(parsed)


if __name__ == "__main__":
    sys.exit(main())
