"""Wire bytes -> typed events. Pure: no I/O, no clock, no Kafka, no SQL.

Trace topic values are UTF-8 JSON in one of three forms (README, Event formats): MLflow trace JSON
(``Trace.to_json()``), trace info JSON (``TraceInfo.to_dict()``) or the flat trace row; assessment
values are ``Assessment.to_dictionary()`` JSON. Any other input raises ``DecodeError`` naming the
field and the problem, and nothing else, whatever the bytes (a Hypothesis test holds them to it).
``request``/``response`` stay the JSON text MLflow produced: the hot path never re-serializes them.
Every field is read by ``consumers.fields``, which holds it to what the store can write, on SQLite
and PostgreSQL alike (times in years 1970..9999, counts within int64, bounded JSON depth, no NUL).

Trace JSON takes a fast path first (``decode_trace_fast``): msgspec decodes the record into typed
structs of just the fields the event needs, checking the rest as JSON without building it, and
each check of the reference path (``decode_trace_reference``: orjson, then the field readers) is
a type or a bound of those structs. Anything else (a failed check, a NUL, a float or a span time
past int64 where a value is read, bytes that are not UTF-8, JSON msgspec refuses or nests past
Python's recursion limit) goes to the reference path, which decides and names the error: when
the fast path returns an event, the reference path returns an equal one (tests hold the two to
it). One difference is known: a number beyond a double's range (``1e400``, a 400-digit int) in
a field neither path reads is refused by orjson but skipped by msgspec, so that record decodes.
"""

from __future__ import annotations

import math
import traceback as tb
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
import orjson

from consumers.errors import DecodeError
from consumers.events import (
    TRACE_STATUSES,
    AssessmentEvent,
    DeadLetter,
    Provenance,
    RawRecord,
    SpanSummary,
    TraceEvent,
    TraceStatus,
)
from consumers.fields import (
    INT64_MAX,
    MAX_ID_CHARS,
    MAX_TIME_MS,
    MAX_TIME_NS,
    clean,
    dump_json,
    id_field,
    int_field,
    iso_time_ms,
    json_text,
    load_object,
    out_of_range,
    str_field,
    str_map_field,
    time_ms_field,
)

TOKEN_USAGE_KEY = "mlflow.trace.tokenUsage"  # noqa: S105 - a metadata key, not a secret
TRACE_NAME_TAG = "mlflow.traceName"
_SPAN_STATUS: dict[str | None, str] = {"STATUS_CODE_OK": "OK", "STATUS_CODE_ERROR": "ERROR",
                "STATUS_CODE_UNSET": "UNSET", "OK": "OK", "ERROR": "ERROR", "UNSET": "UNSET"}
_YES = frozenset({"yes", "true", "pass", "passed"})
_NO = frozenset({"no", "false", "fail", "failed"})
_TRACEBACK_FRAMES = 30


# ---------------------------------------------------------------------------------------------
# Values of the trace forms


