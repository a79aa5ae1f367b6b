"""Unit tests of the wire decoders in ``consumers/formats.py``.

The happy paths run on real MLflow payloads (``tests/fixtures/*.json``, written by
``tests/fixtures/make_fixtures.py``) and assert exact field values. Ids and wall-clock times that
change when the fixtures are regenerated are read from the files; everything the script fixes
(names, explicit span times, token counts, values) is asserted as a literal.
"""

from __future__ import annotations

import calendar
import copy
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from consumers.errors import DecodeError
from consumers.events import AssessmentEvent, Provenance, RawRecord, TraceEvent
from consumers.formats import (
    dead_letter,
    decode_assessment,
    decode_trace,
    numeric_value,
)

PROV = Provenance("mlflow-traces", 3, 42)
MAX_BYTES = 4 * 1024 * 1024  # 4 MiB, the max_event_bytes the issue names
T0_MS = 1_768_478_400_000  # 2026-01-15T12:00:00Z, the explicit start of the OK trace
QUESTION_JSON = '{"question": "What is MLflow Tracing?"}'
ANSWER = "MLflow Tracing records the inputs, outputs and timing of each step of an LLM app."
ANSWER_JSON = '{"answer": "' + ANSWER + '"}'
TRACE_ID_RE = re.compile(r"^tr-[0-9a-f]{32}$")
ASSESSMENT_ID_RE = re.compile(r"^a-[0-9a-f]{32}$")

FixtureJson = Callable[[str], Any]
FixtureBytes = Callable[[str], bytes]


