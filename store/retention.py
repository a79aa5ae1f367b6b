"""Retention: delete raw rows and metric buckets past their age, a bounded amount per call.

``prune`` runs in the caller's transaction and deletes at most ``max_rows_per_cycle`` rows of
each kind (traces, dead letters, minute buckets, hour buckets), oldest first, so a backlog drains
over several calls. A trace goes with its assessments, tags and decision log; its buckets stay,
so reports keep covering it until the buckets' own retention. The ages come from the settings
(``retention_*``), which alone hold the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, tuple_

from store import dialect
from store.metrics import BUCKETS, DAY_MS, KEY_COLUMNS
from store.models import ASSESSMENTS, DEAD_LETTERS, DECISION_LOG, TRACE_TAGS, TRACES


@dataclass(frozen=True, slots=True)
class Retention:
    raw_days: float
    minute_days: float
    hour_days: float
    max_rows_per_cycle: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    traces: int = 0
    minute_buckets: int = 0
    hour_buckets: int = 0
    dead_letters: int = 0

    def most(self) -> int:
        """The largest count of one kind: at the cycle's limit, more may be waiting."""
        return max(self.traces, self.minute_buckets, self.hour_buckets, self.dead_letters)

    def __bool__(self) -> bool:
        return self.most() > 0


def prune(conn: Connection, now_ms: int, retention: Retention) -> PruneResult:
    """Delete at most ``max_rows_per_cycle`` of each kind past retention, oldest first.

    A trace row goes once both its start and its last write are older than ``raw_days``: a
    late trace, or an IN_PROGRESS version with an old start, keeps its row for ``raw_days``
    after it arrived, so its update or redelivery finds it and is not counted again. Its
    assessments, tags and decision log go with it; its buckets stay, so reports keep covering
    it. A redelivery more than ``raw_days`` after the first delivery would count again: keep
    ``raw_days`` above the Kafka topics' retention.
    """
    limit = retention.max_rows_per_cycle
    t = TRACES
    cutoff = now_ms - int(retention.raw_days * DAY_MS)
    ids = list(conn.execute(select(t.c.trace_id).where(t.c.timestamp_ms < cutoff,
                                                       t.c.ingested_ms < cutoff)
                            .order_by(t.c.timestamp_ms).limit(limit)).scalars())
    for chunk in dialect.chunks(ids):
        for table in (ASSESSMENTS, TRACE_TAGS, DECISION_LOG, TRACES):
            conn.execute(delete(table).where(dialect.in_ids(conn, table.c.trace_id, chunk)))
    d = DEAD_LETTERS
    dl_ids = list(conn.execute(select(d.c.id).where(d.c.created_ms < cutoff)
                               .order_by(d.c.id).limit(limit)).scalars())
    if dl_ids:
        conn.execute(delete(d).where(d.c.id.in_(dl_ids)))
    minute = _prune_buckets(conn, "minute", now_ms - int(retention.minute_days * DAY_MS), limit)
    hour = _prune_buckets(conn, "hour", now_ms - int(retention.hour_days * DAY_MS), limit)
    return PruneResult(len(ids), minute, hour, len(dl_ids))


def _prune_buckets(conn: Connection, res: str, before_ms: int, limit: int) -> int:
    """Delete at most ``limit`` buckets of resolution ``res`` that start before ``before_ms``,
    oldest first. Returns how many."""
    table = BUCKETS[res]
    key = tuple_(*(table.c[c] for c in KEY_COLUMNS))
    keys = conn.execute(select(*(table.c[c] for c in KEY_COLUMNS))
                        .where(table.c.bucket_ms < before_ms).order_by(table.c.bucket_ms)
                        .limit(limit)).all()
    for chunk in dialect.chunks(keys, dialect.KEY_CHUNK):
        conn.execute(delete(table).where(key.in_([tuple(k) for k in chunk])))
    return len(keys)
