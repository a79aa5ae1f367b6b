"""Rules end to end: real traces on a real MLflow server, published to the real broker, decided
by the worker, and tagged back on the traces in MLflow, where the classic searches find them.

Covers invariant 3 of docs/design.md (tags are never lost) through an MLflow outage and a
kill -9 of the worker during write-back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from sqlalchemy import func, select

from consumers.producer import publish_assessment, publish_trace
from store.engine import make_engine
from store.models import TagOutbox
from tests import mlflow_traffic as T
from tests.conftest import settings_env
from tests.helpers import wait_until
from tests.mlflow_server import MlflowServer
from worker.app import create_kafka_worker

pytestmark = [
    pytest.mark.integration,
    # MLflow 3.17's SQL store module uses a loader strategy SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    # MLflow warns while it starts a span; raised, the warning makes it return a no-op span.
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]


@pytest.fixture
def experiment(mlflow_server: Any) -> Iterator[str]:
    mlflow.set_tracking_uri(mlflow_server.uri)
    eid = mlflow.create_experiment(f"e2e-{uuid.uuid4().hex[:8]}")
    yield eid
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets; not in the hint


def test_classic_searches_find_exactly_the_tagged_traces(
        experiment: str, mlflow_server: Any, settings_factory: Any, producer: Any,
        run_worker: Any) -> None:
    eid = experiment
    ok_fast = [T.log_trace(eid, "ok") for _ in range(3)]
    errors = [T.log_trace(eid, "error") for _ in range(2)]
    slow = [T.log_trace(eid, "slow") for _ in range(2)]
    low_numeric, low_bool, low_no, passing, overridden, error_low = (
        T.log_trace(eid, "ok") for _ in range(6))
    error_low_id = T.log_trace(eid, "error")
    traces = T.fetch([*ok_fast, *errors, *slow, low_numeric, low_bool, low_no, passing,
                      overridden, error_low, error_low_id])
    feedback = [
        mlflow.log_feedback(trace_id=low_numeric, name="quality", value=0.2),
        mlflow.log_feedback(trace_id=low_bool, name="is_correct", value=False),
        mlflow.log_feedback(trace_id=low_no, name="helpful", value="no"),
        mlflow.log_feedback(trace_id=passing, name="quality", value=0.9),
        mlflow.log_feedback(trace_id=error_low_id, name="quality", value=0.1),
        mlflow.log_expectation(trace_id=passing, name="expected_response", value="x"),
    ]
    first = mlflow.log_feedback(trace_id=overridden, name="quality", value=0.1)
    override = mlflow.override_feedback(trace_id=overridden, assessment_id=first.assessment_id,
                                        value=0.95, rationale="reviewed: fine")
    old_now_invalid = mlflow.get_assessment(overridden, first.assessment_id)
    assert old_now_invalid.valid is False

    settings = settings_factory(mlflow_tracking_uri=mlflow_server.uri)
    for t in traces:
        publish_trace(producer, t, settings.trace_topic)
    for a in [*feedback, first]:
        publish_assessment(producer, a, settings.assessment_topic)
    producer.flush()
    stats = run_worker(settings)  # first pass: the low score on `overridden` is tagged
    assert stats.records == len(traces) + len(feedback) + 1
    assert overridden in T.search_ids(eid, "tags.eval_candidate = 'low_score'")

    for a in [override, old_now_invalid]:  # the override arrives later
        publish_assessment(producer, a, settings.assessment_topic)
    producer.flush()
    run_worker(settings)

    assert T.search_ids(eid, "tags.eval_candidate = 'error_case'") == {*errors, error_low_id}
    assert T.search_ids(eid, "tags.eval_candidate = 'slow_response'") == set(slow)
    assert T.search_ids(eid, "tags.eval_candidate = 'low_score'") == {
        low_numeric, low_bool, low_no}
    assert T.search_ids(eid, "tags.eval_candidate IS NOT NULL") == {
        *errors, error_low_id, *slow, low_numeric, low_bool, low_no}

    engine = make_engine(settings.store_url_plain)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(TagOutbox)).scalar() == 0
    engine.dispose()
    explain = subprocess.run([sys.executable, "-m", "worker", "rules", "explain", overridden],
                             env=settings_env(settings), capture_output=True, text=True,
                             timeout=60)
    assert explain.returncode == 0, explain.stderr
    assert "eval_candidate = (removed)" in explain.stdout
    assert "low_score" in explain.stdout and "tagged" in explain.stdout


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_mlflow_outage_delays_tags_and_loses_none(
        tmp_path: Path, settings_factory: Any, producer: Any) -> None:
    server = MlflowServer(tmp_path / "mlflow").start()
    mlflow.set_tracking_uri(server.uri)
    try:
        eid = mlflow.create_experiment("outage")
        first = T.fetch([T.log_trace(eid, "error") for _ in range(10)])
        second = T.fetch([T.log_trace(eid, "error") for _ in range(10)])
        settings = settings_factory(mlflow_tracking_uri=server.uri, tag_writer_interval_s=0.2)
        for t in first:
            publish_trace(producer, t, settings.trace_topic)
        producer.flush()
        worker = create_kafka_worker(settings)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        tag_writer = worker.tag_writer
        assert tag_writer is not None
        wait_until(lambda: tag_writer.written == 10, 60, "the first 10 tags")

        server.stop()
        for t in second:
            publish_trace(producer, t, settings.trace_topic)
        producer.flush()
        wait_until(lambda: tag_writer.stats().total == 10 and tag_writer.failed_attempts > 0, 60,
              "the outbox to hold the second 10 tags")
        time.sleep(2)
        assert tag_writer.stats().total == 10  # kept, not dropped
        server.start()
        wait_until(lambda: tag_writer.stats().total == 0, 120, "the outbox to drain")
        worker.stop.set()
        thread.join(30)
        worker.close()
        assert tag_writer.written == 20  # each decided tag confirmed exactly once
        assert T.search_ids(eid, "tags.eval_candidate = 'error_case'") == {
            t.info.trace_id for t in [*first, *second]}
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
        server.stop()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_kill_9_during_write_back_loses_no_tag(
        experiment: str, mlflow_server: Any, settings_factory: Any, producer: Any,
        tmp_path: Path) -> None:
    eid = experiment
    traces = T.fetch([T.log_trace(eid, "error" if i % 2 else "slow") for i in range(120)])
    settings = settings_factory(mlflow_tracking_uri=mlflow_server.uri,
                                tag_writer_concurrency=1)
    for t in traces:
        publish_trace(producer, t, settings.trace_topic)
    producer.flush()
    engine = make_engine(settings.store_url_plain)

    def pending() -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(TagOutbox)).scalar() or 0)

    env = settings_env(settings)
    cmd = [sys.executable, "-m", "worker", "run", "--exit-when-idle", "3"]
    with open(tmp_path / "w1.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # A round confirms its rows in one transaction after MLflow took them: kill while
            # MLflow already shows some tags and the outbox still holds them all.
            wait_until(lambda: pending() > 0 and bool(T.search_ids(
                eid, "tags.eval_candidate IS NOT NULL")), 90, "write-back to be under way")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    left = pending()
    assert left > 0, "the kill came after write-back finished: nothing was tested"
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert pending() == 0
    assert T.search_ids(eid, "tags.eval_candidate IS NOT NULL") == {
        t.info.trace_id for t in traces}
    engine.dispose()
