"""Test data built from REAL MLflow payloads (``tests/fixtures``, made by make_fixtures.py).

Each builder clones a real ``Trace.to_json()`` / ``Assessment.to_dictionary()`` document and
changes only ids, times and states, so the bytes on the wire keep MLflow's exact shape.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson

FIXTURES = Path(__file__).parent / "fixtures"


@cache
def fixture(name: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES / f"{name}.json").read_bytes())  # type: ignore[no-any-return]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{ms % 1000:03d}Z"


def new_trace_id() -> str:
    return "tr-" + uuid.uuid4().hex


def trace_doc(kind: str = "ok", *, trace_id: str | None = None, start_ms: int | None = None,
              duration_ms: int | None = None, in_progress: bool = False,
              keep_spans: int | None = None, tags: dict[str, str] | None = None,
              experiment_id: str | None = None) -> dict[str, Any]:
    """A real trace document (``trace_ok``, ``trace_error`` or ``trace_slow``) with a new id.

    ``in_progress`` makes the IN_PROGRESS version MLflow may export first: state IN_PROGRESS,
    no duration, the root span still open, and only ``keep_spans`` spans.
    """
    doc = copy.deepcopy(fixture(f"trace_{kind}"))
    info, spans = doc["info"], doc["data"]["spans"]
    tid = trace_id or new_trace_id()
    info["trace_id"] = tid
    if experiment_id is not None:
        info["trace_location"]["mlflow_experiment"]["experiment_id"] = experiment_id
    old_start = min(s["start_time_unix_nano"] for s in spans)
    shift_ns = 0 if start_ms is None else start_ms * 1_000_000 - old_start
    for s in spans:
        s["start_time_unix_nano"] += shift_ns
        s["end_time_unix_nano"] += shift_ns
        s["attributes"]["mlflow.traceRequestId"] = f'"{tid}"'
    if start_ms is not None:
        info["request_time"] = iso(start_ms)
    if duration_ms is not None:
        root = next(s for s in spans if s["parent_span_id"] is None)
        root["end_time_unix_nano"] = root["start_time_unix_nano"] + duration_ms * 1_000_000
        info["execution_duration_ms"] = duration_ms
    if tags:
        info["tags"].update(tags)
    if in_progress:
        info["state"] = "IN_PROGRESS"
        info.pop("execution_duration_ms", None)
        root = next(s for s in spans if s["parent_span_id"] is None)
        root["end_time_unix_nano"] = None
        root["status"] = {"code": "STATUS_CODE_UNSET", "message": ""}
        children = [s for s in spans if s is not root]
        doc["data"]["spans"] = [root, *children[: keep_spans or 0]]
    return doc


def assessment_doc(kind: str = "feedback_numeric", *, trace_id: str,
                   assessment_id: str | None = None, updated_ms: int | None = None,
                   value: Any = None, valid: bool | None = None,
                   overrides: str | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(fixture(f"assessment_{kind}"))
    doc["trace_id"] = trace_id
    doc["assessment_id"] = assessment_id or "a-" + uuid.uuid4().hex
    if updated_ms is not None:
        doc["last_update_time"] = iso(updated_ms)
    if value is not None:
        body = "feedback" if "feedback" in doc else "expectation"
        doc[body]["value"] = value
    if valid is not None:
        doc["valid"] = valid
    if overrides is not None:
        doc["overrides"] = overrides
    elif "overrides" in doc:
        del doc["overrides"]
    return doc


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)
