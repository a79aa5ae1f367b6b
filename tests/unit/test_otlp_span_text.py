"""The span buffer's stored form of a decoded OpenTelemetry span gives back the same span."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from consumers.otlp import decode_otlp
from store.otlp_buffer import span_from_json, span_json
from tests.otlp_spans import request
from tests.unit.test_otlp_decode import generated_spans


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proto=generated_spans())
def test_a_span_read_back_from_the_buffer_is_the_span_that_was_stored(proto: Span) -> None:
    (decoded,) = decode_otlp(request(proto).SerializeToString(), "otlp_proto", 1 << 20).spans
    assert span_from_json(span_json(decoded)) == decoded
