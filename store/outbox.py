"""The tag write-back outbox: what is due, confirm (delete), reschedule, and how far behind.

A row is deleted only when MLflow has confirmed the exact revision (``digest``) that was sent;
a newer decision that replaced the row meanwhile survives the confirmation of the older one.
Rows whose trace MLflow does not know yet are kept, flagged ``waiting_for_trace``, and retried.
The stored ``last_error`` is redacted (``consumers.redact``): MLflow's errors echo the URI.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Connection, and_, func, select, update
from sqlalchemy import delete as sa_delete

from consumers.redact import redact
from store.models import OUTBOX


class OutboxRow(NamedTuple):
    trace_id: str
    tag_key: str
    tag_value: str | None  # None: delete the tag
    digest: str
    attempts: int
    created_ms: int


class OutboxStats(NamedTuple):
    total: int
    waiting_for_trace: int
    oldest_created_ms: int | None

    @property
    def ready(self) -> int:
        """Rows MLflow should be able to take now (not waiting for an unknown trace)."""
        return self.total - self.waiting_for_trace


def due(conn: Connection, now_ms: int, limit: int) -> list[OutboxRow]:
    o = OUTBOX
    rows = conn.execute(
        select(o.c.trace_id, o.c.tag_key, o.c.tag_value, o.c.digest, o.c.attempts,
               o.c.created_ms)
        .where(o.c.next_attempt_ms <= now_ms).order_by(o.c.next_attempt_ms).limit(limit))
    return [OutboxRow(*r) for r in rows]


def confirm(conn: Connection, row: OutboxRow) -> None:
    o = OUTBOX
    conn.execute(sa_delete(o).where(and_(o.c.trace_id == row.trace_id,
                                         o.c.tag_key == row.tag_key,
                                         o.c.digest == row.digest)))


def reschedule(conn: Connection, row: OutboxRow, next_attempt_ms: int, error: str,
               waiting_for_trace: bool) -> None:
    o = OUTBOX
    conn.execute(update(o).where(and_(o.c.trace_id == row.trace_id,
                                      o.c.tag_key == row.tag_key, o.c.digest == row.digest))
                 .values(attempts=row.attempts + 1, next_attempt_ms=next_attempt_ms,
                         last_error=redact(error, 1000), waiting_for_trace=waiting_for_trace))


def stats(conn: Connection) -> OutboxStats:
    o = OUTBOX
    total, waiting, oldest = conn.execute(
        select(func.count(), func.coalesce(func.sum(
            func.cast(o.c.waiting_for_trace, OUTBOX.c.attempts.type)), 0),
            func.min(o.c.created_ms))).one()
    return OutboxStats(int(total), int(waiting), oldest)
