"""The loop's pure logic with in-memory ports: checkpoint order, retries, stop, isolation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from consumers.errors import TransientError
from consumers.events import RawRecord
from store.upserts import Batch
from store.writer import StoreRejectedError
from tests.fakes import FakeDeadLetters, FakeSource, FakeWriter
from tests.otlp_spans import TRACE_A, TRACE_B, request, span
from worker.loop import Worker, next_offsets
from worker.settings import Settings

TRACES, ASSESS = "traces", "assessments"


def flat(i: int) -> bytes:
    return orjson.dumps({"trace_id": f"tr-{i}", "status": "OK", "timestamp_ms": 1000 + i,
                         "execution_time_ms": 10})


def records(n: int, start: int = 0, partition: int = 0) -> list[RawRecord]:
    return [RawRecord(TRACES, partition, start + i, None, flat(start + i)) for i in range(n)]


def make(recs: list[RawRecord], fail: Any = None, batch: int = 10,
         ) -> tuple[Worker, FakeSource, FakeWriter, FakeDeadLetters, list[str]]:
    journal: list[str] = []
    settings = Settings(trace_topic=TRACES, assessment_topic=ASSESS, db_retry_max_wait_s=0.01,
                        poll_timeout_ms=1)
    src = FakeSource(recs, journal, batch, topics={TRACES: "trace", ASSESS: "assessment"})
    writer, dlq = FakeWriter(journal, fail), FakeDeadLetters(journal)
    return Worker(settings, src, writer, dlq, clock=lambda: 1_800_000_000.0), src, writer, dlq, \
        journal


def test_checkpoint_order_is_dead_letters_then_store_then_offsets() -> None:
    recs = records(3)
    recs.insert(1, RawRecord(TRACES, 0, 99, None, b"not json"))
    w, src, writer, dlq, journal = make(recs)
    w.run(exit_when_idle_s=0)
    assert journal == ["poll:4", "dlq.publish:1", "dlq.flush", "write", "commit"]
    assert src.committed == {(TRACES, 0): 100}
    assert writer.trace_ids == ["tr-0", "tr-1", "tr-2"]
    assert dlq.published[0].provenance.offset == 99
    assert dlq.published[0].error.startswith("payload: not valid UTF-8 JSON")


def test_transient_store_errors_are_retried_and_commit_waits() -> None:
    failures = iter([TransientError("db down")] * 3)
    w, src, writer, _, journal = make(records(5), fail=lambda b: next(failures, None))
    stats = w.run(exit_when_idle_s=0)
    assert journal == ["poll:5"] + ["write:failed"] * 3 + ["write", "commit"]
    assert stats.retries == 3
    assert src.committed == {(TRACES, 0): 5}


def test_a_retry_does_not_resend_flushed_dead_letters() -> None:
    failures = iter([TransientError("db down")] * 2)
    recs = [*records(2), RawRecord(TRACES, 0, 2, None, b"not json")]
    w, src, _, dlq, journal = make(recs, fail=lambda b: next(failures, None))
    w.run(exit_when_idle_s=0)
    assert journal == ["poll:3", "dlq.publish:1", "dlq.flush"] + ["write:failed"] * 2 + [
        "write", "commit"]
    assert len(dlq.published) == 1 and src.committed == {(TRACES, 0): 3}


def test_stop_during_an_outage_commits_nothing() -> None:
    w, src, writer, _, journal = make(records(5), fail=lambda b: TransientError("db down"))
    threading.Timer(0.3, w.stop.set).start()
    stats = w.run()
    assert "commit" not in journal
    assert src.committed == {}
    assert stats.records == 0 and writer.attempts >= 2


def test_a_bug_in_the_store_stops_the_worker_without_commit() -> None:
    w, src, _, _, journal = make(records(5), fail=lambda b: RuntimeError("bug"))
    with pytest.raises(RuntimeError):
        w.run(exit_when_idle_s=0)
    assert src.committed == {}
    assert "commit" not in journal


def test_a_refused_row_is_isolated_and_dead_lettered() -> None:
    def fail(b: Batch) -> BaseException | None:
        if any(t.trace_id == "tr-2" for t in b.traces):
            return StoreRejectedError("value too long", "store")
        return None

    w, src, writer, dlq, _ = make(records(5), fail=fail)
    stats = w.run(exit_when_idle_s=0)
    assert sorted(writer.trace_ids) == ["tr-0", "tr-1", "tr-3", "tr-4"]
    assert [d.provenance.offset for d in dlq.published] == [2]
    assert dlq.published[0].payload == flat(2)
    assert writer.batches[-1].dead_letters == dlq.published  # and its dead_letters row
    assert src.committed == {(TRACES, 0): 5}
    assert stats.dead_letters == 1


def test_spans_beside_a_refused_row_are_kept_and_refused_spans_cost_only_their_record(
) -> None:
    """A batch of trace records and OpenTelemetry records, one trace refused and one record's
    spans refused: the other records' spans still reach the buffer, the two records are
    dead-lettered, every offset is committed."""
    otlp = [RawRecord("otlp", 0, i, None, request(span(trace=t, span_id=1)).SerializeToString())
            for i, t in enumerate((TRACE_A, TRACE_B))]

    def fail(b: Batch) -> BaseException | None:
        if any(t.trace_id == "tr-1" for t in b.traces) or any(
                s.trace_id == "tr-" + TRACE_B.hex() for s, _ in b.spans):
            return StoreRejectedError("value too long", "store")
        return None

    journal: list[str] = []
    src = FakeSource([*records(3), *otlp], journal, 10,
                     topics={TRACES: "trace", "otlp": "otlp"})
    writer, dlq = FakeWriter(journal, fail), FakeDeadLetters(journal)
    w = Worker(Settings(trace_topic=TRACES, assessment_topic=ASSESS, otlp_topic="otlp",
                        poll_timeout_ms=1), src, writer, dlq, emitter=_Emitter(due=0))
    stats = w.run(exit_when_idle_s=0)
    assert sorted(writer.trace_ids) == ["tr-0", "tr-2"]
    assert [s.trace_id for b in writer.batches for s, _ in b.spans] == ["tr-" + TRACE_A.hex()]
    assert sorted((d.provenance.topic, d.provenance.offset) for d in dlq.published) == [
        ("otlp", 1), (TRACES, 1)]
    assert src.committed == {(TRACES, 0): 3, ("otlp", 0): 2}
    assert stats.dead_letters == 2


def test_unknown_topic_is_dead_lettered() -> None:
    w, _, writer, dlq, _ = make([RawRecord("other", 0, 0, None, flat(1))])
    w.run(exit_when_idle_s=0)
    assert dlq.published[0].error.startswith("topic: no decoder")
    assert writer.trace_ids == []


def test_max_records_stops_after_whole_batches() -> None:
    w, src, writer, _, _ = make(records(50), batch=10)
    stats = w.run(max_records=15)
    assert stats.records == 20 and stats.batches == 2
    assert src.committed == {(TRACES, 0): 20}


def test_next_offsets_is_max_plus_one_per_partition() -> None:
    recs = records(3, start=10, partition=0) + records(2, start=4, partition=1)
    recs.reverse()
    assert next_offsets(recs) == {(TRACES, 0): 13, (TRACES, 1): 6}


class CountingMaintenance:
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.calls: list[int] = []

    def run_due(self, now_ms: int) -> None:
        self.calls.append(now_ms)
        self.journal.append("maintain")


def test_the_loop_maintains_between_batches_and_when_idle() -> None:
    w, _src, _writer, _dlq, journal = make(records(25), batch=10)
    w.maintenance = CountingMaintenance(journal)
    w.run(exit_when_idle_s=0.05)
    # Once per poll: three batches and the idle polls after them.
    assert journal.count("maintain") >= 4
    assert journal[:2] == ["poll:10", "maintain"]  # poll, then maintain, then the batch
    assert set(w.maintenance.calls) == {1_800_000_000_000}  # the injected clock, in ms


class _Emitter:
    """Due traces in full transactions of ``cfg.emit_batch`` until ``due`` runs out; each
    transaction takes ``seconds`` and is noted with the thread that ran it."""

    def __init__(self, due: int, seconds: float = 0.0, fail: BaseException | None = None,
                 *, fail_after: int = 0, beside_loop: bool = True) -> None:
        self.beside_loop = beside_loop
        self.fail_after = fail_after  # calls that succeed before ``fail`` is raised
        self.due = due
        self.seconds = seconds
        self.fail = fail
        self.calls = 0
        self.failed = threading.Event()
        self.threads: set[str] = set()

    def emit_otlp(self, now_ms: int, cfg: Any) -> Any:
        from store.writer import EmitResult

        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.fail is not None and self.calls > self.fail_after:
            self.failed.set()
            raise self.fail
        time.sleep(self.seconds)
        n = min(self.due, cfg.emit_batch)
        self.due -= n
        return EmitResult(n, 0, 0, 0, [])

    def pending_otlp(self) -> int:
        return self.due


class _WatchedSource(FakeSource):
    """Trace records beside an OpenTelemetry topic; each poll notes the emitter's pending."""

    def __init__(self, recs: list[RawRecord], journal: list[str], emitter: _Emitter) -> None:
        super().__init__(recs, journal, 10, topics={TRACES: "trace", "otlp": "otlp"})
        self.emitter = emitter
        self.pending_at_poll: list[int] = []
        self.before_poll: Callable[[], object] = lambda: None

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        self.before_poll()
        self.pending_at_poll.append(self.emitter.due)
        return super().poll(timeout_ms, max_records)


