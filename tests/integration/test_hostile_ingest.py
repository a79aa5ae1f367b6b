"""Poison never blocks, for records the store cannot write (issue 12, items 1 and 2), on the real
broker and both stores.

Before the fix, an assessment value nested ~300 levels deep made the store's encoder raise
TypeError, and an int beyond int64 made SQLite raise OverflowError (PostgreSQL refused the
same row): ``trace-curator run`` exited 1, every restart did the same, and nothing after the
record was ever stored. Now the decoder refuses such records, naming the field and the bound,
and a value that still reaches the store unencodable is refused by the store's safety net
(``StoreRejectedError``), so the loop dead-letters that one event and goes on.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text

from consumers.errors import TransientError
from consumers.events import AssessmentEvent, Provenance, RawRecord, TraceEvent
from consumers.formats import TOKEN_USAGE_KEY, decode_trace
from store.engine import make_engine
from store.metrics import MetricsConfig
from store.models import Assessment, DeadLetter, Trace
from store.report import summary
from store.upserts import Batch
from store.writer import SqlWriter, StoreRejectedError, write_batch
from tests import payloads as P
from tests.fakes import FakeDeadLetters, FakeSource
from tests.helpers import bucket_snapshot
from worker.loop import Worker
from worker.settings import Settings

pytestmark = pytest.mark.integration

BASE_MS = 1_795_000_000_000
END_9999_MS = 253_402_300_799_999
DEEP = 300  # orjson reads up to 1,024 levels, writes 254


def nested(depth: int, kind: str = "object") -> Any:
    v: Any = 1
    for _ in range(depth):
        v = {"x": v} if kind == "object" else [v]
    return v


def _wire(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # json, not orjson: it writes any depth and any int


# -- the hostile records: (payload, the start of the dead letter's error) ----------------------


def _hostile_traces() -> list[tuple[bytes, str]]:
    tokens = P.trace_doc("ok", start_ms=BASE_MS)
    tokens["info"]["trace_metadata"][TOKEN_USAGE_KEY] = json.dumps(
        {"input_tokens": 2**62, "output_tokens": 2**62})
    late_iso = P.trace_doc("ok", start_ms=BASE_MS)
    late_iso["info"]["request_time"] = "9999-12-31T23:59:59.999-01:00"  # year 10000 in UTC
    span_ns = P.trace_doc("ok", start_ms=BASE_MS)
    span_ns["data"]["spans"][1]["end_time_unix_nano"] = (END_9999_MS + 1) * 1_000_000
    duration = P.trace_doc("ok", start_ms=BASE_MS)
    duration["info"]["execution_duration_ms"] = 2**63
    flat = {"trace_id": P.new_trace_id(), "status": "OK", "timestamp_ms": BASE_MS}
    return [
        (_wire(tokens), f"metadata.{TOKEN_USAGE_KEY}.total_tokens: out of range"),
        (_wire(late_iso), "info.request_time: out of range"),
        (_wire(span_ns), "data.spans[1].end_time_unix_nano: out of range"),
        (_wire(duration), "info.execution_duration_ms: out of range"),
        (_wire({**flat, "timestamp_ms": END_9999_MS + 1}), "timestamp_ms: out of range"),
        (_wire({**flat, "execution_time_ms": 2**63}), "execution_time_ms: out of range"),
        (_wire({**flat, "spans": [{"name": "llm", "start_time_ns": 0,
                                   "end_time_ns": 10**21}]}),
         "spans[0].end_time_ns: out of range"),
        (_wire({**flat, "request": nested(DEEP)}), "request: nested deeper than 254 levels"),
        # Errors that quote a key holding a NUL: PostgreSQL refused the dead letter itself.
        (b'{"a\\u0000": 1}', "payload: unknown trace format"),
        (_wire({**flat, "tags": {"k\x00": [1]}}), "tags.k\ufffd: expected a string value"),
    ]


def _hostile_assessments(trace_ids: list[str]) -> list[tuple[bytes, str]]:
    def fb(**fields: Any) -> dict[str, Any]:
        doc = P.assessment_doc("feedback_numeric", trace_id=trace_ids[0])
        doc.update(fields)
        return doc

    def ex(body: dict[str, Any]) -> dict[str, Any]:
        doc = P.assessment_doc("expectation", trace_id=trace_ids[1])
        doc["expectation"] = body
        return doc

    error = P.assessment_doc("feedback_error", trace_id=trace_ids[2])
    error["feedback"]["error"] = {"error_detail": nested(DEEP)}
    return [
        (_wire(fb(feedback={"value": nested(DEEP)})),
         "feedback.value: nested deeper than 254 levels"),
        (_wire(ex({"value": nested(DEEP, "array")})),
         "expectation.value: nested deeper than 254 levels"),
        (_wire(ex({"serialized_value": {"serialization_format": "JSON_FORMAT",
                                        "value": json.dumps(nested(DEEP))}})),
         "expectation.serialized_value.value: nested deeper than 254 levels"),
        (_wire(error), "feedback.error: nested deeper than 254 levels"),
        (_wire(fb(create_time=2**62, last_update_time=None)), "create_time: out of range"),
        (_wire(fb(last_update_time=2**62)), "last_update_time: out of range"),
        (_wire(fb(create_time=END_9999_MS + 1)), "create_time: out of range"),
    ]


def _send(producer: Any, topic: str, payloads: list[bytes]) -> list[int]:
    """One partition, so every record's offset is known."""
    futures = [producer.send(topic, partition=0, key=b"k", value=p) for p in payloads]
    producer.flush()
    return [f.get(timeout=30).offset for f in futures]


