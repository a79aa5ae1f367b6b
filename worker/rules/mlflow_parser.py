"""MLflow's filter parser, run where MLflow already is, or else in a short-lived helper process.

Importing MLflow's search utilities costs a process about 150 MB of resident memory for good, and
the worker would pay it only to parse a few filter texts at start-up: the parsed clauses are plain
data (dicts of str, int, float, None and tuples of str). So when ``mlflow`` is already imported
here (tests, the demo), texts are parsed in this process. Otherwise one helper process, this file
run as ``__main__`` by the same interpreter, imports MLflow and answers requests: one JSON line in
(a list of texts), one JSON line out (per text, its clauses or the text of the parser's error,
exactly as MLflow raised it). Tuples, which JSON turns into lists, are restored.

The helper serves every request of a burst (the filters of a rules file come as one request, those
of a datasets file one by one, milliseconds apart) and exits by itself after ``IDLE_EXIT_S``
seconds without a request, or as soon as its stdin closes (this process closed it, or died). A
request that finds the helper gone because it had just idled out is retried once on a new one;
a helper that cannot start, dies, or does not answer within ``REPLY_TIMEOUT_S`` raises
``ParserUnavailable``. This module imports only the standard library, so the helper loads
nothing of the worker.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

__all__ = ["IDLE_EXIT_S", "REPLY_TIMEOUT_S", "Parsed", "ParserUnavailable", "parse_texts"]

Parsed = tuple[dict[str, Any], ...] | str  # the clauses, or the parser's error message

REPLY_TIMEOUT_S = 60.0  # the first reply waits for MLflow to be imported (seconds on a busy host)
IDLE_EXIT_S = 2.0
# Runs this file as __main__ without importing the worker package; argv as for ``-m``.
_BOOT = "import runpy, sys; del sys.argv[0]; runpy.run_path(sys.argv[0], run_name='__main__')"


class ParserUnavailable(Exception):
    """The helper process could not parse: it did not start, died, or did not answer in time."""


def parse_texts(texts: Sequence[str]) -> list[Parsed]:
    """Each text parsed by MLflow: here when mlflow is imported already, else in the helper."""
    if not texts:
        return []
    if "mlflow" in sys.modules:
        return [parse_here(text) for text in texts]
    return _HELPER.request(list(texts))


def parse_in_helper(texts: Sequence[str]) -> list[Parsed]:
    """Each text parsed by the helper process, whatever this process has imported."""
    return _HELPER.request(list(texts)) if texts else []


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


def close() -> None:
    """Stop the helper now, if one runs (it would exit after ``IDLE_EXIT_S`` anyway)."""
    _HELPER.close()


# --- This side: the client of the helper ---


class _Gone(Exception):
    """The helper's pipes closed before a full reply."""


class _Helper:
    """One helper process at a time, used under a lock; ``served`` counts its replies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._owner = 0  # the pid that started it: a forked copy of this process starts its own
        self._served = 0
        self.started = 0  # helpers started by this process, for tests

    def request(self, texts: list[str]) -> list[Parsed]:
        line = (json.dumps(texts) + "\n").encode("ascii")
        with self._lock:
            for attempt in (1, 2):
                proc = self._live()
                fresh = self._served == 0
                try:
                    reply = self._exchange(proc, line)
                except _Gone:
                    problem = self._discard()
                    if fresh or attempt == 2:
                        raise ParserUnavailable(
                            f"MLflow's filter parser (a helper process) exited: {problem}"
                        ) from None
                    continue  # it had idled out just before this request: start a new one
                self._served += 1
                return _decode(reply, len(texts))
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._discard()

    def _live(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None and self._owner == os.getpid():
            return proc
        self._discard()
        if not sys.executable:
            raise ParserUnavailable("MLflow's filter parser needs sys.executable, which is unset")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _discard
        try:
            proc = subprocess.Popen(  # noqa: S603 - this interpreter, this file, no shell
                [sys.executable, "-c", _BOOT, os.path.abspath(__file__), str(IDLE_EXIT_S)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                bufsize=0,
            )
        except OSError as exc:
            self._discard()
            raise ParserUnavailable(f"cannot start MLflow's filter parser: {exc}") from exc
        self._proc, self._owner, self._served = proc, os.getpid(), 0
        self.started += 1
        return proc

    def _exchange(self, proc: subprocess.Popen[bytes], line: bytes) -> Any:
        assert proc.stdin is not None and proc.stdout is not None
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        try:
            _write_all(proc.stdin.fileno(), line, deadline)
            data = _read_line(proc.stdout.fileno(), deadline)
        except TimeoutError:
            self._discard()
            raise ParserUnavailable(
                f"MLflow's filter parser (a helper process) did not answer within "
                f"{REPLY_TIMEOUT_S:g} s"
            ) from None
        except OSError as exc:  # BrokenPipeError: it had exited
            raise _Gone from exc
        try:
            return json.loads(data)
        except ValueError:
            self._discard()
            raise ParserUnavailable("MLflow's filter parser gave a malformed reply") from None

    def _discard(self) -> str:
        """Stop and forget the helper; what it wrote to stderr (its last lines), or its exit."""
        proc, self._proc = self._proc, None
        problem = ""
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
            try:
                code = proc.wait(timeout=0.5)  # at once, unless it is still importing MLflow
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            problem = f"exit status {code}"
        if self._stderr is not None:
            self._stderr.seek(0)
            tail = self._stderr.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
            if tail:
                problem = tail[-1]
            self._stderr.close()
            self._stderr = None
        return problem


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    os.set_blocking(fd, False)
    while view:
        _wait(fd, deadline, write=True)
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue


def _read_line(fd: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        _wait(fd, deadline, write=False)
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise _Gone
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            return b"".join(chunks)


def _wait(fd: int, deadline: float, *, write: bool) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    ready = select.select([], [fd], [], left) if write else select.select([fd], [], [], left)
    if not any(ready):
        raise TimeoutError


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


_HELPER = _Helper()
atexit.register(close)


# --- The other side: the helper itself ---


def main(argv: Sequence[str]) -> int:
    """Serve requests on stdin until it closes or stays quiet for ``argv[1]`` seconds."""
    idle_s = float(argv[1]) if len(argv) > 1 else IDLE_EXIT_S
    out = os.dup(1)
    os.dup2(2, 1)  # whatever MLflow prints goes to stderr, never into a reply
    import mlflow.utils.search_utils  # noqa: F401 - at once, while the first request is written

    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], idle_s)
        if not ready:
            return 0
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return 0
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            reply = [_encode(parse_here(text)) for text in json.loads(line)]
            data = memoryview((json.dumps(reply) + "\n").encode("ascii"))
            while data:
                data = data[os.write(out, data) :]


def _encode(parsed: Parsed) -> Any:
    return parsed if isinstance(parsed, str) else list(parsed)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
