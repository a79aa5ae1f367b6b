"""Kafka adapters: the event source (a consumer group over the trace and assessment topics) and
the dead-letter sink (``<topic>.dlq``). Kafka client settings live here.

Offsets are committed only by ``commit()``, which the worker calls after the store transaction
has committed (auto-commit is off). ``CommitFailedError`` after a rebalance returns False: the
records are redelivered, and the idempotent upserts make that harmless. The worker commits every
batch before it polls again, so a partition revoked during ``poll()`` has no uncommitted work.
The consumer connects in its constructor and gives up after ``bootstrap_timeout_ms`` with a
``TransientError`` that names the brokers it waited for (the CLI exits unavailable).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kafka.errors as kafka_errors
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition

from consumers.errors import TransientError
from consumers.events import DeadLetter, RawRecord
from consumers.ports import TopicKind

logger = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"
BOOTSTRAP_TIMEOUT_MS = 15_000  # how long start-up waits for a first broker to answer


@dataclass(frozen=True, slots=True)
class KafkaClientConfig:
    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    reconnect_backoff_max_ms: int = 5_000

    def common(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
        }
        if self.sasl_mechanism:
            cfg.update(sasl_mechanism=self.sasl_mechanism,
                       sasl_plain_username=self.sasl_username,
                       sasl_plain_password=self.sasl_password)
        return cfg


class _RebalanceLog(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs partition moves. Nothing needs saving on revoke: the loop commits each batch's
    offsets right after its transaction, before it polls again, so a partition is never revoked
    with processed-but-uncommitted records. A commit refused because a rebalance came first
    means redelivery to the new owner, which the idempotent upserts absorb."""

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            logger.info("partitions revoked %s", _names(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        logger.info("partitions assigned %s", _names(assigned) or "none")


def _names(tps: Any) -> str:
    return " ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))


class KafkaSource:
    """An ``EventSource`` over a Kafka consumer group, subscribed to the trace and assessment
    topics and, if named, the OpenTelemetry spans topic."""

    def __init__(self, client: KafkaClientConfig, trace_topic: str, assessment_topic: str,
                 group_id: str, *, otlp_topic: str = "",
                 session_timeout_ms: int = 10_000, heartbeat_interval_ms: int = 3_000,
                 max_poll_interval_ms: int = 300_000, max_poll_records: int = 5_000,
                 bootstrap_timeout_ms: int = BOOTSTRAP_TIMEOUT_MS) -> None:
        self._topics: dict[str, TopicKind] = {trace_topic: "trace",
                                              assessment_topic: "assessment"}
        if otlp_topic:
            self._topics[otlp_topic] = "otlp"
        logger.info("waiting for Kafka bootstrap_servers=%s timeout_s=%.0f",
                    client.bootstrap_servers, bootstrap_timeout_ms / 1000)
        try:
            self._consumer = KafkaConsumer(
                group_id=group_id, enable_auto_commit=False,
                auto_offset_reset="earliest", session_timeout_ms=session_timeout_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                max_poll_interval_ms=max_poll_interval_ms, max_poll_records=max_poll_records,
                # Bounded prefetch: raw records buffered ahead of the loop cost memory, not speed.
                fetch_max_bytes=16 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024,
                bootstrap_timeout_ms=bootstrap_timeout_ms, **client.common())
        except (kafka_errors.KafkaTimeoutError, kafka_errors.NoBrokersAvailable) as exc:
            raise TransientError(
                f"no broker answered at {client.bootstrap_servers} within "
                f"{bootstrap_timeout_ms / 1000:.0f} s") from exc
        self._consumer.subscribe(list(self._topics), listener=_RebalanceLog())

    @property
    def name(self) -> str:
        return "kafka"

    def topics(self) -> Mapping[str, TopicKind]:
        return self._topics

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except kafka_errors.KafkaError as exc:
            raise TransientError(f"kafka poll failed: {exc!r}") from exc
        out: list[RawRecord] = []
        for tp_records in polled.values():
            for r in tp_records:
                out.append(RawRecord(r.topic, r.partition, r.offset, r.key, r.value,
                                     r.timestamp or 0))
        return out

    def ready(self) -> bool:
        return bool(self._consumer.assignment())

    def checkpoint(self) -> dict[str, dict[str, Any]]:
        return {}  # offsets are committed to the broker, after the batch's transaction

    def exhausted(self) -> bool:
        return False  # a stream never ends

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> bool:
        """Commit ``next_offsets`` (last processed + 1). False means "will be redelivered"."""
        if not next_offsets:
            return True
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                   for (t, p), o in next_offsets.items()}
        try:
            self._consumer.commit(offsets)
            return True
        except kafka_errors.KafkaError as exc:  # CommitFailedError after a rebalance, above all
            logger.warning("offset commit failed, records will be redelivered error=%r", exc)
            return False

    def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: highwater - committed (end_offsets is wrong on tansu, see
        docs/platform-notes.md)."""
        out: dict[tuple[str, int], int] = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            committed = self._consumer.committed(tp) or 0
            out[(tp.topic, tp.partition)] = max(0, high - committed)
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class KafkaDeadLetterSink:
    """Publishes dead letters to ``<origin topic>.dlq`` with their provenance in headers.

    The idempotent producer fails for good after a broker restart (docs/platform-notes.md), so
    this one is not idempotent and is re-created after a fatal error. Duplicates on the DLQ
    topic after a crash are possible (at-least-once); the ``dead_letters`` table holds each
    origin once.
    """

    def __init__(self, client: KafkaClientConfig, *, max_payload_bytes: int) -> None:
        self._client = client
        self._max_request_bytes = max_payload_bytes + 256 * 1024
        self._producer: KafkaProducer | None = None
        self._pending: list[Any] = []

    def _get(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(
                enable_idempotence=False, acks="all", linger_ms=5, retries=3,
                max_request_size=self._max_request_bytes, **self._client.common())
        return self._producer

    def publish(self, letters: Iterable[DeadLetter]) -> None:
        for d in letters:
            p = d.provenance
            headers = [
                ("origin_topic", p.topic.encode()),
                ("origin_partition", str(p.partition).encode()),
                ("origin_offset", str(p.offset).encode()),
                ("error_type", d.error_type.encode()),
                ("error", d.error.encode("utf-8", "replace")[:4000]),
                ("payload_size_bytes", str(d.payload_size_bytes).encode()),
                ("truncated", b"true" if len(d.payload) < d.payload_size_bytes else b"false"),
            ]
            try:
                fut = self._get().send(p.topic + DLQ_SUFFIX, key=d.key, value=d.payload,
                                       headers=headers)
            except kafka_errors.KafkaError as exc:
                self._reset()
                raise TransientError(f"dead-letter publish failed: {exc!r}") from exc
            self._pending.append(fut)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until every published dead letter is acknowledged, or raise TransientError."""
        if not self._pending:
            return
        try:
            self._get().flush(timeout=timeout_s)
            for fut in self._pending:
                fut.get(timeout=timeout_s)
        except kafka_errors.KafkaError as exc:
            self._reset()
            raise TransientError(f"dead-letter flush failed: {exc!r}") from exc
        self._pending.clear()

    def _reset(self) -> None:
        self._pending.clear()
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            finally:
                self._producer = None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None
