"""The MLflow polling source (``TRACE_CURATOR_SOURCE=mlflow``) against a real MLflow server, on
both stores: traces that arrive while the worker polls (some landing after newer ones), an
IN_PROGRESS trace completed later, late feedback, a restart mid-poll (in process, and kill -9 of
a ``trace-curator run`` subprocess), and ``trace-curator backfill`` with its resume.

The oracle is MLflow itself: the store must end up holding exactly the server's traces, in their
final state, and its assessments; the metric buckets must equal a rebuild from the raw rows
(nothing counted twice); pages are small (5), so paging and watermarks are exercised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import mlflow
import pytest
from sqlalchemy import Engine, select, text

from consumers.mlflow_source import TableOnlyDeadLetters
from store.engine import make_engine
from store.metrics import rebuild
from store.models import Assessment, SourceCheckpoint, Trace, TraceTag
from tests import mlflow_traffic as T
from tests.conftest import settings_env
from tests.helpers import bucket_snapshot
from worker.app import bucket_config, create_mlflow_worker, poll_config
from worker.cli.main import main
from worker.settings import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]
DAY_MS = 86_400_000


@pytest.fixture
def experiment(mlflow_server: Any) -> Iterator[str]:
    mlflow.set_tracking_uri(mlflow_server.uri)
    yield mlflow.create_experiment(f"poll-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def poll_settings(settings_factory: Callable[..., Settings], mlflow_server: Any,
                  experiment: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "source": "mlflow", "mlflow_tracking_uri": mlflow_server.uri,
            "mlflow_experiment_ids": experiment, "mlflow_poll_interval_s": 0.2,
            "mlflow_assessment_rescan_interval_s": 0.5, "mlflow_page_size": 5,
            "mlflow_poll_overlap_s": 120.0, "tag_writer_interval_s": 0.2,
            "poll_timeout_ms": 200}
        return settings_factory(**{**values, **overrides})
    return make


# --- what MLflow holds, what the store holds --------------------------------------------------


def mlflow_state(experiment_id: str) -> tuple[dict[str, tuple[str, int | None]], set[str]]:
    """Per trace id (state, duration), and every assessment id, as the server has them."""
    traces = mlflow.search_traces(locations=[experiment_id], return_type="list",
                                  max_results=5000, include_spans=False)
    infos = [t.info for t in traces]
    return ({i.trace_id: (i.state.value, i.execution_duration) for i in infos},
            {a.assessment_id for i in infos for a in i.assessments})


def store_state(engine: Engine) -> tuple[dict[str, tuple[str, int | None]], set[str]]:
    with engine.connect() as conn:
        traces = {r.trace_id: (r.status, r.execution_time_ms) for r in conn.execute(
            select(Trace.trace_id, Trace.status, Trace.execution_time_ms))}
        assessments = set(conn.execute(select(Assessment.assessment_id)).scalars())
    return traces, assessments


def assert_buckets_exact(engine: Engine, settings: Settings, n_traces: int) -> None:
    """Each trace counted once: the buckets total the traces and equal a rebuild."""
    buckets = bucket_snapshot(engine)
    assert sum(r[5] for r in buckets["hour"] if r[1] == 2) == n_traces
    with engine.begin() as conn:
        rebuild(conn, bucket_config(settings), int(time.time() * 1000))
    assert bucket_snapshot(engine) == buckets


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def in_sync(engine: Engine, experiment_id: str) -> bool:
    return store_state(engine) == mlflow_state(experiment_id)


# --- tests ------------------------------------------------------------------------------------


def test_polling_while_traces_arrive_misses_and_duplicates_nothing(
        poll_settings: Callable[..., Settings], experiment: str) -> None:
    settings = poll_settings()
    first = [T.log_trace(experiment, k) for k in ("ok", "error", "slow", "ok", "ok", "error")]
    T.fetch(first)
    engine = make_engine(settings.store_url_plain)
    worker = create_mlflow_worker(settings, engine)
    runner = threading.Thread(target=worker.run, name="poll-worker")
    runner.start()
    try:
        wait_until(lambda: len(store_state(engine)[0]) == len(first), 60, "the first traces")
        # While the worker polls: more traces, one that started 40 s ago and lands only now
        # (older than traces already read: only the overlap finds it), an IN_PROGRESS trace,
        # and feedback on traces stored long before it was logged (late feedback).
        long_running = T.log_trace(experiment, "ok", duration_ms=40_000)
        later = [T.log_trace(experiment, k) for k in ("ok", "ok", "error", "ok", "slow") * 3]
        pending = T.start_in_progress(experiment)
        T.fetch([long_running, *later])
        wait_until(lambda: store_state(engine)[0].get(pending.trace_id, ("",))[0]
                   == "IN_PROGRESS", 60, "the IN_PROGRESS trace")
        late = [mlflow.log_feedback(trace_id=first[0], name="quality", value=0.1),
                mlflow.log_feedback(trace_id=first[3], name="helpful", value="no"),
                mlflow.log_expectation(trace_id=later[0], name="expected_response",
                                       value="Reset it from the account page.")]
        T.finish(pending)
        wait_until(lambda: in_sync(engine, experiment), 90, "the store to match MLflow")
    finally:
        worker.stop.set()
        runner.join(60)
        worker.close()
    traces, assessments = store_state(engine)
    assert len(traces) == len(first) + 1 + len(later) + 1
    assert traces[pending.trace_id][0] == "OK"  # completed in place (in_sync: its duration too)
    assert {a.assessment_id for a in late} <= assessments
    assert_buckets_exact(engine, settings, len(traces))
    with engine.connect() as conn:
        tags = dict(conn.execute(select(TraceTag.trace_id, TraceTag.tag_value)
                                 .where(TraceTag.tag_value.is_not(None))).all())
        (mark,) = conn.execute(select(SourceCheckpoint.value)).scalars()
    assert tags[first[0]] == "low_score"  # an OK trace: tagged only by the late feedback
    assert tags[first[1]] == "error_case"
    newest = max(i.request_time for i in (t.info for t in mlflow.search_traces(
        locations=[experiment], return_type="list", include_spans=False)))
    # The newest start read. MLflow dates an IN_PROGRESS trace by its earliest span so far, and
    # the finished one by its root: the start can move back a little when it completes.
    assert newest - 5_000 <= mark["watermark_ms"] <= newest + 5_000
    engine.dispose()


def test_restart_mid_poll_reads_only_what_is_left(
        poll_settings: Callable[..., Settings], experiment: str) -> None:
    settings = poll_settings()
    ids = [T.log_trace(experiment, "ok" if i % 4 else "error") for i in range(30)]
    T.fetch(ids)
    engine = make_engine(settings.store_url_plain)
    first = create_mlflow_worker(settings, engine)
    stats1 = first.run(max_records=12)  # stops after a few pages: a restart mid-poll
    first.close()
    assert 0 < stats1.traces < len(ids)
    more = [T.log_trace(experiment, "ok") for _ in range(7)]
    T.fetch(more)
    second = create_mlflow_worker(settings, make_engine(settings.store_url_plain))
    stats2 = second.run(exit_when_idle_s=2)
    second.close()
    # The stored watermark and the store check: the second run reads only the rest.
    assert stats1.traces + stats2.traces == len(ids) + len(more)
    assert in_sync(engine, experiment)
    assert_buckets_exact(engine, settings, len(ids) + len(more))
    engine.dispose()


def test_kill_9_of_a_polling_worker_loses_and_duplicates_nothing(
        poll_settings: Callable[..., Settings], experiment: str, tmp_path: Any) -> None:
    settings = poll_settings(mlflow_page_size=3)
    ids = [T.log_trace(experiment, ("ok", "error", "slow", "ok")[i % 4]) for i in range(40)]
    T.fetch(ids)
    for tid in ids[::3]:
        mlflow.log_feedback(trace_id=tid, name="quality", value=0.3)
    env = settings_env(settings)
    engine = make_engine(settings.store_url_plain)
    cmd = [sys.executable, "-m", "worker", "run", "--exit-when-idle", "3"]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: len(store_state(engine)[0]) >= 10 or proc.poll() is not None, 90,
                   "the first pages")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = len(store_state(engine)[0])
    assert killed_at < len(ids), "the kill came after the worker had read everything"
    final = subprocess.run(cmd, env=env, capture_output=True, timeout=180)
    assert final.returncode == 0, final.stderr.decode()[-3000:]
    assert in_sync(engine, experiment)
    assert_buckets_exact(engine, settings, len(ids))
    engine.dispose()


def test_backfill_loads_a_window_and_resumes_after_an_interruption(
        poll_settings: Callable[..., Settings], experiment: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = poll_settings(mlflow_experiment_ids="")
    now_ms = int(time.time() * 1000)
    inside = [T.log_trace(experiment, "error" if i % 5 == 0 else "ok",
                          start_ms=now_ms - 2 * DAY_MS + i * 60_000) for i in range(25)]
    outside = [T.log_trace(experiment, "ok", start_ms=now_ms - 5 * DAY_MS + i) for i in range(3)]
    T.fetch(inside + outside)
    engine = make_engine(settings.store_url_plain)
    # An interrupted backfill: it stops after a few pages, with its watermark stored.
    window = (now_ms - 3 * DAY_MS, now_ms)
    partial = create_mlflow_worker(settings, engine, poll_config(
        settings, backfill=window, experiments=(experiment,)))
    stats1 = partial.run(max_records=8)
    partial.close()
    assert 0 < stats1.traces < len(inside)
    for name, value in settings_env(settings).items():
        if name.startswith("TRACE_CURATOR_"):
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["backfill", "--since", "3d", "--experiment", experiment]) == 0
    out = capsys.readouterr()
    assert "backfill done" in out.out
    stored = store_state(engine)[0]
    assert set(stored) == set(inside)  # the window, nothing older
    done = int(out.out.split("(")[1].split()[0].replace(",", ""))
    assert stats1.traces + done == len(inside)  # resumed: the first pages were not read again
    assert_buckets_exact(engine, settings, len(inside))
    with engine.connect() as conn:
        marks = dict(conn.execute(select(SourceCheckpoint.name, SourceCheckpoint.value)).all())
    assert marks[f"mlflow:backfill:{experiment}"]["watermark_ms"] == max(
        i.request_time for i in (t.info for t in mlflow.search_traces(
            locations=[experiment], return_type="list", include_spans=False,
            filter_string=f"attributes.timestamp_ms >= {window[0]}")))
    engine.dispose()


def test_backfill_and_run_explain_bad_settings(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Any) -> None:
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", f"sqlite:///{tmp_path}/s.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TRACE_CURATOR_MLFLOW_TRACKING_URI", raising=False)
    assert main(["backfill", "--since", "7d"]) == 2
    assert "MLFLOW_TRACKING_URI" in capsys.readouterr().err
    assert main(["backfill", "--since", "yesterday"]) == 2
    assert "neither a duration" in capsys.readouterr().err
    monkeypatch.setenv("TRACE_CURATOR_SOURCE", "mlflow")
    assert main(["run", "--exit-when-idle", "1"]) == 2
    assert "source=mlflow polls an MLflow server" in capsys.readouterr().err


def test_polled_records_are_stored_with_their_origin(
        poll_settings: Callable[..., Settings], experiment: str) -> None:
    settings = poll_settings()
    tid = T.log_trace(experiment, "ok")
    T.fetch([tid])
    engine = make_engine(settings.store_url_plain)
    worker = create_mlflow_worker(settings, engine)
    worker.run(exit_when_idle_s=1.5)
    worker.close()
    with engine.connect() as conn:
        row = conn.execute(text("SELECT src_topic, src_partition FROM traces")).one()
    assert tuple(row) == ("mlflow:traces", 0)
    engine.dispose()


def test_all_experiments_mode_finds_an_experiment_created_after_the_start(
        poll_settings: Callable[..., Settings], experiment: str) -> None:
    from consumers.mlflow_client import MlflowTraceServer
    from consumers.mlflow_source import MlflowSource
    from store.checkpoints import StoreCheckpoints
    from store.writer import SqlWriter
    from worker.app import metrics_config
    from worker.loop import Worker
    from worker.rules.engine import load_rules

    settings = poll_settings(mlflow_experiment_ids="")  # every active experiment
    before = [T.log_trace(experiment, "ok") for _ in range(3)]
    T.fetch(before)
    engine = make_engine(settings.store_url_plain)
    config = replace(poll_config(settings), experiments_refresh_s=0.5)
    source = MlflowSource(MlflowTraceServer(settings.mlflow_tracking_uri),
                          StoreCheckpoints(engine), config)
    worker = Worker(settings, source, SqlWriter(engine, load_rules(None),
                                                metrics_config(settings)), TableOnlyDeadLetters())
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        wait_until(lambda: set(before) <= set(store_state(engine)[0]), 60, "the first experiment")
        later = mlflow.create_experiment(f"poll-late-{uuid.uuid4().hex[:8]}")
        after = [T.log_trace(later, "error") for _ in range(3)]
        T.fetch(after)
        wait_until(lambda: set(after) <= set(store_state(engine)[0]), 60,
                   "the experiment created after the start")
    finally:
        worker.stop.set()
        runner.join(60)
        worker.close()
    with engine.connect() as conn:
        marks = set(conn.execute(select(SourceCheckpoint.name)).scalars())
    assert {f"mlflow:tail:{experiment}", f"mlflow:tail:{later}"} <= marks
    engine.dispose()