def _bytes(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _trace(obj: Any) -> TraceEvent:
    return decode_trace(_bytes(obj), PROV, MAX_BYTES)


def _assessment(obj: Any) -> AssessmentEvent:
    return decode_assessment(_bytes(obj), PROV, MAX_BYTES)


def _iso_to_ms(text: str) -> int:
    """Epoch ms of MLflow's ISO text, by integer arithmetic (independent of the decoder's)."""
    dt = datetime.fromisoformat(text)
    assert dt.tzinfo is not None
    return calendar.timegm(dt.utctimetuple()) * 1000 + dt.microsecond // 1000


def _spans(ev: TraceEvent) -> dict[str, tuple[str, float, str]]:
    return {s.name: (s.span_type, s.duration_ms, s.status) for s in ev.spans}


def _raises_field(decode: Callable[[], object], field: str) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode()
    exc = info.value
    assert exc.field == field
    assert str(exc).startswith(f"{field}: "), str(exc)
    return exc


# ---------------------------------------------------------------------------------------------
# Trace JSON (Trace.to_json()), the primary form


def test_trace_ok_exact_fields(fixture_bytes: FixtureBytes, fixture_json: FixtureJson) -> None:
    raw = fixture_json("trace_ok.json")
    ev = decode_trace(fixture_bytes("trace_ok.json"), PROV, MAX_BYTES)

    assert ev.trace_id == raw["info"]["trace_id"]
    assert TRACE_ID_RE.match(ev.trace_id)
    assert ev.experiment_id == "1"
    assert ev.name == "answer_question"
    assert ev.status == "OK"
    assert ev.timestamp_ms == T0_MS
    assert ev.execution_time_ms == 1500
    # The root span's JSON text, byte for byte (MLflow's spacing, not a re-serialization).
    assert ev.request == QUESTION_JSON
    assert ev.response == ANSWER_JSON
    assert ev.tags["environment"] == "production"
    assert ev.tags["mlflow.traceName"] == "answer_question"
    assert ev.metadata["mlflow.trace.tokenUsage"] == (
        '{"input_tokens": 120, "output_tokens": 45, "total_tokens": 165}')
    assert (ev.input_tokens, ev.output_tokens, ev.total_tokens) == (120, 45, 165)
    assert ev.source_format == "trace"
    assert ev.provenance == PROV
    assert len(ev.spans) == 4
    assert _spans(ev) == {
        "answer_question": ("CHAIN", 1500.0, "OK"),
        "retrieve_docs": ("RETRIEVER", 250.0, "OK"),
        "chat_completion": ("CHAT_MODEL", 800.0, "OK"),
        "format_citations": ("TOOL", 250.0, "OK"),
    }
    assert ev.completeness == 1_000_004


def test_trace_error_exact_fields(fixture_bytes: FixtureBytes, fixture_json: FixtureJson) -> None:
    raw = fixture_json("trace_error.json")
    info, spans = raw["info"], raw["data"]["spans"]
    ev = decode_trace(fixture_bytes("trace_error.json"), PROV, MAX_BYTES)

    assert ev.trace_id == info["trace_id"]
    assert TRACE_ID_RE.match(ev.trace_id)
    assert ev.experiment_id == "1"
    assert ev.name == "plan_trip"
    assert ev.status == "ERROR"
    # This trace ran on the wall clock: check against the file and against the root span.
    root = next(s for s in spans if s["parent_span_id"] is None)
    assert ev.timestamp_ms == _iso_to_ms(info["request_time"])
    assert ev.timestamp_ms == root["start_time_unix_nano"] // 1_000_000
    assert isinstance(ev.execution_time_ms, int)
    assert ev.execution_time_ms == info["execution_duration_ms"]
    root_ms = (root["end_time_unix_nano"] - root["start_time_unix_nano"]) / 1e6
    assert ev.execution_time_ms <= root_ms < ev.execution_time_ms + 1
    assert ev.request == '{"city": "Paris"}'
    assert ev.response is None  # the function raised: no output, and traceOutputs is ""
    assert (ev.input_tokens, ev.output_tokens, ev.total_tokens) == (None, None, None)
    assert {n: (t, st) for n, (t, _, st) in _spans(ev).items()} == {
        "plan_trip": ("AGENT", "ERROR"),
        "call_tool": ("TOOL", "ERROR"),
    }
    for s in spans:
        expected = (s["end_time_unix_nano"] - s["start_time_unix_nano"]) / 1e6
        assert _spans(ev)[s["name"]][1] == expected
    assert ev.completeness == 1_000_002


def test_trace_slow_exact_fields(fixture_bytes: FixtureBytes, fixture_json: FixtureJson) -> None:
    ev = decode_trace(fixture_bytes("trace_slow.json"), PROV, MAX_BYTES)

    assert ev.trace_id == fixture_json("trace_slow.json")["info"]["trace_id"]
    assert ev.status == "OK"
    assert ev.name == "answer_question"
    assert ev.timestamp_ms == T0_MS + 60_000
    assert ev.execution_time_ms == 6000
    assert _spans(ev) == {
        "answer_question": ("CHAIN", 6000.0, "OK"),
        "chat_completion": ("CHAT_MODEL", 5600.0, "OK"),
    }
    assert ev.request == QUESTION_JSON
    assert ev.response == ANSWER_JSON
    assert "environment" not in ev.tags
    assert (ev.input_tokens, ev.output_tokens, ev.total_tokens) == (None, None, None)


def test_trace_info_form_matches_trace_json(fixture_bytes: FixtureBytes) -> None:
    full = decode_trace(fixture_bytes("trace_ok.json"), PROV, MAX_BYTES)
    info = decode_trace(fixture_bytes("trace_info_ok.json"), PROV, MAX_BYTES)

    assert info.source_format == "trace_info"
    assert info.spans == ()
    assert info.completeness == 1_000_000
    # Without spans, request/response come from the trace metadata: the same text.
    assert info.request == QUESTION_JSON
    assert info.response == ANSWER_JSON
    for field in ("trace_id", "experiment_id", "name", "status", "timestamp_ms",
                  "execution_time_ms", "tags", "metadata", "input_tokens", "output_tokens",
                  "total_tokens", "provenance"):
        assert getattr(info, field) == getattr(full, field), field


def test_trace_info_falls_back_to_previews(fixture_json: FixtureJson) -> None:
    obj = fixture_json("trace_info_ok.json")
    del obj["trace_metadata"]["mlflow.traceInputs"]
    del obj["trace_metadata"]["mlflow.traceOutputs"]
    obj["request_preview"] = '{"question": "preview"}'
    obj["response_preview"] = "short answer"
    ev = _trace(obj)
    assert ev.request == '{"question": "preview"}'
    assert ev.response == "short answer"


def test_trace_name_falls_back_to_root_span(fixture_json: FixtureJson) -> None:
    obj = fixture_json("trace_ok.json")
    del obj["info"]["tags"]["mlflow.traceName"]
    assert _trace(obj).name == "answer_question"


def test_trace_accepts_epoch_ms_request_time(fixture_json: FixtureJson) -> None:
    obj = fixture_json("trace_info_ok.json")
    obj["request_time"] = T0_MS + 7
    assert _trace(obj).timestamp_ms == T0_MS + 7


def test_total_tokens_computed_when_missing(fixture_json: FixtureJson) -> None:
    obj = fixture_json("trace_info_ok.json")
    obj["trace_metadata"]["mlflow.trace.tokenUsage"] = '{"input_tokens": 7, "output_tokens": 5}'
    ev = _trace(obj)
    assert (ev.input_tokens, ev.output_tokens, ev.total_tokens) == (7, 5, 12)


# ---------------------------------------------------------------------------------------------
# The flat row (DESIGN.md)

FLAT_START_NS = T0_MS * 1_000_000


def _flat_row() -> dict[str, Any]:
    return {
        "trace_id": "tr-flat-0001",
        "experiment_id": "7",
        "timestamp_ms": T0_MS,
        "execution_time_ms": 1234,
        "status": "OK",
        "request": {"question": "hi"},
        "response": "plain text answer",
        "tags": {"environment": "staging", "mlflow.traceName": "chat_app"},
        "metadata": {"mlflow.trace.tokenUsage": '{"input_tokens": 10, "output_tokens": 5}',
                     "mlflow.trace.user": "alice", "retries": 2},
        "spans": [
            {"name": "llm", "span_type": "CHAT_MODEL", "start_time_ns": FLAT_START_NS,
             "end_time_ns": FLAT_START_NS + 900_000_000, "status": "OK"},
            {"name": "search", "span_type": "TOOL", "start_time_ns": FLAT_START_NS,
             "end_time_ns": FLAT_START_NS + 1_500_000, "status": "STATUS_CODE_ERROR"},
            {"name": "odd", "start_time_ns": FLAT_START_NS, "end_time_ns": FLAT_START_NS,
             "status": "weird"},
        ],
    }


def test_flat_row_exact_fields() -> None:
    ev = _trace(_flat_row())
    assert ev.source_format == "flat"
    assert ev.trace_id == "tr-flat-0001"
    assert ev.experiment_id == "7"
    assert ev.name == "chat_app"
    assert ev.status == "OK"
    assert ev.timestamp_ms == T0_MS
    assert ev.execution_time_ms == 1234
    assert ev.request == '{"question":"hi"}'  # an object is serialized to JSON text
    assert ev.response == '"plain text answer"'  # a plain string becomes a JSON string
    assert ev.tags == {"environment": "staging", "mlflow.traceName": "chat_app"}
    assert ev.metadata["mlflow.trace.user"] == "alice"
    assert ev.metadata["retries"] == "2"  # scalars are stringified
    assert (ev.input_tokens, ev.output_tokens, ev.total_tokens) == (10, 5, 15)
    assert [(s.name, s.span_type, s.duration_ms, s.status) for s in ev.spans] == [
        ("llm", "CHAT_MODEL", 900.0, "OK"),
        ("search", "TOOL", 1.5, "ERROR"),
        ("odd", "UNKNOWN", 0.0, "UNSET"),
    ]
    assert ev.provenance == PROV


def test_flat_row_minimal_and_variants() -> None:
    ev = _trace({"trace_id": "t", "status": "ERROR", "timestamp_ms": 5, "experiment_id": 12,
                 "name": "explicit", "request": '{"already": "json"}', "response": None})
    assert ev.experiment_id == "12"  # an int id (older rows) becomes a string
    assert ev.name == "explicit"
    assert ev.request == '{"already": "json"}'  # JSON text is kept verbatim
    assert ev.response is None
    assert ev.spans == ()
    assert ev.tags == {} and ev.metadata == {}
    assert ev.execution_time_ms is None


def test_flat_row_of_a_real_trace_matches_trace_json(fixture_bytes: FixtureBytes,
                                                     fixture_json: FixtureJson) -> None:
    """The OK trace as a flat row (as an older producer would send it) gives the same event."""
    raw = fixture_json("trace_ok.json")
    info, spans = raw["info"], raw["data"]["spans"]
    root = next(s for s in spans if s["parent_span_id"] is None)
    row = {
        "trace_id": info["trace_id"],
        "experiment_id": info["trace_location"]["mlflow_experiment"]["experiment_id"],
        "timestamp_ms": T0_MS,
        "execution_time_ms": info["execution_duration_ms"],
        "status": info["state"],
        "request": root["attributes"]["mlflow.spanInputs"],
        "response": root["attributes"]["mlflow.spanOutputs"],
        "tags": info["tags"],
        "metadata": info["trace_metadata"],
        "spans": [{"name": s["name"], "span_type": json.loads(s["attributes"]["mlflow.spanType"]),
                   "start_time_ns": s["start_time_unix_nano"],
                   "end_time_ns": s["end_time_unix_nano"], "status": s["status"]["code"]}
                  for s in spans],
    }
    flat = _trace(row)
    full = decode_trace(fixture_bytes("trace_ok.json"), PROV, MAX_BYTES)
    assert flat.source_format == "flat"
    for field in ("trace_id", "experiment_id", "name", "status", "timestamp_ms",
                  "execution_time_ms", "request", "response", "tags", "metadata", "input_tokens",
                  "output_tokens", "total_tokens", "spans"):
        assert getattr(flat, field) == getattr(full, field), field


# ---------------------------------------------------------------------------------------------
# IN_PROGRESS traces and completeness


def _in_progress(obj: dict[str, Any], unfinished: set[str]) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["info"]["state"] = "IN_PROGRESS"
    del obj["info"]["execution_duration_ms"]
    for s in obj["data"]["spans"]:
        if s["name"] in unfinished:
            s["end_time_unix_nano"] = None
    return obj


def test_in_progress_trace_json(fixture_json: FixtureJson) -> None:
    obj = _in_progress(fixture_json("trace_ok.json"), {"answer_question", "format_citations"})
    ev = _trace(obj)
    assert ev.status == "IN_PROGRESS"
    assert ev.execution_time_ms is None
    assert _spans(ev) == {  # the running spans have no duration yet, so they are left out
        "retrieve_docs": ("RETRIEVER", 250.0, "OK"),
        "chat_completion": ("CHAT_MODEL", 800.0, "OK"),
    }
    assert ev.request == QUESTION_JSON  # the root still gives the request while it runs
    assert ev.completeness == 2


def test_in_progress_trace_info(fixture_json: FixtureJson) -> None:
    obj = fixture_json("trace_info_ok.json")
    obj["state"] = "IN_PROGRESS"
    del obj["execution_duration_ms"]
    ev = _trace(obj)
    assert ev.status == "IN_PROGRESS"
    assert ev.execution_time_ms is None
    assert ev.completeness == 0


def test_in_progress_flat_row() -> None:
    row = _flat_row()
    row["status"] = "IN_PROGRESS"
    row["execution_time_ms"] = None
    row["spans"][0]["end_time_ns"] = None
    del row["spans"][1]["end_time_ns"]
    ev = _trace(row)
    assert ev.status == "IN_PROGRESS"
    assert ev.execution_time_ms is None
    assert [s.name for s in ev.spans] == ["odd"]


def test_completeness_orders_versions_of_one_trace(fixture_bytes: FixtureBytes,
                                                   fixture_json: FixtureJson) -> None:
    ok = fixture_json("trace_ok.json")
    running = _trace(_in_progress(ok, {"answer_question"}))  # 3 finished spans
    partial = copy.deepcopy(ok)
    partial["data"]["spans"] = partial["data"]["spans"][:2]
    ok_fewer = _trace(partial)
    ok_full = decode_trace(fixture_bytes("trace_ok.json"), PROV, MAX_BYTES)
    redelivered = decode_trace(fixture_bytes("trace_ok.json"), PROV, MAX_BYTES)

    assert len(running.spans) > len(ok_fewer.spans)  # finished beats more spans
    assert running.completeness < ok_fewer.completeness < ok_full.completeness
    assert redelivered.completeness == ok_full.completeness
    assert redelivered == ok_full


# ---------------------------------------------------------------------------------------------
# Assessments


def _check_times(ev: AssessmentEvent, raw: dict[str, Any]) -> None:
    assert ev.create_time_ms == _iso_to_ms(raw["create_time"])
    assert ev.last_update_time_ms == _iso_to_ms(raw["last_update_time"])


@pytest.mark.parametrize(
    ("name", "assessment_name", "kind", "value", "numeric", "source", "error"),
    [
        ("assessment_feedback_numeric.json", "relevance", "feedback", 0.3, 0.3,
         ("LLM_JUDGE", "judge-v1"), None),
        ("assessment_feedback_bool.json", "is_correct", "feedback", False, 0.0,
         ("LLM_JUDGE", "judge-v1"), None),
        ("assessment_feedback_no.json", "helpful", "feedback", "no", 0.0,
         ("HUMAN", "reviewer@example.com"), None),
        ("assessment_feedback_error.json", "groundedness", "feedback", None, None,
         ("LLM_JUDGE", "judge-v1"), "judge endpoint returned 429"),
        ("assessment_expectation.json", "expected_response", "expectation",
         "MLflow Tracing captures each step's inputs, outputs and latency.", None,
         ("HUMAN", "reviewer@example.com"), None),
    ],
)
def test_assessment_fixtures(fixture_bytes: FixtureBytes, fixture_json: FixtureJson, name: str,
                             assessment_name: str, kind: str, value: Any, numeric: float | None,
                             source: tuple[str, str], error: str | None) -> None:
    raw = fixture_json(name)
    ev = decode_assessment(fixture_bytes(name), PROV, MAX_BYTES)

    assert ev.assessment_id == raw["assessment_id"]
    assert ASSESSMENT_ID_RE.match(ev.assessment_id)
    assert ev.trace_id == fixture_json("trace_ok.json")["info"]["trace_id"]
    assert ev.name == assessment_name
    assert ev.kind == kind
    assert ev.value == value and type(ev.value) is type(value)
    assert ev.numeric_value == numeric
    assert numeric is None or type(ev.numeric_value) is float
    assert ev.error == error
    assert (ev.source_type, ev.source_id) == source
    assert ev.rationale == raw.get("rationale")
    assert ev.valid is True
    assert ev.overrides is None
    assert ev.span_id is None
    assert ev.metadata == {}
    assert ev.provenance == PROV
    _check_times(ev, raw)


def test_assessment_override_pair(fixture_bytes: FixtureBytes, fixture_json: FixtureJson) -> None:
    raw_new, raw_old = (fixture_json("assessment_override_new.json"),
                        fixture_json("assessment_override_old.json"))
    new = decode_assessment(fixture_bytes("assessment_override_new.json"), PROV, MAX_BYTES)
    old = decode_assessment(fixture_bytes("assessment_override_old.json"), PROV, MAX_BYTES)

    assert new.name == old.name == "quality"
    assert new.trace_id == old.trace_id
    assert new.assessment_id == raw_new["assessment_id"] != old.assessment_id
    assert new.overrides == old.assessment_id == raw_old["assessment_id"]
    assert (new.valid, old.valid) == (True, False)
    assert (new.value, new.numeric_value) == (0.9, 0.9)
    assert (old.value, old.numeric_value) == (0.2, 0.2)
    assert old.overrides is None
    assert (new.source_type, old.source_type) == ("HUMAN", "LLM_JUDGE")
    assert new.rationale == "Reviewed by hand: the answer is good."
    _check_times(new, raw_new)
    _check_times(old, raw_old)
    assert new.create_time_ms >= old.create_time_ms


def test_assessment_variants(fixture_json: FixtureJson) -> None:
    obj = fixture_json("assessment_feedback_numeric.json")
    obj["create_time"] = T0_MS
    del obj["last_update_time"]
    obj["valid"] = None
    obj["feedback"] = {"value": {"score": 3}, "error": "timeout"}
    obj["span_id"] = "fMnyGJqbCPo="
    obj["metadata"] = {"judge_model": "m1", "attempt": 2}
    obj["rationale"] = 5  # not a string: dropped, not fatal
    ev = _assessment(obj)
    assert (ev.create_time_ms, ev.last_update_time_ms) == (T0_MS, T0_MS)
    assert ev.valid is True
    assert ev.value == {"score": 3}
    assert ev.numeric_value is None
    assert ev.error == "timeout"
    assert ev.span_id == "fMnyGJqbCPo="
    assert ev.metadata == {"judge_model": "m1", "attempt": "2"}
    assert ev.rationale is None


def test_assessment_error_without_message_uses_code(fixture_json: FixtureJson) -> None:
    obj = fixture_json("assessment_feedback_error.json")
    obj["feedback"]["error"] = {"error_code": "TIMEOUT"}
    assert _assessment(obj).error == "TIMEOUT"
    obj["feedback"]["error"] = {"stack": 1}
    assert _assessment(obj).error == '{"stack":1}'


def test_nul_in_names_and_messages_becomes_replacement_character(
        fixture_json: FixtureJson) -> None:
    """PostgreSQL text cannot hold NUL: ids are rejected (above), free text is cleaned."""
    obj = fixture_json("assessment_feedback_error.json")
    obj["assessment_name"] = "ground\x00edness"
    obj["rationale"] = "why\x00"
    obj["feedback"]["error"]["error_message"] = "judge\x00failed"
    ev = _assessment(obj)
    assert (ev.name, ev.rationale, ev.error) == (
        "ground\ufffdedness", "why\ufffd", "judge\ufffdfailed")
    row = _flat_row()
    row["name"] = "chat\x00app"
    assert _trace(row).name == "chat\ufffdapp"


def test_expectation_numbers_are_not_scores(fixture_json: FixtureJson) -> None:
    obj = fixture_json("assessment_expectation.json")
    obj["expectation"]["value"] = 1.0
    ev = _assessment(obj)
    assert (ev.kind, ev.value, ev.numeric_value) == ("expectation", 1.0, None)


def test_list_and_dict_expectations_in_mlflows_serialized_form() -> None:
    """MLflow writes list and dict expectation values as serialized JSON, not as ``value``."""
    from mlflow.entities import AssessmentSource, Expectation

    for value in (["Paris is the capital of France", "MLflow Tracking"], {"a": [1, 2]}):
        doc = Expectation(name="expected_facts", value=value, trace_id="tr-1",
                          source=AssessmentSource(source_type="HUMAN", source_id="me")
                          ).to_dictionary()
        doc["assessment_id"] = "a-1"
        assert "serialized_value" in doc["expectation"]  # the form this test is about
        ev = _assessment(doc)
        assert (ev.kind, ev.name, ev.value) == ("expectation", "expected_facts", value)
    broken = dict(doc, expectation={"serialized_value": {"serialization_format": "JSON_FORMAT",
                                                         "value": "[not json"}})
    with pytest.raises(DecodeError, match=r"^expectation\.serialized_value\.value"):
        _assessment(broken)


# ---------------------------------------------------------------------------------------------
# numeric_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, 1.0), (False, 0.0), (0.3, 0.3), (3, 3.0), (-2, -2.0), (0, 0.0),
        ("yes", 1.0), (" Yes ", 1.0), ("TRUE", 1.0), ("pass", 1.0), ("passed", 1.0),
        ("no", 0.0), ("No", 0.0), ("false", 0.0), ("fail", 0.0), ("FAILED", 0.0),
        ("maybe", None), ("", None), ("0.5", None), (None, None), ({"score": 1}, None),
        ([1], None), (float("inf"), None), (float("-inf"), None), (float("nan"), None),
    ],
)
def test_numeric_value(value: Any, expected: float | None) -> None:
    result = numeric_value(value)
    assert result == expected
    assert expected is None or type(result) is float


