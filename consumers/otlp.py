"""OpenTelemetry records -> typed spans. Pure: no I/O, no clock, no Kafka, no SQL.

The OpenTelemetry Collector's Kafka exporter writes one ``ExportTraceServiceRequest`` per record
(spans of many traces, a nil key) or, with ``partition_traces_by_id``, one trace's spans per
record keyed by its hex trace id. It sets no content-type header, so the encoding is set per
topic: ``otlp_proto`` (protobuf, the Collector's default) or ``otlp_json`` (OTLP JSON: hex ids,
as the OTLP spec says; base64 ids, protobuf's own JSON mapping, are read too). The Collector's
Jaeger and Zipkin encodings are named and refused, record by record.

One record gives ``OtlpSpans``: the spans that decode, and one ``SpanReject`` per span that does
not (an id of the wrong length or all zeros, no start time, an end before the start), so one
bad span never costs the other spans of its record. Times are fixed64 nanoseconds: any of them
is a time the store can hold (before year 2555). A record that is not an export request at all
raises ``DecodeError``.

Spans are translated the way MLflow's own OTLP ingestion translates them before storing
(``mlflow/tracing/otel/translation``): MLflow's own ``mlflow.*`` attributes first, then the
OpenInference, GenAI semantic-convention, Traceloop and other translators. Those are MLflow's
own functions, imported on the first span that needs them: a span with only ``mlflow.*``
attributes (and ``user.id``/``session.id``) and no events, what MLflow's own export sends,
gives them nothing to read, so it is translated here without them. A differential test holds
both ways to MLflow's ingestion.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtoDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus

from consumers.errors import DecodeError
from consumers.fields import INT64_MAX, clean, new_tuple

OtlpEncoding = Literal["otlp_proto", "otlp_json"]
READ_ENCODINGS: tuple[str, ...] = ("otlp_proto", "otlp_json")
# The Collector's other trace encodings: accepted as a setting, refused record by record.
REFUSED_ENCODINGS: tuple[str, ...] = ("jaeger_proto", "jaeger_json", "zipkin_proto",
                                      "zipkin_json")
TRACE_ID_PREFIX = "tr-"  # MLflow's id of an OpenTelemetry trace: "tr-" and its 32 hex digits
# OTLP span flags: bit 8 says whether the parent's remoteness is known, bit 9 that it is remote.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_REMOTE_FLAGS = _HAS_IS_REMOTE | _IS_REMOTE
_MLFLOW_PREFIX = "mlflow."
_MLFLOW_SPAN_TYPE = "mlflow.spanType"
_MLFLOW_INPUTS = "mlflow.spanInputs"
_MLFLOW_OUTPUTS = "mlflow.spanOutputs"
_MLFLOW_USAGE = "mlflow.chat.tokenUsage"
_MLFLOW_MODEL = "mlflow.llm.model"
_MLFLOW_EXPERIMENT = "mlflow.experimentId"
_SESSION_ID = "session.id"  # OTel semantic conventions, as MLflow reads them
_CONVERSATION_ID = "gen_ai.conversation.id"
_USER_ID = "user.id"
# Keys no MLflow translator reads, which MLflow's export sets on a root span besides its own.
_NO_TRANSLATOR_READS = frozenset({_SESSION_ID, _USER_ID})
# What a span of MLflow's own attributes only is read for (besides its trace tags).
_OWN_READ = frozenset({_MLFLOW_SPAN_TYPE, _MLFLOW_INPUTS, _MLFLOW_OUTPUTS, _MLFLOW_USAGE,
                       _MLFLOW_MODEL, _MLFLOW_EXPERIMENT}) | _NO_TRANSLATOR_READS
_TRACE_TAG_PREFIX = "mlflow.traceTag."
_UNKNOWN = "UNKNOWN"
_STATUS = {ProtoStatus.STATUS_CODE_OK: "OK", ProtoStatus.STATUS_CODE_ERROR: "ERROR"}
_HEX_ID_FIELDS = ("traceId", "spanId", "parentSpanId")
_MAX_REJECT_REASON = 300
_JSON_OPENERS = frozenset('{["')
MAX_TAG_KEY_CHARS = 250
MAX_TAG_VALUE_CHARS = 8000


class OtlpSpan(NamedTuple):
    """One span, as the store buffers it until its trace is assembled.

    ``root`` is true for a span without a parent, or whose parent is remote (span flags): the
    local root of a trace that began in another service. ``inputs``/``outputs`` are JSON text
    (a root's are the trace's request and response). Token counts are the span's own.
    """

    trace_id: str
    span_id: str
    parent_id: str | None
    root: bool
    name: str
    span_type: str
    start_ns: int
    end_ns: int | None
    status: str  # "OK" | "ERROR" | "UNSET"
    inputs: str | None
    outputs: str | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    model: str | None
    experiment_id: str | None
    trace_tags: tuple[tuple[str, str], ...]
    has_usage: bool  # token usage recorded (counts a trace's usage once down its span tree)
    session_id: str | None
    user_id: str | None


class SpanReject(NamedTuple):
    """A span of a record that could not be read, with the reason and its own bytes."""

    trace_id: str | None
    span_id: str | None
    reason: str
    payload: bytes


class OtlpSpans(NamedTuple):
    spans: list[OtlpSpan]
    rejects: list[SpanReject]


# ---------------------------------------------------------------------------------------------
# Records


def decode_otlp(value: bytes | None, encoding: str, max_bytes: int) -> OtlpSpans:
    """A record's spans, or ``DecodeError`` if the record is not an export request."""
    if value is None:
        raise DecodeError("empty record (a tombstone); expected an OTLP export request",
                          "payload")
    if len(value) > max_bytes:
        raise DecodeError(f"{len(value)} bytes exceeds max_event_bytes={max_bytes}", "payload")
    if encoding in REFUSED_ENCODINGS:
        raise DecodeError(f"the {encoding} encoding is not read; set the Collector's Kafka "
                          "exporter and TRACE_CURATOR_OTLP_ENCODING to otlp_proto or "
                          "otlp_json", "payload")
    if encoding == "otlp_json":
        request = _parse_json(value)
    elif encoding == "otlp_proto":
        request = _parse_proto(value)
    else:
        raise DecodeError(f"unknown encoding {encoding!r}; expected one of "
                          f"{', '.join(READ_ENCODINGS)}", "payload")
    return spans_of(request)


