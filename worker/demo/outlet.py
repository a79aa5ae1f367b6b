"""Where the demo's traces and assessments go besides MLflow: the embedded broker, or nowhere.

``KafkaOutlet`` publishes each trace's JSON and each assessment; ``NoOutlet`` (``--source
mlflow``) sends nothing; ``OtlpOutlet`` (``--source otlp``) runs the in-process OTLP/HTTP
receiver that MLflow's OTLP dual export sends every span to, and that writes them to the OTLP
topic as the OpenTelemetry Collector's Kafka exporter does; assessments stay in MLflow.
Invariants: ``KafkaOutlet`` sends the 3 ``MALFORMED`` records first, synchronously, to partition
0 of the trace topic, so on every (new) broker they are offsets 0-2 and re-runs over one folder
keep 3 dead-letter rows; ``published`` counts the records handed to the producer (the receiver:
acknowledged by the broker); ``flush`` hands on what is still buffered; ``close`` flushes, logs
any failed send, and always stops the receiver and closes the producer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import orjson

# mlflow (seconds) and kafka (~0.1 s) are imported where used: `trace-curator --help` stays fast.
if TYPE_CHECKING:
    from mlflow.entities import Assessment, Trace

logger = logging.getLogger(__name__)

FLUSH_TIMEOUT_MS = 30_000  # the end of the traffic waits this long for MLflow's OTLP export


class Outlet(Protocol):
    """Where produced traces and assessments go besides MLflow: Kafka (their JSON, or MLflow's
    spans through the OTLP receiver), or nowhere."""

    @property
    def published(self) -> int: ...

    def trace(self, trace: Trace) -> None: ...

    def assessment(self, assessment: Assessment) -> None: ...

    def flush(self) -> None:
        """Hand on what is still buffered: the traffic has ended."""
        ...

    def close(self) -> None: ...


class NoOutlet:
    """``--source mlflow``: the worker reads MLflow itself."""

    published = 0

    def trace(self, trace: Trace) -> None:
        pass

    def assessment(self, assessment: Assessment) -> None:
        pass

    def flush(self) -> None:
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

    def flush(self) -> None:
        self._producer.flush(timeout=30)

    def close(self) -> None:
        try:
            self._producer.flush(timeout=30)
            failed = sum(1 for f in self._futures if f.failed())
            if failed:
                logger.error("publishing failed records=%d of published=%d", failed,
                             self.published)
        finally:
            self._producer.close(timeout=5)


class OtlpOutlet:
    """``--source otlp``: MLflow's OTLP dual export sends each span to ``receiver`` (started
    here, on a free local port: its ``url`` is the exporter's endpoint), which writes them to
    ``topic`` as the Collector's Kafka exporter does (``otlp_proto``, one record a request).
    Traces and assessments are not published here: the spans go by MLflow's exporter and the
    feedback stays in MLflow. ``published`` counts the records the broker acknowledged."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        from consumers.producer import make_producer
        from worker.demo.otlp_receiver import OtlpKafkaReceiver

        self._producer = make_producer(bootstrap_servers)
        try:
            self.receiver = OtlpKafkaReceiver(self._producer, topic).start()
        except BaseException:
            self._producer.close(timeout=5)
            raise

    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def published(self) -> int:
        return self.receiver.counts.records

    @property
    def spans(self) -> int:
        """Spans written to the topic (acknowledged by the broker)."""
        return self.receiver.counts.spans

    def trace(self, trace: Trace) -> None:
        pass  # MLflow's OTLP batch processor exports its spans

    def assessment(self, assessment: Assessment) -> None:
        pass  # stays in MLflow: the worker rescans it

    def flush(self) -> None:
        """Export the spans MLflow's OTLP batch processor still holds (it exports every few
        seconds); a timeout is logged, the worker then lacks those traces."""
        import mlflow

        provider = mlflow.tracing.get_bridged_tracer_provider()
        flush = getattr(provider, "force_flush", None)  # none on a no-op provider
        if flush is not None and not flush(FLUSH_TIMEOUT_MS):
            logger.error("MLflow's OTLP export did not flush within %d ms", FLUSH_TIMEOUT_MS)

    def close(self) -> None:
        try:
            counts = self.receiver.counts
            if counts.rejected or counts.failed:  # the exporter retries a failed request
                logger.warning("otlp receiver requests refused=%d failed=%d",
                               counts.rejected, counts.failed)
        finally:
            try:
                self.receiver.stop()
            finally:
                self._producer.close(timeout=5)