def test_numeric_value_huge_int_is_none() -> None:
    assert numeric_value(10**400) is None


# ---------------------------------------------------------------------------------------------
# Malformed input: every case is a DecodeError whose message starts with the field path


def _big_trace(fixture_json: FixtureJson) -> bytes:
    obj = fixture_json("trace_info_ok.json")
    obj["request_preview"] = "x" * (10 * 1024 * 1024)
    return _bytes(obj)


@pytest.mark.parametrize("decode", [decode_trace, decode_assessment])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "empty record (a tombstone)"),
        (b"", "not valid UTF-8 JSON"),
        (b"not json{", "not valid UTF-8 JSON"),
        (b'{"trace_id": "tr-\xff\xfe"}', "not valid UTF-8 JSON"),
        (b"\xef\xbb\xbf\x00\x01", "not valid UTF-8 JSON"),
        (b'{"trace_id": "x",}', "not valid UTF-8 JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"a string"', "expected a JSON object, got str"),
        (b"null", "expected a JSON object, got NoneType"),
        (b"12", "expected a JSON object, got int"),
    ],
    ids=["tombstone", "empty", "not-json", "not-utf8", "binary", "trailing-comma", "list",
         "string", "null", "number"],
)
def test_payload_level_errors(decode: Callable[..., object], value: bytes | None,
                              message: str) -> None:
    exc = _raises_field(lambda: decode(value, PROV, MAX_BYTES), "payload")
    assert message in str(exc)


