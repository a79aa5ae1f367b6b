"""The fast path of ``decode_trace`` (msgspec into typed structs) against the reference path
(orjson, then the field readers), which decides every record the fast path does not take.

The contract: whenever ``decode_trace_fast`` returns an event, ``decode_trace_reference``
returns an equal one; whenever the reference path raises, ``decode_trace`` raises the same
``DecodeError``. Realistic records (the MLflow fixtures, as MLflow and as orjson write them, the
ingest benchmark's records, IN_PROGRESS versions, non-ASCII text) must take the fast path.
Hostile input (invalid UTF-8 or NaN where nothing is read, deep nesting, duplicate or escaped
keys, NUL, floats and huge numbers where values are read) goes to the reference path and meets
the same fate as before. The one known difference, a number beyond a double's range in a field
nothing reads, is pinned at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consumers.errors import DecodeError
from consumers.events import Provenance, SpanSummary, TraceEvent
from consumers.formats import decode_trace, decode_trace_fast, decode_trace_reference
from tests.payloads import trace_doc

PROV = Provenance("mlflow-traces", 1, 99)
MAX_BYTES = 4 * 1024 * 1024
KINDS = ["ok", "error", "slow"]
USAGE = "mlflow.trace.tokenUsage"

FixtureJson = Callable[[str], Any]
FixtureBytes = Callable[[str], bytes]


def reference(payload: bytes | None) -> TraceEvent | DecodeError:
    try:
        return decode_trace_reference(payload, PROV, MAX_BYTES)
    except DecodeError as exc:
        return exc


def agree(payload: bytes | None) -> TraceEvent | None:
    """Both paths, held to the contract. Returns the fast path's event, if it took the record."""
    fast = decode_trace_fast(payload, PROV, MAX_BYTES)
    ref = reference(payload)
    if fast is not None:
        assert isinstance(ref, TraceEvent), (ref, payload[:200] if payload else payload)
        assert fast == ref
        assert type(fast) is TraceEvent and len(fast) == len(TraceEvent._fields)
        assert all(type(s) is SpanSummary and len(s) == 4 for s in fast.spans)
        assert dict(fast._asdict()) == dict(ref._asdict())  # field by field, by name
    try:
        assert decode_trace(payload, PROV, MAX_BYTES) == ref
    except DecodeError as exc:
        assert isinstance(ref, DecodeError), (exc, ref)
        assert (str(exc), exc.field) == (str(ref), ref.field)
    return fast


def taken(payload: bytes) -> TraceEvent:
    """A record the fast path must take (and decode as the reference path does)."""
    ev = agree(payload)
    assert ev is not None, payload[:300]
    return ev


def refused(payload: bytes, field: str, *parts: str) -> DecodeError:
    assert agree(payload) is None
    with pytest.raises(DecodeError) as info:
        decode_trace(payload, PROV, MAX_BYTES)
    assert info.value.field == field, str(info.value)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    return info.value


def root_of(doc: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in doc["data"]["spans"] if s["parent_span_id"] is None)


# ---------------------------------------------------------------------------------------------
# Realistic records take the fast path


@pytest.mark.parametrize("name", ["trace_ok.json", "trace_error.json", "trace_slow.json"])
def test_the_fixtures_take_the_fast_path_in_every_spelling(fixture_bytes: FixtureBytes,
                                                           name: str) -> None:
    raw = fixture_bytes(name)
    doc = json.loads(raw)
    for payload in (raw, orjson.dumps(doc), json.dumps(doc).encode(),
                    json.dumps(doc, indent=2).encode(),
                    json.dumps(doc, ensure_ascii=False).encode(),
                    json.dumps({"data": doc["data"], "info": doc["info"]}).encode()):
        taken(payload)


@pytest.mark.parametrize("kind", KINDS)
def test_the_benchmark_records_take_the_fast_path(kind: str) -> None:
    """The records of bench/ingest.py and bench/decode.py: compact orjson, a new id each."""
    for start_ms in (1_768_478_400_000, 1_800_000_000_123):
        ev = taken(orjson.dumps(trace_doc(kind, start_ms=start_ms)))
        assert ev.timestamp_ms == start_ms


