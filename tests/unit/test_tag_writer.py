"""The tag writer's bookkeeping, with an in-memory sink over a real (SQLite file) outbox:
confirm deletes only the sent revision, failures reschedule, unknown traces wait, nothing drops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumers.errors import TransientError
from consumers.events import Evaluation
from store import schema
from store.decisions import current_tags, plan_decisions, write_decisions
from store.engine import make_engine
from worker.tag_writer import TagRefusedError, TagWriter


class FakeSink:
    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], str] = {}
        self.down = False
        self.unknown: set[str] = set()
        self.calls = 0

    def set_tag(self, trace_id: str, key: str, value: str) -> None:
        self._check(trace_id)
        self.tags[(trace_id, key)] = value

    def delete_tag(self, trace_id: str, key: str) -> None:
        self._check(trace_id)
        self.tags.pop((trace_id, key), None)

    def _check(self, trace_id: str) -> None:
        self.calls += 1
        if self.down:
            raise TransientError("MLflow 503")
        if trace_id in self.unknown:
            raise TagRefusedError("MLflow 400: unknown trace")


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    e = make_engine(f"sqlite:///{tmp_path}/s.db")
    schema.upgrade(e)
    yield e
    e.dispose()


def decide(engine: Any, trace_id: str, value: str | None, digest: str, now_ms: int) -> None:
    tags = {"eval_candidate": (value, "rule")} if value else {}
    with engine.begin() as conn:
        current = current_tags(conn, [trace_id])
        write_decisions(conn, plan_decisions(
            [(Evaluation(trace_id, (), tags, digest), "trace")], frozenset({"eval_candidate"}),
            now_ms, current, {trace_id}))


def writer(engine: Any, sink: FakeSink, clock: list[float]) -> TagWriter:
    return TagWriter(engine, sink, concurrency=2, clock=lambda: clock[0])


def test_tags_are_written_then_removed(engine: Any) -> None:
    sink, clock = FakeSink(), [1000.0]
    w = writer(engine, sink, clock)
    decide(engine, "t1", "error_case", "d1", 1_000_000)
    decide(engine, "t2", "low_score", "d2", 1_000_000)
    assert w.run_round() == 2
    assert sink.tags == {("t1", "eval_candidate"): "error_case",
                         ("t2", "eval_candidate"): "low_score"}
    assert w.drained() and w.stats().total == 0
    decide(engine, "t2", None, "d3", 1_000_000)  # an override removed the low score
    w.run_round()
    assert sink.tags == {("t1", "eval_candidate"): "error_case"}
    w.stop()


def test_an_outage_keeps_rows_and_backs_off(engine: Any) -> None:
    sink, clock = FakeSink(), [1000.0]
    w = writer(engine, sink, clock)
    decide(engine, "t1", "error_case", "d1", 1_000_000)
    sink.down = True
    assert w.run_round() == 1
    assert not w.drained()
    assert w.run_round() == 0  # backing off: not due yet
    sink.down = False
    clock[0] += 120  # past the longest backoff
    assert w.run_round() == 1
    assert sink.tags == {("t1", "eval_candidate"): "error_case"} and w.drained()
    assert w.written == 1
    w.stop()


def test_an_unknown_trace_waits_and_does_not_block_idleness(engine: Any) -> None:
    sink, clock = FakeSink(), [1000.0]
    sink.unknown.add("t1")
    w = writer(engine, sink, clock)
    decide(engine, "t1", "slow_response", "d1", 1_000_000)
    w.run_round()
    lag = w.stats()
    assert (lag.total, lag.waiting_for_trace) == (1, 1)
    assert w.drained()  # only rows waiting for an unknown trace are left
    sink.unknown.clear()
    clock[0] += 120
    w.run_round()
    assert sink.tags and w.stats().total == 0
    w.stop()


def test_a_newer_decision_survives_the_confirmation_of_an_older_one(engine: Any) -> None:
    sink, clock = FakeSink(), [1000.0]
    w = writer(engine, sink, clock)
    decide(engine, "t1", "slow_response", "d1", 1_000_000)
    original = sink.set_tag

    def set_then_redecide(trace_id: str, key: str, value: str) -> None:
        original(trace_id, key, value)
        decide(engine, "t1", "error_case", "d2", 1_000_000)  # lands while the call is out

    sink.set_tag = set_then_redecide  # type: ignore[method-assign]
    w.run_round()
    assert w.stats().total == 1  # d2 is still queued
    sink.set_tag = original  # type: ignore[method-assign]
    w.run_round()
    assert sink.tags == {("t1", "eval_candidate"): "error_case"}
    w.stop()
