"""Property tests: whatever the bytes, the decoders return a valid event or raise ``DecodeError``.

Inputs are arbitrary bytes, arbitrary JSON values (also shaped like the three trace forms and like
assessments, so that the deeper code is reached), and mutations of the real MLflow fixtures in
``tests/fixtures/``: a dropped key, a nested value replaced by a JSON value of another type, a
numeric leaf replaced by an arbitrary number, a value replaced by one nested deeper than the
store's JSON encoder writes, truncated bytes. Any other exception fails the test, and so does a
returned event that breaks an invariant, or that the store could not write (a JSON value orjson
cannot encode, an int beyond int64, a time after year 9999). Example counts keep the file under
~20 s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consumers.errors import DecodeError
from consumers.events import TRACE_STATUSES, AssessmentEvent, Provenance, RawRecord, TraceEvent
from consumers.formats import TOKEN_USAGE_KEY, dead_letter, decode_assessment, decode_trace

PROV = Provenance("mlflow-traces", 0, 7)
MAX_BYTES = 4 * 1024 * 1024

TRACE_FIXTURES = ["trace_ok.json", "trace_error.json", "trace_slow.json", "trace_info_ok.json"]
ASSESSMENT_FIXTURES = [
    "assessment_feedback_numeric.json", "assessment_feedback_bool.json",
    "assessment_feedback_no.json", "assessment_feedback_error.json",
    "assessment_expectation.json", "assessment_override_new.json",
    "assessment_override_old.json",
]
# Keys the decoders look at, so generated objects get past the format dispatch.
TRACE_KEYS = ["info", "data", "spans", "trace_id", "trace_location", "request_time", "state",
              "status", "timestamp_ms", "execution_time_ms", "execution_duration_ms", "request",
              "response", "tags", "metadata", "trace_metadata", "experiment_id", "name",
              "request_preview", "response_preview"]
ASSESSMENT_KEYS = ["assessment_id", "trace_id", "assessment_name", "feedback", "expectation",
                   "value", "error", "create_time", "last_update_time", "valid", "source",
                   "overrides", "span_id", "metadata", "rationale"]

INT64_MAX = 2**63 - 1
END_9999_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

# No example database (nothing to commit or share between engineers). Hypothesis still keeps
# its caches in ./.hypothesis/, which it git-ignores itself.
COMMON = settings(deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Decoder = Callable[[bytes | None, Provenance, int], object]
FixtureBytes = Callable[[str], bytes]
FixtureJson = Callable[[str], Any]

# ---------------------------------------------------------------------------------------------
# Strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    # Beyond 64 bits as well: orjson turns those into floats, json.dumps writes them exactly.
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
                     END_9999_MS, END_9999_MS + 1, END_9999_MS * 1_000_000, 10**21]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["OK", "ERROR", "IN_PROGRESS", "yes", "no", "", "{", "[1,", "{}", "[]",
                     "2026-01-15T12:00:00Z", "2026-01-15T12:00:00", "0001-01-01T00:00:00Z",
                     "9999-12-31T23:59:59-23:59", '"CHAT_MODEL"', "STATUS_CODE_ERROR"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=10), children, max_size=4),
    ),
    max_leaves=12,
)


def _nested(depth: int, kind: str) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = {"x": v} if kind == "object" else [v]
    return v


# Around the depth orjson writes (254 levels; it reads 1,024): below, at and past it.
deep_values = st.builds(_nested, st.integers(min_value=250, max_value=300),
                        st.sampled_from(["object", "array"]))


def _kind(v: Any) -> str:
    """The JSON type of a value (bool is not a number, int and float are the same type)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _dumps(obj: Any) -> bytes:
    # json (not orjson): it writes any int exactly, and NaN/Infinity never occur (not generated).
    return json.dumps(obj).encode()


# ---------------------------------------------------------------------------------------------
# The contract


