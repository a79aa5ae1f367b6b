"""OpenTelemetry spans and export requests built by hand, as OTel-instrumented apps send them:
MLflow's own attributes, the GenAI semantic conventions, OpenInference."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

T0 = 1_764_000_000_000_000_000
TRACE_A = bytes(range(1, 17))
TRACE_B = bytes(range(101, 117))


def value(v: Any) -> AnyValue:
    if v is None:
        return AnyValue()  # no value set
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(
            values=[KeyValue(key=k, value=value(x)) for k, x in v.items()]))
    return AnyValue(string_value=v)


def span(trace: bytes = TRACE_A, span_id: int = 1, parent: int | None = None, *,
         name: str = "s", start: int = T0, dur_ns: int = 5_000_000, code: int = 1,
         attrs: dict[str, Any] | None = None, flags: int = 0) -> Span:
    return Span(trace_id=trace, span_id=span_id.to_bytes(8, "big"),
                parent_span_id=parent.to_bytes(8, "big") if parent else b"", name=name,
                start_time_unix_nano=start, end_time_unix_nano=start + dur_ns if dur_ns else 0,
                status=Status(code=code), flags=flags,
                attributes=[KeyValue(key=k, value=value(v)) for k, v in (attrs or {}).items()])


def request(*spans: Span) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=list(spans))])])


def otlp_json(req: ExportTraceServiceRequest, *, hex_ids: bool = True) -> bytes:
    doc = json_format.MessageToDict(req)
    if hex_ids:
        for rs in doc["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for s in ss["spans"]:
                    for k in ("traceId", "spanId", "parentSpanId"):
                        if k in s:
                            s[k] = base64.b64decode(s[k]).hex()
    return json.dumps(doc).encode()


# MLflow's own attributes, as its exporter writes them: JSON text.
MLFLOW_ROOT = {"user.id": "ann", "session.id": "s-1", "mlflow.spanType": '"CHAIN"',
               "mlflow.spanInputs": '{"question": "hi"}', "mlflow.spanOutputs": '"hello"',
               "mlflow.traceRequestId": '"tr-x"',
               "mlflow.traceTag.team": '"search"', "mlflow.experimentId": '"7"'}
GENAI_CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
              "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 30,
              "gen_ai.input.messages": '[{"role": "user", "content": "hi"}]'}
OPENINFERENCE_LLM = {"openinference.span.kind": "LLM", "llm.token_count.prompt": 5,
                     "llm.token_count.completion": 7, "llm.token_count.total": 12,
                     "input.value": "what?", "output.value": "that", "llm.model_name": "m1"}
