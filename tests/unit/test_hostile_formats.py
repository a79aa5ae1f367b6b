"""The decoders' bounds (issue 12, items 1 and 2): every value they hand the store, the store
can write, on SQLite and PostgreSQL alike.

- JSON values (feedback and expectation values, serialized expectations, error objects, a flat
  row's request/response): orjson reads 1,024 levels of nesting but writes only 254, so a value
  nested deeper is refused here, naming the field, instead of failing the store's encoder.
- Times: epoch milliseconds (and span nanoseconds) from 1970 to the end of year 9999.
- Counts (durations, tokens, the computed total too): within int64, what a BIGINT column holds.
Each bound is accepted at the bound and refused one past it, with a DecodeError that names the
field and the bound. The bounds are written here as literals, independently of the decoder.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import pytest

from consumers.errors import DecodeError
from consumers.events import AssessmentEvent, Provenance, RawRecord, TraceEvent
from consumers.formats import dead_letter, decode_assessment, decode_trace

PROV = Provenance("t", 0, 0)
MAX_BYTES = 16 * 1024 * 1024
INT64_MAX = 2**63 - 1
END_9999_MS = calendar.timegm(datetime(9999, 12, 31, 23, 59, 59).utctimetuple()) * 1000 + 999
assert END_9999_MS == 253_402_300_799_999
MAX_DEPTH = 254  # orjson writes 254 nested arrays/objects; 255 raises "Recursion limit reached"
USAGE = "mlflow.trace.tokenUsage"
T0_MS = 1_768_478_400_000

FixtureJson = Callable[[str], Any]


def nested(depth: int, leaf: Any = 1, kind: str = "object") -> Any:
    """``depth`` nested objects (or arrays) around ``leaf``."""
    v = leaf
    for _ in range(depth):
        v = {"x": v} if kind == "object" else [v]
    return v


def _bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()  # json, not orjson: it writes any depth and any int


def _trace(obj: Any) -> TraceEvent:
    return decode_trace(_bytes(obj), PROV, MAX_BYTES)


def _assessment(obj: Any) -> AssessmentEvent:
    return decode_assessment(_bytes(obj), PROV, MAX_BYTES)


def _refused(decode: Callable[[], object], field: str, *parts: str) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode()
    exc = info.value
    assert exc.field == field, str(exc)
    assert str(exc).startswith(f"{field}: "), str(exc)
    for part in parts:
        assert part in str(exc), (part, str(exc))
    return exc


def store_encodes(ev: TraceEvent | AssessmentEvent) -> None:
    """What the store does with an event's values, short of a database: orjson-encode the JSON
    columns, bind the ints as int64 and the text as UTF-8."""
    if isinstance(ev, TraceEvent):
        orjson.dumps(dict(ev.tags))
        orjson.dumps(dict(ev.metadata))
        ints: list[Any] = [ev.timestamp_ms, ev.execution_time_ms, ev.input_tokens,
                           ev.output_tokens, ev.total_tokens]
        texts: list[Any] = [ev.trace_id, ev.name, ev.request, ev.response, ev.experiment_id]
    else:
        orjson.dumps(ev.value)
        orjson.dumps(dict(ev.metadata))
        ints = [ev.create_time_ms, ev.last_update_time_ms, 2 * ev.last_update_time_ms + 1]
        texts = [ev.assessment_id, ev.trace_id, ev.name, ev.error, ev.rationale]
    for i in ints:
        assert i is None or -(2**63) <= i <= INT64_MAX, i
    for t in texts:
        if t is not None:
            t.encode()
            assert "\x00" not in t  # PostgreSQL text cannot hold NUL


def _flat(**fields: Any) -> dict[str, Any]:
    return {"trace_id": "tr-1", "status": "OK", "timestamp_ms": T0_MS, **fields}


def _feedback(fixture_json: FixtureJson, **fields: Any) -> dict[str, Any]:
    obj = fixture_json("assessment_feedback_numeric.json")
    obj.update(fields)
    return obj  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Item 1: JSON values nested deeper than the store's encoder writes


@pytest.mark.parametrize("kind", ["object", "array"])
def test_feedback_value_depth(fixture_json: FixtureJson, kind: str) -> None:
    obj = _feedback(fixture_json)
    obj["feedback"]["value"] = nested(MAX_DEPTH, kind=kind)
    ev = _assessment(obj)
    assert ev.value == nested(MAX_DEPTH, kind=kind)
    store_encodes(ev)
    obj["feedback"]["value"] = nested(MAX_DEPTH + 1, kind=kind)
    _refused(lambda: _assessment(obj), "feedback.value",
             f"nested deeper than {MAX_DEPTH} levels")


def test_feedback_value_as_deep_as_orjson_reads(fixture_json: FixtureJson) -> None:
    """1,024 levels (the document's own two included) is the most orjson parses: such a value
    gets past parsing, then is refused."""
    def payload(depth: int) -> bytes:  # json.dumps itself stops short of 1,000 levels
        obj = _feedback(fixture_json)
        obj["feedback"]["value"] = "@DEEP@"
        return json.dumps(obj).replace('"@DEEP@"', "[" * depth + "]" * depth).encode()

    _refused(lambda: decode_assessment(payload(1022), PROV, MAX_BYTES), "feedback.value",
             "nested deeper than")
    # Beyond 1,024 levels (with the document's own): not even valid to orjson.
    _refused(lambda: decode_assessment(payload(1030), PROV, MAX_BYTES), "payload",
             "not valid UTF-8 JSON")


def test_expectation_value_depth(fixture_json: FixtureJson) -> None:
    obj = fixture_json("assessment_expectation.json")
    obj["expectation"]["value"] = nested(MAX_DEPTH)
    store_encodes(_assessment(obj))
    obj["expectation"]["value"] = nested(300, kind="array")
    _refused(lambda: _assessment(obj), "expectation.value",
             f"nested deeper than {MAX_DEPTH} levels")


def test_serialized_expectation_value_depth(fixture_json: FixtureJson) -> None:
    obj = fixture_json("assessment_expectation.json")
    obj["expectation"] = {"serialized_value": {"serialization_format": "JSON_FORMAT",
                                               "value": json.dumps(nested(MAX_DEPTH))}}
    store_encodes(_assessment(obj))
    obj["expectation"]["serialized_value"]["value"] = json.dumps(nested(MAX_DEPTH + 1))
    _refused(lambda: _assessment(obj), "expectation.serialized_value.value",
             f"nested deeper than {MAX_DEPTH} levels")


def test_feedback_error_object_depth(fixture_json: FixtureJson) -> None:
    obj = fixture_json("assessment_feedback_error.json")
    obj["feedback"]["error"] = {"error_detail": nested(MAX_DEPTH - 1)}  # 254 with its wrapper
    store_encodes(_assessment(obj))
    obj["feedback"]["error"] = {"error_detail": nested(MAX_DEPTH)}
    _refused(lambda: _assessment(obj), "feedback.error", f"nested deeper than {MAX_DEPTH} levels")


@pytest.mark.parametrize("field", ["request", "response"])
def test_flat_request_and_response_depth(field: str) -> None:
    ev = _trace(_flat(**{field: nested(MAX_DEPTH)}))
    store_encodes(ev)
    assert orjson.loads(getattr(ev, field)) == nested(MAX_DEPTH)
    _refused(lambda: _trace(_flat(**{field: nested(MAX_DEPTH + 1)})), field,
             f"nested deeper than {MAX_DEPTH} levels")


def test_a_deep_value_where_only_strings_are_kept_is_refused_as_before(
        fixture_json: FixtureJson) -> None:
    obj = _feedback(fixture_json, metadata={"k": nested(300)})
    _refused(lambda: _assessment(obj), "metadata.k", "expected a string value")
    _refused(lambda: _trace(_flat(tags={"k": nested(300)})), "tags.k", "expected a string value")


# ---------------------------------------------------------------------------------------------
# Item 2: times within 1970..9999


def _trace_info(fixture_json: FixtureJson, value: Any) -> Callable[[], TraceEvent]:
    obj = fixture_json("trace_info_ok.json")
    obj["request_time"] = value
    return lambda: _trace(obj)


def _trace_json(fixture_json: FixtureJson, value: Any) -> Callable[[], TraceEvent]:
    obj = fixture_json("trace_ok.json")
    obj["info"]["request_time"] = value
    return lambda: _trace(obj)


def _flat_time(_: FixtureJson, value: Any) -> Callable[[], TraceEvent]:
    return lambda: _trace(_flat(timestamp_ms=value))


def _create_time(fixture_json: FixtureJson, value: Any) -> Callable[[], AssessmentEvent]:
    obj = _feedback(fixture_json, create_time=value)
    del obj["last_update_time"]
    return lambda: _assessment(obj)


def _update_time(fixture_json: FixtureJson, value: Any) -> Callable[[], AssessmentEvent]:
    return lambda: _assessment(_feedback(fixture_json, last_update_time=value))


TIME_FIELDS = [
    (_trace_info, "request_time", "timestamp_ms"),
    (_trace_json, "info.request_time", "timestamp_ms"),
    (_flat_time, "timestamp_ms", "timestamp_ms"),
    (_create_time, "create_time", "create_time_ms"),
    (_update_time, "last_update_time", "last_update_time_ms"),
]


@pytest.mark.parametrize(("build", "field", "attr"), TIME_FIELDS,
                         ids=[f for _, f, _ in TIME_FIELDS])
def test_epoch_ms_times_end_with_year_9999(fixture_json: FixtureJson, build: Any, field: str,
                                           attr: str) -> None:
    ev = build(fixture_json, END_9999_MS)()
    assert getattr(ev, attr) == END_9999_MS
    store_encodes(ev)
    assert getattr(build(fixture_json, 0)(), attr) == 0 or attr == "last_update_time_ms"
    for past in (END_9999_MS + 1, 2**62, 2**63, 1e300):
        _refused(build(fixture_json, past), field, "out of range", str(END_9999_MS),
                 "9999-12-31T23:59:59.999Z")
    _refused(build(fixture_json, -1), field, "must be >= 0")


@pytest.mark.parametrize(("build", "field", "attr"),
                         [c for c in TIME_FIELDS if c[0] is not _flat_time],
                         ids=[f for b, f, _ in TIME_FIELDS if b is not _flat_time])
def test_iso_times_end_with_year_9999_in_utc(fixture_json: FixtureJson, build: Any, field: str,
                                            attr: str) -> None:
    assert getattr(build(fixture_json, "9999-12-31T23:59:59.999Z")(), attr) == END_9999_MS
    assert getattr(build(fixture_json, "9999-12-31T23:59:59.999+05:00")(), attr) == \
        END_9999_MS - 5 * 3_600_000
    # Still year 9999 where it was written, but year 10000 in UTC.
    _refused(build(fixture_json, "9999-12-31T23:59:59.999-00:01"), field, "out of range",
             "9999-12-31T23:59:59.999Z")
    _refused(build(fixture_json, "1969-12-31T23:59:59.999Z"), field, "before 1970")


def test_create_time_2_pow_62_is_refused(fixture_json: FixtureJson) -> None:
    """The issue's case: the stored version (2 * update time + 1) overflowed int64 on SQLite."""
    _refused(_create_time(fixture_json, 2**62), "create_time", "out of range")


# Span times are nanoseconds: the last nanosecond of year 9999 is 253402300799999999999, more
# than 2**64, so such numbers reach the decoder as floats (orjson's rule above 64 bits), 32,768
# ns apart there. At the bound: the last millisecond of year 9999 (9999-12-31T23:59:59.999Z);
# past it: the first nanosecond of year 10000.
NS_AT_BOUND = END_9999_MS * 1_000_000
NS_PAST_BOUND = (END_9999_MS + 1) * 1_000_000


def _mlflow_span_times(fixture_json: FixtureJson, start: Any, end: Any) -> dict[str, Any]:
    obj = fixture_json("trace_ok.json")
    span = obj["data"]["spans"][1]
    span["start_time_unix_nano"], span["end_time_unix_nano"] = start, end
    return obj  # type: ignore[no-any-return]


def test_mlflow_span_nanos_end_with_year_9999(fixture_json: FixtureJson) -> None:
    for start, end in [(0, NS_AT_BOUND), (2**63, 2**64 - 1), (2**62, 2**63)]:
        ev = _trace(_mlflow_span_times(fixture_json, start, end))
        assert sorted(s.duration_ms for s in ev.spans)[-1] == pytest.approx((end - start) / 1e6)
        store_encodes(ev)
    _refused(lambda: _trace(_mlflow_span_times(fixture_json, 0, NS_PAST_BOUND)),
             "data.spans[1].end_time_unix_nano", "out of range", "year 9999")
    _refused(lambda: _trace(_mlflow_span_times(fixture_json, NS_PAST_BOUND, None)),
             "data.spans[1].start_time_unix_nano", "out of range", "year 9999")
    _refused(lambda: _trace(_mlflow_span_times(fixture_json, 10**30, 10**30)),
             "data.spans[1].start_time_unix_nano", "out of range")


@pytest.mark.parametrize("key", ["start_time_ns", "end_time_ns"])
def test_flat_span_nanos_end_with_year_9999(key: str) -> None:
    span = {"name": "llm", "span_type": "CHAT_MODEL", "start_time_ns": 0,
            "end_time_ns": NS_AT_BOUND}
    ev = _trace(_flat(spans=[span]))
    assert ev.spans[0].duration_ms == pytest.approx(NS_AT_BOUND / 1e6)
    span = {**span, "end_time_ns": NS_PAST_BOUND, "start_time_ns": 0}
    if key == "start_time_ns":
        span["start_time_ns"] = NS_PAST_BOUND
    _refused(lambda: _trace(_flat(spans=[span])), f"spans[0].{key}", "out of range",
             "year 9999")


# ---------------------------------------------------------------------------------------------
# Item 2: counts within int64


def test_execution_durations_within_int64(fixture_json: FixtureJson) -> None:
    obj = fixture_json("trace_info_ok.json")
    obj["execution_duration_ms"] = INT64_MAX
    assert _trace(obj).execution_time_ms == INT64_MAX
    obj["execution_duration_ms"] = INT64_MAX + 1
    _refused(lambda: _trace(obj), "execution_duration_ms", "out of range", str(INT64_MAX),
             "int64")
    assert _trace(_flat(execution_time_ms=INT64_MAX)).execution_time_ms == INT64_MAX
    _refused(lambda: _trace(_flat(execution_time_ms=2**63)), "execution_time_ms",
             "out of range", str(INT64_MAX))


def _usage(**usage: int) -> dict[str, Any]:
    return _flat(metadata={USAGE: json.dumps(usage)})


@pytest.mark.parametrize("key", ["input_tokens", "output_tokens", "total_tokens"])
def test_each_token_count_within_int64(key: str) -> None:
    ev = _trace(_usage(**{key: INT64_MAX}))
    assert getattr(ev, key) == INT64_MAX
    assert ev.total_tokens == INT64_MAX
    store_encodes(ev)
    _refused(lambda: _trace(_usage(**{key: INT64_MAX + 1})), f"metadata.{USAGE}.{key}",
             "out of range", str(INT64_MAX))


def test_computed_total_tokens_within_int64() -> None:
    ev = _trace(_usage(input_tokens=2**62, output_tokens=2**62 - 1))
    assert ev.total_tokens == INT64_MAX
    store_encodes(ev)
    exc = _refused(lambda: _trace(_usage(input_tokens=2**62, output_tokens=2**62)),
                   f"metadata.{USAGE}.total_tokens", "out of range", str(2**63),
                   str(INT64_MAX), "input_tokens + output_tokens")
    assert "int64" in str(exc)
    # A total that is given is stored as given; the parts each fit.
    ev = _trace(_usage(input_tokens=2**62, output_tokens=2**62, total_tokens=7))
    assert (ev.input_tokens, ev.output_tokens, ev.total_tokens) == (2**62, 2**62, 7)


def test_the_issue_token_case_in_the_trace_json_form(fixture_json: FixtureJson) -> None:
    obj = fixture_json("trace_ok.json")
    obj["info"]["trace_metadata"][USAGE] = json.dumps({"input_tokens": 2**62,
                                                       "output_tokens": 2**62})
    _refused(lambda: _trace(obj), f"metadata.{USAGE}.total_tokens", "out of range")


# ---------------------------------------------------------------------------------------------
# Text the two stores would treat differently


def test_nul_in_the_root_span_request_and_response_becomes_replacement_character(
        fixture_json: FixtureJson) -> None:
    """SQLite stores a NUL, PostgreSQL refuses it: both now store U+FFFD, as names do."""
    obj = fixture_json("trace_ok.json")
    root = next(s for s in obj["data"]["spans"] if s["parent_span_id"] is None)
    root["attributes"]["mlflow.spanInputs"] = '{"q": "a\x00b"}'
    root["attributes"]["mlflow.spanOutputs"] = "x\x00"
    ev = _trace(obj)
    assert (ev.request, ev.response) == ('{"q": "a\ufffdb"}', "x\ufffd")
    store_encodes(ev)


def test_nul_in_the_metadata_request_becomes_replacement_character(
        fixture_json: FixtureJson) -> None:
    obj = fixture_json("trace_info_ok.json")
    obj["trace_metadata"]["mlflow.traceInputs"] = "a\x00"
    obj["trace_metadata"]["mlflow.traceOutputs"] = "\x00b"
    ev = _trace(obj)
    assert (ev.request, ev.response) == ("a\ufffd", "\ufffdb")
    store_encodes(ev)


def test_nul_in_tag_and_metadata_values_becomes_replacement_character(
        fixture_json: FixtureJson) -> None:
    """A tag's value can be the metrics dimension, a text column: PostgreSQL refused the row."""
    ev = _trace(_flat(tags={"environment": "pr\x00od", "ok": "fine"}, metadata={"k": "\x00"}))
    assert dict(ev.tags) == {"environment": "pr\ufffdod", "ok": "fine"}
    assert dict(ev.metadata) == {"k": "\ufffd"}
    obj = _feedback(fixture_json, metadata={"k": "a\x00"})
    assert dict(_assessment(obj).metadata) == {"k": "a\ufffd"}


@pytest.mark.parametrize(("payload", "quoted"), [
    (b'{"a\\u0000": 1}', "got keys [a\ufffd]"),
    (b'{"trace_id": "t", "status": "OK", "timestamp_ms": 1, "tags": {"k\\u0000": [1]}}',
     "tags.k\ufffd: "),
])
def test_a_dead_letter_quoting_a_nul_is_cleaned(payload: bytes, quoted: str) -> None:
    """PostgreSQL refused the dead letter itself, and the worker stopped (SQLite kept it)."""
    raw = RawRecord("t", 0, 1, None, payload)
    with pytest.raises(DecodeError) as info:
        decode_trace(payload, raw.provenance, MAX_BYTES)
    letter = dead_letter(raw, info.value, now_ms=1, max_payload_bytes=1024)
    assert "\x00" not in letter.error
    assert quoted in letter.error
    assert letter.payload == payload  # the raw record is kept as it came
