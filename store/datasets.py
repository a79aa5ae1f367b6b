"""Curated datasets in SQL: candidate selection, the version ledger, and record membership.

Invariant 4 (docs/design.md): a version and its records are written ``pending`` in one transaction
*before* the sink is called, and the version becomes ``done`` only after the sink confirmed
the merge. A crash between the two leaves a pending version whose exact records the next cycle
merges again (sinks are idempotent by inputs hash), so a record is never added twice, and
any version can be listed and exported again from ``dataset_records``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, and_, func, select, update

from consumers.events import TraceView
from consumers.redact import redact
from store import dialect
from store.decisions import VIEW_COLUMNS, row_view
from store.models import (
    ASSESSMENTS,
    DATASETS,
    RECORDS,
    SKIPS,
    TRACE_TAGS,
    TRACES,
    VERSIONS,
)


class Candidate(NamedTuple):
    """A tagged trace, with what a dataset record is built from."""

    view: TraceView
    request: str | None
    response: str | None
    tag_key: str
    tag_value: str
    rule: str | None
    feedback: Mapping[str, Any]  # valid feedback, name -> value (the newest per name)
    expectations: Mapping[str, Any]  # valid expectations, name -> value

    @property
    def trace_id(self) -> str:
        return self.view.trace_id


class VersionRow(NamedTuple):
    dataset: str
    version: int
    state: str
    created_ms: int
    committed_ms: int | None
    record_count: int
    digest: str
    rule_mix: Mapping[str, int]
    attempts: int
    last_error: str | None


def candidates(conn: Connection, dataset: str, tag_key: str, tag_values: Sequence[str] | None,
               since_ms: int | None, experiment_id: str | None, limit: int,
               selection: str = "") -> list[Candidate]:
    """Tagged traces neither in ``dataset`` nor skipped by it, oldest first, at most ``limit``."""
    t, g, r, k = TRACES, TRACE_TAGS, RECORDS, SKIPS
    query = (select(*VIEW_COLUMNS, t.c.request, t.c.response, g.c.tag_key, g.c.tag_value,
                    g.c.rule)
             .join(g, g.c.trace_id == t.c.trace_id)
             .outerjoin(r, and_(r.c.dataset == dataset, r.c.trace_id == t.c.trace_id))
             .outerjoin(k, and_(k.c.dataset == dataset, k.c.trace_id == t.c.trace_id,
                                k.c.selection.in_(["", selection])))
             .where(g.c.tag_key == tag_key, g.c.tag_value.is_not(None), r.c.trace_id.is_(None),
                    k.c.trace_id.is_(None)))
    if tag_values is not None:
        query = query.where(g.c.tag_value.in_(list(tag_values)))
    if since_ms is not None:
        query = query.where(t.c.timestamp_ms >= since_ms)
    if experiment_id is not None:
        query = query.where(t.c.experiment_id == experiment_id)
    rows = conn.execute(query.order_by(t.c.timestamp_ms, t.c.trace_id).limit(limit)).all()
    by_trace = _assessments(conn, [row.trace_id for row in rows])
    return [Candidate(row_view(row), row.request, row.response, row.tag_key, row.tag_value,
                      row.rule, *by_trace.get(row.trace_id, ({}, {}))) for row in rows]


def _assessments(conn: Connection, trace_ids: Sequence[str]
                 ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    a = ASSESSMENTS
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for chunk in dialect.chunks(trace_ids):
        rows = conn.execute(select(a.c.trace_id, a.c.kind, a.c.name, a.c.value)
                            .where(dialect.in_ids(conn, a.c.trace_id, chunk),
                                   a.c.valid.is_(True))
                            .order_by(a.c.last_update_time_ms, a.c.assessment_id))
        for row in rows:  # oldest first: the newest value of a name wins
            fb, ex = out.setdefault(row.trace_id, ({}, {}))
            (fb if row.kind == "feedback" else ex)[row.name] = row.value
    return out


def known_hashes(conn: Connection, dataset: str, hashes: Sequence[str]) -> set[str]:
    r = RECORDS
    found: set[str] = set()
    for chunk in dialect.chunks(hashes):
        found.update(conn.execute(select(r.c.input_hash).where(
            r.c.dataset == dataset, dialect.in_ids(conn, r.c.input_hash, chunk))).scalars())
    return found


def skip(conn: Connection, dataset: str, skips: Sequence[tuple[str, str, str]],
         now_ms: int) -> None:
    """Remember candidates (trace id, reason, selection digest) the dataset does not take."""
    dialect.bulk_upsert(conn, SKIPS, ("dataset", "trace_id"),
                        ("dataset", "trace_id", "reason", "selection", "created_ms"),
                        [(dataset, tid, reason, sel, now_ms) for tid, reason, sel in skips])


def ensure_dataset(conn: Connection, name: str, sink: str, now_ms: int) -> tuple[str, str | None]:
    """The dataset's (sink, sink dataset id), creating its row on first use."""
    dialect.bulk_upsert(conn, DATASETS, ("name",), ("name", "sink", "sink_dataset_id",
                                                     "created_ms"),
                        [(name, sink, None, now_ms)], on_conflict="nothing")
    row = conn.execute(select(DATASETS.c.sink, DATASETS.c.sink_dataset_id)
                       .where(DATASETS.c.name == name)).one()
    return row.sink, row.sink_dataset_id


