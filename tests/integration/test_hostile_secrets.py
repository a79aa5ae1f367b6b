"""A token in the MLflow tracking URI's userinfo (``http://user:TOKEN@host``, ``http://TOKEN@host``)
never reaches a log line (key=value and JSON), a stored error, or command output, while MLflow is
unreachable and every client error echoes the URI: the polling source's retries, the tag
writer's rescheduled rows, the curator's failed version and ``datasets show``. Both stores."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from consumers.redact import redact
from store.engine import make_engine
from tests import payloads as P
from tests.conftest import publish, settings_env

pytestmark = pytest.mark.integration

TOKEN = "tok-9f3b7c1e5a"  # noqa: S105 - the secret this test hunts for


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _uris() -> list[str]:
    port = _closed_port()
    return [f"http://bot:{TOKEN}@127.0.0.1:{port}", f"http://{TOKEN}@127.0.0.1:{port}"]


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _run_for(env: dict[str, str], seconds: float, log: Path) -> str:
    """``trace-curator run`` for a while, then SIGTERM; its whole output."""
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            time.sleep(seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    return log.read_text()


def _all_stored_text(store_url: str) -> str:
    engine = make_engine(store_url)
    meta = MetaData()
    meta.reflect(engine)
    parts = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                parts.append(repr(tuple(row)))
    engine.dispose()
    return "\n".join(parts)


def test_redact_masks_userinfo_bearer_and_secret_parameters() -> None:
    assert redact(f"API request to http://user:{TOKEN}@h:5/api failed") == \
        "API request to http://user:***@h:5/api failed"
    assert redact(f"x http://{TOKEN}@h/ y") == "x http://***@h/ y"
    assert redact(f"postgresql://postgres:{TOKEN}@db/x") == "postgresql://postgres:***@db/x"
    assert TOKEN not in redact(f"Authorization: Bearer {TOKEN}")
    assert TOKEN not in redact(f"GET /x?token={TOKEN}&a=1")
    for harmless in ("mail a@b.com", "total token count 5, basic checks", "no secrets"):
        assert redact(harmless) == harmless


@pytest.mark.parametrize("log_format", ["kv", "json"])
def test_no_token_in_logs_tables_or_output(settings_factory: Any, store_url: str, producer: Any,
                                           tmp_path: Path, log_format: str) -> None:
    settings = settings_factory(log_format=log_format, tag_writeback="off")
    docs = [P.trace_doc("error") for _ in range(3)]
    publish(producer, settings.trace_topic, docs)
    env = settings_env(settings)
    ingest = _cli(env, "run", "--exit-when-idle", "2")
    assert ingest.returncode == 0, ingest.stderr[-2000:]

    outputs: list[str] = []
    datasets = tmp_path / "datasets.yaml"
    datasets.write_text("datasets:\n  - name: secrets_check\n    sink: {kind: mlflow}\n")
    env_mlflow = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    for i, uri in enumerate(_uris()):
        e = {**env_mlflow, "TRACE_CURATOR_MLFLOW_TRACKING_URI": uri,
             "TRACE_CURATOR_DATASETS_FILE": str(datasets)}
        # The curator's merge fails: the version is pending with its error stored and shown.
        curate = _cli(e, "curate", "--once")
        outputs.append(curate.stdout + curate.stderr)
        show = _cli(e, "datasets", "show", "secrets_check")
        assert show.returncode == 0, show.stderr[-2000:]
        outputs.append(show.stdout + show.stderr)
        # The tag writer retries against the unreachable server and stores its error.
        outputs.append(_run_for({**e, "TRACE_CURATOR_TAG_WRITEBACK": "on",
                                 "TRACE_CURATOR_CURATION": "off"}, 6,
                                tmp_path / f"tags-{i}.log"))
        # The polling source retries its page reads and logs each retry.
        outputs.append(_run_for({**e, "TRACE_CURATOR_SOURCE": "mlflow",
                                 "TRACE_CURATOR_MLFLOW_EXPERIMENT_IDS": "1",
                                 "TRACE_CURATOR_CURATION": "off",
                                 "TRACE_CURATOR_TAG_WRITEBACK": "off"}, 6,
                                tmp_path / f"poll-{i}.log"))
    everything = "\n".join(outputs)
    stored = _all_stored_text(store_url)
    # The failures really happened and were reported (else the check below proves nothing).
    assert "last error" in everything
    assert "retrying" in everything
    assert "***@127.0.0.1" in everything
    assert "127.0.0.1" in stored  # a stored error names the server ...
    assert TOKEN not in everything  # ... and nothing anywhere carries the token
    assert TOKEN not in stored