def _state(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "traces": conn.execute(select(Trace.trace_id, Trace.completeness, Trace.total_tokens,
                                          Trace.ingested_ms).order_by(Trace.trace_id)).all(),
            "assessments": conn.execute(select(Assessment.assessment_id, Assessment.version,
                                               Assessment.ingested_ms)
                                        .order_by(Assessment.assessment_id)).all(),
            "dead_letters": conn.execute(text(
                "SELECT topic, \"offset\", error, created_ms FROM dead_letters "
                "ORDER BY topic, \"offset\"")).all(),
            "buckets": bucket_snapshot(engine),
        }


def test_records_the_store_cannot_write_are_dead_lettered_and_ingest_goes_on(
        settings_factory: Any, producer: Any, run_worker: Any) -> None:
    settings = settings_factory(batch_max_records=6)  # hostile and valid records share batches
    before = [P.trace_doc(k, start_ms=BASE_MS + i * 1000)
              for i, k in enumerate(["ok", "error", "slow", "ok"])]
    after = [P.trace_doc(k, start_ms=BASE_MS + 60_000 + i * 1000)
             for i, k in enumerate(["ok", "slow", "error"])]
    valid_traces = before + after
    tids = [d["info"]["trace_id"] for d in valid_traces]
    hostile_traces = _hostile_traces()
    trace_offsets = _send(producer, settings.trace_topic,
                          [P.dumps(d) for d in before] + [p for p, _ in hostile_traces]
                          + [P.dumps(d) for d in after])

    valid_assessments = [P.assessment_doc("feedback_numeric", trace_id=t, value=0.25 * (i % 4))
                         for i, t in enumerate(tids)]
    hostile_assessments = _hostile_assessments(tids)
    half = len(valid_assessments) // 2
    assessment_offsets = _send(producer, settings.assessment_topic,
                               [P.dumps(d) for d in valid_assessments[:half]]
                               + [p for p, _ in hostile_assessments]
                               + [P.dumps(d) for d in valid_assessments[half:]])

    hostile = len(hostile_traces) + len(hostile_assessments)
    stats = run_worker(settings)  # returns normally: before the fix it raised
    assert stats.records == len(trace_offsets) + len(assessment_offsets)
    assert stats.dead_letters == hostile

    engine = make_engine(settings.store_url_plain)
    with engine.connect() as conn:
        stored_traces = conn.execute(select(Trace.trace_id)).scalars().all()
        stored_assessments = conn.execute(select(Assessment.assessment_id)).scalars().all()
        letters = {(r.topic, r.offset): r for r in conn.execute(select(DeadLetter))}
    assert sorted(stored_traces) == sorted(tids)  # each once
    assert sorted(stored_assessments) == sorted(d["assessment_id"] for d in valid_assessments)

    expected_letters = {
        **{(settings.trace_topic, trace_offsets[len(before) + i]): error
           for i, (_, error) in enumerate(hostile_traces)},
        **{(settings.assessment_topic, assessment_offsets[half + i]): error
           for i, (_, error) in enumerate(hostile_assessments)},
    }
    assert sorted(letters) == sorted(expected_letters)
    for key, error in expected_letters.items():
        assert letters[key].error.startswith(error), (letters[key].error, error)
        assert letters[key].error_type == "DecodeError"

    # The metric totals count each valid record once, and no hostile one.
    events = [decode_trace(P.dumps(d), Provenance("t", 0, 0), 1 << 24) for d in valid_traces]
    report = summary(engine, BASE_MS - 3_600_000, BASE_MS + 3_600_000, now_ms=BASE_MS)
    overall = report.overall
    assert overall.total_traces == len(valid_traces)
    assert overall.ok_count == sum(e.status == "OK" for e in events)
    assert overall.tokens == {"input": sum(e.input_tokens or 0 for e in events),
                              "output": sum(e.output_tokens or 0 for e in events),
                              "total": sum(e.total_tokens or 0 for e in events)}
    name = valid_assessments[0]["assessment_name"]
    assert overall.assessments[name].count == len(valid_assessments)
    assert overall.assessments[name].mean == pytest.approx(
        sum(0.25 * (i % 4) for i in range(len(tids))) / len(tids))

    # A restart reads nothing new; a redelivery of both topics changes nothing.
    state = _state(engine)
    assert run_worker(settings).records == 0
    assert _state(engine) == state
    again = run_worker(settings.model_copy(update={"group_id": settings.group_id + "-2"}))
    assert again.records == stats.records and again.dead_letters == hostile
    assert _state(engine) == state
    engine.dispose()


