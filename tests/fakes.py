"""In-memory adapters implementing the worker's ports (EventSource, DeadLetterSink, BatchWriter).

For unit tests of pure loop logic only: the invariants are tested on the real broker and stores.
Every call is appended to a shared ``journal`` so tests can assert the order of effects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from consumers.events import DeadLetter, RawRecord
from consumers.ports import TopicKind
from store.upserts import Batch, BatchResult

FAKE_TOPICS: Mapping[str, TopicKind] = {"traces": "trace", "assessments": "assessment"}


class FakeSource:
    name = "fake"

    def __init__(self, records: list[RawRecord], journal: list[str], batch_size: int = 10, *,
                 topics: Mapping[str, TopicKind] = FAKE_TOPICS) -> None:
        self._topics = topics
        self.pending = list(records)
        self.journal = journal
        self.batch_size = batch_size
        self.committed: dict[tuple[str, int], int] = {}
        self.closed = False

    def topics(self) -> Mapping[str, TopicKind]:
        return self._topics

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        n = min(max_records, self.batch_size)
        out, self.pending = self.pending[:n], self.pending[n:]
        if out:
            self.journal.append(f"poll:{len(out)}")
        return out

    def ready(self) -> bool:
        return True

    def checkpoint(self) -> dict[str, dict[str, Any]]:
        return {}

    def exhausted(self) -> bool:
        return False

    def lag(self) -> dict[tuple[str, int], int]:
        return {("fake", 0): len(self.pending)}

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> bool:
        self.journal.append("commit")
        self.committed.update(next_offsets)
        return True

    def close(self) -> None:
        self.closed = True


class FakeDeadLetters:
    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.published: list[DeadLetter] = []

    def publish(self, letters: Iterable[DeadLetter]) -> None:
        letters = list(letters)
        self.journal.append(f"dlq.publish:{len(letters)}")
        self.published += letters

    def flush(self, timeout_s: float = 30.0) -> None:
        self.journal.append("dlq.flush")

    def close(self) -> None:
        pass


class FakeWriter:
    """Keeps written batches; ``fail`` may raise to simulate the database."""

    def __init__(self, journal: list[str],
                 fail: Callable[[Batch], BaseException | None] | None = None) -> None:
        self.journal = journal
        self.fail = fail
        self.batches: list[Batch] = []
        self.attempts = 0

    def write(self, batch: Batch, now_ms: int) -> BatchResult:
        self.attempts += 1
        if self.fail is not None and (exc := self.fail(batch)) is not None:
            self.journal.append("write:failed")
            raise exc
        self.journal.append("write")
        self.batches.append(batch)
        return BatchResult(len(batch.traces), len(batch.assessments), len(batch.dead_letters))

    def close(self) -> None:
        pass

    @property
    def trace_ids(self) -> list[str]:
        return [t.trace_id for b in self.batches for t in b.traces]
