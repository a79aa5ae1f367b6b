"""``trace-curator demo`` end to end: the store ends up holding exactly what MLflow holds.

The demo is run in-process on its embedded defaults (its own tansu broker, or polling MLflow;
SQLite stores in ``tmp_path``), with a short history and a few seconds of live traffic. MLflow's
own store is the oracle for trace and assessment ids and for the rule tags written back; with
``--source otlp`` (traces from MLflow's OTLP export, feedback from MLflow) also for what the
default rules must decide.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from consumers.embedded_broker import tansu_binary
from consumers.errors import ConfigError
from store.engine import make_engine
from tests.conftest import service_missing
from worker.demo.runner import (
    EXPERIMENT_NAME,
    OTLP_TOPIC,
    cmd_demo,
    configure_parser,
    otlp_export_env,
)

pytestmark = [
    pytest.mark.integration,
    # MLflow 3.17's SQL tracking store uses the noload strategy that SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings(
        "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"),
    # MLflow warns (in colour, hence the leading .*) while it starts a span; as an error, the
    # warning would make MLflow swallow it and return a no-op span, and no trace would be written.
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]

HISTORY = 20
DURATION_S = 5


@pytest.fixture
def mlflow_uri_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The demo points MLflow's process-wide tracking URI (and its env variable) at its folder."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored by monkeypatch
    yield
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets; not in the hint


def _tansu_children() -> list[str]:
    """PIDs of this process's live tansu children (Linux /proc; [] elsewhere)."""
    out = []
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in children.read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists() and b"tansu" in cmdline.read_bytes():
                out.append(pid)
    return out


