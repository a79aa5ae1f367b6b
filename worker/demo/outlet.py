"""Where the demo's traces and assessments go besides MLflow: the embedded broker, or nowhere.

Invariants: ``KafkaOutlet`` sends the 3 ``MALFORMED`` records first, synchronously, to partition
0 of the trace topic, so on every (new) broker they are offsets 0-2 and re-runs over one folder
keep 3 dead-letter rows; ``published`` counts the records handed to the producer; ``close``
flushes, logs any failed send and always closes the producer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import orjson

# mlflow (seconds) and kafka (~0.1 s) are imported where used: `trace-curator --help` stays fast.
if TYPE_CHECKING:
    from mlflow.entities import Assessment, Trace

logger = logging.getLogger(__name__)


class Outlet(Protocol):
    """Where produced traces and assessments go besides MLflow: Kafka, or nowhere."""

    published: int

    def trace(self, trace: Trace) -> None: ...

    def assessment(self, assessment: Assessment) -> None: ...

    def close(self) -> None: ...


class NoOutlet:
    """``--source mlflow``: the worker reads MLflow itself."""

    published = 0

    def trace(self, trace: Trace) -> None:
        pass

    def assessment(self, assessment: Assessment) -> None:
        pass

    def close(self) -> None:
        pass


MALFORMED: list[bytes] = [
    b"not json",
    orjson.dumps({"trace_id": "tr-demo-negative-duration", "status": "OK",
                  "timestamp_ms": 1_800_000_000_000, "execution_time_ms": -40}),
    orjson.dumps({"event": "page_view", "user": "user-007", "path": "/help"}),
]


class KafkaOutlet:
    """Publishes as things are produced; the 3 malformed records go first, to partition 0:
    offsets 0-2 on every (new) broker. ``published`` counts records handed to the producer."""

    def __init__(self, bootstrap_servers: str) -> None:
        from consumers.producer import DEFAULT_TRACE_TOPIC, make_producer

        self._producer = make_producer(bootstrap_servers)
        self._futures: list[Any] = []
        for value in MALFORMED:
            self._producer.send(DEFAULT_TRACE_TOPIC, value=value, partition=0).get(timeout=30)
        self.published = len(MALFORMED)

    def trace(self, trace: Trace) -> None:
        from consumers.producer import publish_trace

        self._futures.append(publish_trace(self._producer, trace))
        self.published += 1

    def assessment(self, assessment: Assessment) -> None:
        from consumers.producer import publish_assessment

        self._futures.append(publish_assessment(self._producer, assessment))
        self.published += 1

    def close(self) -> None:
        try:
            self._producer.flush(timeout=30)
            failed = sum(1 for f in self._futures if f.failed())
            if failed:
                logger.error("publishing failed records=%d of published=%d", failed,
                             self.published)
        finally:
            self._producer.close(timeout=5)
