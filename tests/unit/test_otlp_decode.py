"""OpenTelemetry records -> spans: both encodings, hostile records and spans, and the translation
held to MLflow's own OTLP ingestion (``Span.from_otel_proto`` then ``translate_span_when_storing``,
what ``SqlAlchemyStore.log_spans`` stores) on generated spans.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from consumers import otlp
from consumers.errors import DecodeError
from consumers.fields import clean
from consumers.otlp import OtlpSpan, decode_otlp, span_of
from tests.otlp_spans import (
    GENAI_CHAT,
    MLFLOW_ROOT,
    OPENINFERENCE_LLM,
    T0,
    TRACE_A,
    TRACE_B,
    otlp_json,
    request,
    span,
)

ROOT = Path(__file__).resolve().parents[2]
MAX = 1 << 20
def test_both_encodings_and_both_json_id_forms_give_the_same_spans() -> None:
    req = request(span(attrs=MLFLOW_ROOT), span(span_id=2, parent=1, attrs=GENAI_CHAT),
                  span(TRACE_B, 3, attrs=OPENINFERENCE_LLM))
    proto = decode_otlp(req.SerializeToString(), "otlp_proto", MAX)
    assert proto.rejects == []
    assert [s.span_id for s in proto.spans] == ["0000000000000001", "0000000000000002",
                                                "0000000000000003"]
    assert decode_otlp(otlp_json(req), "otlp_json", MAX) == proto
    assert decode_otlp(otlp_json(req, hex_ids=False), "otlp_json", MAX) == proto
    root, chat, llm = proto.spans
    assert root == OtlpSpan(
        trace_id="tr-" + TRACE_A.hex(), span_id="0000000000000001", parent_id=None, root=True,
        name="s", span_type="CHAIN", start_ns=T0, end_ns=T0 + 5_000_000, status="OK",
        inputs='{"question": "hi"}', outputs='"hello"', input_tokens=None, output_tokens=None,
        total_tokens=None, model=None, experiment_id="7", trace_tags=(("team", "search"),),
        has_usage=False, session_id="s-1", user_id="ann")
    assert (chat.parent_id, chat.root, chat.span_type, chat.model) == \
        ("0000000000000001", False, "CHAT_MODEL", "gpt-4o")
    assert (chat.input_tokens, chat.output_tokens, chat.total_tokens) == (12, 30, 42)
    assert chat.inputs == GENAI_CHAT["gen_ai.input.messages"]
    assert (llm.span_type, llm.inputs, llm.outputs, llm.model) == \
        ("LLM", '"what?"', '"that"', "m1")
    assert (llm.input_tokens, llm.output_tokens, llm.total_tokens) == (5, 7, 12)


def test_a_span_whose_parent_is_remote_is_a_local_root() -> None:
    remote = span(span_id=2, parent=9, flags=0x300)
    known_local = span(span_id=3, parent=9, flags=0x100)
    out = decode_otlp(request(remote, known_local).SerializeToString(), "otlp_proto", MAX)
    assert [(s.parent_id, s.root) for s in out.spans] == \
        [("0000000000000009", True), ("0000000000000009", False)]


@pytest.mark.parametrize(("bad", "reason"), [
    (span(trace=b"\x01" * 8), "trace_id: expected 16 bytes, got 8"),
    (span(trace=bytes(16)), "trace_id: is all zeros"),
    (Span(trace_id=TRACE_A, span_id=b"\x01" * 9, start_time_unix_nano=T0), "span_id: expected 8"),
    (Span(trace_id=TRACE_A, span_id=b"\x01" * 8, parent_span_id=b"\x02",
          start_time_unix_nano=T0), "parent_span_id: expected 8 bytes, got 1"),
    (span(start=0, dur_ns=0), "start_time_unix_nano: is missing"),
    (Span(trace_id=TRACE_A, span_id=b"\x01" * 8, start_time_unix_nano=T0,
          end_time_unix_nano=T0 - 1), "end_time_unix_nano: is before start_time_unix_nano"),
])
def test_a_bad_span_is_rejected_with_its_reason_and_its_record_keeps_the_others(
        bad: Span, reason: str) -> None:
    good = span(TRACE_B, 5)
    out = decode_otlp(request(good, bad, good).SerializeToString(), "otlp_proto", MAX)
    assert [s.span_id for s in out.spans] == ["0000000000000005"] * 2
    [reject] = out.rejects
    assert reason in reject.reason
    assert Span.FromString(reject.payload) == bad


@pytest.mark.parametrize(("payload", "encoding", "message"), [
    (None, "otlp_proto", "tombstone"),
    (b"x" * (MAX + 1), "otlp_proto", "exceeds max_event_bytes"),
    (b"\xff\xff\xff\xff", "otlp_proto", "not an OTLP protobuf export request"),
    (b'{"resourceSpans": []}', "otlp_proto", "set TRACE_CURATOR_OTLP_ENCODING=otlp_json"),
    (b"not json", "otlp_json", "not valid UTF-8 JSON"),
    (b'[{"traceId": "x"}]', "otlp_json", "Zipkin"),
    (b'{"resource_spans": 3}', "otlp_json", "resourceSpans is missing or not a list"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
     "otlp_json", "not an OTLP JSON export request"),
    (request(span()).SerializeToString(), "jaeger_proto", "jaeger_proto encoding is not read"),
    (request(span()).SerializeToString(), "zipkin_json", "otlp_proto or otlp_json"),
    (request(span()).SerializeToString(), "avro", "unknown encoding 'avro'"),
])
def test_a_record_that_is_not_an_export_request_is_a_decode_error_that_says_why(
        payload: bytes | None, encoding: str, message: str) -> None:
    with pytest.raises(DecodeError, match="payload") as err:
        decode_otlp(payload, encoding, MAX)
    assert message in str(err.value)


def test_an_id_that_is_neither_hex_nor_base64_is_a_span_reject() -> None:
    out = decode_otlp(b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "!!"}]}]}]}',
                      "otlp_json", MAX)
    assert out.spans == [] and out.rejects[0].reason == "trace_id: expected 16 bytes, got 0"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (the payload under 128 bytes... or more)."""
    n, size = len(payload), b""
    while True:
        size += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            break
    return bytes([number << 3 | 2]) + size + payload