@pytest.mark.parametrize("decode", [decode_trace, decode_assessment])
def test_ten_megabyte_payload_is_rejected_before_parsing(decode: Callable[..., object],
                                                         fixture_json: FixtureJson) -> None:
    payload = _big_trace(fixture_json)
    assert len(payload) > 10 * 1024 * 1024
    exc = _raises_field(lambda: decode(payload, PROV, MAX_BYTES), "payload")
    assert f"{len(payload)} bytes exceeds max_event_bytes=4194304" in str(exc)


def test_limit_is_inclusive(fixture_bytes: FixtureBytes) -> None:
    payload = fixture_bytes("trace_ok.json")
    assert decode_trace(payload, PROV, len(payload)).status == "OK"
    _raises_field(lambda: decode_trace(payload, PROV, len(payload) - 1), "payload")


def test_unknown_trace_format_names_the_keys() -> None:
    exc = _raises_field(lambda: _trace({"hello": 1, "span": []}), "payload")
    assert "unknown trace format" in str(exc)
    assert "got keys [hello, span]" in str(exc)


def test_a_flat_row_without_trace_id_is_an_unknown_format() -> None:
    exc = _raises_field(lambda: _trace({"status": "OK", "timestamp_ms": 1}), "payload")
    assert "unknown trace format" in str(exc)