def _check_trace(ev: TraceEvent) -> None:
    assert isinstance(ev, TraceEvent)
    assert isinstance(ev.trace_id, str) and ev.trace_id and "\x00" not in ev.trace_id
    assert ev.status in TRACE_STATUSES
    assert isinstance(ev.timestamp_ms, int) and not isinstance(ev.timestamp_ms, bool)
    assert ev.execution_time_ms is None or (
        isinstance(ev.execution_time_ms, int) and ev.execution_time_ms >= 0)
    assert ev.experiment_id is None or isinstance(ev.experiment_id, str)
    assert ev.name is None or isinstance(ev.name, str)
    assert ev.request is None or isinstance(ev.request, str)
    assert ev.response is None or isinstance(ev.response, str)
    for mapping in (ev.tags, ev.metadata):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
    for tokens in (ev.input_tokens, ev.output_tokens, ev.total_tokens):
        assert tokens is None or (isinstance(tokens, int) and tokens >= 0)
    for span in ev.spans:
        assert isinstance(span.duration_ms, float)
        assert math.isfinite(span.duration_ms) and span.duration_ms >= 0
        assert span.status in ("OK", "ERROR", "UNSET")
        assert isinstance(span.name, str) and isinstance(span.span_type, str) and span.span_type
    assert ev.source_format in ("trace", "trace_info", "flat")
    assert ev.provenance == PROV
    assert 0 <= ev.completeness < 2_000_000
    # ... and the store can write it, alike on SQLite and PostgreSQL.
    assert 0 <= ev.timestamp_ms <= END_9999_MS
    for count in (ev.execution_time_ms, ev.input_tokens, ev.output_tokens, ev.total_tokens):
        assert count is None or count <= INT64_MAX
    orjson.dumps(dict(ev.tags))
    orjson.dumps(dict(ev.metadata))
    _store_text(ev.trace_id, ev.experiment_id, ev.name, ev.request, ev.response,
                *ev.tags.values(), *ev.metadata.values(),  # a tag can be the metrics dimension
                *(s.name for s in ev.spans))


def _store_text(*texts: str | None) -> None:
    """Text the drivers can bind (UTF-8, no lone surrogate) and PostgreSQL can hold (no NUL)."""
    for text in texts:
        if text is not None:
            text.encode()
            assert "\x00" not in text


def _check_assessment(ev: AssessmentEvent) -> None:
    assert isinstance(ev, AssessmentEvent)
    for text in (ev.assessment_id, ev.trace_id, ev.name):
        assert isinstance(text, str) and text
    assert "\x00" not in ev.assessment_id + ev.trace_id
    assert ev.kind in ("feedback", "expectation")
    assert ev.numeric_value is None or (
        isinstance(ev.numeric_value, float) and math.isfinite(ev.numeric_value))
    if ev.kind == "expectation":
        assert ev.numeric_value is None
    assert isinstance(ev.valid, bool)
    assert isinstance(ev.create_time_ms, int) and isinstance(ev.last_update_time_ms, int)
    for optional in (ev.error, ev.rationale, ev.source_type, ev.source_id, ev.overrides,
                     ev.span_id):
        assert optional is None or isinstance(optional, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in ev.metadata.items())
    assert ev.provenance == PROV
    # ... and the store can write it (the version column holds 2 * update time + 1).
    assert 0 <= ev.create_time_ms <= END_9999_MS and 0 <= ev.last_update_time_ms <= END_9999_MS
    orjson.dumps(ev.value)
    orjson.dumps(dict(ev.metadata))
    _store_text(ev.assessment_id, ev.trace_id, ev.name, ev.error, ev.rationale, ev.source_type,
                ev.source_id, ev.overrides, ev.span_id, *ev.metadata.values())


