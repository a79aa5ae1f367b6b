"""Kafka's topics, and MLflow's assessments beside them: one ``EventSource`` over both.

Traces reach the store from Kafka (trace events, OpenTelemetry spans), while the feedback that
``mlflow.log_feedback`` records stays in MLflow. ``CombinedSource`` polls the Kafka source
first; while a batch has room, the MLflow source (``assessments_only``: rescans that emit
assessments) tops it up without waiting. Each source commits its own progress: Kafka its
offsets, MLflow its page once the batch is stored (its ``commit`` after its ``poll``, in the
same round, as alone). The MLflow pseudo topic is no Kafka topic: its dead letters stay in the
store's table (``KafkaOnlyDeadLetters``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from consumers.events import DeadLetter, RawRecord
from consumers.ports import DeadLetterSink, EventSource, TopicKind


class CombinedSource:
    """``primary`` (Kafka) and ``extra`` (MLflow assessments) as one source."""

    def __init__(self, primary: EventSource, extra: EventSource) -> None:
        clash = set(primary.topics()) & set(extra.topics())
        if clash:
            raise ValueError(f"both sources deliver {sorted(clash)}")
        self.primary = primary
        self.extra = extra
        self._topics = {**primary.topics(), **extra.topics()}
        self._extra_polled = False  # the batch in hand holds a poll of ``extra``

    @property
    def name(self) -> str:
        return f"{self.primary.name}+{self.extra.name}"

    def topics(self) -> Mapping[str, TopicKind]:
        return self._topics

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        self._extra_polled = False
        records = self.primary.poll(timeout_ms, max_records)
        room = max_records - len(records)
        if room > 0:
            self._extra_polled = True
            records += self.extra.poll(0, room)
        return records

    def ready(self) -> bool:
        return self.primary.ready()

    def checkpoint(self) -> dict[str, dict[str, Any]]:
        extra = self.extra.checkpoint() if self._extra_polled else {}
        return {**self.primary.checkpoint(), **extra}

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> bool:
        mine = {tp: o for tp, o in next_offsets.items() if tp[0] in self.primary.topics()}
        theirs = {tp: o for tp, o in next_offsets.items() if tp[0] in self.extra.topics()}
        ok = self.primary.commit(mine)
        if self._extra_polled:  # else its last page is not in this batch: nothing to commit
            ok = self.extra.commit(theirs) and ok
        return ok

    def exhausted(self) -> bool:
        return False  # a live source

    def lag(self) -> dict[tuple[str, int], int]:
        return {**self.primary.lag(), **self.extra.lag()}

    def close(self) -> None:
        try:
            self.primary.close()
        finally:
            self.extra.close()


class KafkaOnlyDeadLetters:
    """Publishes the dead letters of Kafka topics through ``sink``; the others (records of
    polled pseudo topics) are recorded in the store's table only, as the batch writes them."""

    def __init__(self, sink: DeadLetterSink, kafka_topics: Iterable[str]) -> None:
        self.sink = sink
        self.kafka_topics = frozenset(kafka_topics)

    def publish(self, letters: Iterable[DeadLetter]) -> None:
        self.sink.publish([d for d in letters if d.provenance.topic in self.kafka_topics])

    def flush(self, timeout_s: float = 30.0) -> None:
        self.sink.flush(timeout_s)

    def close(self) -> None:
        self.sink.close()