def _set(path: str, value: Any) -> Callable[[Any], None]:
    """A mutation that sets (or, for ``...``, deletes) the value at a ``/``-separated path."""

    def mutate(obj: Any) -> None:
        *parents, last = path.split("/")
        for key in parents:
            obj = obj[int(key)] if isinstance(obj, list) else obj[key]
        if value is ...:
            del obj[last]
        elif isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value

    return mutate


LONG_ID = "t" * 257
USAGE = "mlflow.trace.tokenUsage"

TRACE_JSON_CASES: list[tuple[str, Any, str, str]] = [
    # missing / empty / oversized trace_id
    ("info/trace_id", ..., "info.trace_id", "is missing"),
    ("info/trace_id", None, "info.trace_id", "is missing"),
    ("info/trace_id", "", "info.trace_id", "is empty"),
    ("info/trace_id", 42, "info.trace_id", "expected a string, got int"),
    ("info/trace_id", LONG_ID, "info.trace_id", "longer than 256 characters"),
    ("info/trace_id", "tr-\x00", "info.trace_id", "contains a NUL character"),
    # negative and wrongly typed durations and times
    ("info/execution_duration_ms", -5, "info.execution_duration_ms", "must be >= 0, got -5"),
    ("info/execution_duration_ms", "1500", "info.execution_duration_ms",
     "expected a number, got str"),
    ("info/execution_duration_ms", True, "info.execution_duration_ms",
     "expected a number, got bool"),
    ("info/execution_duration_ms", 1e300, "info.execution_duration_ms", "out of range"),
    ("info/execution_duration_ms", [1500], "info.execution_duration_ms",
     "expected a number, got list"),
    ("data/spans/1/end_time_unix_nano", 1_768_478_400_000_000_000, "data.spans[1]",
     "end_time_unix_nano is before start_time_unix_nano"),
    ("data/spans/0/start_time_unix_nano", -1, "data.spans[0].start_time_unix_nano",
     "must be >= 0"),
    ("data/spans/0/start_time_unix_nano", ..., "data.spans[0].start_time_unix_nano",
     "is missing"),
    ("data/spans/2/end_time_unix_nano", "soon", "data.spans[2].end_time_unix_nano",
     "expected a number, got str"),
    ("info/request_time", ..., "info.request_time", "is missing"),
    ("info/request_time", "yesterday", "info.request_time", "not an ISO-8601 time"),
    ("info/request_time", "2026-01-15T12:00:00", "info.request_time", "without a time zone"),
    ("info/request_time", False, "info.request_time", "expected a number, got bool"),
    ("info/request_time", -1, "info.request_time", "must be >= 0"),
    # wrong types of the structure
    ("info", [1], "info", "expected an object, got list"),
    ("data", "spans", "data", "expected an object, got str"),
    ("data/spans", {"0": {}}, "data.spans", "expected a list, got dict"),
    ("data/spans/1", "span", "data.spans[1]", "expected an object, got str"),
    ("data/spans/2/attributes", ["mlflow.spanType"], "data.spans[2].attributes",
     "expected an object"),
    ("data/spans/3/name", 7, "data.spans[3].name", "expected a string, got int"),
    ("info/state", "DONE", "info.state", "expected one of OK, ERROR, IN_PROGRESS"),
    ("info/state", "ok", "info.state", "expected one of OK, ERROR, IN_PROGRESS"),
    ("info/state", ..., "info.state", "got None"),
    ("info/state", 1, "info.state", "expected one of"),
    ("info/trace_location", "exp-1", "info.trace_location", "expected an object"),
    ("info/trace_location/mlflow_experiment/experiment_id", 1,
     "info.trace_location.mlflow_experiment.experiment_id", "expected a string, got int"),
    ("info/tags", ["environment"], "info.tags", "expected an object, got list"),
    ("info/tags/environment", {"name": "production"}, "info.tags.environment",
     "expected a string value, got dict"),
    ("info/trace_metadata", "meta", "info.trace_metadata", "expected an object, got str"),
    ("info/request_preview", 3, "info.request_preview", "expected a string, got int"),
    # token usage (the metadata value is itself JSON text)
    (f"info/trace_metadata/{USAGE}", "{not json", f"metadata.{USAGE}", "not valid JSON"),
    (f"info/trace_metadata/{USAGE}", "[120, 45]", f"metadata.{USAGE}", "expected an object"),
    (f"info/trace_metadata/{USAGE}", '{"input_tokens": -1}', f"metadata.{USAGE}.input_tokens",
     "must be >= 0"),
    (f"info/trace_metadata/{USAGE}", '{"total_tokens": "165"}',
     f"metadata.{USAGE}.total_tokens", "expected a number, got str"),
]