def parse_json_text(text: str | None) -> Any:
    """A stored request/response back as a value: its JSON if it is JSON, else the text."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _token_usage(metadata: Mapping[str, str]) -> tuple[int | None, int | None, int | None]:
    raw = metadata.get(TOKEN_USAGE_KEY)
    if not raw:
        return None, None, None
    try:
        usage = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DecodeError("not valid JSON", f"metadata.{TOKEN_USAGE_KEY}") from None
    if not isinstance(usage, dict):
        raise DecodeError("expected an object", f"metadata.{TOKEN_USAGE_KEY}")
    path = f"metadata.{TOKEN_USAGE_KEY}."
    inp = int_field(usage, "input_tokens", path, required=False)
    out = int_field(usage, "output_tokens", path, required=False)
    total = int_field(usage, "total_tokens", path, required=False)
    if total is None and (inp is not None or out is not None):
        total = (inp or 0) + (out or 0)
        if total > INT64_MAX:
            raise out_of_range(f"input_tokens + output_tokens = {total}", INT64_MAX,
                               f"{path}total_tokens")
    return inp, out, total


def _status(v: Any, field: str) -> TraceStatus:
    if not isinstance(v, str) or v not in TRACE_STATUSES:
        raise DecodeError(f"expected one of OK, ERROR, IN_PROGRESS, got {v!r:.40}", field)
    return v  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Spans


def _mlflow_spans(spans: Any) -> tuple[tuple[SpanSummary, ...], dict[str, Any] | None]:
    """Span dicts as ``Span.to_dict()`` makes them. Returns summaries and the root span."""
    if not isinstance(spans, list):
        raise DecodeError(f"expected a list, got {type(spans).__name__}", "data.spans")
    out: list[SpanSummary] = []
    root: dict[str, Any] | None = None
    for i, s in enumerate(spans):
        # Fast path for well-formed spans (exact int nanos, str name, dict attributes); anything
        # else goes through the field helpers, which raise errors that name the field.
        if type(s) is not dict:
            raise DecodeError(f"expected an object, got {type(s).__name__}", f"data.spans[{i}]")
        attrs = s.get("attributes") or {}
        start, end, name = s.get("start_time_unix_nano"), s.get("end_time_unix_nano"), s.get("name")
        if not (type(attrs) is dict and type(start) is int and 0 <= start <= MAX_TIME_NS
                and (end is None or (type(end) is int and 0 <= end <= MAX_TIME_NS))
                and (name is None or type(name) is str)):
            start, end, name = _slow_span_fields(s, i)
        if root is None and s.get("parent_span_id") is None:
            root = s
        if end is None:
            continue  # still running: no duration yet
        if end < start:
            raise DecodeError("end_time_unix_nano is before start_time_unix_nano",
                              f"data.spans[{i}]")
        status = s.get("status")
        code = status.get("code") if type(status) is dict else status
        out.append(SpanSummary(
            clean(name) if name else "",
            _span_type(attrs.get("mlflow.spanType")),
            (end - start) / 1e6,
            _SPAN_STATUS.get(code, "UNSET") if type(code) is str else "UNSET"))
    return tuple(out), root


def _span_type(v: Any) -> str:
    """``mlflow.spanType`` as MLflow writes it, a JSON string (``'"LLM"'``), unquoted."""
    if type(v) is not str or not v:
        return "UNKNOWN"
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1] or "UNKNOWN"
    return v


def _slow_span_fields(s: Mapping[str, Any], i: int) -> tuple[int, int | None, str | None]:
    path = f"data.spans[{i}]."
    if not isinstance(s.get("attributes") or {}, dict):
        raise DecodeError("expected an object", f"{path}attributes")
    start = int_field(s, "start_time_unix_nano", path, required=True, maximum=MAX_TIME_NS)
    assert start is not None
    return (start, int_field(s, "end_time_unix_nano", path, required=False, maximum=MAX_TIME_NS),
            str_field(s, "name", path, required=False))


def _flat_spans(spans: Any) -> tuple[SpanSummary, ...]:
    if spans is None:
        return ()
    if not isinstance(spans, list):
        raise DecodeError(f"expected a list, got {type(spans).__name__}", "spans")
    out: list[SpanSummary] = []
    for i, s in enumerate(spans):
        path = f"spans[{i}]."
        if not isinstance(s, dict):
            raise DecodeError(f"expected an object, got {type(s).__name__}", path[:-1])
        start = int_field(s, "start_time_ns", path, required=True, maximum=MAX_TIME_NS)
        end = int_field(s, "end_time_ns", path, required=False, maximum=MAX_TIME_NS)
        if end is None:
            continue
        assert start is not None
        if end < start:
            raise DecodeError("end_time_ns is before start_time_ns", path[:-1])
        status = s.get("status")
        out.append(SpanSummary(
            name=str_field(s, "name", path, required=False) or "",
            span_type=str_field(s, "span_type", path, required=False) or "UNKNOWN",
            duration_ms=(end - start) / 1e6,
            status=_SPAN_STATUS.get(status, "UNSET") if isinstance(status, str) else "UNSET",
        ))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Trace forms


def _from_trace_info(info: Mapping[str, Any], path: str, prov: Provenance,
                     spans: tuple[SpanSummary, ...], root: Mapping[str, Any] | None,
                     source_format: str) -> TraceEvent:
    trace_id = id_field(info, "trace_id", path)
    status = _status(info.get("state"), f"{path}state")
    loc = info.get("trace_location")
    experiment_id: str | None = None
    if loc is not None:
        if not isinstance(loc, dict):
            raise DecodeError("expected an object", f"{path}trace_location")
        exp = loc.get("mlflow_experiment")
        if isinstance(exp, dict):
            experiment_id = str_field(exp, "experiment_id",
                                      f"{path}trace_location.mlflow_experiment.",
                                      required=False, max_chars=MAX_ID_CHARS)
    tags = str_map_field(info, "tags", path)
    metadata = str_map_field(info, "trace_metadata", path)
    timestamp_ms = time_ms_field(info, "request_time", path, required=True)
    assert timestamp_ms is not None
    execution_ms = int_field(info, "execution_duration_ms", path, required=False)
    request = response = None
    if root is not None:
        attrs = root.get("attributes") or {}
        request = attrs.get("mlflow.spanInputs") if isinstance(attrs, dict) else None
        response = attrs.get("mlflow.spanOutputs") if isinstance(attrs, dict) else None
        # Text columns: SQLite would keep a NUL that PostgreSQL refuses.
        request = clean(request) if isinstance(request, str) else None
        response = clean(response) if isinstance(response, str) else None
    if request is None:
        request = metadata.get("mlflow.traceInputs") or str_field(info, "request_preview", path,
                                                                  required=False)
    if response is None:
        response = metadata.get("mlflow.traceOutputs") or str_field(
            info, "response_preview", path, required=False)
    name = tags.get(TRACE_NAME_TAG)
    if name is None and root is not None and isinstance(root.get("name"), str):
        name = root["name"]
    name = clean(name) if name is not None else None
    inp, out, total = _token_usage(metadata)
    return TraceEvent(trace_id=trace_id, experiment_id=experiment_id, name=name, status=status,
                      timestamp_ms=timestamp_ms, execution_time_ms=execution_ms, request=request,
                      response=response, tags=tags, metadata=metadata, input_tokens=inp,
                      output_tokens=out, total_tokens=total, spans=spans,
                      source_format=source_format, provenance=prov)


def _from_trace_json(obj: Mapping[str, Any], prov: Provenance) -> TraceEvent:
    info, data = obj["info"], obj["data"]
    if not isinstance(info, dict):
        raise DecodeError(f"expected an object, got {type(info).__name__}", "info")
    if not isinstance(data, dict):
        raise DecodeError(f"expected an object, got {type(data).__name__}", "data")
    spans, root = _mlflow_spans(data.get("spans") or [])
    return _from_trace_info(info, "info.", prov, spans, root, "trace")


def _from_flat(obj: Mapping[str, Any], prov: Provenance) -> TraceEvent:
    trace_id = id_field(obj, "trace_id")
    status = _status(obj.get("status"), "status")
    timestamp_ms = int_field(obj, "timestamp_ms", "", required=True, maximum=MAX_TIME_MS)
    assert timestamp_ms is not None
    execution_ms = int_field(obj, "execution_time_ms", "", required=False)
    tags = str_map_field(obj, "tags", "")
    metadata = str_map_field(obj, "metadata", "")
    experiment_id: str | None = None
    if obj.get("experiment_id") is not None:
        exp = obj["experiment_id"]
        if isinstance(exp, int) and not isinstance(exp, bool):
            exp = str(exp)
        experiment_id = id_field({"experiment_id": exp}, "experiment_id")
    name = str_field(obj, "name", "", required=False) or tags.get(TRACE_NAME_TAG)
    name = clean(name) if name is not None else None
    inp, out, total = _token_usage(metadata)
    return TraceEvent(trace_id=trace_id, experiment_id=experiment_id, name=name, status=status,
                      timestamp_ms=timestamp_ms, execution_time_ms=execution_ms,
                      request=json_text(obj.get("request"), "request"),
                      response=json_text(obj.get("response"), "response"), tags=tags,
                      metadata=metadata,
                      input_tokens=inp, output_tokens=out, total_tokens=total,
                      spans=_flat_spans(obj.get("spans")), source_format="flat", provenance=prov)


# ---------------------------------------------------------------------------------------------
# The fast path: a well-formed Trace.to_json() record, through msgspec into typed structs of
# just the fields the event needs. Each check of the reference path is a type or a bound here,
# checked by msgspec in C; a record that fails one goes to the reference path, which decides.
# The _fast_* functions mirror the reference readers and raise (anything) where those would
# raise, clean a text or read a value in another way.

_Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
_TimeMs = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_MS)]
# Span times in int64 (to year 2262): orjson reads those exactly too. Larger ones, which orjson
# reads as floats above 2**64, go to the reference path, which has the rule for them.
_TimeNs = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]


class _Attributes(msgspec.Struct, frozen=True, gc=False):
    """The span attributes read; the others are skipped unparsed. MLflow writes each as JSON
    text in a string."""

    span_type: str | None = msgspec.field(default=None, name="mlflow.spanType")
    inputs: str | None = msgspec.field(default=None, name="mlflow.spanInputs")
    outputs: str | None = msgspec.field(default=None, name="mlflow.spanOutputs")


class _Status(msgspec.Struct, frozen=True, gc=False):
    code: str | None = None


_NO_ATTRIBUTES, _NO_STATUS = _Attributes(), _Status()


class _Span(msgspec.Struct, gc=False):
    start_time_unix_nano: _TimeNs
    end_time_unix_nano: _TimeNs | None = None
    name: str | None = None
    parent_span_id: Any = None  # only whether it is null counts
    status: _Status = _NO_STATUS
    attributes: _Attributes = _NO_ATTRIBUTES


class _Data(msgspec.Struct, gc=False):
    spans: list[_Span] | None = None


class _Experiment(msgspec.Struct, gc=False):
    experiment_id: Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)] | None = None


class _Location(msgspec.Struct, gc=False):
    mlflow_experiment: _Experiment | None = None


class _Info(msgspec.Struct, gc=False):
    trace_id: _Id
    state: Literal["OK", "ERROR", "IN_PROGRESS"]
    request_time: _TimeMs | str
    trace_location: _Location | None = None
    tags: dict[str, str] | None = None
    trace_metadata: dict[str, str] | None = None
    execution_duration_ms: _Count | None = None
    request_preview: msgspec.Raw = msgspec.Raw()  # read only when nothing else gives the text
    response_preview: msgspec.Raw = msgspec.Raw()


class _TraceDoc(msgspec.Struct, gc=False):
    info: _Info
    data: _Data


class _TokenUsage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    input_tokens: _Count | None = None
    output_tokens: _Count | None = None
    total_tokens: _Count | None = None


_TRACE_DOC = msgspec.json.Decoder(_TraceDoc)
_TOKEN_USAGE = msgspec.json.Decoder(_TokenUsage)
_JSON_STR = msgspec.json.Decoder(str | None)
_new = tuple.__new__  # a NamedTuple from a tuple, past the Python-level __new__ of each
# mlflow.spanType as MLflow writes it (a JSON string) -> the type; others go through _span_type.
_SPAN_TYPES: dict[str | None, str] = {f'"{t}"': t for t in (
    "LLM", "CHAIN", "AGENT", "TOOL", "CHAT_MODEL", "RETRIEVER", "PARSER", "EMBEDDING",
    "RERANKER", "MEMORY", "UNKNOWN", "WORKFLOW", "TASK", "GUARDRAIL", "EVALUATOR")}


def _preview(raw: msgspec.Raw) -> str | None:
    """A preview, if the record has one: a str or null, or ValidationError."""
    return _JSON_STR.decode(raw) if raw else None


def _fast_spans(spans: list[_Span]) -> tuple[tuple[SpanSummary, ...], _Span | None]:
    """``_mlflow_spans`` on typed spans; ValueError where that raises a DecodeError or cleans a
    name."""
    out: list[SpanSummary] = []
    root: _Span | None = None
    for s in spans:
        name = s.name or ""
        if "\x00" in name:
            raise ValueError("a NUL")
        if root is None and s.parent_span_id is None:
            root = s
        end = s.end_time_unix_nano
        if end is None:
            continue  # still running: no duration yet
        start = s.start_time_unix_nano
        if end < start:
            raise ValueError("the reference path names the error")
        span_type = s.attributes.span_type
        out.append(_new(SpanSummary, (name, _SPAN_TYPES.get(span_type) or _span_type(span_type),
                                      (end - start) / 1e6,
                                      _SPAN_STATUS.get(s.status.code, "UNSET"))))
    return tuple(out), root


def _fast_token_usage(raw: str | None) -> tuple[int | None, int | None, int | None]:
    """``_token_usage``, for MLflow's three keys only; ValueError where that raises."""
    if not raw:
        return None, None, None
    usage = _TOKEN_USAGE.decode(raw)
    inp, out, total = usage.input_tokens, usage.output_tokens, usage.total_tokens
    if total is None and (inp is not None or out is not None):
        total = (inp or 0) + (out or 0)
        if total > INT64_MAX:
            raise ValueError("the reference path names the error")
    return inp, out, total


