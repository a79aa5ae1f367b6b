"""The worker's HTTP server on the real broker and both stores: ``/metrics`` counters move as
events flow (scraped during the run), ``/healthz`` and ``/readyz`` answer, nothing else is
served, and no secret appears in what it serves."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import payloads as P
from tests.conftest import publish
from tests.helpers import wait_until
from worker.app import create_kafka_worker
from worker.serve.server import HttpServer
from worker.serve.telemetry import routes
from worker.settings import Settings

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(base + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_move_as_events_flow_and_probes_answer(
        settings_factory: Callable[..., Settings], producer: Any) -> None:
    settings = settings_factory(batch_max_records=50)
    worker = create_kafka_worker(settings)
    server = HttpServer("127.0.0.1", 0, routes(worker, worker.writer.engine)).start()  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{server.port}"
    runner = threading.Thread(target=worker.run, kwargs={"exit_when_idle_s": 600})
    try:
        before = scrape(base)
        assert before[("trace_curator_events_consumed_total", (("kind", "trace"),))] == 0
        runner.start()
        wait_until(lambda: get(base + "/readyz")[0] == 200, 60, "the group join")
        assert get(base + "/healthz") == (200, "ok\n")

        docs = [P.trace_doc("error" if i % 4 == 0 else "ok") for i in range(120)]
        publish(producer, settings.trace_topic, docs)
        publish(producer, settings.trace_topic, [b"not json", b"{}"])
        wait_until(lambda: scrape(base)[("trace_curator_events_consumed_total",
                                         (("kind", "trace"),))] == 120, 60, "120 traces")
        mid = scrape(base)
        assert mid[("trace_curator_dead_letters_total", ())] == 2
        assert mid[("trace_curator_tags_changed_total", ())] == 30  # the error traces
        assert mid[("trace_curator_batches_total", ())] >= 3  # 122 records, 50 a batch
        assert mid[("trace_curator_batch_seconds_count", ())] == mid[
            ("trace_curator_batches_total", ())]
        assert mid[("trace_curator_last_success_timestamp_seconds", (("task", "batch"),))] \
            == pytest.approx(time.time(), abs=60)

        publish(producer, settings.assessment_topic, [P.assessment_doc(
            "feedback_numeric", trace_id=docs[1]["info"]["trace_id"])])
        wait_until(lambda: scrape(base)[("trace_curator_events_consumed_total",
                                         (("kind", "assessment"),))] == 1, 60, "the feedback")
        # Lag is refreshed by the loop every few seconds: all partitions drained.
        wait_until(lambda: any(k[0] == "trace_curator_consumer_lag" for k in scrape(base)), 30,
                   "the lag gauges")
        lags = {k: v for k, v in scrape(base).items() if k[0] == "trace_curator_consumer_lag"}
        assert {dict(k[1])["topic"] for k in lags} == {
            settings.trace_topic, settings.assessment_topic, settings.otlp_topic}
        assert get(base + "/nothing-here")[0] == 404
    finally:
        worker.stop.set()
        if runner.is_alive():
            runner.join(30)
        status, why = get(base + "/readyz")
        server.stop()
        worker.close()
    assert (status, why) == (503, "stopping\n")


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_nothing_secret_is_served(settings_factory: Callable[..., Settings],
                                  store_url: str) -> None:
    url = store_url.replace("postgres@", "postgres:s3cret-pw@")
    settings = settings_factory(store_url=url, kafka_sasl_password="sasl-s3cret")
    worker = create_kafka_worker(settings)
    server = HttpServer("127.0.0.1", 0, routes(worker, worker.writer.engine)).start()  # type: ignore[attr-defined]
    try:
        for path in ("/metrics", "/healthz", "/readyz"):
            body = get(f"http://127.0.0.1:{server.port}{path}")[1]
            assert "s3cret" not in body
    finally:
        server.stop()
        worker.close()
    assert "s3cret" not in repr(settings.masked())


def test_a_busy_port_is_a_clear_error() -> None:
    from consumers.errors import ConfigError

    first = HttpServer("127.0.0.1", 0, {}).start()
    try:
        with pytest.raises(ConfigError, match="TRACE_CURATOR_HTTP_PORT"):
            HttpServer("127.0.0.1", first.port, {}).start()
    finally:
        first.stop()