@pytest.mark.parametrize("kind", KINDS)
def test_in_progress_versions_take_the_fast_path(kind: str) -> None:
    for keep in (0, 1, 5):
        ev = taken(orjson.dumps(trace_doc(kind, in_progress=True, keep_spans=keep)))
        assert ev.status == "IN_PROGRESS"


def test_the_first_root_span_gives_the_request_even_while_it_runs(
        fixture_json: FixtureJson) -> None:
    doc = fixture_json("trace_ok.json")
    root = root_of(doc)
    root["end_time_unix_nano"] = None
    twin = json.loads(json.dumps(root))  # a second root: the first one counts
    twin["attributes"]["mlflow.spanInputs"] = '"second"'
    doc["data"]["spans"].append(twin)
    ev = taken(json.dumps(doc).encode())
    assert ev.request == root["attributes"]["mlflow.spanInputs"]


def test_without_a_root_span_the_metadata_and_previews_give_the_text(
        fixture_json: FixtureJson) -> None:
    doc = fixture_json("trace_ok.json")
    for s in doc["data"]["spans"]:
        s["parent_span_id"] = "x"
    assert taken(json.dumps(doc).encode()).name == "answer_question"  # the tag
    del doc["info"]["tags"]["mlflow.traceName"]
    del doc["info"]["trace_metadata"]["mlflow.traceInputs"]
    doc["info"]["trace_metadata"]["mlflow.traceOutputs"] = ""
    ev = taken(json.dumps(doc).encode())
    assert (ev.name, ev.request, ev.response) == (
        None, doc["info"]["request_preview"], doc["info"]["response_preview"])
    doc["info"]["request_preview"] = None
    del doc["info"]["response_preview"]
    ev = taken(json.dumps(doc).encode())
    assert (ev.request, ev.response) == (None, None)


@pytest.mark.parametrize("text", ["résumé ✓", "日本語", "emoji 🎉", "\u2028"])
def test_non_ascii_text_takes_the_fast_path(fixture_json: FixtureJson, text: str) -> None:
    doc = fixture_json("trace_ok.json")
    doc["info"]["tags"]["environment"] = text
    doc["info"]["trace_metadata"]["mlflow.user"] = text
    root_of(doc)["attributes"]["mlflow.spanInputs"] = json.dumps({"q": text})
    doc["data"]["spans"][1]["name"] = text
    doc["data"]["spans"][2]["attributes"]["mlflow.spanOutputs"] = text  # read by no one
    for ensure_ascii in (True, False):
        ev = taken(json.dumps(doc, ensure_ascii=ensure_ascii).encode())
        assert ev.tags["environment"] == text
        assert text in {s.name for s in ev.spans}


def test_ids_are_bounded_in_characters_not_bytes(fixture_json: FixtureJson) -> None:
    doc = fixture_json("trace_ok.json")
    doc["info"]["trace_id"] = "é" * 256
    doc["info"]["trace_location"]["mlflow_experiment"]["experiment_id"] = "é" * 256
    ev = taken(json.dumps(doc, ensure_ascii=False).encode())
    assert ev.trace_id == "é" * 256
    doc["info"]["trace_id"] = "é" * 257
    refused(json.dumps(doc, ensure_ascii=False).encode(), "info.trace_id", "longer than 256")
    doc["info"]["trace_id"] = "t"
    doc["info"]["trace_location"]["mlflow_experiment"]["experiment_id"] = "é" * 257
    refused(json.dumps(doc).encode(), "info.trace_location.mlflow_experiment.experiment_id",
            "longer than 256")


# ---------------------------------------------------------------------------------------------
# What the fast path leaves to the reference path: the same event, or the same error


def _with_attribute(fixture_json: FixtureJson, raw_value: bytes) -> bytes:
    """trace_ok with an attribute no one reads set to ``raw_value``, spliced in as bytes."""
    doc = fixture_json("trace_ok.json")
    doc["data"]["spans"][1]["attributes"]["x.unread"] = "@HERE@"
    return json.dumps(doc).encode().replace(b'"@HERE@"', raw_value)