def test_a_nested_attribute_past_protobufs_depth_limit_is_a_decode_error() -> None:
    v = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(200):  # AnyValue.array_value = 5, ArrayValue.values = 1
        v = _field(5, _field(1, v))
    deep = span().SerializeToString() + _field(9, _field(1, b"deep") + _field(2, v))
    record = _field(1, _field(2, _field(2, deep)))  # resource_spans > scope_spans > spans
    with pytest.raises(DecodeError, match="not an OTLP protobuf export request"):
        decode_otlp(record, "otlp_proto", MAX)


def test_a_gzip_record_is_not_mistaken_for_spans() -> None:
    with pytest.raises(DecodeError):
        decode_otlp(gzip.compress(request(span()).SerializeToString()), "otlp_proto", MAX)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300), encoding=st.sampled_from(["otlp_proto", "otlp_json"]))
def test_any_bytes_give_spans_or_a_decode_error_and_nothing_else(payload: bytes,
                                                                 encoding: str) -> None:
    try:
        out = decode_otlp(payload, encoding, MAX)
    except DecodeError:
        return
    for s in out.spans:
        assert s.trace_id.startswith("tr-") and len(s.trace_id) == 35
        assert "\x00" not in s.name


# ---------------------------------------------------------------------------------------------
# Differential: our translation against MLflow's own

_SCALARS = st.one_of(st.text(max_size=8), st.integers(-5, 10_000), st.booleans(),
                     st.floats(allow_nan=False, allow_infinity=False, width=32),
                     st.binary(max_size=4))
_JSON_TEXT = st.sampled_from(['{"model": "m-in"}', '[{"role": "user", "content": "x"}]',
                              '"quoted"', '{}', '[]', 'null', '""', '12', 'not json',
                              '{"model": 5}', '{"model": "m-nan", "x": NaN}',
                              '{"model": "big", "n": 123456789012345678901234567890}',
                              '{"\\u006dodel": "escaped"}', ' \n {"model": "spaced"}',
                              '\u00a0{"model": "nbsp"}'])