def _holds_contract(decode: Decoder, payload: bytes | None) -> object | None:
    """Decode; an event must satisfy its invariants, an error must be a ``DecodeError``."""
    try:
        ev = decode(payload, PROV, MAX_BYTES)
    except DecodeError as exc:  # anything else propagates and fails the test
        assert str(exc)
        if exc.field:
            assert str(exc).startswith(f"{exc.field}: ")
        # Its dead letter is storable too (the error may quote a key of the record).
        letter = dead_letter(RawRecord(PROV.topic, PROV.partition, PROV.offset, None, payload),
                             exc, 0, 1024)
        _store_text(letter.error)
        event("DecodeError")  # shown by --hypothesis-show-statistics
        return None
    event("decoded")
    if decode is decode_trace:
        _check_trace(ev)  # type: ignore[arg-type]
    else:
        _check_assessment(ev)  # type: ignore[arg-type]
    assert decode(payload, PROV, MAX_BYTES) == ev  # pure: the same bytes, the same event
    return ev


decoders = st.sampled_from([decode_trace, decode_assessment])


# ---------------------------------------------------------------------------------------------
# Arbitrary input


@settings(COMMON, max_examples=400)
@given(decode=decoders, payload=st.binary(max_size=256))
def test_arbitrary_bytes(decode: Decoder, payload: bytes) -> None:
    _holds_contract(decode, payload)


@settings(COMMON, max_examples=250)
@given(decode=decoders, value=json_values)
def test_arbitrary_json_values(decode: Decoder, value: Any) -> None:
    _holds_contract(decode, _dumps(value))


@settings(COMMON, max_examples=250)
@given(obj=st.dictionaries(st.sampled_from(TRACE_KEYS), json_values, max_size=10))
def test_trace_shaped_objects(obj: dict[str, Any]) -> None:
    _holds_contract(decode_trace, _dumps(obj))


@settings(COMMON, max_examples=200)
@given(obj=st.dictionaries(st.sampled_from(ASSESSMENT_KEYS), json_values, max_size=10))
def test_assessment_shaped_objects(obj: dict[str, Any]) -> None:
    _holds_contract(decode_assessment, _dumps(obj))


span_dicts = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values,
        "span_type": st.one_of(st.text(max_size=12), json_values),
        "start_time_ns": st.one_of(st.integers(min_value=-10, max_value=2**63), json_values),
        "end_time_ns": st.one_of(st.integers(min_value=-10, max_value=2**63), json_values),
        "status": st.one_of(st.sampled_from(["OK", "ERROR", "UNSET", "STATUS_CODE_OK"]),
                            json_values),
    },
)


@settings(COMMON, max_examples=200)
@given(
    row=st.fixed_dictionaries(
        {"trace_id": st.one_of(st.text(min_size=1, max_size=300), json_values),
         "status": st.one_of(st.sampled_from(sorted(TRACE_STATUSES)), json_values)},
        optional={
            "timestamp_ms": st.one_of(st.integers(min_value=-5, max_value=2**64), json_values),
            "execution_time_ms": st.one_of(st.integers(min_value=-5, max_value=2**64),
                                           json_values),
            "experiment_id": json_values, "name": json_values,
            "request": st.one_of(json_values, deep_values),
            "response": st.one_of(json_values, deep_values),
            "tags": st.one_of(st.dictionaries(st.text(max_size=8), scalars), json_values),
            "metadata": st.one_of(st.dictionaries(st.text(max_size=8), scalars),
                                  st.fixed_dictionaries(
                                      {TOKEN_USAGE_KEY: st.one_of(
                                          json_values.map(json.dumps), st.text(max_size=20))}),
                                  json_values),
            "spans": st.one_of(st.lists(span_dicts, max_size=4), json_values),
        },
    )
)
def test_flat_rows(row: dict[str, Any]) -> None:
    _holds_contract(decode_trace, _dumps(row))


# Well-formed flat rows: every field valid, values anywhere in their valid range. These must
# always decode, and the event must reflect the row.
utf8_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
# Ids are rejected when they hold NUL (PostgreSQL text cannot store it).
id_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
                  min_size=1, max_size=256)
