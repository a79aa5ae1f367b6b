"""The command line as users and container healthchecks run it: exit codes, messages, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient
from sqlalchemy import func, select

from consumers.embedded_broker import free_port
from store import schema
from store.engine import make_engine
from store.models import Trace
from tests import payloads as P
from tests.conftest import fresh_pg_database, publish, settings_env

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
        ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_CURATOR_")}
    return subprocess.run([sys.executable, "-m", "worker", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    with fresh_pg_database(request.getfixturevalue("pg_available")) as url:
        yield url


def test_schema_lifecycle(empty_store: str) -> None:
    env = {"TRACE_CURATOR_STORE_URL": empty_store}
    check = cli("check", env=env)
    if empty_store.startswith("sqlite"):  # no file yet: check creates none and says so
        assert check.returncode == 3
        assert "`trace-curator db upgrade` to create a new one" in check.stderr
        assert not os.path.exists(empty_store.removeprefix("sqlite:///"))
    else:  # an empty database
        assert check.returncode == 4
        assert "Run `trace-curator db upgrade`" in check.stderr
    run = cli("run", "--exit-when-idle", "1", env=env)  # creates the SQLite file, as before
    assert run.returncode == 4, run.stderr
    assert "has no trace-curator schema" in run.stderr

    up = cli("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    head = schema.head_revision()
    assert f"upgraded from empty to {head}" in up.stdout
    again = cli("db", "upgrade", env=env)
    assert f"already at schema revision {head}" in again.stdout
    ok = cli("check", env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: store")


def test_unreachable_store_and_bad_settings_have_their_exit_codes() -> None:
    port = free_port()
    down = cli("check", env={"TRACE_CURATOR_STORE_URL": f"postgresql://postgres:pw@127.0.0.1:{port}/x",
                             "TRACE_CURATOR_DB_CONNECT_TIMEOUT_S": "2"})
    assert down.returncode == 3
    assert "unreachable" in down.stderr
    assert "pw@" not in down.stderr  # no password in messages
    typo = cli("check", env={"TRACE_CURATOR_STOR_URL": "sqlite:///x.db"})
    assert typo.returncode == 2
    assert "TRACE_CURATOR_STOR_URL" in typo.stderr


def test_help_explains_every_setting() -> None:
    out = cli("run", "--help")
    assert out.returncode == 0
    assert "TRACE_CURATOR_STORE_URL" in out.stdout
    assert "--exit-when-idle" in out.stdout
    assert "Exit codes" in cli("--help").stdout


def test_sigterm_drains_checkpoints_and_exits_cleanly(settings_factory: Any, producer: Any,
                                                      tmp_path: Any) -> None:
    settings = settings_factory(batch_max_records=100)
    docs = [P.trace_doc("ok", start_ms=1_795_000_000_000 + i) for i in range(20_000)]
    publish(producer, settings.trace_topic, docs, key=lambda d: d["info"]["trace_id"].encode())
    engine = make_engine(settings.store_url_plain)

    def stored() -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Trace)).scalar() or 0)

    log = open(tmp_path / "worker.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=settings_env(settings),
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while stored() < 500 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=settings.shutdown_timeout_s + 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    text = log.read()
    assert "signal=SIGTERM received" in text
    assert "worker stopped records=" in text
    n = stored()
    assert 500 <= n < 20_000, "SIGTERM came after the backlog drained: nothing was tested"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    offsets = admin.list_group_offsets(settings.group_id)[settings.group_id]
    admin.close()
    # Drained and checkpointed: every stored trace's offset is committed, and nothing beyond.
    assert sum(o.offset for o in offsets.values()) == n
    engine.dispose()
