"""Sources: records (Kafka) or pages (MLflow) -> typed, validated events, or dead letters.

Start with ``events`` (the shared vocabulary), ``errors`` (the taxonomy), ``ports`` (what the
loop needs from a source) and ``formats`` (wire bytes -> events, pure; its field readers and
bounds in ``fields``). ``kafka_source`` holds the Kafka adapters, ``mlflow_source`` the polling
source (``mlflow_plan`` its pure half, ``mlflow_client`` its MLflow calls), ``redact`` the one
place credentials are masked, ``producer`` the helper that publishes MLflow traces and
``embedded_broker`` the test and demo broker.
"""

from consumers.errors import ConfigError, CuratorError, DecodeError, TransientError
from consumers.events import AssessmentEvent, DeadLetter, Provenance, RawRecord, TraceEvent

__all__ = [
    "AssessmentEvent",
    "ConfigError",
    "CuratorError",
    "DeadLetter",
    "DecodeError",
    "Provenance",
    "RawRecord",
    "TraceEvent",
    "TransientError",
]
