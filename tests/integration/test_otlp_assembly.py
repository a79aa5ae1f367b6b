"""A trace assembled from OpenTelemetry spans equals what MLflow's own OTLP ingestion makes of the
same spans: each scenario's spans go, split and shuffled, through ``SqlAlchemyStore.log_spans``
(what MLflow's ``/v1/traces`` calls, after ``Span.from_otel_proto``) into a real MLflow SQL store,
and through ``decode_otlp`` and ``assemble``; trace id, status, start, duration, span count and
types, tokens and request/response must agree (MLflow keeps a preview of the request and the
response; the scenarios' are shorter than its cut).
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities.span import Span as MlflowSpan
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from consumers.assembly import ROOT_MISSING_KEY, assemble, token_usage, unique_spans
from consumers.events import Provenance
from consumers.otlp import decode_otlp
from tests.otlp_spans import GENAI_CHAT, OPENINFERENCE_LLM, span

pytestmark = pytest.mark.integration

PROV = Provenance("otlp_spans", 0, 1)
MS = 1_000_000
T0 = 1_764_000_000_123_456_789


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    folder: Path = tmp_path_factory.mktemp("mlflow-store")
    with warnings.catch_warnings():  # MLflow 3.17's models use a loader SQLAlchemy 2.1 deprecates
        warnings.filterwarnings("ignore", "The ``noload`` loader strategy")
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    store = SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts"))
    yield store, store.create_experiment("otlp-assembly")
    store.engine.dispose()


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def usage(i: int, o: int) -> dict[str, Any]:
    return {"mlflow.chat.tokenUsage": json.dumps({"input_tokens": i, "output_tokens": o,
                                                  "total_tokens": i + o})}


# Each scenario: one trace's spans, as the app exported them.
SCENARIOS: dict[str, list[Span]] = {
    "mlflow_agent": [
        span(tid(1), 1, name="agent", start=T0, dur_ns=900 * MS,
             attrs={"mlflow.spanType": '"AGENT"', "mlflow.spanInputs": '{"q": "hi"}',
                    "mlflow.spanOutputs": '"bye"', "mlflow.traceTag.team": '"search"'}),
        span(tid(1), 2, 1, name="retrieve", start=T0 + 10 * MS, dur_ns=200 * MS,
             attrs={"mlflow.spanType": '"RETRIEVER"'}),
        span(tid(1), 3, 1, name="chat", start=T0 + 300 * MS, dur_ns=550 * MS,
             attrs={"mlflow.spanType": '"CHAT_MODEL"', **usage(120, 40)}),
        span(tid(1), 4, 1, name="chat2", start=T0 + 860 * MS, dur_ns=30 * MS,
             attrs={"mlflow.spanType": '"CHAT_MODEL"', **usage(5, 6)}),
    ],
    "genai_error": [
        span(tid(2), 1, name="invoke_agent", start=T0, dur_ns=2_500 * MS, code=2,
             attrs={"gen_ai.operation.name": "invoke_agent",
                    "gen_ai.input.messages": '[{"role": "user", "content": "x"}]'}),
        span(tid(2), 2, 1, name="chat", start=T0 + 5 * MS, dur_ns=1_000 * MS, attrs=GENAI_CHAT),
        span(tid(2), 3, 1, name="tool", start=T0 + 1_100 * MS, dur_ns=1_300 * MS, code=2,
             attrs={"gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.call.arguments": '{"city": "Oslo"}'}),
    ],
    # pydantic_ai-style: the agent span carries the usage rolled up from its model calls
    "rollup_usage": [
        span(tid(3), 1, name="agent run", start=T0, dur_ns=100 * MS,
             attrs={"gen_ai.operation.name": "invoke_agent", "gen_ai.usage.input_tokens": 30,
                    "gen_ai.usage.output_tokens": 3}),
        span(tid(3), 2, 1, name="chat a", start=T0 + MS, dur_ns=40 * MS,
             attrs={**GENAI_CHAT, "gen_ai.usage.input_tokens": 10,
                    "gen_ai.usage.output_tokens": 1}),
        span(tid(3), 3, 1, name="chat b", start=T0 + 50 * MS, dur_ns=40 * MS,
             attrs={**GENAI_CHAT, "gen_ai.usage.input_tokens": 20,
                    "gen_ai.usage.output_tokens": 2}),
        span(tid(3), 4, 3, name="nested", start=T0 + 51 * MS, dur_ns=10 * MS,
             attrs=OPENINFERENCE_LLM),
    ],
    "openinference_single": [
        span(tid(4), 9, name="llm", start=T0, dur_ns=1_234_567, attrs=OPENINFERENCE_LLM),
    ],
}


def records(spans: list[Span], seed: int) -> list[bytes]:
    """The spans shuffled, a few duplicated, in records of one or two spans."""
    rng = random.Random(seed)
    sent = spans + rng.sample(spans, k=min(2, len(spans)))
    rng.shuffle(sent)
    out = []
    while sent:
        n = rng.randint(1, 2)
        part, sent = sent[:n], sent[n:]
        out.append(ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            scope_spans=[ScopeSpans(spans=part)])]).SerializeToString())
    return out


def mlflow_ingest(store: Any, experiment_id: str, spans: list[Span], seed: int) -> None:
    """Spans reach MLflow in export batches of their own, in the shuffled order."""
    rng = random.Random(seed)
    batch = spans[:]
    rng.shuffle(batch)
    for s in batch:
        store.log_spans(experiment_id, [MlflowSpan.from_otel_proto(s)])


def mlflow_view(store: Any, trace_id: str) -> dict[str, Any]:
    info = store.get_trace_info(trace_id)
    trace = store.get_trace(trace_id)
    spans = trace.data.spans
    tokens = json.loads(info.trace_metadata.get("mlflow.trace.tokenUsage", "null") or "null")
    return {
        "trace_id": info.trace_id, "status": info.state.value,
        "timestamp_ms": info.request_time, "execution_ms": info.execution_duration,
        "span_count": len(spans),
        "span_types": sorted(s.span_type or "UNKNOWN" for s in spans),
        "tokens": None if tokens is None else (tokens.get("input_tokens"),
                                               tokens.get("output_tokens"),
                                               tokens.get("total_tokens")),
        "request_preview": info.request_preview, "response_preview": info.response_preview,
    }


def our_view(spans: list[Span], seed: int) -> dict[str, Any]:
    decoded = [s for r in records(spans, seed) for s in decode_otlp(r, "otlp_proto", 1 << 20).spans]
    e = assemble(decoded, PROV)
    return {
        "trace_id": e.trace_id, "status": e.status, "timestamp_ms": e.timestamp_ms,
        "execution_ms": e.execution_time_ms, "span_count": len(e.spans),
        "span_types": sorted(s.span_type for s in e.spans),
        "tokens": (e.input_tokens, e.output_tokens, e.total_tokens)
        if e.total_tokens is not None else None,
        "request_preview": e.request, "response_preview": e.response,
    }


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("seed", [1, 2])
def test_an_assembled_trace_equals_mlflows_own_ingestion_of_its_spans(
        mlflow_store: tuple[Any, str], scenario: str, seed: int) -> None:
    store, experiment_id = mlflow_store
    spans = SCENARIOS[scenario]
    ours = our_view(spans, seed)
    if seed == 1:  # MLflow's store keeps the first ingestion; once per scenario
        mlflow_ingest(store, experiment_id, spans, seed)
    theirs = mlflow_view(store, ours["trace_id"])
    assert ours == theirs


def test_a_trace_without_its_root_is_marked_and_its_topmost_span_stands_in() -> None:
    spans = SCENARIOS["mlflow_agent"][1:]  # the agent span never came
    decoded = [s for r in records(spans, 3) for s in decode_otlp(r, "otlp_proto", 1 << 20).spans]
    e = assemble(decoded, PROV)
    assert e.metadata[ROOT_MISSING_KEY] == "true"
    assert e.name == "retrieve"  # the earliest of the spans whose parent is missing
    assert e.status == "OK" and len(e.spans) == 3
    assert (e.input_tokens, e.output_tokens, e.total_tokens) == (125, 46, 171)
    whole = assemble([s for r in records(SCENARIOS["mlflow_agent"], 3)
                      for s in decode_otlp(r, "otlp_proto", 1 << 20).spans], PROV)
    assert whole.completeness > e.completeness  # the root's arrival amends the stored trace
    assert ROOT_MISSING_KEY not in whole.metadata


def test_hostile_span_trees_are_walked_once_without_recursion() -> None:
    deep = [span(tid(5), i + 1, i or None, start=T0 + i, dur_ns=1,
                 attrs=usage(1, 1)) for i in range(5_000)]
    cycle = [span(tid(6), 1, 2, attrs=usage(1, 0)), span(tid(6), 2, 1, attrs=usage(2, 0))]
    decode = [decode_otlp(ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=s)])]).SerializeToString(), "otlp_proto", 1 << 24).spans
        for s in (deep, cycle)]
    assert token_usage(unique_spans(decode[0])) == (1, 1, 2)  # the root's usage, once
    e = assemble(decode[1], PROV)  # every parent among them: the earliest span stands in
    assert e.metadata[ROOT_MISSING_KEY] == "true" and e.name == "s"
    assert e.total_tokens is None  # no span tree top to count from, as in MLflow