def _case_id(case: tuple[str, Any, str, str]) -> str:
    path, value, _, _ = case
    shown = "deleted" if value is ... else type(value).__name__
    return f"{path}={shown}"


@pytest.mark.parametrize(("path", "value", "field", "message"), TRACE_JSON_CASES,
                         ids=[_case_id(c) for c in TRACE_JSON_CASES])
def test_malformed_trace_json(fixture_json: FixtureJson, path: str, value: Any, field: str,
                              message: str) -> None:
    obj = fixture_json("trace_ok.json")
    if path == "info/request_preview":
        # Read only when neither the root span nor the metadata gives the request.
        obj["data"]["spans"] = []
        del obj["info"]["trace_metadata"]["mlflow.traceInputs"]
    _set(path, value)(obj)
    exc = _raises_field(lambda: _trace(obj), field)
    assert message in str(exc)


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("trace_id", ..., "trace_id", "is missing"),
        ("trace_id", ["tr-1"], "trace_id", "expected a string, got list"),
        ("execution_duration_ms", -1, "execution_duration_ms", "must be >= 0"),
        ("state", "RUNNING", "state", "expected one of"),
        ("request_time", "2026-13-45T00:00:00Z", "request_time", "not an ISO-8601 time"),
        ("tags", "environment=production", "tags", "expected an object"),
    ],
)
def test_malformed_trace_info(fixture_json: FixtureJson, path: str, value: Any, field: str,
                              message: str) -> None:
    obj = fixture_json("trace_info_ok.json")
    _set(path, value)(obj)
    exc = _raises_field(lambda: _trace(obj), field)
    assert message in str(exc)


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("trace_id", None, "trace_id", "is missing"),
        ("trace_id", "", "trace_id", "is empty"),
        ("trace_id", 17, "trace_id", "expected a string, got int"),
        ("trace_id", "tr\x00x", "trace_id", "contains a NUL character"),
        ("experiment_id", "", "experiment_id", "is empty"),
        ("experiment_id", "7\x00", "experiment_id", "contains a NUL character"),
        ("experiment_id", LONG_ID, "experiment_id", "longer than 256 characters"),
        ("status", ..., "status", "got None"),
        ("status", "ok", "status", "expected one of"),
        ("timestamp_ms", ..., "timestamp_ms", "is missing"),
        ("timestamp_ms", "2026-01-15T12:00:00Z", "timestamp_ms", "expected a number, got str"),
        ("timestamp_ms", -1, "timestamp_ms", "must be >= 0"),
        ("execution_time_ms", -1234, "execution_time_ms", "must be >= 0, got -1234"),
        ("execution_time_ms", "1234", "execution_time_ms", "expected a number, got str"),
        ("experiment_id", ["7"], "experiment_id", "expected a string, got list"),
        ("experiment_id", True, "experiment_id", "expected a string, got bool"),
        ("name", 3, "name", "expected a string, got int"),
        ("tags", [], "tags", "expected an object, got list"),
        ("metadata/nested", {"a": 1}, "metadata.nested", "expected a string value, got dict"),
        ("metadata", {USAGE: "oops"}, f"metadata.{USAGE}", "not valid JSON"),
        ("spans", {"name": "llm"}, "spans", "expected a list, got dict"),
        ("spans/0", "llm", "spans[0]", "expected an object, got str"),
        ("spans/0/start_time_ns", ..., "spans[0].start_time_ns", "is missing"),
        ("spans/0/start_time_ns", -5, "spans[0].start_time_ns", "must be >= 0"),
        ("spans/1/end_time_ns", 0, "spans[1]", "end_time_ns is before start_time_ns"),
        ("spans/1/end_time_ns", "later", "spans[1].end_time_ns", "expected a number, got str"),
        ("spans/0/span_type", 1, "spans[0].span_type", "expected a string, got int"),
    ],
)
def test_malformed_flat_row(path: str, value: Any, field: str, message: str) -> None:
    row = _flat_row()
    _set(path, value)(row)
    exc = _raises_field(lambda: _trace(row), field)
    assert message in str(exc)


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("assessment_id", ..., "assessment_id", "is missing"),
        ("assessment_id", 5, "assessment_id", "expected a string, got int"),
        ("assessment_id", LONG_ID, "assessment_id", "longer than 256 characters"),
        ("assessment_id", "a-\x00", "assessment_id", "contains a NUL character"),
        ("trace_id", "\x00", "trace_id", "contains a NUL character"),
        ("trace_id", ..., "trace_id", "is missing"),
        ("trace_id", "", "trace_id", "is empty"),
        ("assessment_name", ..., "assessment_name", "is missing"),
        ("assessment_name", ["relevance"], "assessment_name", "expected a string, got list"),
        ("assessment_name", "n" * 1001, "assessment_name", "longer than 1000 characters"),
        ("feedback", ..., "feedback/expectation", "exactly one of"),
        ("expectation", {"value": "x"}, "feedback/expectation", "exactly one of"),
        ("feedback", "0.3", "feedback", "expected an object, got str"),
        ("feedback", [0.3], "feedback", "expected an object, got list"),
        ("create_time", ..., "create_time", "is missing"),
        ("create_time", "2026-11-27 11:56", "create_time", "without a time zone"),
        ("create_time", "last tuesday", "create_time", "not an ISO-8601 time"),
        ("create_time", -1, "create_time", "must be >= 0"),
        ("last_update_time", True, "last_update_time", "expected a number, got bool"),
        ("valid", "false", "valid", "expected a boolean, got str"),
        ("valid", 0, "valid", "expected a boolean, got int"),
        ("source", "HUMAN", "source", "expected an object, got str"),
        ("source/source_type", 1, "source.source_type", "expected a string, got int"),
        ("source/source_id", ["judge"], "source.source_id", "expected a string, got list"),
        ("overrides", 5, "overrides", "expected a string, got int"),
        ("overrides", LONG_ID, "overrides", "longer than 256 characters"),
        ("span_id", {"id": 1}, "span_id", "expected a string, got dict"),
        ("metadata", ["k"], "metadata", "expected an object, got list"),
        ("metadata", {"k": [1]}, "metadata.k", "expected a string value, got list"),
    ],
)
def test_malformed_assessment(fixture_json: FixtureJson, path: str, value: Any, field: str,
                              message: str) -> None:
    obj = fixture_json("assessment_feedback_numeric.json")
    _set(path, value)(obj)
    exc = _raises_field(lambda: _assessment(obj), field)
    assert message in str(exc)