def _fast_event(doc: _TraceDoc, prov: Provenance) -> TraceEvent:
    """``_from_trace_json`` on a typed document; ValueError (or a msgspec error) where that
    raises a DecodeError, cleans a text or reads a value another way."""
    info = doc.info
    spans, root = _fast_spans(doc.data.spans or [])
    tags, metadata = info.tags or {}, info.trace_metadata or {}
    for text in metadata.values():
        if "\x00" in text:
            raise ValueError("a NUL")  # the reference path cleans it
    for text in tags.values():
        if "\x00" in text:
            raise ValueError("a NUL")
    request = response = name = None
    if root is not None:
        name, request, response = root.name, root.attributes.inputs, root.attributes.outputs
    if request is None:
        request = metadata.get("mlflow.traceInputs") or _preview(info.request_preview)
    if response is None:
        response = metadata.get("mlflow.traceOutputs") or _preview(info.response_preview)
    loc = info.trace_location
    exp = loc.mlflow_experiment if loc is not None else None
    experiment_id = exp.experiment_id if exp is not None else None
    if "\x00" in f"{info.trace_id}{experiment_id}{request}{response}":
        raise ValueError("a NUL")  # the reference path refuses the id or cleans the text
    inp, out, total = _fast_token_usage(metadata.get(TOKEN_USAGE_KEY))
    t = info.request_time
    return _new(TraceEvent, (info.trace_id, experiment_id, tags.get(TRACE_NAME_TAG, name),
                             info.state,
                             iso_time_ms(t, "info.request_time") if isinstance(t, str) else t,
                             info.execution_duration_ms, request, response, tags, metadata, inp,
                             out, total, spans, "trace", prov))


