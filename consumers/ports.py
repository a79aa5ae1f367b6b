"""Ports: what the worker needs from a source of events and from a dead-letter sink.

The Kafka adapters (``kafka_source``), the MLflow polling source and the in-memory test fakes
implement the same Protocols, so unit tests need no mocks. A source declares the topics it
delivers and what each holds (``topics``); the worker decodes by that declaration alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol

from consumers.events import DeadLetter, RawRecord

# What the records of a topic hold: trace events, assessment events, or OpenTelemetry spans.
TopicKind = Literal["trace", "assessment", "otlp"]


class EventSource(Protocol):
    @property
    def name(self) -> str: ...

    def topics(self) -> Mapping[str, TopicKind]:
        """The topics this source delivers, and what each holds. A record on any other topic
        has no decoder: the worker dead-letters it."""
        ...

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        """Up to ``max_records`` records, waiting at most ``timeout_ms``. Raises TransientError."""
        ...

    def ready(self) -> bool:
        """True once the source can deliver (a Kafka consumer has joined and has partitions)."""
        ...

    def checkpoint(self) -> dict[str, dict[str, Any]]:
        """Progress to store in the transaction of the batch just polled (a polled source's
        watermarks); empty for Kafka, whose offsets live in the broker."""
        ...

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> bool:
        """Record progress; False means the records will be redelivered (harmless)."""
        ...

    def exhausted(self) -> bool:
        """True once a finite source (a backfill) has delivered everything."""
        ...

    def lag(self) -> dict[tuple[str, int], int]:
        """Records not yet processed, per (topic, partition) assigned here; may do I/O."""
        ...

    def close(self) -> None: ...


class DeadLetterSink(Protocol):
    def publish(self, letters: Iterable[DeadLetter]) -> None: ...

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until published letters are durable. Raises TransientError."""
        ...

    def close(self) -> None: ...
