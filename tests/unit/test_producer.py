"""The producer helper publishes exactly the formats the decoders accept, keyed by trace_id."""

from __future__ import annotations

import pytest

from consumers.events import Provenance
from consumers.formats import decode_assessment, decode_trace
from consumers.producer import assessment_message, trace_message
from tests import payloads as P

pytestmark = pytest.mark.filterwarnings(
    # MLflow 3.17's SQL tracking store module uses a loader SQLAlchemy 2.1 deprecates.
    "ignore:The ``noload`` loader strategy is deprecated")

PROV = Provenance("t", 0, 0)


def test_a_trace_round_trips_through_the_helper() -> None:
    from mlflow.entities import Trace

    trace = Trace.from_json(P.dumps(P.fixture("trace_ok")).decode())
    key, value = trace_message(trace)
    event = decode_trace(value, PROV, 1 << 22)
    assert key == trace.info.trace_id.encode() == event.trace_id.encode()
    assert event.source_format == "trace"
    assert len(event.spans) == len(trace.data.spans)
    assert event.execution_time_ms == trace.info.execution_duration


def test_a_bare_trace_info_goes_out_as_info_json() -> None:
    from mlflow.entities import TraceInfo

    info = TraceInfo.from_dict(P.fixture("trace_info_ok"))
    key, value = trace_message(info)
    event = decode_trace(value, PROV, 1 << 22)
    assert key == info.trace_id.encode()
    assert (event.source_format, event.spans) == ("trace_info", ())
    assert event.status == "OK"


@pytest.mark.parametrize("name", ["feedback_numeric", "feedback_no", "expectation",
                                  "override_new"])
def test_an_assessment_round_trips(name: str) -> None:
    from mlflow.entities import Assessment

    assessment = Assessment.from_dictionary(P.fixture(f"assessment_{name}"))
    key, value = assessment_message(assessment)
    event = decode_assessment(value, PROV, 1 << 22)
    assert key == assessment.trace_id.encode()
    assert event.assessment_id == assessment.assessment_id
    assert event.value == assessment.value