@pytest.mark.parametrize("raw", [b'"\xff\xfe"', b'"\xed\xa0\x80"', b'"\xc0\xaf"', b'"\xe2\x82"',
                                 b'"\xf4\x90\x80\x80"', b'"ok \xe9"'],
                         ids=["ff-fe", "surrogate", "overlong", "truncated", "above-10ffff",
                              "latin-1"])
def test_invalid_utf8_where_nothing_is_read_is_still_refused(fixture_json: FixtureJson,
                                                             raw: bytes) -> None:
    refused(_with_attribute(fixture_json, raw), "payload", "not valid UTF-8 JSON")


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity", b"nan", b'"\\ud800"',
                                 b'"\\q"', b'"a\tb"', b"[1,]", b"01", b"1.", b"tru"])
def test_invalid_json_where_nothing_is_read_is_still_refused(fixture_json: FixtureJson,
                                                             raw: bytes) -> None:
    refused(_with_attribute(fixture_json, raw), "payload", "not valid UTF-8 JSON")


@pytest.mark.parametrize("depth", [50, 900, 1019, 1030, 100_000])
def test_deep_nesting_where_nothing_is_read(fixture_json: FixtureJson, depth: int) -> None:
    """orjson reads 1,024 levels (the document's own included); msgspec stops at Python's
    recursion limit: a record deeper than msgspec goes to the reference path, which decides."""
    payload = _with_attribute(fixture_json, b"[" * depth + b"]" * depth)
    if depth + 5 <= 1024:  # the attribute sits 5 levels down
        assert isinstance(reference(payload), TraceEvent)
        agree(payload)
    else:
        refused(payload, "payload", "not valid UTF-8 JSON")


def test_big_and_float_numbers_where_nothing_is_read(fixture_json: FixtureJson) -> None:
    for raw in (b"18446744073709551616", b"-9223372036854775809", b"1e308", b"1.5", b"-0",
                b"1E+2", b"1e-400"):
        assert isinstance(reference(_with_attribute(fixture_json, raw)), TraceEvent)
        taken(_with_attribute(fixture_json, raw))


def test_duplicate_keys_keep_the_last_value_as_before(fixture_json: FixtureJson) -> None:
    doc = fixture_json("trace_ok.json")
    text = json.dumps(doc)
    # A later "info" that is not an object: refused, naming the field, as before.
    refused((text[:-1] + ', "info": "x"}').encode(), "info", "expected an object, got str")
    # A later state, span type or tag wins, on both paths.
    twice = text.replace('"state": "OK"', '"state": "ERROR", "state": "OK"', 1)
    assert taken(twice.encode()).status == "OK"
    twice = text.replace('"state": "OK"', '"state": "OK", "state": "ERROR"', 1)
    assert taken(twice.encode()).status == "ERROR"
    twice = text.replace('"mlflow.spanType": "\\"CHAIN\\""',
                         '"mlflow.spanType": "\\"CHAIN\\"", "mlflow.spanType": "\\"AGENT\\""')
    assert "AGENT" in {s.span_type for s in taken(twice.encode()).spans}
    twice = text.replace('"environment": "production"',
                         '"environment": "production", "environment": "staging"')
    assert taken(twice.encode()).tags["environment"] == "staging"
    # ... and a later value that is not a string goes the reference path, which refuses it.
    twice = text.replace('"environment": "production"',
                         '"environment": "production", "environment": ["x"]')
    refused(twice.encode(), "info.tags.environment", "expected a string value")


def test_escaped_keys_are_the_same_keys(fixture_json: FixtureJson) -> None:
    text = json.dumps(fixture_json("trace_ok.json"))
    agree(text.replace('"info"', '"in\\u0066o"', 1).encode())  # not seen as Trace.to_json()
    taken(text.replace('"mlflow.spanType"', '"mlflow.span\\u0054ype"').encode())
    # An escaped duplicate still overrides the plain key.
    later = text[:-1] + ', "in\\u0066o": 7}'
    refused(later.encode(), "info", "expected an object, got int")


