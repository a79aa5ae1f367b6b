"""A pandas view of stored traces with the columns classic notebook analysis code reads.

``traces_frame`` returns one row per trace with ``trace_id, request, response, status,
execution_time_ms, timestamp_ms, tags, trace_metadata, experiment_id, name, assessments``:
the shape older ``mlflow.search_traces`` DataFrames had (MLflow 3.17's have no ``status``,
``execution_time_ms`` or ``timestamp_ms`` columns), so code written against it runs unchanged on
the store. ``request``/``response`` are parsed JSON where the stored text is JSON. ``assessments``
is a list of dicts (``assessment_name``, ``assessment_id``, ``feedback`` or ``expectation``
``{"value": ...}``, ``rationale``, ``valid``), valid ones only unless asked otherwise.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Engine, select

from consumers.formats import parse_json_text
from store import dialect
from store.models import ASSESSMENTS, TRACES

COLUMNS = ["trace_id", "request", "response", "status", "execution_time_ms", "timestamp_ms",
           "tags", "trace_metadata", "experiment_id", "name", "assessments"]


def _assessment_dict(r: Any) -> dict[str, Any]:
    return {"assessment_id": r.assessment_id, "assessment_name": r.name,
            r.kind: {"value": r.value}, "rationale": r.rationale, "valid": r.valid,
            "source": {"source_type": r.source_type, "source_id": r.source_id}}


def traces_frame(engine: Engine, since_ms: int, until_ms: int | None = None, *,
                 experiment_id: str | None = None, include_invalid: bool = False,
                 limit: int | None = None) -> pd.DataFrame:
    """Stored traces with ``since_ms <= timestamp_ms < until_ms``, oldest first."""
    t, a = TRACES, ASSESSMENTS
    query = select(t.c.trace_id, t.c.request, t.c.response, t.c.status, t.c.execution_time_ms,
                   t.c.timestamp_ms, t.c.tags, t.c.trace_metadata, t.c.experiment_id,
                   t.c.name).where(t.c.timestamp_ms >= since_ms)
    if until_ms is not None:
        query = query.where(t.c.timestamp_ms < until_ms)
    if experiment_id is not None:
        query = query.where(t.c.experiment_id == experiment_id)
    query = query.order_by(t.c.timestamp_ms, t.c.trace_id)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        by_trace: dict[str, list[dict[str, Any]]] = {}
        ids = [r.trace_id for r in rows]
        for chunk in dialect.chunks(ids):
            aq = select(a).where(dialect.in_ids(conn, a.c.trace_id, chunk))
            if not include_invalid:
                aq = aq.where(a.c.valid.is_(True))
            for r in conn.execute(aq.order_by(a.c.create_time_ms, a.c.assessment_id)):
                by_trace.setdefault(r.trace_id, []).append(_assessment_dict(r))
    records = [{
        "trace_id": r.trace_id, "request": parse_json_text(r.request),
        "response": parse_json_text(r.response), "status": r.status,
        "execution_time_ms": r.execution_time_ms, "timestamp_ms": r.timestamp_ms,
        "tags": dict(r.tags or {}), "trace_metadata": dict(r.trace_metadata or {}),
        "experiment_id": r.experiment_id, "name": r.name,
        "assessments": by_trace.get(r.trace_id, []),
    } for r in rows]
    return pd.DataFrame.from_records(records, columns=COLUMNS)