@pytest.mark.parametrize("body", [{}, {"value": None}, {"value": None, "error": 3}])
def test_expectation_without_value(fixture_json: FixtureJson, body: dict[str, Any]) -> None:
    obj = fixture_json("assessment_expectation.json")
    obj["expectation"] = body
    exc = _raises_field(lambda: _assessment(obj), "expectation.value")
    assert "is missing" in str(exc)


# ---------------------------------------------------------------------------------------------
# Deep nesting: orjson reads 1,024 levels but writes 254 (more in test_hostile_formats.py)


def _nested_object_text(depth: int) -> str:
    """JSON text nested ``depth`` levels: orjson parses up to 1024 but serializes only 255."""
    return '{"x":' * depth + "{}" + "}" * depth


def test_deep_feedback_error_is_a_decode_error(fixture_json: FixtureJson) -> None:
    obj = fixture_json("assessment_feedback_error.json")
    obj["feedback"]["error"] = "@DEEP@"
    payload = json.dumps(obj).replace('"@DEEP@"', _nested_object_text(300)).encode()
    with pytest.raises(DecodeError) as info:
        decode_assessment(payload, PROV, MAX_BYTES)
    assert str(info.value).startswith("feedback.error")


def test_deep_flat_request_is_a_decode_error() -> None:
    row = {"trace_id": "t", "status": "OK", "timestamp_ms": 1, "request": "@DEEP@"}
    payload = json.dumps(row).replace('"@DEEP@"', _nested_object_text(300)).encode()
    exc = _raises_field(lambda: decode_trace(payload, PROV, MAX_BYTES), "request")
    assert "nested deeper than 254 levels" in str(exc)


