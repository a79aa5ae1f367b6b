"""Wire bytes -> typed events. Pure: no I/O, no clock, no Kafka, no SQL.

Trace topic values are UTF-8 JSON in one of three forms (README, Event formats): MLflow trace JSON
(``Trace.to_json()``), trace info JSON (``TraceInfo.to_dict()``), or the flat trace row. Assessment
topic values are ``Assessment.to_dictionary()`` JSON. Every other input raises ``DecodeError`` whose
message names the field and the problem; decoders never raise anything else, whatever the bytes
(a Hypothesis test holds them to that). ``request``/``response`` are kept as the JSON text MLflow
already produced, so the hot path never re-serializes them.

Whatever an event holds, the store can write, on SQLite and PostgreSQL alike: times lie in years
1970..9999 (epoch ms, span ns), counts (durations, tokens, the computed total) within int64,
JSON values at most ``MAX_JSON_DEPTH`` levels deep, and text goes to text columns without NUL.
"""

from __future__ import annotations

import math
import traceback as tb
from collections.abc import Mapping
from datetime import datetime
from typing import Any

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

MAX_ID_CHARS = 256
INT64_MAX = 2**63 - 1  # what a BIGINT column holds
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# The last nanosecond of year 9999. Numbers above 2**64 reach us as floats (orjson's rule), so
# the bound holds to a float's precision there.
MAX_TIME_NS = MAX_TIME_MS * 1_000_000 + 999_999
MAX_JSON_DEPTH = 254  # orjson reads 1,024 levels of nesting, but writes only 254
_BOUND_NAMES = {INT64_MAX: "the int64 maximum", MAX_TIME_MS: "9999-12-31T23:59:59.999Z",
                MAX_TIME_NS: "the end of year 9999"}
TOKEN_USAGE_KEY = "mlflow.trace.tokenUsage"  # noqa: S105 - a metadata key, not a secret
TRACE_NAME_TAG = "mlflow.traceName"
_SPAN_STATUS = {"STATUS_CODE_OK": "OK", "STATUS_CODE_ERROR": "ERROR",
                "STATUS_CODE_UNSET": "UNSET", "OK": "OK", "ERROR": "ERROR", "UNSET": "UNSET"}
_YES = frozenset({"yes", "true", "pass", "passed"})
_NO = frozenset({"no", "false", "fail", "failed"})
_TRACEBACK_FRAMES = 30


# ---------------------------------------------------------------------------------------------
# Field helpers: each names the field in its error.


def _loads(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    if value is None:
        raise DecodeError("empty record (a tombstone); expected a JSON object", "payload")
    if len(value) > max_bytes:
        raise DecodeError(f"{len(value)} bytes exceeds max_event_bytes={max_bytes}", "payload")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid UTF-8 JSON ({exc})", "payload") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object, got {type(obj).__name__}", "payload")
    return obj


def _str(d: Mapping[str, Any], key: str, path: str, *, required: bool = True,
         max_chars: int | None = None) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise DecodeError("is missing", f"{path}{key}")
        return None
    if not isinstance(v, str):
        raise DecodeError(f"expected a string, got {type(v).__name__}", f"{path}{key}")
    if required and not v:
        raise DecodeError("is empty", f"{path}{key}")
    if max_chars is not None and len(v) > max_chars:
        raise DecodeError(f"longer than {max_chars} characters", f"{path}{key}")
    return _clean(v)


def _clean(v: str) -> str:
    """PostgreSQL text cannot hold NUL; a stray NUL in a name or message becomes U+FFFD."""
    return v.replace("\x00", "\ufffd") if "\x00" in v else v


def _id(d: Mapping[str, Any], key: str, path: str = "") -> str:
    raw = d.get(key)
    if isinstance(raw, str) and "\x00" in raw:
        raise DecodeError("contains a NUL character", f"{path}{key}")
    v = _str(d, key, path, max_chars=MAX_ID_CHARS)
    assert v is not None  # required=True guarantees it
    return v


