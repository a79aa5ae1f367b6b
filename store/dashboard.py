"""Everything the quality dashboard shows, read at once: ``gather(engine, since_ms, until_ms)``.

A ``Dashboard`` is a frozen snapshot: the report ``Summary`` (the very figures of ``report
--format json``), a time series (volume, success rate, p50/p95/p99 per hour, or per day for
windows over ``HOURLY_MAX_DAYS``), example candidates from ``trace_tags``, the newest dataset
versions, dead letters and the tag outbox. Invariants:
- each point of the series merges the same bucket rows with the same sketch code as the
  summary (``store.report``), so a point's percentiles are exact to the sketch's 1% for one
  experiment or all of them, and the points' volumes add up to the summary's total;
- a point without traces has ``None`` rates and percentiles, never NaN or a made-up 0;
- only ids, counts, metrics and short previews leave this module (``PREVIEW_CHARS``);
- on PostgreSQL all reads share one REPEATABLE READ transaction (one snapshot). SQLite has one
  writer, and each read sees the state at its start.
Rendering is ``worker.report.page``'s job; this module only reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import Connection, Engine, Table, func, select

from store.datasets import VersionRow
from store.metrics import BUCKETS, read_buckets
from store.models import DEAD_LETTERS, TRACE_TAGS, TRACES, VERSIONS
from store.outbox import OutboxStats
from store.outbox import stats as outbox_stats
from store.report import (
    GroupAccumulator,
    Summary,
    bucket_ranges,
    rollup_for,
    stats_of,
    summary_conn,
)
from store.rollup import HOUR_MS, SCALAR_NAMES, floor_to

DAY_MS = 86_400_000
HOURLY_MAX_DAYS = 14  # longer windows are charted per day
MAX_WINDOW_DAYS = 800  # the hour buckets' default retention is 730 days; = worker.timeparse's cap
PREVIEW_CHARS = 120
EXAMPLES_PER_VALUE = 3
LATEST_DEAD_LETTERS = 5
LATEST_VERSIONS = 10
MAX_EXPERIMENTS = 200
_ERROR_CHARS = 300
_LATENCY_COUNT = SCALAR_NAMES.index("latency_count")


@dataclass(frozen=True, slots=True)
class Point:
    """One step of the series (an hour or a UTC day starting at ``start_ms``)."""

    start_ms: int
    traces: int
    ok: int
    errors: int
    success_rate: float | None  # ok / traces, as in the summary; None without traces
    p50_ms: float | None  # None when no trace of the step has a latency
    p95_ms: float | None
    p99_ms: float | None


class Example(NamedTuple):
    """A candidate trace: its id, start, status and the start of its request."""

    trace_id: str
    timestamp_ms: int
    status: str
    request_preview: str | None


class DeadLetterInfo(NamedTuple):
    topic: str
    partition: int
    offset: int
    error_type: str
    error: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class Dashboard:
    summary: Summary
    step_ms: int  # HOUR_MS or DAY_MS
    points: tuple[Point, ...]
    # (tag key, tag value) -> the newest candidates of the window, at most EXAMPLES_PER_VALUE
    examples: Mapping[tuple[str, str], tuple[Example, ...]] = field(default_factory=dict)
    dataset_versions: tuple[VersionRow, ...] = ()  # newest first, at most LATEST_VERSIONS
    dead_letters_in_window: int = 0  # dead-lettered (created) within the window
    dead_letters_total: int = 0  # every stored dead letter
    latest_dead_letters: tuple[DeadLetterInfo, ...] = ()  # of the window, newest first
    outbox: OutboxStats = OutboxStats(0, 0, None)
    experiments: tuple[str, ...] = ()  # experiment ids with buckets, for a filter


class WindowTooLongError(ValueError):
    """The window is longer than ``MAX_WINDOW_DAYS``."""


def step_for(since_ms: int, until_ms: int) -> int:
    return HOUR_MS if until_ms - since_ms <= HOURLY_MAX_DAYS * DAY_MS else DAY_MS


def gather(engine: Engine, since_ms: int, until_ms: int, *, experiment_id: str | None = None,
           by: str | None = None, now_ms: int | None = None,
           minute_retention_days: float | None = None) -> Dashboard:
    """The dashboard of the traces that started in ``[since_ms, until_ms)`` (whole minutes,
    as ``store.report.summary``). Raises WindowTooLongError, ValueError for a bad ``by``."""
    if until_ms - since_ms > MAX_WINDOW_DAYS * DAY_MS:
        raise WindowTooLongError(f"the window is longer than {MAX_WINDOW_DAYS} days")
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return gather_conn(conn, since_ms, until_ms, experiment_id=experiment_id, by=by,
                               now_ms=now_ms, minute_retention_days=minute_retention_days)


def gather_conn(conn: Connection, since_ms: int, until_ms: int, *,
                experiment_id: str | None = None, by: str | None = None,
                now_ms: int | None = None, minute_retention_days: float | None = None
                ) -> Dashboard:
    s = summary_conn(conn, since_ms, until_ms, experiment_id=experiment_id, by=by,
                     now_ms=now_ms, minute_retention_days=minute_retention_days)
    since, until = s.since_ms, s.until_ms
    step = step_for(since, until)
    in_window, total, latest = _dead_letters(conn, since, until)
    return Dashboard(
        summary=s, step_ms=step, points=series(conn, since, until, experiment_id, step),
        examples=examples(conn, since, until, experiment_id),
        dataset_versions=latest_versions(conn), dead_letters_in_window=in_window,
        dead_letters_total=total, latest_dead_letters=latest, outbox=outbox_stats(conn),
        experiments=experiment_ids(conn, since, until))


def series(conn: Connection, since_ms: int, until_ms: int, experiment_id: str | None,
           step_ms: int = HOUR_MS) -> tuple[Point, ...]:
    """One point per step from the step of ``since_ms`` to ``until_ms`` (whole minutes): the
    bucket rows the summary reads, grouped by step and merged as the summary merges them."""
    rows = read_buckets(conn, bucket_ranges(since_ms, until_ms),
                        rollup_for(None, experiment_id), experiment_id)
    n = len(SCALAR_NAMES)
    accumulators: dict[int, GroupAccumulator] = {}
    for r in rows:
        start = floor_to(r[0], step_ms)
        acc = accumulators.get(start)
        if acc is None:
            acc = accumulators[start] = GroupAccumulator(latency_only=True)
        acc.add_row(r[5:5 + n], *r[5 + n:])
    points = []
    for start in range(floor_to(since_ms, step_ms), until_ms, step_ms):
        acc = accumulators.get(start)
        if acc is None:
            points.append(Point(start, 0, 0, 0, None, None, None, None))
            continue
        agg = acc.to_agg()
        st = stats_of(agg)
        timed = agg.scalars[_LATENCY_COUNT] > 0
        points.append(Point(
            start, st.total_traces, st.ok_count, st.error_count,
            st.success_rate if st.total_traces else None,
            st.p50_latency_ms if timed else None, st.p95_latency_ms if timed else None,
            st.p99_latency_ms if timed else None))
    return tuple(points)


def examples(conn: Connection, since_ms: int, until_ms: int, experiment_id: str | None,
             per_value: int = EXAMPLES_PER_VALUE) -> dict[tuple[str, str], tuple[Example, ...]]:
    """The newest tagged traces of the window per (tag key, tag value)."""
    t, g = TRACES, TRACE_TAGS
    rank = func.row_number().over(partition_by=(g.c.tag_key, g.c.tag_value),
                                  order_by=(t.c.timestamp_ms.desc(), t.c.trace_id))
    inner = (select(g.c.tag_key, g.c.tag_value, t.c.trace_id, t.c.timestamp_ms, t.c.status,
                    func.substr(t.c.request, 1, PREVIEW_CHARS).label("preview"),
                    rank.label("rank"))
             .join(t, t.c.trace_id == g.c.trace_id)
             .where(g.c.tag_value.is_not(None), t.c.timestamp_ms >= since_ms,
                    t.c.timestamp_ms < until_ms))
    if experiment_id is not None:
        inner = inner.where(t.c.experiment_id == experiment_id)
    sub = inner.subquery()
    out: dict[tuple[str, str], list[Example]] = {}
    for r in conn.execute(select(sub).where(sub.c.rank <= per_value)
                          .order_by(sub.c.tag_key, sub.c.tag_value, sub.c.rank)):
        out.setdefault((r.tag_key, r.tag_value), []).append(
            Example(r.trace_id, r.timestamp_ms, r.status, r.preview))
    return {k: tuple(v) for k, v in out.items()}


def latest_versions(conn: Connection, limit: int = LATEST_VERSIONS) -> tuple[VersionRow, ...]:
    v = VERSIONS
    rows = conn.execute(select(v).order_by(v.c.created_ms.desc(), v.c.dataset,
                                           v.c.version.desc()).limit(limit))
    return tuple(VersionRow(*r) for r in rows)


def _dead_letters(conn: Connection, since_ms: int, until_ms: int
                  ) -> tuple[int, int, tuple[DeadLetterInfo, ...]]:
    d = DEAD_LETTERS
    in_window = (d.c.created_ms >= since_ms, d.c.created_ms < until_ms)
    count = conn.execute(select(func.count()).select_from(d).where(*in_window)).scalar_one()
    total = conn.execute(select(func.count()).select_from(d)).scalar_one()
    rows = conn.execute(
        select(d.c.topic, d.c.partition, d.c.offset, d.c.error_type,
               func.substr(d.c.error, 1, _ERROR_CHARS), d.c.created_ms)
        .where(*in_window).order_by(d.c.created_ms.desc(), d.c.id.desc())
        .limit(LATEST_DEAD_LETTERS))
    return int(count), int(total), tuple(DeadLetterInfo(*r) for r in rows)


def experiment_ids(conn: Connection, since_ms: int, until_ms: int) -> tuple[str, ...]:
    """Experiments with buckets in the window or the week before its end (the filter's
    choices stay stable when a short window is empty)."""
    h: Table = BUCKETS["hour"]
    start = floor_to(min(since_ms, until_ms - 7 * DAY_MS), HOUR_MS)
    rows = conn.execute(select(h.c.experiment_id).distinct()
                        .where(h.c.rollup == 1, h.c.bucket_ms >= start, h.c.bucket_ms < until_ms)
                        .order_by(h.c.experiment_id).limit(MAX_EXPERIMENTS))
    return tuple(r[0] for r in rows)
