"""Kafka and MLflow assessments as one source: the MLflow side tops up a batch with room, each
side commits only what it delivered, MLflow's dead letters stay off Kafka; and the MLflow
source in ``assessments_only`` mode fetches no trace and moves no tail watermark."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from consumers.combined_source import CombinedSource, KafkaOnlyDeadLetters
from consumers.events import DeadLetter, Provenance, RawRecord
from consumers.mlflow_plan import Known, plan_page
from tests.fakes import FakeDeadLetters, FakeSource


def records(topic: str, n: int) -> list[RawRecord]:
    return [RawRecord(topic, 0, i, None, b"{}") for i in range(n)]


def sources(kafka: int, mlflow: int, journal: list[str]) -> CombinedSource:
    primary = FakeSource(records("traces", kafka), journal, batch_size=5,
                         topics={"traces": "trace", "otlp": "otlp"})
    extra = FakeSource(records("mlflow:assessments", mlflow), journal, batch_size=5,
                       topics={"mlflow:assessments": "assessment"})
    return CombinedSource(primary, extra)


def test_mlflow_tops_up_a_batch_with_room_and_each_side_commits_its_own() -> None:
    journal: list[str] = []
    src = sources(kafka=7, mlflow=3, journal=journal)
    assert src.topics() == {"traces": "trace", "otlp": "otlp", "mlflow:assessments": "assessment"}
    full = src.poll(100, 5)  # Kafka fills it: MLflow is not asked
    assert [r.topic for r in full] == ["traces"] * 5
    src.commit({("traces", 0): 5})
    assert journal == ["poll:5", "commit"]  # nothing committed on the MLflow side
    mixed = src.poll(100, 5)
    assert [r.topic for r in mixed] == ["traces"] * 2 + ["mlflow:assessments"] * 3
    journal.clear()
    src.commit({("traces", 0): 7, ("mlflow:assessments", 0): 3})
    assert journal == ["commit", "commit"]
    primary, extra = src.primary, src.extra
    assert isinstance(primary, FakeSource) and isinstance(extra, FakeSource)
    assert primary.committed == {("traces", 0): 7}
    assert extra.committed == {("mlflow:assessments", 0): 3}


def test_two_sources_of_one_topic_are_refused() -> None:
    journal: list[str] = []
    with pytest.raises(ValueError, match="both sources deliver"):
        CombinedSource(FakeSource([], journal), FakeSource([], journal))


def test_dead_letters_of_the_mlflow_pseudo_topic_are_not_published_to_kafka() -> None:
    journal: list[str] = []
    sink = FakeDeadLetters(journal)
    letters = [DeadLetter(Provenance(t, 0, 1), None, b"x", 1, "DecodeError", "bad")
               for t in ("traces", "mlflow:assessments", "otlp")]
    KafkaOnlyDeadLetters(sink, ["traces", "otlp"]).publish(letters)
    assert [d.provenance.topic for d in sink.published] == ["traces", "otlp"]


def _info(trace_id: str, state: str, assessments: list[Any]) -> Any:
    return SimpleNamespace(trace_id=trace_id, state=state, request_time=1,
                           assessments=assessments)


def test_assessments_only_fetches_no_trace_and_emits_every_new_assessment() -> None:
    a1 = SimpleNamespace(assessment_id="a-1", last_update_time_ms=10)
    a2 = SimpleNamespace(assessment_id="a-2", last_update_time_ms=20)
    infos = [_info("tr-new", "OK", [a1]), _info("tr-held", "OK", [a2])]
    known = Known(traces={"tr-held": "OK"}, assessments={"a-2": 20})
    normal = plan_page(infos, known)
    assert (normal.fetch, normal.assessments) == (["tr-new"], [])
    only = plan_page(infos, known, assessments_only=True)
    assert (only.fetch, only.assessments) == ([], [a1])  # a-2 is held at that version
