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