class _TimedSource(FakeSource):
    def __init__(self, journal: list[str]) -> None:
        super().__init__([], journal, topics={TRACES: "trace", "otlp": "otlp"})
        self.timeouts: list[int] = []

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        self.timeouts.append(timeout_ms)
        return super().poll(timeout_ms, max_records)


def _otlp_worker(recs: list[RawRecord], emitter: _Emitter, **settings: Any
                 ) -> tuple[Worker, _WatchedSource]:
    journal: list[str] = []
    src = _WatchedSource(recs, journal, emitter)
    w = Worker(Settings(trace_topic=TRACES, assessment_topic=ASSESS, otlp_topic="otlp",
                        poll_timeout_ms=1, db_retry_max_wait_s=0.01, **settings),
               src, FakeWriter(journal), FakeDeadLetters(journal), emitter=emitter)
    return w, src


def test_a_backlog_of_due_traces_is_assembled_beside_the_loop() -> None:
    emitter = _Emitter(due=5_000)
    w, _src = _otlp_worker([], emitter)
    stats = w.run(exit_when_idle_s=0)
    assert stats.otlp_traces == 5_000 and emitter.pending_otlp() == 0
    assert emitter.calls == 3  # 2,000 + 2,000 + 1,000: each full one followed at once
    assert emitter.threads == {"assembler"}
    assert not [t for t in threading.enumerate() if t.name == "assembler"]


