"""Wiring: settings -> engine, source, dead-letter sink -> ``Worker``. Used by the CLI and tests."""

from __future__ import annotations

import os
from dataclasses import replace

from sqlalchemy import Engine

from consumers.combined_source import CombinedSource, KafkaOnlyDeadLetters
from consumers.kafka_source import KafkaClientConfig, KafkaDeadLetterSink, KafkaSource
from consumers.mlflow_client import MlflowTraceServer
from consumers.mlflow_plan import PollConfig
from consumers.mlflow_source import MlflowSource, TableOnlyDeadLetters
from consumers.ports import DeadLetterSink, EventSource
from store.checkpoints import StoreCheckpoints
from store.engine import make_engine
from store.metrics import MetricsConfig
from store.writer import SqlWriter
from worker.curation.curator import Curator, CuratorThread
from worker.curation.sinks import make_sink
from worker.curation.specs import load_specs
from worker.loop import Worker, otlp_config
from worker.maintenance import Pruner
from worker.rules.engine import RuleSet, load_rules
from worker.settings import Settings
from worker.tag_writer import MlflowTagSink, TagWriter


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


def create_tag_writer(settings: Settings, engine: Engine) -> TagWriter | None:
    """The MLflow write-back thread, or None when write-back is off (see ``tag_writeback``)."""
    if not settings.writeback_enabled:
        return None
    configure_mlflow_client(settings)
    return TagWriter(engine, MlflowTagSink(settings.mlflow_tracking_uri),
                     concurrency=settings.tag_writer_concurrency,
                     interval_s=settings.tag_writer_interval_s)


def configure_mlflow_client(settings: Settings) -> None:
    """MLflow's client retries one 500 for about 4 minutes by default (docs/platform-notes.md);
    the worker retries on its own terms, so MLflow's own retries are turned off and calls time
    out fast.
    MLflow reads these from the environment, so that is where they are set."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.mlflow_request_timeout_s)


def create_kafka_worker(settings: Settings, engine: Engine | None = None) -> Worker:
    """A worker over the Kafka topics. Raises kafka errors if the broker is unreachable, and
    ConfigError for an invalid rules or datasets file."""
    rules = load_rules(settings.rules_file) if settings.rules_enabled else None
    engine = engine or create_engine_from(settings)
    client = kafka_client(settings)
    source: EventSource = KafkaSource(
        client, settings.trace_topic, settings.assessment_topic, settings.group_id,
        otlp_topic=settings.otlp_topic, session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        max_poll_records=settings.batch_max_records)
    dlq: DeadLetterSink = KafkaDeadLetterSink(client,
                                              max_payload_bytes=settings.dlq_max_payload_bytes)
    if settings.mlflow_assessments == "on":  # feedback from MLflow beside the Kafka topics
        kafka_topics = list(source.topics())
        configure_mlflow_client(settings)
        source = CombinedSource(source, MlflowSource(
            MlflowTraceServer(settings.mlflow_tracking_uri), StoreCheckpoints(engine),
            replace(poll_config(settings), assessments_only=True)))
        dlq = KafkaOnlyDeadLetters(dlq, kafka_topics)
    tag_writer = create_tag_writer(settings, engine) if rules is not None else None
    curator = (CuratorThread(create_curator(settings, engine), settings.curate_interval_s, engine)
               if settings.curation_enabled else None)
    writer = sql_writer(settings, engine, rules)
    return Worker(settings, source, writer, dlq,
                  tag_writer=tag_writer, maintenance=Pruner.from_settings(settings, engine),
                  curator=curator, emitter=writer)


def sql_writer(settings: Settings, engine: Engine, rules: RuleSet | None) -> SqlWriter:
    """The worker's store port: the rules, the metric buckets, the span buffer's caps, and the
    write-back outbox only when write-back is on (with it off, queued tags would wait
    forever)."""
    return SqlWriter(engine, rules, metrics_config(settings), outbox=settings.writeback_enabled,
                     otlp=otlp_config(settings))


def create_worker(settings: Settings, engine: Engine | None = None) -> Worker:
    """The worker over the configured source (``settings.source``)."""
    if settings.source == "mlflow":
        return create_mlflow_worker(settings, engine)
    return create_kafka_worker(settings, engine)


def poll_config(settings: Settings, backfill: tuple[int, int] | None = None,
                experiments: tuple[str, ...] | None = None) -> PollConfig:
    return PollConfig(
        experiment_ids=settings.mlflow_experiments if experiments is None else experiments,
        poll_interval_s=settings.mlflow_poll_interval_s, overlap_s=settings.mlflow_poll_overlap_s,
        start_lookback_s=settings.mlflow_start_lookback_s,
        assessment_window_s=settings.mlflow_assessment_window_s,
        assessment_rescan_interval_s=settings.mlflow_assessment_rescan_interval_s,
        page_size=settings.mlflow_page_size, backfill=backfill)


def create_mlflow_worker(settings: Settings, engine: Engine | None = None,
                         config: PollConfig | None = None) -> Worker:
    """A worker that polls the MLflow server (``consumers.mlflow_source``); with a ``config``
    that holds a backfill window, a finite backfill. Dead letters go to the table only."""
    rules = load_rules(settings.rules_file) if settings.rules_enabled else None
    engine = engine or create_engine_from(settings)
    configure_mlflow_client(settings)
    source = MlflowSource(MlflowTraceServer(settings.mlflow_tracking_uri),
                          StoreCheckpoints(engine), config or poll_config(settings))
    tag_writer = create_tag_writer(settings, engine) if rules is not None else None
    curator = (CuratorThread(create_curator(settings, engine), settings.curate_interval_s, engine)
               if settings.curation_enabled and config is None else None)
    return Worker(settings, source, sql_writer(settings, engine, rules),
                  TableOnlyDeadLetters(), tag_writer=tag_writer,
                  maintenance=Pruner.from_settings(settings, engine), curator=curator)


def create_curator(settings: Settings, engine: Engine) -> Curator:
    """The curator over the configured dataset specs. Raises ConfigError (bad specs, sinks)."""
    specs = load_specs(settings.datasets_file)
    sinks = {spec.name: make_sink(spec.sink, settings.mlflow_tracking_uri) for spec in specs}
    if any(spec.sink.kind != "files" for spec in specs):
        configure_mlflow_client(settings)
    curator = Curator(engine, specs, sinks, dimension_tag=settings.metrics_dimension_tag)
    curator.validate()
    return curator


def metrics_config(settings: Settings) -> MetricsConfig | None:
    """The bucket settings the worker applies, or None with metrics off."""
    return bucket_config(settings) if settings.metrics_enabled else None


def bucket_config(settings: Settings) -> MetricsConfig:
    return MetricsConfig(dimension_tag=settings.metrics_dimension_tag,
                         minute_days=settings.retention_minute_days,
                         hour_days=settings.retention_hour_days)