def sink_dataset_id(conn: Connection, name: str) -> str | None:
    return conn.execute(select(DATASETS.c.sink_dataset_id).where(DATASETS.c.name == name)
                        ).scalar_one_or_none()


def set_sink_dataset_id(conn: Connection, name: str, sink_dataset_id: str) -> None:
    conn.execute(update(DATASETS).where(DATASETS.c.name == name)
                 .values(sink_dataset_id=sink_dataset_id))


def pending_version(conn: Connection, dataset: str) -> VersionRow | None:
    v = VERSIONS
    row = conn.execute(select(v).where(v.c.dataset == dataset, v.c.state == "pending")
                       .order_by(v.c.version)).first()
    return VersionRow(*row) if row else None


def next_version(conn: Connection, dataset: str) -> int:
    v = VERSIONS
    return int(conn.execute(select(func.coalesce(func.max(v.c.version), 0))
                            .where(v.c.dataset == dataset)).scalar_one()) + 1


def create_version(conn: Connection, dataset: str, version: int,
                   records: Sequence[tuple[str, str, dict[str, Any]]], digest: str,
                   rule_mix: Mapping[str, int], now_ms: int) -> None:
    """Write version ``version`` as pending, with its records ((hash, trace id, record))."""
    dialect.bulk_upsert(conn, VERSIONS, ("dataset", "version"), (
        "dataset", "version", "state", "created_ms", "committed_ms", "record_count", "digest",
        "rule_mix", "attempts", "last_error"), [(
            dataset, version, "pending", now_ms, None, len(records), digest,
            _json(dict(rule_mix)), 0, None)], on_conflict="nothing")
    dialect.bulk_upsert(conn, RECORDS, ("dataset", "input_hash"), (
        "dataset", "input_hash", "version", "trace_id", "record", "created_ms"),
        [(dataset, h, version, tid, _json(rec), now_ms) for h, tid, rec in records],
        on_conflict="nothing")


def mark_done(conn: Connection, dataset: str, version: int, now_ms: int) -> None:
    v = VERSIONS
    conn.execute(update(v).where(v.c.dataset == dataset, v.c.version == version)
                 .values(state="done", committed_ms=now_ms, attempts=v.c.attempts + 1,
                         last_error=None))


def mark_failed(conn: Connection, dataset: str, version: int, error: str) -> None:
    v = VERSIONS
    conn.execute(update(v).where(v.c.dataset == dataset, v.c.version == version)
                 .values(attempts=v.c.attempts + 1, last_error=redact(error, 2000)))


def versions(conn: Connection, dataset: str | None = None) -> list[VersionRow]:
    v = VERSIONS
    query = select(v).order_by(v.c.dataset, v.c.version)
    if dataset is not None:
        query = query.where(v.c.dataset == dataset)
    return [VersionRow(*row) for row in conn.execute(query)]


def version_records(conn: Connection, dataset: str, version: int,
                    cumulative: bool = False) -> list[dict[str, Any]]:
    """The records added by ``version`` (or, ``cumulative``, the dataset as of that version),
    in a stable order."""
    r = RECORDS
    cond = r.c.version <= version if cumulative else r.c.version == version
    rows = conn.execute(select(r.c.record).where(r.c.dataset == dataset, cond)
                        .order_by(r.c.version, r.c.input_hash))
    return [row.record for row in rows]


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