# Span times: exact up to 2**64 - 1 (year 2554); orjson reads larger numbers as floats.
ns_times = st.integers(min_value=0, max_value=2**64 - 1)
ms_times = st.integers(min_value=0, max_value=END_9999_MS)
valid_spans = st.lists(
    st.tuples(utf8_text, st.sampled_from(["CHAT_MODEL", "TOOL", "RETRIEVER", "", "X"]),
              ns_times, st.one_of(st.none(), ns_times),
              st.sampled_from(["OK", "ERROR", "UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"])),
    max_size=5,
).map(lambda spans: [
    {"name": name, "span_type": span_type, "start_time_ns": min(a, b) if b is not None else a,
     "end_time_ns": None if b is None else max(a, b), "status": status}
    for name, span_type, a, b, status in spans])
counts = st.integers(min_value=0, max_value=2**62 - 1)  # two of them sum within int64
token_usage = st.fixed_dictionaries({}, optional={
    "input_tokens": counts, "output_tokens": counts, "total_tokens": counts})
valid_maps = st.dictionaries(utf8_text, st.one_of(
    st.none(), st.booleans(), utf8_text, st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False)), max_size=4)


@settings(COMMON, max_examples=200)
@given(
    row=st.fixed_dictionaries(
        {"trace_id": id_text,
         "status": st.sampled_from(sorted(TRACE_STATUSES)),
         "timestamp_ms": ms_times},
        optional={
            "execution_time_ms": st.one_of(st.none(),
                                           st.integers(min_value=0, max_value=INT64_MAX)),
            "experiment_id": st.one_of(st.none(), id_text,
                                       st.integers(min_value=0, max_value=2**63)),
            "name": st.one_of(st.none(), utf8_text),
            "request": json_values, "response": json_values,
            "tags": valid_maps, "metadata": valid_maps, "spans": valid_spans,
        },
    ),
    usage=st.one_of(st.none(), token_usage),
)
def test_well_formed_flat_rows_always_decode(row: dict[str, Any],
                                             usage: dict[str, int] | None) -> None:
    # Hypothesis also draws string constants from the code under test, so a generated metadata
    # key can be the token-usage key itself: only a valid usage object may sit there.
    row.get("metadata", {}).pop(TOKEN_USAGE_KEY, None)
    if usage is not None:
        row.setdefault("metadata", {})[TOKEN_USAGE_KEY] = json.dumps(usage)
    ev = _holds_contract(decode_trace, _dumps(row))
    assert isinstance(ev, TraceEvent)
    assert (ev.trace_id, ev.status, ev.timestamp_ms) == (
        row["trace_id"], row["status"], row["timestamp_ms"])
    assert ev.execution_time_ms == row.get("execution_time_ms")
    finished = [s for s in row.get("spans", []) if s["end_time_ns"] is not None]
    assert [s.duration_ms for s in ev.spans] == [
        (s["end_time_ns"] - s["start_time_ns"]) / 1e6 for s in finished]
    if usage:
        assert (ev.input_tokens, ev.output_tokens) == (
            usage.get("input_tokens"), usage.get("output_tokens"))
        assert ev.total_tokens == usage.get(
            "total_tokens", usage.get("input_tokens", 0) + usage.get("output_tokens", 0))


# ---------------------------------------------------------------------------------------------
# Mutations of the real fixtures

Path = tuple[str | int, ...]