@pytest.mark.parametrize(("path", "value"), [
    ("info/tags/environment", "pro\x00d"),
    ("info/trace_metadata/mlflow.user", "\x00"),
    ("info/trace_metadata/mlflow.traceInputs", "a\x00"),
    ("data/spans/1/name", "retrieve\x00docs"),
    ("data/spans/0/name", "root\x00"),
    ("data/spans/0/attributes/mlflow.spanInputs", '{"q": "\x00"}'),
    ("data/spans/0/attributes/mlflow.spanOutputs", "\x00"),
    ("info/trace_location/mlflow_experiment/experiment_id", "1\x00"),
    ("info/tags/mlflow.traceName", "na\x00me"),
])
def test_a_nul_is_cleaned_by_the_reference_path(fixture_json: FixtureJson, path: str,
                                               value: str) -> None:
    doc = fixture_json("trace_ok.json")
    _set(doc, path, value)
    payload = json.dumps(doc).encode()
    assert agree(payload) is None
    ev = decode_trace(payload, PROV, MAX_BYTES)
    texts = [ev.trace_id, ev.experiment_id, ev.name, ev.request, ev.response,
             *ev.tags.values(), *ev.metadata.values(), *(s.name for s in ev.spans)]
    assert not any("\x00" in t for t in texts if t)
    assert any("\ufffd" in t for t in texts if t)


def test_a_nul_in_the_trace_id_is_refused(fixture_json: FixtureJson) -> None:
    doc = fixture_json("trace_ok.json")
    doc["info"]["trace_id"] = "tr-\x00"
    refused(json.dumps(doc).encode(), "info.trace_id", "contains a NUL character")


@pytest.mark.parametrize(("path", "value"), [
    ("info/execution_duration_ms", 1500.0),
    ("info/execution_duration_ms", 1e3),
    ("info/request_time", 1_768_478_400_000.0),
    ("data/spans/1/start_time_unix_nano", 1.7684784e18),
    ("data/spans/1/end_time_unix_nano", 2**63),
    ("data/spans/1/end_time_unix_nano", 2**64 - 1),
    ("data/spans/1/end_time_unix_nano", 2**64 + 1),
    ("data/spans/1/end_time_unix_nano", 253_402_300_799_999 * 1_000_000),
    ("data/spans/1/status", "STATUS_CODE_ERROR"),
    ("data/spans/1/status", None),
    ("data/spans/1/status/code", 2),
    ("data/spans/1/attributes", None),
    ("data/spans/1/attributes", []),
    ("data/spans/1/attributes/mlflow.spanType", 7),
    ("data/spans/0/attributes/mlflow.spanInputs", {"q": 1}),
    ("data/spans/0/parent_span_id", 1.5),
    ("data/spans", None),
    ("data/spans", {}),
    ("info/trace_location/mlflow_experiment", "1"),
    ("info/trace_location", None),
    ("info/tags/retries", 2),
    ("info/tags/none", None),
    ("info/trace_metadata/flag", True),
    ("info/trace_metadata/big", 2**64),
    ("info/trace_metadata/" + USAGE, '{"input_tokens": 1.0}'),
    ("info/trace_metadata/" + USAGE, '{"input_tokens": 1, "cached_tokens": 2}'),
    ("info/trace_metadata/" + USAGE, '{"input_tokens": 1, "input_tokens": 3}'),
    ("info/trace_metadata/" + USAGE, ""),
    ("info/request_preview", 3),
    ("info/response_preview", None),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_unusual_values_meet_the_same_fate(fixture_json: FixtureJson, path: str,
                                           value: Any) -> None:
    doc = fixture_json("trace_ok.json")
    _set(doc, path, value)
    agree(json.dumps(doc).encode())


def test_other_forms_and_payload_errors_go_to_the_reference_path(
        fixture_bytes: FixtureBytes) -> None:
    assert agree(fixture_bytes("trace_info_ok.json")) is None
    row = {"trace_id": "t", "status": "OK", "timestamp_ms": 1, "info": "a key by that name"}
    assert agree(json.dumps(row).encode()) is None
    for payload in (None, b"", b"[]", b'"info"', b'{"info": {}}', b'{"info": null, "data": {}}',
                    fixture_bytes("trace_ok.json")[:-40]):
        assert agree(payload) is None
    big = fixture_bytes("trace_ok.json")
    assert decode_trace_fast(big, PROV, len(big) - 1) is None
    refused(big + b" " * MAX_BYTES, "payload", "exceeds max_event_bytes")


# ---------------------------------------------------------------------------------------------
# Properties: the two paths agree on mutated records


def _set(doc: Any, path: str, value: Any) -> None:
    *parents, last = path.split("/")
    for key in parents:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    if isinstance(doc, list):
        doc[int(last)] = value
    else:
        doc[last] = value


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    out = []
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 253_402_300_799_999,
                     253_402_300_800_000, 10**21]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["OK", "ERROR", "IN_PROGRESS", "", "\x00", "x\x00", '"LLM"', '""',
                     "STATUS_CODE_ERROR", "2026-01-15T12:00:00Z", "2026-01-15T12:00:00",
                     "9999-12-31T23:59:59.999-00:01", "{}", '{"input_tokens": 3}', "é" * 257]),
)
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), c,
                                                                   max_size=3)), max_leaves=8)
