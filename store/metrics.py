"""Metric buckets in SQL: moved in the batch transaction, read back for reports, rebuilt.

``store.upserts`` reads the touched traces' state (``read_state``) before a batch and derives it
after; ``store.rollup.deltas`` turns the contributions that changed into deltas, summed per bucket
in Python first, which ``apply_deltas`` adds in the same transaction, so a trace never counts
twice: it locks the buckets (PostgreSQL, in key order, ``store.locks``), adds in Python, upserts
the sums and deletes a bucket back at zero. A bucket going below zero is a bug: the batch
fails, nothing commits. ``rebuild`` recomputes buckets from raw rows with the same pure code.
A bucket holds its traces' capped entries (50 span types and 50 feedback names a trace), so a
subtraction removes exactly what was added.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Table, delete, func, select, tuple_

from consumers.errors import ConfigError
from store import dialect, locks
from store.decisions import VIEW_JSON, VIEW_SQL, feedback_rows, tuple_view
from store.models import META, TRACES, MetricHour, MetricMinute, core_table
from store.rollup import (
    RESOLUTIONS,
    SCALAR_NAMES,
    Agg,
    BucketKey,
    Contribution,
    DeltaKey,
    FeedbackFacts,
    StreamRollup,
    TraceFacts,
    contribution,
    floor_to,
)

logger = logging.getLogger(__name__)

BUCKETS: dict[str, Table] = {
    "minute": core_table(MetricMinute),
    "hour": core_table(MetricHour),
}
KEY_COLUMNS = ("bucket_ms", "rollup", "experiment_id", "trace_name", "dimension")
BUCKET_COLUMNS = (*KEY_COLUMNS, *SCALAR_NAMES, "p50_ms", "p95_ms", "p99_ms", "max_ms",
                  "sketches", "spans", "feedback", "candidates", "updated_ms")
DIMENSION_META_KEY = "metrics.dimension_tag"
DAY_MS = 86_400_000


class MetricsInconsistentError(RuntimeError):
    """A bucket would go below zero: a contribution was removed that was never added (a bug)."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``minute_days`` / ``hour_days``: the bucket retention. Deltas to a bucket older than its
    retention are dropped, in both directions: such a bucket is gone, or due to be pruned, so
    neither an add nor a subtract may recreate it (a subtract would go below zero); None keeps
    every bucket. The values come from the settings (``metrics_dimension_tag``,
    ``retention_*_days``), which alone hold the defaults."""

    dimension_tag: str
    minute_days: float | None
    hour_days: float | None

    def horizons(self, now_ms: int) -> dict[str, int]:
        """Per resolution, the oldest bucket start that still takes deltas."""
        out = {}
        for res, days in (("minute", self.minute_days), ("hour", self.hour_days)):
            if days is not None:
                out[res] = now_ms - int(days * DAY_MS)
        return out

    def retained(self, deltas: Mapping[DeltaKey, Agg], now_ms: int) -> dict[DeltaKey, Agg]:
        horizons = self.horizons(now_ms)
        return {k: a for k, a in deltas.items() if k[1] >= horizons.get(k[0], k[1])}


# --- reading the state of traces -------------------------------------------------------------

_FACTS_SQL = (f"SELECT {VIEW_SQL}, input_tokens, output_tokens, total_tokens, span_summary "
              "FROM traces WHERE trace_id {ids}")


def trace_facts(conn: Connection, trace_ids: Sequence[str]) -> dict[str, TraceFacts]:
    return {r[0]: TraceFacts(tuple_view(r), r[9], r[10], r[11], r[12] or {}, r[8])
            for r in dialect.select_in(conn, _FACTS_SQL, trace_ids, (*VIEW_JSON, 12))}


def facts_of(rows: Mapping[str, Sequence[Any]]) -> dict[str, list[FeedbackFacts]]:
    """Feedback rows (``store.decisions.feedback_rows``) as metrics read them, in a stable
    order."""
    return {tid: sorted((FeedbackFacts(r.assessment_id, r.name, r.value, r.numeric_value,
                                       r.error) for r in found),
                        key=lambda f: f.assessment_id)
            for tid, found in rows.items()}


def feedback_facts(conn: Connection, trace_ids: Sequence[str]
                   ) -> dict[str, list[FeedbackFacts]]:
    """Valid feedback per trace, in a stable order."""
    return facts_of(feedback_rows(conn, trace_ids))


def candidate_tags(conn: Connection, trace_ids: Sequence[str]
                   ) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for tid, key, value in dialect.select_in(
            conn, "SELECT trace_id, tag_key, tag_value FROM trace_tags WHERE trace_id {ids} "
                  "AND tag_value IS NOT NULL", trace_ids):
        out.setdefault(tid, []).append((key, value))
    return out


@dataclass(slots=True)
class State:
    """What metrics read of a set of traces: stored rows, valid feedback, candidate tags."""

    facts: dict[str, TraceFacts]
    feedback: dict[str, list[FeedbackFacts]]
    tags: dict[str, list[tuple[str, str]]]

    def contribution(self, trace_id: str, config: MetricsConfig) -> Contribution | None:
        f = self.facts.get(trace_id)
        if f is None:
            return None
        return contribution(f, self.feedback.get(trace_id, ()), self.tags.get(trace_id, ()),
                            config.dimension_tag)


def read_state(conn: Connection, trace_ids: Sequence[str], *,
               with_assessments: bool = True) -> State:
    """The stored traces among ``trace_ids``; with their valid feedback and candidate tags
    unless ``with_assessments`` is off (the rules alone need only the rows)."""
    facts = trace_facts(conn, trace_ids)
    stored = list(facts) if with_assessments else []
    return State(facts, feedback_facts(conn, stored) if stored else {},
                 candidate_tags(conn, stored) if stored else {})


def snapshot(conn: Connection, trace_ids: Sequence[str], config: MetricsConfig
             ) -> dict[str, Contribution]:
    """The current contribution of each stored trace among ``trace_ids``."""
    state = read_state(conn, trace_ids)
    out = {}
    for tid in state.facts:
        c = state.contribution(tid, config)
        if c is not None:
            out[tid] = c
    return out


# --- writing deltas --------------------------------------------------------------------------


def read_buckets_by_key(conn: Connection, table: Table,
                        keys: Sequence[tuple[int, BucketKey]]) -> dict[tuple[int, BucketKey], Agg]:
    """The stored buckets among ``keys`` (bucket start, key), through the DBAPI: a row-value
    IN list of up to ``KEY_CHUNK`` keys a statement, one prepared statement per chunk size."""
    out: dict[tuple[int, BucketKey], Agg] = {}
    n = len(SCALAR_NAMES)
    cols = dialect.column_list((*KEY_COLUMNS, *SCALAR_NAMES, "sketches", "spans", "feedback",
                                "candidates"))
    key_cols = dialect.column_list(KEY_COLUMNS)
    pg = conn.dialect.name == "postgresql"
    mark = "%s" if pg else "?"
    row = f"({', '.join([mark] * len(KEY_COLUMNS))})"
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cur = dbapi.cursor()
    try:
        for chunk in dialect.chunks(keys, dialect.KEY_CHUNK):
            # PostgreSQL types a row of parameters by the columns it is compared with; SQLite
            # takes a list of row values only as VALUES.
            rows = ", ".join([row] * len(chunk))
            cur.execute(f"SELECT {cols} FROM {table.name} WHERE ({key_cols}) IN "
                        f"({rows if pg else 'VALUES ' + rows})",
                        [v for b, k in chunk for v in (b, *k)])
            for r in cur.fetchall():
                json_cols = r[6 + n:] if pg else [dialect.json_value(v) for v in r[6 + n:]]
                out[(r[0], BucketKey(r[1], r[2], r[3], r[4]))] = Agg.from_columns(
                    r[5:5 + n], r[5 + n], *json_cols)
    finally:
        cur.close()
    return out


def bucket_row(bucket_ms: int, key: BucketKey, agg: Agg, now_ms: int) -> tuple[Any, ...]:
    """A bucket row in ``BUCKET_COLUMNS`` order, JSON columns encoded."""
    cols = agg.json_columns()
    return (bucket_ms, *key, *agg.scalars,
            *agg.latency_sketch().quantiles((0.5, 0.95, 0.99, 1.0)), agg.sketches_blob(),
            *(orjson.dumps(cols[c]).decode() for c in ("spans", "feedback", "candidates")),
            now_ms)


def apply_deltas(conn: Connection, deltas: Mapping[DeltaKey, Agg], now_ms: int) -> int:
    """Add ``deltas`` to the stored buckets (see the module docstring). Returns buckets written."""
    if not deltas:
        return 0
    locks.lock_buckets(conn, deltas)
    written = 0
    for res in RESOLUTIONS:
        table = BUCKETS[res.name]
        mine = sorted(((b, k), agg) for (r, b, k), agg in deltas.items() if r == res.name)
        if not mine:
            continue
        stored = read_buckets_by_key(conn, table, [bk for bk, _ in mine])
        rows, empty = [], []
        for (b, k), delta in mine:
            agg = stored.get((b, k)) or Agg()
            agg.merge(delta)
            bad = agg.negative_part()
            if bad is not None:
                raise MetricsInconsistentError(
                    f"{res.name} bucket {b} {k} would go below zero ({bad}): a trace's earlier "
                    "contribution was never added. Run `trace-curator metrics rebuild`.")
            if agg.is_zero():
                if (b, k) in stored:
                    empty.append((b, *k))
            else:
                rows.append(bucket_row(b, k, agg, now_ms))
        dialect.bulk_upsert(conn, table, KEY_COLUMNS, BUCKET_COLUMNS, rows, few=True)
        for chunk in dialect.chunks(empty, dialect.KEY_CHUNK):
            conn.execute(delete(table).where(tuple_(*(table.c[c] for c in KEY_COLUMNS))
                                             .in_(chunk)))
        written += len(rows) + len(empty)
    return written


# --- dimension tag bookkeeping ---------------------------------------------------------------


def stored_dimension_tag(conn: Connection) -> str | None:
    return conn.execute(select(META.c.value).where(META.c.key == DIMENSION_META_KEY)
                        ).scalar_one_or_none()


def check_dimension_tag(conn: Connection, config: MetricsConfig) -> None:
    """Record the dimension tag on first use; refuse a different one on existing buckets."""
    stored = stored_dimension_tag(conn)
    if stored is None:
        dialect.bulk_upsert(conn, META, ("key",), ("key", "value"),
                            [(DIMENSION_META_KEY, config.dimension_tag)])
    elif stored != config.dimension_tag:
        raise ConfigError(
            f"the metric buckets are keyed by the tag {stored!r}, but metrics_dimension_tag is "
            f"{config.dimension_tag!r}. Set it back, or run `trace-curator metrics rebuild` to "
            "rebuild the buckets from the stored traces with the new tag.")


# --- rebuild ---------------------------------------------------------------------------------


def rebuild(conn: Connection, config: MetricsConfig, now_ms: int, chunk: int = 5000) -> int:
    """Recompute every bucket from the stored traces. Returns the number of traces read.

    Buckets older than the oldest stored trace (kept past raw retention) are left as they are;
    buckets from the hour of the oldest stored trace on are replaced.
    """
    first = conn.execute(select(func.min(TRACES.c.timestamp_ms))).scalar()
    dialect.bulk_upsert(conn, META, ("key",), ("key", "value"),
                        [(DIMENSION_META_KEY, config.dimension_tag)])
    if first is None:
        return 0
    start = floor_to(int(first), RESOLUTIONS[-1].step_ms)
    for table in BUCKETS.values():
        conn.execute(delete(table).where(table.c.bucket_ms >= start))
    return write_buckets_from_rows(conn, config, now_ms, chunk)


def write_buckets_from_rows(conn: Connection, config: MetricsConfig, now_ms: int,
                            chunk: int = 5000) -> int:
    """Stream stored traces oldest first and insert their buckets (into empty bucket ranges).
    Memory stays bounded by about one hour of buckets (``StreamRollup``)."""
    stream = StreamRollup()
    seen = 0
    last = (-2, "")
    t = TRACES
    while True:
        ids_rows = conn.execute(
            select(t.c.trace_id, t.c.timestamp_ms).where(
                (t.c.timestamp_ms > last[0])
                | ((t.c.timestamp_ms == last[0]) & (t.c.trace_id > last[1])))
            .order_by(t.c.timestamp_ms, t.c.trace_id).limit(chunk)).all()
        if not ids_rows:
            break
        for c in snapshot(conn, [r.trace_id for r in ids_rows], config).values():
            stream.add(c)
        seen += len(ids_rows)
        last = (ids_rows[-1].timestamp_ms, ids_rows[-1].trace_id)
        insert_buckets(conn, config.retained(stream.completed(last[0]), now_ms), now_ms)
    insert_buckets(conn, config.retained(stream.completed(None), now_ms), now_ms)
    return seen


def insert_buckets(conn: Connection, aggs: Mapping[DeltaKey, Agg], now_ms: int) -> None:
    """Write whole buckets (``StreamRollup`` output) into bucket ranges nothing else writes:
    a rebuild, or a bulk load."""
    for res in RESOLUTIONS:
        rows = [bucket_row(b, k, agg, now_ms) for (r, b, k), agg in sorted(aggs.items())
                if r == res.name and not agg.is_zero()]
        dialect.bulk_upsert(conn, BUCKETS[res.name], KEY_COLUMNS, BUCKET_COLUMNS, rows)


# --- reads for reports -----------------------------------------------------------------------


def read_buckets(conn: Connection, ranges: Sequence[tuple[str, int, int]], rollup: int,
                 experiment_id: str | None = None) -> list[tuple[Any, ...]]:
    """Bucket rows of one rollup level in the given ``(resolution, since_ms, until_ms)``
    ranges, in one round trip: the key columns, the scalars, the sketches (bytes), then the
    JSON columns as text (the caller decodes them). Through the DBAPI, in binary on PostgreSQL:
    the report's whole cost is this query and the merge."""
    pg = conn.dialect.name == "postgresql"
    mark = "%s" if pg else "?"
    cols = ", ".join([*(f'"{c}"' for c in (*KEY_COLUMNS, *SCALAR_NAMES, "sketches")),
                      *(f'CAST("{c}" AS TEXT)' for c in ("spans", "feedback", "candidates"))])
    parts: list[str] = []
    params: list[Any] = []
    for res, since, until in ranges:
        if since >= until:
            continue
        where = f"bucket_ms >= {mark} AND bucket_ms < {mark} AND rollup = {mark}"
        params += [since, until, rollup]
        if experiment_id is not None:
            where += f" AND experiment_id = {mark}"
            params.append(experiment_id)
        parts.append(f"SELECT {cols} FROM {BUCKETS[res].name} WHERE {where}")
    if not parts:
        return []
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cur = dbapi.cursor(binary=True) if pg else dbapi.cursor()
    try:
        cur.execute(" UNION ALL ".join(parts), params)
        return list(cur.fetchall())
    finally:
        cur.close()