def test_deep_flat_response_names_response() -> None:
    row = {"trace_id": "t", "status": "OK", "timestamp_ms": 1, "response": "@DEEP@"}
    payload = json.dumps(row).replace('"@DEEP@"', _nested_object_text(300)).encode()
    _raises_field(lambda: decode_trace(payload, PROV, MAX_BYTES), "response")


def test_iso_time_before_epoch_is_rejected_like_a_negative_number(
        fixture_json: FixtureJson) -> None:
    obj = fixture_json("trace_info_ok.json")
    obj["request_time"] = "1969-12-31T23:59:59.999Z"
    _raises_field(lambda: _trace(obj), "request_time")


# ---------------------------------------------------------------------------------------------
# Dead letters


def _record(value: bytes | None, key: bytes | None = b"tr-key") -> RawRecord:
    return RawRecord(topic=PROV.topic, partition=PROV.partition, offset=PROV.offset, key=key,
                     value=value, timestamp_ms=T0_MS)


def _decode_error(value: bytes | None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode_trace(value, PROV, MAX_BYTES)
    return info.value


def test_dead_letter_of_a_decode_error() -> None:
    raw = _record(b'{"trace_id": "tr-1", "status": "DONE", "timestamp_ms": 1}')
    exc = _decode_error(raw.value)
    dl = dead_letter(raw, exc, now_ms=T0_MS + 1, max_payload_bytes=1024)
    assert dl.provenance == PROV
    assert dl.key == b"tr-key"
    assert dl.payload == raw.value
    assert dl.payload_size_bytes == len(raw.value or b"")
    assert dl.error_type == "DecodeError"
    assert dl.error == str(exc)
    assert dl.error.startswith("status: expected one of OK, ERROR, IN_PROGRESS")
    assert dl.traceback is None  # poison input, not a bug: no traceback
    assert dl.created_ms == T0_MS + 1


def test_dead_letter_truncates_the_payload(fixture_json: FixtureJson) -> None:
    payload = _big_trace(fixture_json)
    raw = _record(payload, key=None)
    dl = dead_letter(raw, _decode_error(payload), now_ms=0, max_payload_bytes=64 * 1024)
    assert dl.payload == payload[:64 * 1024]
    assert dl.payload_size_bytes == len(payload)
    assert dl.key is None
    assert dl.error.startswith("payload: ")


def test_dead_letter_of_a_tombstone() -> None:
    raw = _record(None)
    dl = dead_letter(raw, _decode_error(None), now_ms=5, max_payload_bytes=1024)
    assert (dl.payload, dl.payload_size_bytes) == (b"", 0)
    assert "tombstone" in dl.error


def _buggy_decoder() -> None:
    empty: dict[str, int] = {}
    empty["missing"]  # an unexpected exception inside a decoder


def test_dead_letter_of_an_unexpected_exception_keeps_the_traceback() -> None:
    try:
        _buggy_decoder()
    except KeyError as exc:
        dl = dead_letter(_record(b"{}"), exc, now_ms=1, max_payload_bytes=1024)
    assert dl.error_type == "KeyError"
    assert dl.error == "'missing'"
    assert dl.traceback is not None
    assert "_buggy_decoder" in dl.traceback
    assert dl.traceback.rstrip().endswith("KeyError: 'missing'")


def test_dead_letter_bounds_the_error_text() -> None:
    exc = DecodeError("x" * 5000, "payload")
    dl = dead_letter(_record(b"{}"), exc, now_ms=1, max_payload_bytes=1024)
    assert len(dl.error) == 2000
    assert dl.error.startswith("payload: xxx")