# -- the store's safety net, driven directly (events built by hand, bypassing the decoder) -----

def _trace_event(offset: int, **fields: Any) -> TraceEvent:
    base: dict[str, Any] = dict(
        trace_id=f"tr-{offset}", experiment_id="1", name="chat", status="OK",
        timestamp_ms=BASE_MS + offset, execution_time_ms=10, request=None, response=None,
        tags={}, metadata={}, input_tokens=3, output_tokens=4, total_tokens=7, spans=(),
        source_format="flat", provenance=Provenance("traces", 0, offset))
    return TraceEvent(**{**base, **fields})


def _assessment_event(offset: int, **fields: Any) -> AssessmentEvent:
    base: dict[str, Any] = dict(
        assessment_id=f"a-{offset}", trace_id="tr-0", name="quality", kind="feedback",
        value=0.5, numeric_value=0.5, error=None, rationale=None, source_type=None,
        source_id=None, valid=True, overrides=None, span_id=None, create_time_ms=BASE_MS,
        last_update_time_ms=BASE_MS, metadata={}, provenance=Provenance("assess", 0, offset))
    return AssessmentEvent(**{**base, **fields})


# (the unwritable event, a word its refusal names). Before the fix: TypeError from orjson,
# OverflowError from sqlite3 (PostgreSQL refused it already), UnicodeEncodeError from either.
UNWRITABLE: dict[str, tuple[TraceEvent | AssessmentEvent, str]] = {
    "deep value": (_assessment_event(2, value=nested(DEEP)), "value"),
    "set value": (_assessment_event(2, value={1, 2}), "value"),
    "deep metadata": (_assessment_event(2, metadata={"k": nested(DEEP)}), "metadata"),
    "int above int64": (_trace_event(2, timestamp_ms=2**63), "timestamp_ms"),
    "tokens above int64": (_trace_event(2, input_tokens=2**62, output_tokens=2**62,
                                        total_tokens=2**63), "total_tokens"),
    "version above int64": (_assessment_event(2, create_time_ms=2**62,
                                              last_update_time_ms=2**62), "version"),
    "lone surrogate": (_trace_event(2, name="chat \ud800"), "name"),
}


def _batch(bad: TraceEvent | AssessmentEvent) -> Batch:
    traces = [_trace_event(i) for i in (0, 1, 3)]
    assessments = [_assessment_event(i) for i in (0, 1, 3)]
    (traces if isinstance(bad, TraceEvent) else assessments).insert(2, bad)
    return Batch(traces=traces, assessments=assessments)


def _counts(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("traces", "assessments", "dead_letters")]


@pytest.mark.parametrize("case", sorted(UNWRITABLE))
def test_the_store_refuses_an_unwritable_value_instead_of_crashing(engine: Engine,
                                                                   case: str) -> None:
    bad, names = UNWRITABLE[case]
    writer = SqlWriter(engine, metrics_config=MetricsConfig("environment", None, None))
    with pytest.raises(StoreRejectedError) as info:
        writer.write(_batch(bad), BASE_MS)
    assert names in str(info.value), str(info.value)
    assert str(info.value).startswith("store: ")
    assert _counts(engine) == [0, 0, 0]  # the whole batch rolled back