_KEYS = {
    "mlflow.spanType": st.sampled_from(['"LLM"', '"UNKNOWN"', '"CHAIN"', "RETRIEVER", '5',
                                        "NaN", None, '["x"]']),
    "mlflow.spanInputs": _JSON_TEXT, "mlflow.spanOutputs": _JSON_TEXT,
    "mlflow.chat.tokenUsage": st.sampled_from(
        ['{"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}', '{"input_tokens": -1}',
         '[]', 'x', '{"total_tokens": 9}']),
    "mlflow.llm.model": st.sampled_from(['"m-own"', "plain", '7']),
    "openinference.span.kind": st.sampled_from(["LLM", "CHAIN", "TOOL", "RETRIEVER", "AGENT",
                                                "EMBEDDING", "RERANKER", "GUARDRAIL", "x"]),
    "gen_ai.operation.name": st.sampled_from(["chat", "execute_tool", "invoke_agent",
                                              "embeddings", "text_completion", "other"]),
    "traceloop.span.kind": st.sampled_from(["workflow", "task", "agent", "tool", "llm", "x"]),
    "llm.token_count.prompt": _SCALARS, "llm.token_count.completion": _SCALARS,
    "llm.token_count.total": _SCALARS,
    "gen_ai.usage.input_tokens": _SCALARS, "gen_ai.usage.output_tokens": _SCALARS,
    "gen_ai.usage.prompt_tokens": _SCALARS, "gen_ai.usage.completion_tokens": _SCALARS,
    "llm.usage.total_tokens": _SCALARS,
    "input.value": st.one_of(_SCALARS, _JSON_TEXT), "output.value": st.one_of(_SCALARS, _JSON_TEXT),
    "gen_ai.input.messages": _JSON_TEXT, "gen_ai.output.messages": _JSON_TEXT,
    "traceloop.entity.input": _JSON_TEXT, "traceloop.entity.output": _JSON_TEXT,
    "gen_ai.prompt.0.content": st.text(max_size=5),
    "gen_ai.completion.0.content": st.text(max_size=5),
    "gen_ai.request.model": st.text(max_size=6), "gen_ai.response.model": st.text(max_size=6),
    "llm.model_name": st.text(max_size=6),
    "mlflow.traceTag.team": st.text(max_size=6),
    "user.id": st.text(max_size=4), "session.id": st.text(max_size=4),
    "other": st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3)),
}


@st.composite
def generated_spans(draw: st.DrawFn) -> Span:
    keys = draw(st.lists(st.sampled_from(sorted(_KEYS)), unique=True, max_size=8))
    attrs = {k: draw(_KEYS[k]) for k in keys}
    parent = draw(st.sampled_from([None, 7]))
    return span(span_id=draw(st.integers(1, 2**63)), parent=parent,
                code=draw(st.sampled_from([0, 1, 2])), attrs=attrs,
                dur_ns=draw(st.sampled_from([0, 1, 1_500_000])))


def mlflow_view(s: Span) -> dict[str, Any]:
    """What MLflow's OTLP ingestion stores of a span, in our fields."""
    from mlflow.entities.span import Span as MlflowSpan
    from mlflow.tracing.otel.translation import translate_span_when_storing

    ms = MlflowSpan.from_otel_proto(s)
    attrs = translate_span_when_storing(ms)["attributes"]

    def loads(key: str) -> Any:
        try:
            return json.loads(attrs[key]) if key in attrs else None
        except json.JSONDecodeError:
            return attrs[key]

    usage = loads("mlflow.chat.tokenUsage")
    has_usage = isinstance(usage, dict)  # a node with data for MLflow's token aggregation
    usage = usage if isinstance(usage, dict) else {}
    span_type = loads("mlflow.spanType")
    model = loads("mlflow.llm.model")
    return {"trace_id": ms.trace_id, "span_id": ms.span_id, "parent_id": ms.parent_id,
            "span_type": span_type if isinstance(span_type, str) else "UNKNOWN",
            "status": ms.status.status_code.value, "start_ns": ms.start_time_ns,
            "end_ns": ms.end_time_ns or None, "inputs": attrs.get("mlflow.spanInputs"),
            "outputs": attrs.get("mlflow.spanOutputs"),
            "tokens": tuple(v if isinstance(v, int) and not isinstance(v, bool) and v >= 0
                            else None for v in (usage.get("input_tokens"),
                                                usage.get("output_tokens"),
                                                usage.get("total_tokens"))),
            "model": clean(model) if isinstance(model, str) else None,  # the store holds no NUL
            "has_usage": has_usage}


def our_view(s: OtlpSpan) -> dict[str, Any]:
    return {"trace_id": s.trace_id, "span_id": s.span_id, "parent_id": s.parent_id,
            "span_type": s.span_type, "status": s.status, "start_ns": s.start_ns,
            "end_ns": s.end_ns, "inputs": s.inputs, "outputs": s.outputs,
            "tokens": (s.input_tokens, s.output_tokens, s.total_tokens), "model": s.model,
            "has_usage": s.has_usage}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=generated_spans())
def test_spans_translate_as_mlflows_own_otlp_ingestion_stores_them(s: Span) -> None:
    assert our_view(span_of(s)) == mlflow_view(s)


# Spans of MLflow's own attributes only, as its export sends them: read without the translators.
_OWN_KEYS = {k: v for k, v in _KEYS.items() if k.startswith("mlflow.") or k in (
    "user.id", "session.id")} | {
    "mlflow.traceRequestId": st.sampled_from(['"tr-1"', "tr-2", "[1", '{"a": NaN}']),
    "mlflow.experimentId": st.sampled_from(['"7"', "8", '"' + "9" * 70 + '"', "\x00x"]),
    "mlflow.traceTag.env": st.one_of(st.text(max_size=6), _JSON_TEXT),
    "mlflow.spanFunctionName": st.one_of(_SCALARS, _JSON_TEXT),
    "mlflow.spanType": st.sampled_from(['"LLM"', '"UNKNOWN"', "RETRIEVER", '5', "NaN", None,
                                        7, '""', '["x"]', '"' + "T" * 70 + '"', "null"]),
    "mlflow.llm.model": st.sampled_from(['"m-own"', "plain", '7', 7, None, '{"m": 1}']),
}