def _parse_proto(value: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(value)
    except (ProtoDecodeError, RecursionError, ValueError) as exc:
        hint = "; it looks like JSON: set TRACE_CURATOR_OTLP_ENCODING=otlp_json" \
            if value[:1] in (b"{", b"[") else ""
        raise DecodeError(f"not an OTLP protobuf export request ({exc}){hint}",
                          "payload") from None
    if not request.resource_spans and value:
        # Protobuf reads many byte strings as a message of unknown fields only.
        hint = "; it looks like JSON: set TRACE_CURATOR_OTLP_ENCODING=otlp_json" \
            if value.lstrip()[:1] in (b"{", b"[") else ""
        raise DecodeError(f"no resourceSpans in the record{hint}", "payload")
    return request


def _parse_json(value: bytes) -> ExportTraceServiceRequest:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid UTF-8 JSON ({exc})", "payload") from None
    if isinstance(doc, list):
        raise DecodeError("a JSON array (Zipkin's JSON?); expected an OTLP export request "
                          "object", "payload")
    if not isinstance(doc, dict):
        raise DecodeError(f"expected a JSON object, got {type(doc).__name__}", "payload")
    if not isinstance(doc.get("resourceSpans", doc.get("resource_spans")), list):
        raise DecodeError("resourceSpans is missing or not a list", "payload")
    _ids_to_base64(doc)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
        raise DecodeError(f"not an OTLP JSON export request ({_short(str(exc))})",
                          "payload") from None
    return request


def _ids_to_base64(doc: dict[str, Any]) -> None:
    """OTLP JSON ids are hex; protobuf's JSON mapping of ``bytes`` is base64. Hex ids of the
    right length are converted; anything else is left for protobuf (base64, or its error)."""
    for rs in _dicts(doc.get("resourceSpans", doc.get("resource_spans"))):
        for ss in _dicts(rs.get("scopeSpans", rs.get("scope_spans"))):
            for span in _dicts(ss.get("spans")):
                for key in _HEX_ID_FIELDS:
                    v = span.get(key)
                    if isinstance(v, str) and len(v) in (16, 32) and _is_hex(v):
                        span[key] = base64.b64encode(bytes.fromhex(v)).decode("ascii")


def _dicts(v: Any) -> Iterable[dict[str, Any]]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def _is_hex(v: str) -> bool:
    try:
        bytes.fromhex(v)
    except ValueError:
        return False
    return True


def spans_of(request: ExportTraceServiceRequest) -> OtlpSpans:
    """Every span of an export request, each decoded on its own."""
    spans: list[OtlpSpan] = []
    rejects: list[SpanReject] = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                try:
                    spans.append(span_of(s))
                except DecodeError as exc:
                    rejects.append(SpanReject(_hex_or_none(s.trace_id, 16),
                                              _hex_or_none(s.span_id, 8), str(exc),
                                              s.SerializeToString()))
    return OtlpSpans(spans, rejects)


def _hex_or_none(b: bytes, n: int) -> str | None:
    return b.hex() if len(b) == n else None


# ---------------------------------------------------------------------------------------------
# Spans


def span_of(s: ProtoSpan) -> OtlpSpan:
    """One span, translated as MLflow's OTLP ingestion stores it, or ``DecodeError``."""
    raw_trace, raw_span, raw_parent = s.trace_id, s.span_id, s.parent_span_id
    trace_id = raw_trace.hex() if len(raw_trace) == 16 and raw_trace != _ZERO_TRACE_ID \
        else _id(raw_trace, 16, "trace_id")
    span_id = raw_span.hex() if len(raw_span) == 8 and raw_span != _ZERO_SPAN_ID \
        else _id(raw_span, 8, "span_id")
    if not raw_parent:
        parent_id = None
    elif len(raw_parent) == 8 and raw_parent != _ZERO_SPAN_ID:
        parent_id = raw_parent.hex()
    else:
        parent_id = _id(raw_parent, 8, "parent_span_id")
    flags = s.flags
    start_ns = s.start_time_unix_nano
    end_ns = s.end_time_unix_nano or None
    if not start_ns:
        raise DecodeError("is missing (0)", "start_time_unix_nano")
    if end_ns is not None and end_ns < start_ns:
        raise DecodeError("is before start_time_unix_nano", "end_time_unix_nano")
    own = None if s.events else _own_attributes(s)
    if own is None:
        attrs = _attributes(s)
        t = _translated(attrs, s, _translators())
        tagged = True
    else:
        attrs, tagged = own
        t = _own_translated(attrs)
    session = attrs.get(_SESSION_ID) or attrs.get(_CONVERSATION_ID)
    user = attrs.get(_USER_ID)
    experiment = attrs.get(_MLFLOW_EXPERIMENT)
    return new_tuple(OtlpSpan, (  # OtlpSpan(...) without the constructor's frame (hot path)
        TRACE_ID_PREFIX + trace_id, span_id, parent_id,
        parent_id is None or flags & _REMOTE_FLAGS == _REMOTE_FLAGS, clean(s.name),
        t.span_type, start_ns, end_ns, _STATUS.get(s.status.code, "UNSET"), t.inputs,
        t.outputs, t.input_tokens, t.output_tokens, t.total_tokens, t.model,
        _text(experiment) if experiment is not None else None,
        _trace_tags(attrs) if tagged else (),
        t.has_usage, _bounded_text(session) if session is not None else None,
        _bounded_text(user) if user is not None else None))


def _bounded_text(raw: str | None) -> str | None:
    v = _text(raw)
    return clean(v) if v and len(v) <= MAX_TAG_VALUE_CHARS else None


def _trace_tags(attrs: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``mlflow.traceTag.<key>`` attributes (MLflow's export puts a trace's tags on its root
    span); like MLflow, a tag with an empty or over-long key or value is skipped."""
    tags = []
    for k, raw in attrs.items():
        if k.startswith(_TRACE_TAG_PREFIX):
            key = clean(k[len(_TRACE_TAG_PREFIX):])
            value = _text(raw)
            if 0 < len(key) <= MAX_TAG_KEY_CHARS and value is not None \
                    and len(value) <= MAX_TAG_VALUE_CHARS:
                tags.append((key, clean(value)))
    return tuple(sorted(tags))


# Short attribute values repeat (span types, model names): their stored form and text are
# remembered, up to _MEMO_ENTRIES of each (then forgotten at once: hostile values cannot grow it).
_MEMO_CHARS = 64
_MEMO_ENTRIES = 4096
_stored_memo: dict[str, str] = {}
_json_str_memo: dict[str, str | None] = {}
_MISSING = object()
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)


def _id(b: bytes, n: int, field: str) -> str:
    if len(b) != n:
        raise DecodeError(f"expected {n} bytes, got {len(b)}", field)
    if not any(b):
        raise DecodeError("is all zeros (an invalid id)", field)
    return b.hex()


def any_value(v: AnyValue) -> Any:
    """An attribute's value as Python: what MLflow's ``_decode_otel_proto_anyvalue`` gives."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def _attributes(s: ProtoSpan) -> dict[str, str]:
    """The span's attributes in MLflow's stored form: each value JSON text, once (``_stored``)."""
    return {kv.key: _stored(kv.value) for kv in s.attributes}


def _own_attributes(s: ProtoSpan) -> tuple[dict[str, str], bool] | None:
    """For a span with only MLflow's own ``mlflow.*`` attributes (and ``user.id``/``session.id``),
    what MLflow's export sends: the stored form of the attributes read here (``_OWN_READ``,
    trace tags), the others skipped, and whether a trace tag is among them. None for any other
    span: the translators read it whole."""
    out: dict[str, str] = {}
    tagged = False
    for kv in s.attributes:
        k = kv.key
        if k in _OWN_READ:
            out[k] = _stored(kv.value)
        elif k.startswith(_TRACE_TAG_PREFIX):
            out[k] = _stored(kv.value)
            tagged = True
        elif not k.startswith(_MLFLOW_PREFIX):
            return None
    return out, tagged


def _stored(value: AnyValue) -> str:
    """An attribute's value as MLflow stores it: JSON text.

    MLflow dumps every decoded value to JSON (``dump_span_attribute_value``) and, on storing,
    strips one layer where a string value was itself JSON text of a string, object or array
    (``sanitize_attributes``): MLflow's own attributes are JSON text already."""
    v: Any = value.string_value  # a non-empty one is the value: no WhichOneof (hot path)
    if not v and value.WhichOneof("value") != "string_value":
        v = any_value(value)
    if type(v) is str and len(v) <= _MEMO_CHARS:
        stored = _stored_memo.get(v)
        if stored is None:
            if len(_stored_memo) >= _MEMO_ENTRIES:
                _stored_memo.clear()
            stored = _stored_memo[v] = _stored_value(v)
        return stored
    return _stored_value(v)


def _stored_value(v: Any) -> str:
    # Only text that opens like a string, object or array can be one (JSON allows leading
    # whitespace); any other value is dumped without parsing it first.
    if isinstance(v, str) and v.lstrip()[:1] in _JSON_OPENERS:
        try:
            inner = _loads(v)
        except ValueError:
            pass
        else:
            if isinstance(inner, (str, dict, list)):
                return v
    return _dump(v)


def _loads(text: str) -> Any:
    """JSON text as Python's ``json`` reads it (as MLflow does: NaN, big ints and lone
    surrogates included), fast through orjson first; ``ValueError`` if it is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deep") from None


def _dump(v: Any) -> str:
    """``json.dumps(v, ensure_ascii=False)`` as MLflow dumps attribute values
    (``dump_span_attribute_value``: a bytes value becomes the text of its ``str``, ``"b'..'"``)."""
    try:
        return json.dumps(v, ensure_ascii=False, default=_bytes_text)
    except (ValueError, TypeError, RecursionError):
        return json.dumps(str(v), ensure_ascii=False)


def _bytes_text(v: Any) -> Any:
    if isinstance(v, bytes):
        return str(v)  # as MLflow's TraceJSONEncoder, whose json.JSONEncoder refuses bytes
    raise TypeError(type(v).__name__)


def _text(raw: str | None) -> str | None:
    """A stored attribute's string value (JSON text of a string), or the text itself."""
    if raw is None:
        return None
    v = _json_str(raw)
    return raw if v is None else v


def _json_str(raw: str) -> str | None:
    """The string that a stored attribute's JSON text holds; None if it holds another value or
    is not JSON. Short texts are remembered (``_MEMO_CHARS``)."""
    if len(raw) > _MEMO_CHARS:
        return _json_str_of(raw)
    v = _json_str_memo.get(raw, _MISSING)
    if v is _MISSING:
        if len(_json_str_memo) >= _MEMO_ENTRIES:
            _json_str_memo.clear()
        v = _json_str_memo[raw] = _json_str_of(raw)
    return v  # type: ignore[return-value]


def _json_str_of(raw: str) -> str | None:
    try:
        v = _loads(raw)
    except ValueError:
        return None
    return v if isinstance(v, str) else None


def _span_type(attrs: dict[str, str], tr: _Translators | _OwnOnly) -> str:
    """MLflow's own span type, else (none, ``UNKNOWN`` or JSON null) the translators'. Like
    MLflow, a type that is JSON of another kind is kept as it is, and reads as ``UNKNOWN``."""
    raw = attrs.get(_MLFLOW_SPAN_TYPE)
    own = _json_str(raw) if raw is not None else None
    if own is not None and own != _UNKNOWN:
        return own
    if own is None and raw is not None and raw.strip() != "null":
        return _UNKNOWN
    return tr.span_type(attrs) or _UNKNOWN


class _Translated(NamedTuple):
    span_type: str
    inputs: str | None
    outputs: str | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    model: str | None
    has_usage: bool


def _translated(attrs: dict[str, str], s: ProtoSpan,
                tr: _Translators | _OwnOnly) -> _Translated:
    """What ``translate_span_when_storing`` sets, MLflow's own attributes first, then the
    translators' (``_OWN_ONLY`` for a span of MLflow's own attributes only)."""
    span_type = _span_type(attrs, tr)
    inputs = attrs.get(_MLFLOW_INPUTS)
    if inputs is None:
        inputs = tr.value(attrs, s, output=False)
    outputs = attrs.get(_MLFLOW_OUTPUTS)
    if outputs is None:
        outputs = tr.value(attrs, s, output=True)
    usage_raw = attrs.get(_MLFLOW_USAGE)
    usage = _usage(usage_raw) if usage_raw is not None else tr.usage(attrs)
    has_usage = usage is not None
    usage = usage or {}
    model = attrs.get(_MLFLOW_MODEL)
    model_name = _json_str(model) if model is not None else tr.model(attrs, inputs, outputs)
    return _Translated(
        span_type, inputs, outputs,
        _count(usage.get("input_tokens")), _count(usage.get("output_tokens")),
        _count(usage.get("total_tokens")),
        clean(model_name) if isinstance(model_name, str) else None, has_usage)


def _own_translated(attrs: dict[str, str]) -> _Translated:
    """``_translated`` of a span of MLflow's own attributes only (``_OWN_ONLY``), without the
    translator calls that find nothing in it."""
    inputs = attrs.get(_MLFLOW_INPUTS)
    outputs = attrs.get(_MLFLOW_OUTPUTS)
    raw = attrs.get(_MLFLOW_USAGE)
    usage = _usage(raw) if raw is not None else None
    raw = attrs.get(_MLFLOW_MODEL)
    model = _json_str(raw) if raw is not None else _OWN_ONLY.model(attrs, inputs, outputs)
    return new_tuple(_Translated, (
        _span_type(attrs, _OWN_ONLY), inputs, outputs,
        _count(usage.get("input_tokens")) if usage else None,
        _count(usage.get("output_tokens")) if usage else None,
        _count(usage.get("total_tokens")) if usage else None,
        clean(model) if isinstance(model, str) else None, usage is not None))


def _usage(raw: str) -> Mapping[str, Any] | None:
    try:
        v = _loads(raw)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def _count(v: Any) -> int | None:
    """A token count the store can hold (a non-negative int64), else None."""
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return v if 0 <= v <= INT64_MAX else None


def _short(text: str) -> str:
    return text if len(text) <= _MAX_REJECT_REASON else text[:_MAX_REJECT_REASON] + "..."


# ---------------------------------------------------------------------------------------------
# MLflow's translators, imported once a span needs them


class _OwnOnly:
    """What MLflow's translators find in a span with only ``mlflow.*`` attributes and no events:
    nothing, except a model named in the inputs or outputs (``_get_model_name``'s fallback)."""

    def span_type(self, attrs: dict[str, str]) -> str | None:
        return None

    def value(self, attrs: dict[str, str], s: ProtoSpan, *, output: bool) -> str | None:
        return None

    def usage(self, attrs: dict[str, str]) -> Mapping[str, Any] | None:
        return None

    def model(self, attrs: dict[str, str], inputs: str | None, outputs: str | None) -> Any:
        for text in (inputs, outputs):
            # A "model" key is in the text as such, or behind a \u escape: else nothing to find.
            if text and ('"model"' in text or "\\u" in text):
                try:
                    v = _loads(text)
                except ValueError:
                    continue
                if isinstance(v, dict) and (model := v.get("model")):
                    return model if isinstance(model, str) else None
        return None


_OWN_ONLY = _OwnOnly()


class _Translators:
    """MLflow's own translation functions over the stored attribute form."""

    def __init__(self) -> None:
        from mlflow.tracing.otel import translation as t

        self._span_type: Callable[[dict[str, Any]], str | None] = \
            t.translate_span_type_from_otel
        self._input: Callable[..., Any] = t._get_input_value
        self._output: Callable[..., Any] = t._get_output_value
        self._usage: Callable[[dict[str, Any]], dict[str, Any] | None] = t._get_token_usage
        self._model: Callable[[dict[str, Any]], str | None] = t._get_model_name

    def span_type(self, attrs: dict[str, str]) -> str | None:
        try:
            return self._span_type(dict(attrs))
        except Exception:  # noqa: BLE001 - MLflow's translator refusing hostile attributes
            return None

    def value(self, attrs: dict[str, str], s: ProtoSpan, *, output: bool) -> str | None:
        events = [{"name": e.name, "time_unix_nano": e.time_unix_nano,
                   "attributes": {kv.key: any_value(kv.value) for kv in e.attributes}}
                  for e in s.events]
        try:
            v = (self._output if output else self._input)(dict(attrs), events)
        except Exception:  # noqa: BLE001 - as above
            return None
        if v is None or v == "":
            return None
        return v if isinstance(v, str) else _dump(v)

    def usage(self, attrs: dict[str, str]) -> Mapping[str, Any] | None:
        try:
            return self._usage(dict(attrs)) or None
        except Exception:  # noqa: BLE001 - as above
            return None

    def model(self, attrs: dict[str, str], inputs: str | None, outputs: str | None) -> Any:
        a = dict(attrs)
        if inputs is not None:
            a[_MLFLOW_INPUTS] = inputs
        if outputs is not None:
            a[_MLFLOW_OUTPUTS] = outputs
        try:
            return self._model(a)
        except Exception:  # noqa: BLE001 - as above
            return None


_loaded: list[_Translators] = []


def _translators() -> _Translators:
    if not _loaded:
        _loaded.append(_Translators())
    return _loaded[0]

