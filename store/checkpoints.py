"""What a polled source reads of the store: its stored checkpoints, and what is already in.

``consumers.mlflow_source`` uses the store as its seen-set: for one page of trace infos, one
query gives the stored status of those traces and another the stored update time of their
assessments. The checkpoints themselves are written by ``store.upserts.apply_batch``, in the
transaction of the batch they cover; this module only reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select

from consumers.mlflow_plan import Known
from store import dialect
from store.models import ASSESSMENTS, CHECKPOINTS, TRACES


class StoreCheckpoints:
    """``consumers.mlflow_plan.StoreView`` over the SQL store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def checkpoints(self, prefix: str) -> dict[str, dict[str, Any]]:
        c = CHECKPOINTS
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.c.name, c.c.value).where(c.c.name.startswith(prefix)))
            return {r.name: dict(r.value) for r in rows}

    def known(self, trace_ids: Sequence[str]) -> Known:
        if not trace_ids:
            return Known({}, {})
        t, a = TRACES, ASSESSMENTS
        ids = list(dict.fromkeys(trace_ids))
        with self.engine.connect() as conn:
            traces = {r.trace_id: r.status for r in conn.execute(
                select(t.c.trace_id, t.c.status).where(dialect.in_ids(conn, t.c.trace_id, ids)))}
            assessments = {r.assessment_id: int(r.last_update_time_ms) for r in conn.execute(
                select(a.c.assessment_id, a.c.last_update_time_ms)
                .where(dialect.in_ids(conn, a.c.trace_id, ids)))}
        return Known(traces, assessments)