def _paths(node: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every path to a nested value (not the root)."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, child in items:
        path = (*prefix, key)
        yield path
        yield from _paths(child, path)


def _parent(obj: Any, path: Path) -> Any:
    for key in path[:-1]:
        obj = obj[key]
    return obj


def _get(obj: Any, path: Path) -> Any:
    return _parent(obj, path)[path[-1]]


def _mutate(data: st.DataObject, obj: Any) -> None:
    """Apply one random mutation to ``obj`` in place (none if nothing is left to mutate)."""
    nodes = [(path, _get(obj, path)) for path in _paths(obj)]
    how = data.draw(st.sampled_from(["drop", "retype", "number", "string", "deep"]),
                    label="mutation")
    if how == "drop":
        candidates = [p for p, _ in nodes if isinstance(p[-1], str)]
    elif how in ("retype", "deep"):
        candidates = [p for p, _ in nodes]
    elif how == "number":  # negative, zero, huge or fractional times, durations and counts
        candidates = [p for p, v in nodes if _kind(v) == "number"]
    else:  # strings hold JSON too (span attributes, token usage) and ISO times
        candidates = [p for p, v in nodes if _kind(v) == "string"]
    if not candidates:
        return
    path = data.draw(st.sampled_from(candidates), label=how)
    parent, key, old = _parent(obj, path), path[-1], _get(obj, path)
    if how == "drop":
        del parent[key]
    elif how == "retype":
        parent[key] = data.draw(json_values.filter(lambda v: _kind(v) != _kind(old)),
                                label="value")
    elif how == "number":
        parent[key] = data.draw(st.one_of(
            st.integers(min_value=-(2**64), max_value=2**64),
            st.floats(allow_nan=False, allow_infinity=False),
            st.sampled_from([-1, 0, 2**62, 2**62 + 1, 2**63 - 1, 2**63, END_9999_MS,
                             END_9999_MS + 1, (END_9999_MS + 1) * 1_000_000])), label="value")
    elif how == "deep":
        parent[key] = data.draw(deep_values, label="value")
    else:
        parent[key] = data.draw(st.one_of(
            st.text(max_size=20),
            json_values.map(json.dumps),
            deep_values.map(json.dumps),  # JSON text the decoder parses (serialized values)
            st.integers(min_value=0, max_value=len(old)).map(lambda n: old[:n])), label="text")


@settings(COMMON, max_examples=500)
@given(name=st.sampled_from(TRACE_FIXTURES + ASSESSMENT_FIXTURES), data=st.data())
def test_mutated_fixtures(fixture_json: FixtureJson, name: str, data: st.DataObject) -> None:
    obj = fixture_json(name)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        _mutate(data, obj)
    decode = decode_trace if name in TRACE_FIXTURES else decode_assessment
    _holds_contract(decode, _dumps(obj))


@settings(COMMON, max_examples=300)
@given(name=st.sampled_from(TRACE_FIXTURES + ASSESSMENT_FIXTURES), data=st.data())
def test_truncated_fixtures(fixture_bytes: FixtureBytes, name: str, data: st.DataObject) -> None:
    payload = fixture_bytes(name).rstrip()  # cutting only the final newline leaves valid JSON
    cut = data.draw(st.integers(min_value=0, max_value=len(payload) - 1), label="cut")
    decode = decode_trace if name in TRACE_FIXTURES else decode_assessment
    assert _holds_contract(decode, payload[:cut]) is None  # a cut JSON object never parses


@settings(COMMON, max_examples=200)
@given(name=st.sampled_from(TRACE_FIXTURES + ASSESSMENT_FIXTURES), data=st.data())
def test_fixtures_under_the_wrong_decoder(fixture_bytes: FixtureBytes, name: str,
                                          data: st.DataObject) -> None:
    """A trace on the assessment topic (or the reverse) is a DecodeError, never a crash."""
    decode = decode_assessment if name in TRACE_FIXTURES else decode_trace
    assert _holds_contract(decode, fixture_bytes(name)) is None
    # ... and a valid event stays valid after its bytes are re-encoded (whitespace changes).
    right = decode_trace if name in TRACE_FIXTURES else decode_assessment
    indent = data.draw(st.sampled_from([None, 0, 4]), label="indent")
    payload = json.dumps(json.loads(fixture_bytes(name)), indent=indent).encode()
    assert _holds_contract(right, payload) is not None
