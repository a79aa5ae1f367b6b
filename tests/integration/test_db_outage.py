"""A PostgreSQL outage mid-run: the worker pauses and retries, commits no offset early, loses
nothing, and carries on when the database is back. The outage is a TCP proxy that drops every
connection and refuses new ones, between the worker and the real PostgreSQL server.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient
from sqlalchemy import func, select

from store.engine import make_engine
from store.models import Trace
from tests import payloads as P
from tests.conftest import FAST_KAFKA, publish
from tests.helpers import wait_until
from tests.proxy import CuttableProxy
from worker.app import create_kafka_worker
from worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_database_outage_pauses_without_committing(store_url: str, broker: Any,
                                                   topic_factory: Any, producer: Any) -> None:
    host_port, dbname = store_url.split("@", 1)[1].split("/", 1)
    host, port = host_port.split(":")
    proxy = CuttableProxy(host, int(port))
    settings = Settings(
        store_url=f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}",
        kafka_bootstrap_servers=broker.bootstrap_servers, trace_topic=topic_factory("traces"),
        assessment_topic=topic_factory("assess"), group_id=f"g-{dbname}",
        batch_max_records=100, db_retry_max_wait_s=1.0, db_connect_timeout_s=2, **FAST_KAFKA)
    direct = make_engine(store_url)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)

    def stored() -> int:
        with direct.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Trace)).scalar() or 0)

    def committed() -> int:
        offsets = admin.list_group_offsets(settings.group_id).get(settings.group_id, {})
        return sum(o.offset for o in offsets.values() if o.offset >= 0)

    key = lambda d: d["info"]["trace_id"].encode()  # noqa: E731
    first = [P.trace_doc("ok", start_ms=1_795_000_000_000 + i) for i in range(1000)]
    second = [P.trace_doc("error", start_ms=1_795_000_100_000 + i) for i in range(1000)]
    worker = create_kafka_worker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        publish(producer, settings.trace_topic, first, key=key)
        thread.start()
        wait_until(lambda: stored() == 1000 and committed() == 1000, 60, "the first 1,000 traces")

        proxy.cut()
        publish(producer, settings.trace_topic, second, key=key)
        wait_until(lambda: worker.stats.retries >= 3, 60, "the worker to retry the store")
        time.sleep(2)
        assert thread.is_alive(), "the worker died during the outage"
        assert stored() == 1000
        assert committed() == 1000, "offsets were committed while the store was down"

        proxy.restore()
        wait_until(lambda: stored() == 2000 and committed() == 2000, 90, "recovery")
    finally:
        worker.stop.set()
        thread.join(timeout=30)
        worker.close()
        proxy.close()
        admin.close()
        direct.dispose()
    assert not thread.is_alive()
    assert worker.stats.records == 2000


def _proxied(store_url: str) -> tuple[CuttableProxy, str]:
    """A proxy in front of the test's PostgreSQL database, and the store URL through it."""
    host_port, dbname = store_url.split("@", 1)[1].split("/", 1)
    host, port = host_port.split(":")
    proxy = CuttableProxy(host, int(port))
    return proxy, f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname}"


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_run_exits_unavailable_when_the_store_goes_during_start_up(
        store_url: str, settings_factory: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The soak's crash: PostgreSQL went down after the schema check and before the metrics
    check of `run`'s start-up. That is an outage like any other: exit 3 with one clear line,
    never a traceback and exit 1 (a supervisor counts those as crashes)."""
    from store import schema
    from tests.conftest import settings_env
    from worker.cli.main import main
    from worker.exit_codes import EXIT_UNAVAILABLE

    proxy, url = _proxied(store_url)
    settings = settings_factory(store_url=url, db_connect_timeout_s=2)
    for k, v in settings_env(settings).items():
        monkeypatch.setenv(k, v)
    checked = schema.ensure_current

    def check_then_go_away(engine: Any) -> None:
        checked(engine)
        proxy.cut()  # the database goes the moment the schema check is through

    monkeypatch.setattr(schema, "ensure_current", check_then_go_away)
    try:
        code = main(["run", "--exit-when-idle", "1"])
    finally:
        proxy.close()
    err = capsys.readouterr().err
    assert code == EXIT_UNAVAILABLE
    assert "is unreachable" in err and "Traceback" not in err


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_idle_exit_waits_out_a_store_outage(store_url: str, settings_factory: Any) -> None:
    """`--exit-when-idle` asks the tag outbox whether write-back is done; with the store away
    that question has no answer yet, so the worker waits (it must not die, nor exit early),
    and exits idle once the store is back."""
    proxy, url = _proxied(store_url)
    settings = settings_factory(store_url=url, db_connect_timeout_s=2, db_retry_max_wait_s=1.0,
                                tag_writeback="on", mlflow_tracking_uri="http://127.0.0.1:9",
                                tag_writer_interval_s=0.2)
    worker = create_kafka_worker(settings)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(exit_when_idle_s=1.5)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    try:
        proxy.cut()  # before the first idle check
        thread.start()
        time.sleep(8)  # the group join (JOIN_GRACE_S aside) and several idle checks
        assert errors == [], f"the worker died during the outage: {errors[0]!r}"
        assert thread.is_alive(), "the worker exited idle while it could not see the outbox"
        proxy.restore()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not exit idle once the store was back"
        assert errors == []
    finally:
        worker.stop.set()
        thread.join(timeout=30)
        worker.close()
        proxy.close()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_leader_lock_survives_a_session_lost_while_taking_it(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection dies between connect and the lock query: ``ensure`` says "not leading"
    (the background job retries later) instead of raising into the job's thread, which would
    end write-back or curation for the life of the worker."""
    from store import locks
    from store.leader import LeaderLock

    proxy, url = _proxied(store_url)
    engine = make_engine(url, connect_timeout_s=2)
    take = locks.try_session_lock

    def cut_then_take(conn: Any, key: int) -> bool:
        proxy.cut()
        return take(conn, key)

    lock = LeaderLock(engine, "tag-writer")
    try:
        monkeypatch.setattr(locks, "try_session_lock", cut_then_take)
        assert lock.ensure() is False
        monkeypatch.setattr(locks, "try_session_lock", take)
        proxy.restore()
        assert lock.ensure() is True
    finally:
        lock.release()
        engine.dispose()
        proxy.close()
