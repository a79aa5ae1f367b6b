"""Wiring: settings -> engine, source, dead-letter sink -> ``Worker``. Used by the CLI and tests."""

from __future__ import annotations

from sqlalchemy import Engine

from consumers.kafka_source import KafkaClientConfig, KafkaDeadLetterSink, KafkaSource
from store.engine import make_engine
from store.writer import SqlWriter
from worker.loop import Worker
from worker.settings import Settings


def create_engine_from(settings: Settings) -> Engine:
    return make_engine(settings.store_url_plain, pool_size=settings.db_pool_size,
                       connect_timeout_s=settings.db_connect_timeout_s)


def kafka_client(settings: Settings) -> KafkaClientConfig:
    password = settings.kafka_sasl_password
    return KafkaClientConfig(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=password.get_secret_value() if password else None,
        reconnect_backoff_max_ms=settings.kafka_reconnect_backoff_max_ms)


def create_kafka_worker(settings: Settings, engine: Engine | None = None) -> Worker:
    """A worker over the Kafka topics. Raises kafka errors if the broker is unreachable."""
    client = kafka_client(settings)
    source = KafkaSource(
        client, [settings.trace_topic, settings.assessment_topic], settings.group_id,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        max_poll_records=settings.batch_max_records)
    dlq = KafkaDeadLetterSink(client, max_payload_bytes=settings.dlq_max_payload_bytes)
    return Worker(settings, source, SqlWriter(engine or create_engine_from(settings)), dlq)