@st.composite
def own_spans(draw: st.DrawFn) -> Span:
    keys = draw(st.lists(st.sampled_from(sorted(_OWN_KEYS)), unique=True, max_size=8))
    attrs = {k: draw(_OWN_KEYS[k]) for k in keys}
    return span(span_id=draw(st.integers(1, 2**63)), parent=draw(st.sampled_from([None, 7])),
                code=draw(st.sampled_from([0, 1, 2])), attrs=attrs,
                dur_ns=draw(st.sampled_from([0, 1_500_000])))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=own_spans())
def test_a_span_of_mlflows_own_attributes_reads_as_through_the_translators(s: Span) -> None:
    """The shortcut for MLflow's own spans (only the attributes it reads, short values
    remembered) gives the span the general path gives, field for field, and MLflow's view."""
    fast = span_of(s)
    fast_again = span_of(s)  # the second time from the remembered values
    with pytest.MonkeyPatch.context() as m:
        m.setattr(otlp, "_own_attributes", lambda _s: None)
        general = span_of(s)
    assert fast == fast_again == general
    assert our_view(fast) == mlflow_view(s)


@pytest.mark.parametrize("attrs", [MLFLOW_ROOT, GENAI_CHAT, OPENINFERENCE_LLM,
                                   {"traceloop.span.kind": "tool",
                                    "gen_ai.prompt.0.content": "q",
                                    "gen_ai.completion.0.content": "a",
                                    "gen_ai.usage.prompt_tokens": 2,
                                    "gen_ai.usage.completion_tokens": 3}])
def test_each_conventions_example_translates_as_mlflow_does(attrs: dict[str, Any]) -> None:
    s = span(span_id=4, attrs=attrs)
    ours = span_of(s)
    assert our_view(ours) == mlflow_view(s)
    assert ours.span_type != "UNKNOWN"


def test_mlflows_own_spans_are_translated_without_importing_mlflow() -> None:
    """MLflow's export sends only ``mlflow.*`` attributes: the worker reads them without
    loading MLflow (about 100 MB); another convention's span loads its translators."""
    code = f"""
import sys
from consumers.otlp import decode_otlp
own = bytes.fromhex({request(span(attrs=MLFLOW_ROOT)).SerializeToString().hex()!r})
other = bytes.fromhex({request(span(attrs=GENAI_CHAT)).SerializeToString().hex()!r})
[s] = decode_otlp(own, "otlp_proto", 1 << 20).spans
print(s.span_type, "mlflow" in sys.modules)
[s] = decode_otlp(other, "otlp_proto", 1 << 20).spans
print(s.span_type, "mlflow" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=120).stdout.split("\n")
    assert out[:2] == ["CHAIN False", "CHAT_MODEL True"]


def test_the_record_json_is_what_the_collector_writes() -> None:
    """OTLP JSON as the Collector's otlp_json encoding writes it: camelCase, hex ids, int64
    times as strings."""
    doc = orjson.loads(otlp_json(request(span())))
    s = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert s["traceId"] == TRACE_A.hex() and s["startTimeUnixNano"] == str(T0)
    assert decode_otlp(orjson.dumps(doc), "otlp_json", MAX).spans[0].start_ns == T0


@pytest.mark.parametrize(("value", "stored"), [
    (AnyValue(string_value="x"), '"x"'),
    (AnyValue(string_value=""), '""'),  # an empty string is a string, not a missing value
    (AnyValue(), "null"),
    (AnyValue(int_value=0), "0"),
    (AnyValue(bool_value=False), "false"),
    (AnyValue(double_value=0.0), "0.0"),
    (AnyValue(bytes_value=b""), '"b\'\'"'),  # MLflow dumps bytes as their str
    (AnyValue(bytes_value=b"\xffa"), '"b\'\\\\xffa\'"'),
])
def test_an_attributes_default_looking_value_keeps_its_kind(value: AnyValue, stored: str) -> None:
    """``_stored`` reads a non-empty string without asking for the value's kind; an empty one
    (or none) asks, so a zero, a false or a missing value is not taken for an empty string."""
    from mlflow.tracing.utils import dump_span_attribute_value
    from mlflow.tracing.utils.otlp import _decode_otel_proto_anyvalue

    assert otlp._stored(value) == stored
    assert stored == dump_span_attribute_value(_decode_otel_proto_anyvalue(value))