@pytest.mark.parametrize("case", sorted(UNWRITABLE))
def test_the_loop_isolates_an_unwritable_event(engine: Engine, case: str) -> None:
    bad, names = UNWRITABLE[case]
    batch = _batch(bad)
    records = [RawRecord(e.provenance.topic, 0, e.provenance.offset, None,
                         f"raw {e.provenance.offset}".encode())
               for e in [*batch.traces, *batch.assessments]]
    journal: list[str] = []
    dlq = FakeDeadLetters(journal)
    worker = Worker(Settings(trace_topic="traces", assessment_topic="assess"),
                    FakeSource([], journal),
                    SqlWriter(engine, metrics_config=MetricsConfig("environment", None, None)),
                    dlq, clock=lambda: BASE_MS / 1000)
    assert worker.store(batch, records)
    assert [d.provenance for d in dlq.published] == [bad.provenance]
    letter = dlq.published[0]
    assert letter.error_type == "StoreRejectedError" and names in letter.error
    assert letter.payload == b"raw 2"
    with engine.connect() as conn:
        assert sorted(conn.execute(select(Trace.trace_id)).scalars()) == sorted(
            e.trace_id for e in batch.traces if e is not bad)
        assert sorted(conn.execute(select(Assessment.assessment_id)).scalars()) == sorted(
            e.assessment_id for e in batch.assessments if e is not bad)
        rows = conn.execute(select(DeadLetter)).all()
    assert [(r.topic, r.offset, r.error) for r in rows] == [
        (bad.provenance.topic, 2, letter.error)]


class _BuggyDecider:
    """A rules engine with a bug: a TypeError that has nothing to do with the batch's values."""

    def evaluate(self, trace: Any, assessments: Any = ()) -> Any:
        return None + 1  # type: ignore[operator]

    def tag_keys(self) -> frozenset[str]:
        return frozenset({"eval_candidate"})

    def needs_assessments(self) -> bool:
        return False


def test_a_bug_is_not_mistaken_for_an_unwritable_value(engine: Engine) -> None:
    """The safety net is narrow: a TypeError from code, bad SQL and a missing table propagate
    (the worker stops and commits nothing), they are not dead-lettered."""
    good = Batch(traces=[_trace_event(0)], assessments=[_assessment_event(1)])
    with pytest.raises(TypeError):
        write_batch(engine, good, BASE_MS, _BuggyDecider())
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE assessments"))
    with pytest.raises(Exception) as info:
        write_batch(engine, good, BASE_MS)
    assert not isinstance(info.value, StoreRejectedError | TransientError), repr(info.value)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM traces")).scalar_one() == 0


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_locked_sqlite_store_is_still_transient(store_url: str, engine: Engine) -> None:
    """SQLite reports a lock and a missing table alike (OperationalError): only the first is
    retried."""
    impatient = create_engine(store_url, connect_args={"timeout": 0.05})
    with engine.connect() as holder:
        holder.exec_driver_sql("BEGIN EXCLUSIVE")
        with pytest.raises(TransientError, match="database is locked"):
            write_batch(impatient, Batch(traces=[_trace_event(0)]), BASE_MS)
        holder.rollback()
    impatient.dispose()


def test_one_huge_trace_does_not_block_its_buckets(engine: Engine) -> None:
    """Each value fits int64, but a bucket sums many traces: one trace at the limit must not
    push its buckets to int64 and make every later trace of that minute a refused row. What a
    trace adds to the sums is bounded (its stored row keeps the true values), and a later
    normal trace of the same minute and names is stored and counted."""
    from store.rollup import METRIC_MAX_MS, METRIC_MAX_TOKENS

    writer = SqlWriter(engine, metrics_config=MetricsConfig("environment", None, None))
    huge = _trace_event(0, input_tokens=2**63 - 1, output_tokens=0, total_tokens=2**63 - 1,
                        execution_time_ms=2**62)
    writer.write(Batch(traces=[huge]), BASE_MS)
    writer.write(Batch(traces=[_trace_event(1), _trace_event(2)]), BASE_MS)
    assert _counts(engine) == [3, 0, 0]
    report = summary(engine, BASE_MS - 60_000, BASE_MS + 60_000).overall
    assert report.total_traces == 3
    assert report.tokens["input"] == METRIC_MAX_TOKENS + 2 * 3
    assert report.tokens["total"] == METRIC_MAX_TOKENS + 2 * 7
    assert report.max_latency_ms == pytest.approx(METRIC_MAX_MS, rel=0.01)
    with engine.connect() as conn:  # the row keeps what the trace said
        row = conn.execute(select(Trace.input_tokens, Trace.execution_time_ms)
                           .where(Trace.trace_id == "tr-0")).one()
    assert tuple(row) == (2**63 - 1, 2**62)
    before = bucket_snapshot(engine)
    writer.write(Batch(traces=[huge]), BASE_MS)  # a redelivery changes nothing
    assert bucket_snapshot(engine) == before