def decode_trace_fast(value: bytes | None, prov: Provenance, max_bytes: int) -> TraceEvent | None:
    """The event of a well-formed ``Trace.to_json()`` record, or None: the reference path then
    decides, and names the error if there is one. Whenever this returns an event, the reference
    path returns an equal one (tests hold the two to it)."""
    if type(value) is not bytes or len(value) > max_bytes or not (
            value.startswith(b'{"info"') or b'"info"' in value):
        return None  # a tombstone, too long, or not Trace.to_json(), whose output starts so
    if not value.isascii():
        try:  # msgspec skips unread strings without checking their UTF-8; orjson refuses it
            value.decode()
        except UnicodeDecodeError:
            return None
    try:
        return _fast_event(_TRACE_DOC.decode(value), prov)
    except Exception:  # anything unusual (a failed check, RecursionError): the reference path
        return None


def decode_trace(value: bytes | None, prov: Provenance, max_bytes: int) -> TraceEvent:
    """Decode one trace-topic value in any of the three accepted forms: through the fast path if
    it takes the record, else through the reference path."""
    event = decode_trace_fast(value, prov, max_bytes)
    return event if event is not None else decode_trace_reference(value, prov, max_bytes)


def decode_trace_reference(value: bytes | None, prov: Provenance, max_bytes: int) -> TraceEvent:
    """``decode_trace`` through orjson and the field readers: any form, any bytes."""
    obj = load_object(value, max_bytes)
    if "info" in obj and "data" in obj:
        return _from_trace_json(obj, prov)
    if "trace_location" in obj or "request_time" in obj or "state" in obj:
        return _from_trace_info(obj, "", prov, (), None, "trace_info")
    if "trace_id" in obj and ("status" in obj or "timestamp_ms" in obj):
        return _from_flat(obj, prov)
    keys = ", ".join(sorted(obj)[:8])
    raise DecodeError("unknown trace format: expected Trace.to_json() ({info, data}), "
                      "TraceInfo.to_dict() ({trace_id, state, request_time, ...}) or a flat row "
                      f"({{trace_id, status, timestamp_ms, ...}}); got keys [{keys}]", "payload")


