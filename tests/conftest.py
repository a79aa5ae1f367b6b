"""Shared fixtures: the real services (tansu broker, PostgreSQL) and factories.

A missing service is a skip on a laptop and a failure in CI (``CI=true``). Every test gets fresh
topics and consumer-group names (uuid4), and a fresh store: a SQLite file, or a new PostgreSQL
database created for the test and dropped after it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from sqlalchemy import Engine

from consumers.embedded_broker import EmbeddedBroker
from consumers.producer import make_producer
from store import schema
from store.engine import make_engine
from tests.helpers import fresh_pg_database
from worker.settings import Settings

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_DSN = os.environ.get("TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

# Consumer-group timings for a fast test broker: a join takes ~session_timeout/2
# (docs/platform-notes.md).
FAST_KAFKA = {"kafka_session_timeout_ms": 2000, "kafka_heartbeat_interval_ms": 500,
              "kafka_reconnect_backoff_max_ms": 1000, "poll_timeout_ms": 200}


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees another's settings: ``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI,
    which the worker's settings read (tag write-back would turn on against a stale URI)."""
    for key in list(os.environ):
        if key.startswith("TRACE_CURATOR_") or key == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """CLI entry points point the root logger at the sys.stderr of their moment, which pytest
    swaps per test: a handler left behind writes to a closed capture ("--- Logging error ---")."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def service_missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"required service missing in CI: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    try:
        b = EmbeddedBroker().start()
    except Exception as exc:  # the binary is missing or cannot run
        service_missing(f"tansu broker unavailable: {exc}")
        raise
    yield b
    b.stop()


@pytest.fixture(scope="session")
def pg_available() -> str:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        service_missing(f"PostgreSQL at {PG_ADMIN_DSN} unavailable: {exc}")
    return PG_ADMIN_DSN


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh, migrated store on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"
        engine = make_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        yield url
        return
    admin = request.getfixturevalue("pg_available")
    with fresh_pg_database(admin) as url:
        engine = make_engine(url)
        schema.upgrade(engine)
        engine.dispose()
        yield url


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """An engine on ``store_url`` (migrated already), disposed afterwards."""
    e = make_engine(store_url)
    yield e
    e.dispose()


@pytest.fixture
def topic_factory(broker: EmbeddedBroker) -> Iterator[Callable[..., str]]:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)

    def make(prefix: str = "t", partitions: int = 3) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, partitions, 1)])
        return name

    yield make
    admin.close()


@pytest.fixture
def settings_factory(broker: EmbeddedBroker, store_url: str,
                     topic_factory: Callable[..., str]) -> Callable[..., Settings]:
    """Settings for one test: fresh topics and group, the test's store, fast group timings."""
    base = {
        "store_url": store_url, "kafka_bootstrap_servers": broker.bootstrap_servers,
        "trace_topic": topic_factory("traces"), "assessment_topic": topic_factory("assess"),
        "otlp_topic": topic_factory("otlp"),
        "group_id": "g-" + uuid.uuid4().hex[:12], **FAST_KAFKA,
        # Curation only where a test asks for it: it would otherwise create datasets on the
        # MLflow server of every test that sets a tracking URI for write-back.
        "curation": "off",
        # No HTTP server unless a test asks: several workers run side by side.
        "http_port": 0,
    }

    def make(**overrides: Any) -> Settings:
        return Settings(**{**base, **overrides})

    return make


@pytest.fixture
def producer(broker: EmbeddedBroker) -> Iterator[Any]:
    p = make_producer(broker.bootstrap_servers, max_request_size=16 * 1024 * 1024)
    yield p
    p.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as TRACE_CURATOR_* variables, for a worker run as a subprocess."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACE_CURATOR_") and k != "MLFLOW_TRACKING_URI"}
    for name, value in settings:
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"TRACE_CURATOR_{name.upper()}"] = str(value)
    return env


@pytest.fixture
def run_worker() -> Callable[..., Any]:
    """Run the real worker loop in-process until it has been idle for ``idle_s``."""
    from worker.app import create_kafka_worker

    def run(settings: Settings, idle_s: float = 3.0, **kwargs: Any) -> Any:
        worker = create_kafka_worker(settings)
        try:
            return worker.run(exit_when_idle_s=idle_s, **kwargs)
        finally:
            worker.close()

    return run


def publish(producer: Any, topic: str, docs: list[Any], key: Callable[[Any], bytes] | None = None,
            ) -> None:
    """Publish JSON documents (or raw bytes / None) and wait until the broker has them all."""
    import orjson

    futures = []
    for d in docs:
        value = d if isinstance(d, bytes | type(None)) else orjson.dumps(d)
        k = key(d) if key else None
        futures.append(producer.send(topic, key=k, value=value))
    producer.flush()
    for f in futures:
        f.get(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real MLflow tracking server for the session (SQLite backend, one worker)."""
    from tests.mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        server.start()
    except Exception as exc:
        service_missing(f"mlflow server could not start: {exc}")
        raise
    yield server
    server.stop()