def _int(d: Mapping[str, Any], key: str, path: str, *, required: bool,
         maximum: int = INT64_MAX) -> int | None:
    """A number in ``[0, maximum]`` (``INT64_MAX``, ``MAX_TIME_MS`` or ``MAX_TIME_NS``)."""
    v = d.get(key)
    if v is None:
        if required:
            raise DecodeError("is missing", f"{path}{key}")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (
            isinstance(v, float) and not math.isfinite(v)):
        raise DecodeError(f"expected a number, got {type(v).__name__}", f"{path}{key}")
    iv = int(v)
    if iv < 0:
        raise DecodeError(f"must be >= 0, got {v}", f"{path}{key}")
    if iv > maximum:
        raise _out_of_range(v, maximum, f"{path}{key}")
    return iv


def _out_of_range(v: Any, maximum: int, field: str) -> DecodeError:
    return DecodeError(f"out of range: {v} > {maximum} ({_BOUND_NAMES.get(maximum, 'max')})",
                       field)


def _str_map(d: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    """A string -> string mapping; scalar values are stringified, nested values rejected. A NUL
    in a value becomes U+FFFD: a tag's value can become a text column (the metrics dimension)."""
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise DecodeError(f"expected an object, got {type(v).__name__}", f"{path}{key}")
    for item in v.values():  # the common case, all clean strings: no copy
        if type(item) is not str or "\x00" in item:
            break
    else:
        return v
    out: dict[str, str] = {}
    for k, item in v.items():
        if isinstance(item, str):
            out[k] = _clean(item)
        elif isinstance(item, bool | int | float):
            out[k] = orjson.dumps(item).decode()
        elif item is None:
            continue
        else:
            raise DecodeError(f"expected a string value, got {type(item).__name__}",
                              f"{path}{key}.{k}")
    return out


def _time_ms(d: Mapping[str, Any], key: str, path: str, *, required: bool) -> int | None:
    """ISO-8601 text (``2026-11-27T11:54:16.865Z``) or epoch milliseconds."""
    v = d.get(key)
    if v is None:
        if required:
            raise DecodeError("is missing", f"{path}{key}")
        return None
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise DecodeError(f"not an ISO-8601 time: {v[:40]!r}", f"{path}{key}") from None
        if dt.tzinfo is None:
            raise DecodeError(f"ISO-8601 time without a time zone: {v[:40]!r}", f"{path}{key}")
        try:
            ms = int(dt.timestamp() * 1000)
        except (OverflowError, OSError, ValueError):
            raise DecodeError(f"time out of range: {v[:40]!r}", f"{path}{key}") from None
        if ms < 0:
            raise DecodeError(f"before 1970: {v[:40]!r}", f"{path}{key}")
        if ms > MAX_TIME_MS:  # year 9999 with a negative offset is year 10000 in UTC
            raise DecodeError(f"out of range: {v[:40]!r} is after 9999-12-31T23:59:59.999Z",
                              f"{path}{key}")
        return ms
    return _int(d, key, path, required=required, maximum=MAX_TIME_MS)


def parse_json_text(text: str | None) -> Any:
    """A stored request/response back as a value: its JSON if it is JSON, else the text."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _json_text(v: Any, field: str) -> str | None:
    """Request/response as JSON text. Strings that already hold a JSON object or array are kept."""
    if v is None:
        return None
    if isinstance(v, str):
        s = v.lstrip()
        if s[:1] in ("{", "["):
            try:
                orjson.loads(v)
                return v
            except orjson.JSONDecodeError:
                pass
    return _dumps(v, field).decode()


def _dumps(v: Any, field: str) -> bytes:
    """``v`` as the store will encode it. A parsed value can fail only by its depth: orjson
    reads 1,024 levels of nesting but writes ``MAX_JSON_DEPTH``."""
    try:
        return orjson.dumps(v)
    except orjson.JSONEncodeError as exc:
        if "Recursion limit" in str(exc):
            raise DecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels", field) from None
        raise DecodeError(f"not JSON-serializable ({exc})", field) from None


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
    inp = _int(usage, "input_tokens", path, required=False)
    out = _int(usage, "output_tokens", path, required=False)
    total = _int(usage, "total_tokens", path, required=False)
    if total is None and (inp is not None or out is not None):
        total = (inp or 0) + (out or 0)
        if total > INT64_MAX:
            raise _out_of_range(f"input_tokens + output_tokens = {total}", INT64_MAX,
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
        span_type = attrs.get("mlflow.spanType")
        if type(span_type) is str and len(span_type) >= 2 and span_type[0] == '"' \
                and span_type[-1] == '"':
            span_type = span_type[1:-1]
        out.append(SpanSummary(
            _clean(name) if name else "",
            span_type if type(span_type) is str and span_type else "UNKNOWN",
            (end - start) / 1e6,
            _SPAN_STATUS.get(code, "UNSET") if type(code) is str else "UNSET"))
    return tuple(out), root


def _slow_span_fields(s: Mapping[str, Any], i: int) -> tuple[int, int | None, str | None]:
    path = f"data.spans[{i}]."
    if not isinstance(s.get("attributes") or {}, dict):
        raise DecodeError("expected an object", f"{path}attributes")
    start = _int(s, "start_time_unix_nano", path, required=True, maximum=MAX_TIME_NS)
    assert start is not None
    return (start, _int(s, "end_time_unix_nano", path, required=False, maximum=MAX_TIME_NS),
            _str(s, "name", path, required=False))


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
        start = _int(s, "start_time_ns", path, required=True, maximum=MAX_TIME_NS)
        end = _int(s, "end_time_ns", path, required=False, maximum=MAX_TIME_NS)
        if end is None:
            continue
        assert start is not None
        if end < start:
            raise DecodeError("end_time_ns is before start_time_ns", path[:-1])
        status = s.get("status")
        out.append(SpanSummary(
            name=_str(s, "name", path, required=False) or "",
            span_type=_str(s, "span_type", path, required=False) or "UNKNOWN",
            duration_ms=(end - start) / 1e6,
            status=_SPAN_STATUS.get(status, "UNSET") if isinstance(status, str) else "UNSET",
        ))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Trace forms


def _from_trace_info(info: Mapping[str, Any], path: str, prov: Provenance,
                     spans: tuple[SpanSummary, ...], root: Mapping[str, Any] | None,
                     source_format: str) -> TraceEvent:
    trace_id = _id(info, "trace_id", path)
    status = _status(info.get("state"), f"{path}state")
    loc = info.get("trace_location")
    experiment_id: str | None = None
    if loc is not None:
        if not isinstance(loc, dict):
            raise DecodeError("expected an object", f"{path}trace_location")
        exp = loc.get("mlflow_experiment")
        if isinstance(exp, dict):
            experiment_id = _str(exp, "experiment_id", f"{path}trace_location.mlflow_experiment.",
                                 required=False, max_chars=MAX_ID_CHARS)
    tags = _str_map(info, "tags", path)
    metadata = _str_map(info, "trace_metadata", path)
    timestamp_ms = _time_ms(info, "request_time", path, required=True)
    assert timestamp_ms is not None
    execution_ms = _int(info, "execution_duration_ms", path, required=False)
    request = response = None
    if root is not None:
        attrs = root.get("attributes") or {}
        request = attrs.get("mlflow.spanInputs") if isinstance(attrs, dict) else None
        response = attrs.get("mlflow.spanOutputs") if isinstance(attrs, dict) else None
        # Text columns: SQLite would keep a NUL that PostgreSQL refuses.
        request = _clean(request) if isinstance(request, str) else None
        response = _clean(response) if isinstance(response, str) else None
    if request is None:
        request = metadata.get("mlflow.traceInputs") or _str(info, "request_preview", path,
                                                              required=False)
    if response is None:
        response = metadata.get("mlflow.traceOutputs") or _str(info, "response_preview", path,
                                                                required=False)
    name = tags.get(TRACE_NAME_TAG)
    if name is None and root is not None and isinstance(root.get("name"), str):
        name = root["name"]
    name = _clean(name) if name is not None else None
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
    trace_id = _id(obj, "trace_id")
    status = _status(obj.get("status"), "status")
    timestamp_ms = _int(obj, "timestamp_ms", "", required=True, maximum=MAX_TIME_MS)
    assert timestamp_ms is not None
    execution_ms = _int(obj, "execution_time_ms", "", required=False)
    tags = _str_map(obj, "tags", "")
    metadata = _str_map(obj, "metadata", "")
    experiment_id: str | None = None
    if obj.get("experiment_id") is not None:
        exp = obj["experiment_id"]
        if isinstance(exp, int) and not isinstance(exp, bool):
            exp = str(exp)
        experiment_id = _id({"experiment_id": exp}, "experiment_id")
    name = _str(obj, "name", "", required=False) or tags.get(TRACE_NAME_TAG)
    name = _clean(name) if name is not None else None
    inp, out, total = _token_usage(metadata)
    return TraceEvent(trace_id=trace_id, experiment_id=experiment_id, name=name, status=status,
                      timestamp_ms=timestamp_ms, execution_time_ms=execution_ms,
                      request=_json_text(obj.get("request"), "request"),
                      response=_json_text(obj.get("response"), "response"), tags=tags,
                      metadata=metadata,
                      input_tokens=inp, output_tokens=out, total_tokens=total,
                      spans=_flat_spans(obj.get("spans")), source_format="flat", provenance=prov)


def decode_trace(value: bytes | None, prov: Provenance, max_bytes: int) -> TraceEvent:
    """Decode one trace-topic value in any of the three accepted forms."""
    obj = _loads(value, max_bytes)
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


def decode_assessment(value: bytes | None, prov: Provenance, max_bytes: int) -> AssessmentEvent:
    """Decode one ``Assessment.to_dictionary()`` value (feedback or expectation)."""
    obj = _loads(value, max_bytes)
    assessment_id = _id(obj, "assessment_id")
    trace_id = _id(obj, "trace_id")
    name = _str(obj, "assessment_name", "", max_chars=1000)
    assert name is not None
    fb, ex = obj.get("feedback"), obj.get("expectation")
    if (fb is None) == (ex is None):
        raise DecodeError("exactly one of 'feedback' and 'expectation' must be present",
                          "feedback/expectation")
    kind = "feedback" if fb is not None else "expectation"
    body = fb if fb is not None else ex
    if not isinstance(body, dict):
        raise DecodeError(f"expected an object, got {type(body).__name__}", kind)
    val = body.get("value")
    serialized = body.get("serialized_value")
    value_field = "feedback.value" if fb is not None else "expectation.value"
    if val is None and kind == "expectation" and isinstance(serialized, dict):
        # MLflow's to_dictionary() form of list and dict expectations (expected_facts, ...):
        # {"serialized_value": {"serialization_format": "JSON_FORMAT", "value": "<JSON>"}}
        value_field = "expectation.serialized_value.value"
        try:
            val = orjson.loads(serialized.get("value") or "null")
        except (orjson.JSONDecodeError, TypeError):
            raise DecodeError("is not JSON", value_field) from None
    if type(val) is dict or type(val) is list:  # a scalar always encodes
        _dumps(val, value_field)
    error: str | None = None
    err = body.get("error")
    if isinstance(err, dict):
        msg = err.get("error_message") or err.get("error_code")
        error = msg if isinstance(msg, str) else _json_text(err, f"{kind}.error")
    elif isinstance(err, str):
        error = err
    if val is None and error is None and kind == "expectation":
        raise DecodeError("is missing", "expectation.value")
    created = _time_ms(obj, "create_time", "", required=True)
    assert created is not None
    updated = _time_ms(obj, "last_update_time", "", required=False) or created
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
        error=_clean(error) if error else error,
        rationale=_clean(rationale) if isinstance(rationale, str) else None,
        source_type=_str(source, "source_type", "source.", required=False),
        source_id=_str(source, "source_id", "source.", required=False),
        valid=valid, overrides=_str(obj, "overrides", "", required=False,
                                    max_chars=MAX_ID_CHARS),
        span_id=_str(obj, "span_id", "", required=False),
        create_time_ms=created, last_update_time_ms=updated,
        metadata=_str_map(obj, "metadata", ""), provenance=prov)


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
        tb_text = _clean("".join(tb.format_exception(exc, limit=_TRACEBACK_FRAMES)))
    return DeadLetter(provenance=raw.provenance, key=raw.key,
                      payload=payload[:max_payload_bytes], payload_size_bytes=len(payload),
                      error_type=type(exc).__name__, error=_clean(str(exc)[:2000]),
                      traceback=tb_text, created_ms=now_ms)