# ---------------------------------------------------------------------------------------------
# Assessments


def numeric_value(value: Any) -> float | None:
    """bool -> 1/0, numbers as float, yes/no (and true/false, pass/fail) -> 1/0, else None."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        try:
            f = float(value)
        except OverflowError:  # a Python int beyond float range
            return None
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        s = value.strip().lower()
        if s in _YES:
            return 1.0
        if s in _NO:
            return 0.0
    return None


def _assessment_value(body: Mapping[str, Any], kind: str) -> tuple[Any, str | None]:
    """The value and the error message of a feedback or expectation body."""
    val = body.get("value")
    serialized = body.get("serialized_value")
    value_field = f"{kind}.value"
    if val is None and kind == "expectation" and isinstance(serialized, dict):
        # MLflow's to_dictionary() form of list and dict expectations (expected_facts, ...):
        # {"serialized_value": {"serialization_format": "JSON_FORMAT", "value": "<JSON>"}}
        value_field = "expectation.serialized_value.value"
        try:
            val = orjson.loads(serialized.get("value") or "null")
        except (orjson.JSONDecodeError, TypeError):
            raise DecodeError("is not JSON", value_field) from None
    if type(val) is dict or type(val) is list:  # a scalar always encodes
        dump_json(val, value_field)
    error: str | None = None
    err = body.get("error")
    if isinstance(err, dict):
        msg = err.get("error_message") or err.get("error_code")
        error = msg if isinstance(msg, str) else json_text(err, f"{kind}.error")
    elif isinstance(err, str):
        error = err
    if val is None and error is None and kind == "expectation":
        raise DecodeError("is missing", "expectation.value")
    return val, error


def decode_assessment(value: bytes | None, prov: Provenance, max_bytes: int) -> AssessmentEvent:
    """Decode one ``Assessment.to_dictionary()`` value (feedback or expectation)."""
    obj = load_object(value, max_bytes)
    assessment_id = id_field(obj, "assessment_id")
    trace_id = id_field(obj, "trace_id")
    name = str_field(obj, "assessment_name", "", max_chars=1000)
    assert name is not None
    fb, ex = obj.get("feedback"), obj.get("expectation")
    if (fb is None) == (ex is None):
        raise DecodeError("exactly one of 'feedback' and 'expectation' must be present",
                          "feedback/expectation")
    kind = "feedback" if fb is not None else "expectation"
    body = fb if fb is not None else ex
    if not isinstance(body, dict):
        raise DecodeError(f"expected an object, got {type(body).__name__}", kind)
    val, error = _assessment_value(body, kind)
    created = time_ms_field(obj, "create_time", "", required=True)
    assert created is not None
    updated = time_ms_field(obj, "last_update_time", "", required=False) or created
    valid = obj.get("valid", True)
    if valid is None:
        valid = True
    if not isinstance(valid, bool):
        raise DecodeError(f"expected a boolean, got {type(valid).__name__}", "valid")
    source = obj.get("source") or {}
    if not isinstance(source, dict):
        raise DecodeError(f"expected an object, got {type(source).__name__}", "source")
    rationale = obj.get("rationale")
    return AssessmentEvent(
        assessment_id=assessment_id, trace_id=trace_id, name=name,
        kind=kind,  # type: ignore[arg-type]
        value=val, numeric_value=numeric_value(val) if kind == "feedback" else None,
        error=clean(error) if error else error,
        rationale=clean(rationale) if isinstance(rationale, str) else None,
        source_type=str_field(source, "source_type", "source.", required=False),
        source_id=str_field(source, "source_id", "source.", required=False),
        valid=valid, overrides=str_field(obj, "overrides", "", required=False,
                                         max_chars=MAX_ID_CHARS),
        span_id=str_field(obj, "span_id", "", required=False),
        create_time_ms=created, last_update_time_ms=updated,
        metadata=str_map_field(obj, "metadata", ""), provenance=prov)


# ---------------------------------------------------------------------------------------------
# Dead letters


def dead_letter(raw: RawRecord, exc: BaseException, now_ms: int,
                max_payload_bytes: int) -> DeadLetter:
    """The dead letter for a record that failed to decode; the payload is cut to a bound. The
    error may quote the record (a key with a NUL): its text is cleaned as names are, or
    PostgreSQL would refuse the dead letter itself."""
    payload = raw.value or b""
    tb_text = None
    if not isinstance(exc, DecodeError):  # a decoder bug: keep where it happened
        tb_text = clean("".join(tb.format_exception(exc, limit=_TRACEBACK_FRAMES)))
    return DeadLetter(provenance=raw.provenance, key=raw.key,
                      payload=payload[:max_payload_bytes], payload_size_bytes=len(payload),
                      error_type=type(exc).__name__, error=clean(str(exc)[:2000]),
                      traceback=tb_text, created_ms=now_ms)
