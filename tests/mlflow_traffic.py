"""Real traces and assessments logged to a real MLflow server, for the end-to-end tests.

Durations are exact (explicit span times, no sleeping). After ``flush()`` every trace logged is
fetched back with ``mlflow.get_trace``, so a test never publishes a trace MLflow did not store.
"""

from __future__ import annotations

import time
from typing import Any

import mlflow
from mlflow.entities import SpanType

MS = 1_000_000


def log_trace(experiment_id: str, kind: str = "ok", *, duration_ms: int | None = None,
              tags: dict[str, str] | None = None, question: str = "q",
              start_ms: int | None = None) -> str:
    """One trace: a CHAIN root with a CHAT_MODEL child. ``kind``: ok, error or slow. It starts
    ``duration_ms`` before now (it lands in MLflow as it ends), or at ``start_ms``."""
    duration_ms = duration_ms or {"ok": 800, "error": 300, "slow": 6500}[kind]
    t0 = (time.time_ns() - duration_ms * MS - 5 * MS) if start_ms is None else start_ms * MS
    root = mlflow.start_span_no_context(name="support_bot", span_type=SpanType.CHAIN,
                                        inputs={"question": question}, experiment_id=experiment_id,
                                        start_time_ns=t0, tags=tags or {})
    child = mlflow.start_span_no_context(name="llm", span_type=SpanType.CHAT_MODEL,
                                         parent_span=root, inputs={"q": question},
                                         start_time_ns=t0 + MS)
    status = "ERROR" if kind == "error" else "OK"
    child.end(outputs={"a": "answer"}, status=status, end_time_ns=t0 + (duration_ms - 1) * MS)
    root.end(outputs="answer" if kind != "error" else None, status=status,
             end_time_ns=t0 + duration_ms * MS)
    return root.trace_id


def flush() -> None:
    mlflow.flush_trace_async_logging()


def fetch(trace_ids: list[str], timeout_s: float = 30) -> list[Any]:
    """The traces as MLflow stored them (waits for the asynchronous export)."""
    flush()
    deadline = time.monotonic() + timeout_s
    out = []
    for tid in trace_ids:
        while True:
            trace = mlflow.get_trace(tid)
            if trace is not None and trace.info.state.value != "IN_PROGRESS":
                out.append(trace)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"trace {tid} never reached the MLflow server")
            time.sleep(0.2)
    return out


def search_ids(experiment_id: str, filter_string: str) -> set[str]:
    traces = mlflow.search_traces(locations=[experiment_id], filter_string=filter_string,
                                  return_type="list", max_results=1000)
    return {t.info.trace_id for t in traces}


def start_in_progress(experiment_id: str, name: str = "long_job") -> Any:
    """A trace MLflow holds as IN_PROGRESS, as a span-streaming (OTLP) exporter leaves it while
    the work runs: one finished child span is logged, the root is still open. Returns the open
    root span; ``finish`` ends it, and MLflow's exporter then completes the trace in place."""
    from mlflow.tracing.client import TracingClient

    root = mlflow.start_span_no_context(name=name, span_type=SpanType.AGENT,
                                        inputs={"job": "nightly"}, experiment_id=experiment_id)
    step = mlflow.start_span_no_context(name="step_1", span_type=SpanType.TOOL,
                                        parent_span=root, inputs={"n": 1})
    step.end(outputs={"ok": True})
    TracingClient().log_spans(experiment_id, [step])
    return root


def finish(root: Any) -> None:
    root.end(outputs={"done": True})
    flush()