COMMON = settings(deadline=None, database=None, max_examples=400,
                  suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_mutated_records_meet_the_same_fate(kind: str, data: st.DataObject) -> None:
    doc = trace_doc(kind)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        paths = _paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and data.draw(st.booleans(), label="drop"):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(values, label="value")
    spelling = data.draw(st.sampled_from(["orjson", "json", "ascii-off"]), label="spelling")
    if spelling == "orjson":
        try:
            payload = orjson.dumps(doc)
        except orjson.JSONEncodeError:  # an int beyond 64 bits
            payload = json.dumps(doc).encode()
    else:
        payload = json.dumps(doc, ensure_ascii=spelling == "json").encode()
    event("fast path" if agree(payload) is not None else "reference path")


@COMMON
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_spliced_bytes_meet_the_same_fate(kind: str, data: st.DataObject) -> None:
    """Raw bytes at a random place: broken UTF-8, stray escapes, numbers, brackets."""
    payload = orjson.dumps(trace_doc(kind))
    at = data.draw(st.integers(min_value=0, max_value=len(payload)), label="at")
    cut = data.draw(st.integers(min_value=0, max_value=4), label="cut")
    piece = data.draw(st.one_of(
        st.binary(max_size=6),
        st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\\u0000", b"\\ud800", b"\\", b'"', b",",
                         b"1e400", b"NaN", b"[" * 1100, b"{}", b'"x":1,', b"\x00", b" "])),
        label="piece")
    spliced = payload[:at] + piece + payload[at + cut:]
    event("fast path" if agree(spliced) is not None else "reference path")


# ---------------------------------------------------------------------------------------------
# The one known difference


@pytest.mark.parametrize("raw", [b"1e400", b"-1E+999", b"1" * 400])
def test_a_number_beyond_a_double_where_nothing_is_read_now_decodes(
        fixture_json: FixtureJson, raw: bytes) -> None:
    """orjson refuses the whole record ("number is infinity when parsed as double"); msgspec
    skips the unread attribute without reading the number. The event is what the record
    without that attribute gives: no such number reaches it."""
    payload = _with_attribute(fixture_json, raw)
    with pytest.raises(DecodeError, match="^payload: not valid UTF-8 JSON"):
        decode_trace_reference(payload, PROV, MAX_BYTES)
    ev = decode_trace(payload, PROV, MAX_BYTES)
    assert ev == decode_trace_reference(_with_attribute(fixture_json, b"0"), PROV, MAX_BYTES)
    # Where it is read, it is refused as before (the reference path names the field).
    doc = fixture_json("trace_ok.json")
    doc["info"]["execution_duration_ms"] = "@HERE@"
    refused(json.dumps(doc).encode().replace(b'"@HERE@"', raw), "payload",
            "not valid UTF-8 JSON")
