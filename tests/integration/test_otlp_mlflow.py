"""MLflow's own OTLP dual export, end to end, with feedback from MLflow: a traced app logs to a
real MLflow server and exports the same spans through an OTLP receiver that writes the
Collector's records to the real broker. The worker (``source=kafka`` with
``mlflow_assessments=on``) assembles the traces from Kafka, and must store what MLflow stored of
them (trace ids, span count and types, status, duration within 1 ms, request and response);
the rules' tags go back onto MLflow's traces; then ``log_feedback`` in MLflow re-decides a
trace's rules with no producer code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from store.engine import make_engine
from store.models import Trace, TraceTag
from worker.demo.otlp_receiver import OtlpKafkaReceiver

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]

APP = textwrap.dedent("""
    import json, sys
    import mlflow

    @mlflow.trace(span_type="RETRIEVER")
    def retrieve(q):
        return [q + "-doc"]

    @mlflow.trace(span_type="CHAT_MODEL")
    def chat(q, docs):
        if q == "boom":
            raise ValueError("the model refused")
        return q.upper()

    @mlflow.trace(span_type="AGENT")
    def agent(question):
        return chat(question, retrieve(question))

    exp = mlflow.set_experiment(sys.argv[1])
    ids = []
    for q in ["hello", "boom", "again"]:
        try:
            agent(q)
        except ValueError:
            pass
        ids.append(mlflow.get_last_active_trace_id())
    mlflow.flush_trace_async_logging()
    assert mlflow.tracing.get_bridged_tracer_provider().force_flush(30_000)
    print(json.dumps({"experiment_id": exp.experiment_id, "trace_ids": ids}), flush=True)
""")


def run_app(tmp_path: Path, tracking_uri: str, endpoint: str) -> dict[str, Any]:
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACE_CURATOR_", "MLFLOW_", "OTEL_"))}
    env.update({"MLFLOW_TRACKING_URI": tracking_uri,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                "MLFLOW_TRACE_ENABLE_OTLP_DUAL_EXPORT": "true",
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    proc = subprocess.run([sys.executable, str(script), f"otlp-e2e-{uuid.uuid4().hex[:8]}"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def test_mlflow_dual_export_lands_as_mlflow_stored_it_and_mlflow_feedback_re_decides(
        settings_factory: Any, producer: Any, run_worker: Any, store_url: str,
        mlflow_server: Any, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    probe = settings_factory()
    with OtlpKafkaReceiver(producer, probe.otlp_topic) as receiver:
        app = run_app(tmp_path, mlflow_server.uri, receiver.url)
    ids: list[str] = app["trace_ids"]
    settings = settings_factory(
        otlp_topic=probe.otlp_topic, otlp_quiet_s=0.3, mlflow_tracking_uri=mlflow_server.uri,
        mlflow_assessments="on", mlflow_experiment_ids=app["experiment_id"],
        mlflow_assessment_rescan_interval_s=0.5, tag_writeback="on")
    run_worker(settings, idle_s=2.0)

    engine = make_engine(store_url)
    try:
        with engine.connect() as c:
            stored = {t.trace_id: t for t in c.execute(select(Trace))}
        assert sorted(stored) == sorted(ids)
        for tid in ids:
            theirs = client.get_trace(tid)
            ours = stored[tid]
            assert ours.span_count == len(theirs.data.spans)
            assert sorted(ours.span_summary) == sorted({s.span_type for s in theirs.data.spans})
            assert ours.status == theirs.info.state.value
            assert abs(ours.execution_time_ms - theirs.info.execution_duration) <= 1
            assert ours.timestamp_ms == theirs.info.request_time
            root = next(s for s in theirs.data.spans if s.parent_id is None)
            assert json.loads(ours.request) == root.inputs
            assert (json.loads(ours.response) if ours.response else None) == root.outputs
            assert ours.source_format == "otlp"
        # The rules' tags, in the store and on MLflow's own trace.
        boom = ids[1]
        assert stored[boom].status == "ERROR"
        assert client.get_trace(boom).info.tags.get("eval_candidate") == "error_case"

        # Feedback logged in MLflow, none through Kafka: the rescan brings it, the rules
        # re-decide, and the tag goes back to MLflow.
        hello = ids[0]
        import mlflow

        mlflow.set_tracking_uri(mlflow_server.uri)
        mlflow.log_feedback(trace_id=hello, name="helpful", value=False)
        run_worker(settings, idle_s=2.0)
        with engine.connect() as c:
            tags = {(r.trace_id, r.tag_key): r.tag_value for r in c.execute(select(TraceTag))}
        assert tags[(hello, "eval_candidate")] == "low_score"
        assert client.get_trace(hello).info.tags.get("eval_candidate") == "low_score"
    finally:
        engine.dispose()