def test_without_a_thread_the_loop_assembles_a_backlog_without_waiting_on_polls() -> None:
    """A store of one writer (SQLite): the loop assembles between polls, and after a full
    transaction it polls without waiting, so the next one follows at once."""
    emitter = _Emitter(due=5_000, beside_loop=False)
    journal: list[str] = []
    src = _TimedSource(journal)
    w = Worker(Settings(trace_topic=TRACES, assessment_topic=ASSESS, otlp_topic="otlp",
                        poll_timeout_ms=300), src, FakeWriter(journal), FakeDeadLetters(journal),
               emitter=emitter)
    stats = w.run(exit_when_idle_s=0)
    assert stats.otlp_traces == 5_000 and emitter.calls == 3
    assert emitter.threads == {threading.current_thread().name}
    assert src.timeouts[:3] == [300, 0, 0]


@pytest.mark.parametrize("beside_loop", [True, False])
def test_the_loop_waits_for_assembly_while_half_the_buffer_bound_is_pending(
        beside_loop: bool) -> None:
    """9,000 traces pending against a bound of 10,000: after a batch, the loop polls again only
    once the (slow) assembly, on its thread or in the loop, has brought them down to 5,000."""
    emitter = _Emitter(due=9_000, seconds=0.1, beside_loop=beside_loop)
    w, src = _otlp_worker(records(30), emitter, otlp_max_open_traces=10_000)
    stats = w.run(exit_when_idle_s=0)
    assert stats.records == 30
    assert src.pending_at_poll[0] == 9_000  # the first poll: no batch yet, nothing to wait for
    assert all(p <= 5_000 for p in src.pending_at_poll[1:])


@pytest.mark.parametrize("exit_when_idle_s", [None, 0.0])
def test_an_assembler_error_stops_the_worker_with_it(exit_when_idle_s: float | None) -> None:
    """Raised by ``run``, whether the loop was still reading or had nothing left to do."""
    # The assembler fails on its second transaction, 0.5 s in; the first poll returns only then,
    # after the loop's check of the iteration: idle, the loop may exit at once.
    emitter = _Emitter(due=0, fail=RuntimeError("a bug"), fail_after=1)
    w, src = _otlp_worker([], emitter)
    src.before_poll = lambda: emitter.failed.wait(5) and time.sleep(0.05)
    with pytest.raises(RuntimeError, match="a bug"):
        w.run(exit_when_idle_s=exit_when_idle_s)
    assert not [t for t in threading.enumerate() if t.name == "assembler"]


def test_stop_during_an_assembly_outage_ends_the_assembler() -> None:
    emitter = _Emitter(due=10, fail=TransientError("db down"))
    w, _src = _otlp_worker([], emitter)
    threading.Timer(0.3, w.stop.set).start()
    stats = w.run()
    assert emitter.calls >= 2 and stats.retries >= 1 and stats.otlp_traces == 0
    assert not [t for t in threading.enumerate() if t.name == "assembler"]
