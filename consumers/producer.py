"""Publish MLflow traces and assessments to Kafka in the format the worker accepts.

Use it from an application, a test or a backfill script::

    from consumers.producer import make_producer, publish_trace, publish_assessment

    producer = make_producer("localhost:9092")
    publish_trace(producer, mlflow.get_trace(trace_id))        # -> "mlflow-traces", key=trace_id
    publish_assessment(producer, mlflow.get_assessment(trace_id, assessment_id))
    producer.flush()

Traces go out as ``Trace.to_json()`` (or ``TraceInfo.to_dict()`` JSON for a bare ``TraceInfo``),
assessments as ``Assessment.to_dictionary()`` JSON, each keyed by trace_id so that all events of
one trace land on one partition, in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from kafka import KafkaProducer

if TYPE_CHECKING:  # mlflow is heavy to import; only the types are needed here
    from mlflow.entities import Assessment, TraceInfo
    from mlflow.entities import Trace as Trace

DEFAULT_TRACE_TOPIC = "mlflow-traces"
DEFAULT_ASSESSMENT_TOPIC = "mlflow-assessments"


def make_producer(bootstrap_servers: str, **config: Any) -> KafkaProducer:
    """A producer suited to trace events: acks=all, batched, large enough for big traces."""
    defaults: dict[str, Any] = {"acks": "all", "linger_ms": 5, "max_request_size": 8 * 1024 * 1024,
                                "enable_idempotence": False}
    defaults.update(config)
    return KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), **defaults)


def trace_message(trace: Trace | TraceInfo) -> tuple[bytes, bytes]:
    """(key, value) for a trace: the full trace JSON, or the info JSON for a bare TraceInfo."""
    from mlflow.entities import Trace

    if isinstance(trace, Trace):
        return trace.info.trace_id.encode(), trace.to_json().encode()
    return trace.trace_id.encode(), orjson.dumps(trace.to_dict())


def assessment_message(assessment: Assessment) -> tuple[bytes, bytes]:
    key = (assessment.trace_id or "").encode()
    return key, orjson.dumps(assessment.to_dictionary())  # type: ignore[no-untyped-call]


def publish_trace(producer: KafkaProducer, trace: Trace | TraceInfo,
                  topic: str = DEFAULT_TRACE_TOPIC) -> Any:
    """Send one trace; returns the send future. Call ``producer.flush()`` when done."""
    key, value = trace_message(trace)
    return producer.send(topic, key=key, value=value)


def publish_assessment(producer: KafkaProducer, assessment: Assessment,
                       topic: str = DEFAULT_ASSESSMENT_TOPIC) -> Any:
    key, value = assessment_message(assessment)
    return producer.send(topic, key=key, value=value)