def _run_demo(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return cmd_demo(parser.parse_args(list(argv)))


@pytest.mark.parametrize("source", ["kafka", "mlflow"])
def test_demo_store_matches_mlflow(tmp_path: Path, mlflow_uri_restored: None,
                                   source: str) -> None:
    if source == "kafka":
        try:
            tansu_binary()
        except ConfigError as exc:
            service_missing(f"tansu broker unavailable: {exc}")
    from mlflow import MlflowClient

    before = set(_tansu_children())  # the session's broker fixture may be running
    started_ms = int(time.time() * 1000)
    assert _run_demo("--history", str(HISTORY), "--duration", str(DURATION_S),
                     "--source", source, "--dir", str(tmp_path)) == 0
    assert set(_tansu_children()) <= before  # the demo's own broker was stopped (or never ran)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None
    traces = client.search_traces(locations=[experiment.experiment_id], max_results=500,
                                  include_spans=False)
    mlflow_traces = {t.info.trace_id for t in traces}
    mlflow_assessments = {a.assessment_id for t in traces for a in t.info.assessments}
    # The history is backdated (5 min to 23 h); live traces start at most ~10 s before "now".
    history = [t for t in traces if t.info.request_time < started_ms - 4 * 60_000]
    live = [t for t in traces if t.info.request_time >= started_ms - 60_000]
    assert len(history) == HISTORY
    assert len(live) >= DURATION_S  # even a slow machine writes one live trace a second
    assert len(history) + len(live) == len(mlflow_traces)
    assert mlflow_assessments  # feedback on about half of the traces

    engine = make_engine(f"sqlite:///{tmp_path}/trace_curator.db")
    with engine.connect() as conn:
        store_traces = set(conn.execute(text("SELECT trace_id FROM traces")).scalars())
        in_progress = conn.execute(text(
            "SELECT COUNT(*) FROM traces WHERE status = 'IN_PROGRESS'")).scalar()
        store_assessments = set(
            conn.execute(text("SELECT assessment_id FROM assessments")).scalars())
        dead_letters = conn.execute(text("SELECT COUNT(*) FROM dead_letters")).scalar()
        decided = set(conn.execute(text(
            "SELECT trace_id, tag_value FROM trace_tags WHERE tag_value IS NOT NULL")).all())
        outbox = conn.execute(text("SELECT COUNT(*) FROM tag_outbox")).scalar()
        versions = conn.execute(text("SELECT COUNT(*) FROM dataset_versions")).scalar()
    engine.dispose()
    # Every rule tag was written back onto its trace in the demo's MLflow store.
    tagged = client.search_traces(locations=[experiment.experiment_id], max_results=500,
                                  filter_string="tags.eval_candidate IS NOT NULL",
                                  include_spans=False)
    assert decided  # this traffic always includes errors and slow calls
    assert {(t.info.trace_id, t.info.tags["eval_candidate"]) for t in tagged} == decided
    assert outbox == 0
    assert store_traces == mlflow_traces
    assert in_progress == 0
    assert store_assessments == mlflow_assessments
    assert dead_letters == (3 if source == "kafka" else 0)  # malformed records only on Kafka
    assert versions >= 1  # candidates were curated into a dataset version


def test_demo_rejects_bad_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    for bad in (["--duration", "0"], ["--rate", "-1"], ["--history", "-5"],
                ["--source", "files"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*bad, "--dir", str(tmp_path)])


def _expected_tag(info: Any) -> str | None:
    """What the default rules decide for a trace, from MLflow's own record of it: error, then
    slow, then low feedback (a false or "no" value, or a number below 0.5)."""
    if info.state.value == "ERROR":
        return "error_case"
    if info.execution_duration > 5000:
        return "slow_response"
    for a in info.assessments:
        value = a.feedback.value if a.feedback is not None else None
        low_number = isinstance(value, int | float) and not isinstance(value, bool) and value < 0.5
        if a.feedback is not None and a.valid is not False and (value in (False, "no")
                                                                  or low_number):
            return "low_score"
    return None


def test_demo_otlp_traces_from_spans_feedback_from_mlflow(
        tmp_path: Path, mlflow_uri_restored: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--source otlp``: every trace the traffic produced is in the store, assembled from the
    spans MLflow's OTLP export sent through the receiver and the broker; every assessment came
    from the worker's MLflow rescans; the default rules tagged errors, slow calls and low
    feedback exactly as MLflow's record says; the tags are on MLflow's traces; no dead letter;
    the receiver and the broker are stopped and MLflow's exporter variables are as before."""
    try:
        tansu_binary()
    except ConfigError as exc:
        service_missing(f"tansu broker unavailable: {exc}")
    from mlflow import MlflowClient

    exporter_vars = [*otlp_export_env("http://127.0.0.1:1/v1/traces"),
                     "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"]
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                 "MLFLOW_TRACE_ENABLE_OTLP_DUAL_EXPORT"):  # unset before: unset after
        monkeypatch.delenv(name, raising=False)
    env_before = {k: os.environ.get(k) for k in exporter_vars}
    before = set(_tansu_children())
    assert _run_demo("--history", str(HISTORY), "--duration", str(DURATION_S),
                     "--source", "otlp", "--dir", str(tmp_path)) == 0
    assert set(_tansu_children()) <= before  # the demo's broker was stopped
    assert {k: os.environ.get(k) for k in exporter_vars} == env_before
    out, err = capsys.readouterr()
    receiver = re.search(r"otlp receiver listening on http://127\.0\.0\.1:(\d+)/", err)
    assert receiver is not None, err[-3000:]
    with pytest.raises(ConnectionRefusedError):  # the receiver no longer listens
        socket.create_connection(("127.0.0.1", int(receiver[1])), timeout=5).close()
    produced = re.search(r"history (\d+) of \d+ traces .*; live (\d+) of \d+ traces", out)
    assert produced is not None, out[-3000:]
    assert "store    holds every trace and assessment of this run" in out

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None
    traces = client.search_traces(locations=[experiment.experiment_id], max_results=500,
                                  include_spans=False)
    infos = {t.info.trace_id: t.info for t in traces}
    assert len(infos) == int(produced[1]) + int(produced[2]) == HISTORY + int(produced[2])
    assert int(produced[2]) >= DURATION_S
    mlflow_assessments = {a.assessment_id for i in infos.values() for a in i.assessments}

    engine = make_engine(f"sqlite:///{tmp_path}/trace_curator.db")
    try:
        with engine.connect() as conn:
            stored = {r.trace_id: r for r in conn.execute(text(
                "SELECT trace_id, status, execution_time_ms, source_format, src_topic "
                "FROM traces"))}
            assessments = dict(conn.execute(text(
                "SELECT assessment_id, src_topic FROM assessments")).all())
            tags = dict(conn.execute(text(
                "SELECT trace_id, tag_value FROM trace_tags WHERE tag_key = 'eval_candidate' "
                "AND tag_value IS NOT NULL")).all())
            dead_letters = conn.execute(text("SELECT COUNT(*) FROM dead_letters")).scalar()
            waiting = conn.execute(text(
                "SELECT COUNT(*) FROM otlp_traces WHERE pending")).scalar()
            outbox = conn.execute(text("SELECT COUNT(*) FROM tag_outbox")).scalar()
    finally:
        engine.dispose()

    # The traces: exactly MLflow's, each assembled from the OTLP topic's spans.
    assert stored.keys() == infos.keys()
    assert {(r.source_format, r.src_topic) for r in stored.values()} == {("otlp", OTLP_TOPIC)}
    for tid, info in infos.items():
        assert stored[tid].status == info.state.value
        assert abs(stored[tid].execution_time_ms - info.execution_duration) <= 1
    assert waiting == 0
    # The assessments: exactly MLflow's, none through Kafka.
    assert assessments.keys() == mlflow_assessments
    assert set(assessments.values()) == {"mlflow:assessments"}
    # The rules: errors, slow calls and (from MLflow's feedback) low scores, as MLflow says.
    expected = {tid: tag for tid, info in infos.items() if (tag := _expected_tag(info))}
    assert {"error_case", "slow_response", "low_score"} <= set(expected.values())
    assert tags == expected
    tagged = client.search_traces(locations=[experiment.experiment_id], max_results=500,
                                  filter_string="tags.eval_candidate IS NOT NULL",
                                  include_spans=False)
    assert {t.info.trace_id: t.info.tags["eval_candidate"] for t in tagged} == expected
    assert outbox == 0
    assert dead_letters == 0  # nothing malformed is sent in this mode
