"""Sources: records (Kafka) or pages (MLflow) -> typed, validated events, or dead letters.

Start with ``events`` (the shared vocabulary), ``errors`` (the taxonomy) and ``formats`` (wire
bytes -> events, pure). ``kafka_source`` holds the Kafka adapters and client settings,
``producer`` the helper that publishes MLflow traces, ``embedded_broker`` the test/demo broker.
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
