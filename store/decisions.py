"""Rule decisions inside the batch transaction: evaluate, log, and queue tags for write-back.

A batch is decided in its transaction, before its commit (invariant 3 in docs/design.md), in
three steps: reads (``decision_views``, ``current_tags``), ``decide`` (pure: evaluate and
``plan_decisions``), ``write_decisions`` (``store.upserts.apply_batch`` runs them):
  1. a trace's view is its most complete version: the stored row read *before* the upsert
     (``prior_versions``), unless the batch brought a strictly more complete one;
  2. traces touched only by assessments are read from the store (a trace not stored yet is
     decided when it arrives);
  3. the rules see each trace with its valid feedback, as stored after this batch;
  4. every evaluation goes to ``decision_log`` once per distinct input (digest), and each tag
     whose value changed updates ``trace_tags`` and replaces the trace's ``tag_outbox`` row
     (unless write-back is off: then nothing would drain the outbox, and nothing is queued).
Redelivery evaluates the same inputs to the same digest and changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from typing import Any, NamedTuple, Protocol

import orjson
from sqlalchemy import Connection, select

from consumers.events import (
    AssessmentEvent,
    AssessmentView,
    Evaluation,
    TraceEvent,
    TraceView,
)
from store import dialect
from store.models import (
    DECISION_LOG,
    OUTBOX,
    TRACE_TAGS,
    TRACES,
)


class Decider(Protocol):
    """The rules engine as the store needs it (``worker.rules.engine.RuleSet`` implements it)."""

    def evaluate(self, trace: TraceView,
                 assessments: Sequence[AssessmentView] = ()) -> Evaluation: ...

    def tag_keys(self) -> frozenset[str]: ...

    def needs_assessments(self) -> bool: ...


class TagChange(NamedTuple):
    trace_id: str
    tag_key: str
    tag_value: str | None  # None: no rule tags the trace with this key any more


class Prior(NamedTuple):
    completeness: int
    view: TraceView


VIEW_COLUMNS = (TRACES.c.trace_id, TRACES.c.experiment_id, TRACES.c.name, TRACES.c.status,
              TRACES.c.timestamp_ms, TRACES.c.execution_time_ms, TRACES.c.tags,
              TRACES.c.trace_metadata, TRACES.c.completeness)


def row_view(row: Any) -> TraceView:
    """The rules' view of a ``traces`` row (selected with at least ``VIEW_COLUMNS``)."""
    return TraceView(row.trace_id, row.experiment_id, row.name, row.status, row.timestamp_ms,
                     row.execution_time_ms, row.tags or {}, row.trace_metadata or {})


# ``VIEW_COLUMNS`` as SQL text, for the hot path's reads through the DBAPI (``dialect.select_in``);
# the JSON columns tags and trace_metadata are at indexes 6 and 7.
VIEW_SQL = ("trace_id, experiment_id, name, status, timestamp_ms, execution_time_ms, tags, "
            "trace_metadata, completeness")
VIEW_JSON = (6, 7)


def tuple_view(r: Sequence[Any]) -> TraceView:
    """The rules' view of a ``traces`` row read as a tuple in ``VIEW_SQL`` order."""
    return TraceView(r[0], r[1], r[2], r[3], r[4], r[5], r[6] or {}, r[7] or {})


def prior_versions(conn: Connection, trace_ids: Sequence[str]) -> dict[str, Prior]:
    """The stored version of each trace, read before the batch's upsert."""
    return {r[0]: Prior(r[8], tuple_view(r)) for r in dialect.select_in(
        conn, f"SELECT {VIEW_SQL} FROM traces WHERE trace_id {{ids}}", trace_ids, VIEW_JSON)}


def event_view(e: TraceEvent) -> TraceView:
    return TraceView(e.trace_id, e.experiment_id, e.name, e.status, e.timestamp_ms,
                     e.execution_time_ms, e.tags, e.metadata)


class FeedbackRow(NamedTuple):
    """A valid feedback row, as ``feedback_rows`` reads it."""

    trace_id: str
    assessment_id: str
    name: str
    value: Any
    numeric_value: float | None
    error: str | None
    last_update_time_ms: int


def feedback_rows(conn: Connection, trace_ids: Sequence[str]) -> dict[str, list[FeedbackRow]]:
    """Valid feedback rows per trace, oldest update first: what the rules read (``views_of``)
    and what the metric buckets read (``store.metrics.facts_of``), in one query."""
    out: dict[str, list[FeedbackRow]] = {}
    for r in dialect.select_in(
            conn, "SELECT trace_id, assessment_id, name, value, numeric_value, error, "
                  "last_update_time_ms FROM assessments WHERE trace_id {ids} "
                  "AND kind = 'feedback' AND valid", trace_ids, (3,)):
        out.setdefault(r[0], []).append(FeedbackRow._make(r))
    for found in out.values():
        found.sort(key=lambda r: (r.last_update_time_ms, r.assessment_id))
    return out


def views_of(rows: Mapping[str, Sequence[Any]]) -> dict[str, list[AssessmentView]]:
    return {tid: [AssessmentView(r.assessment_id, r.name, "feedback", r.value, True,
                                 r.last_update_time_ms) for r in found]
            for tid, found in rows.items()}


def valid_feedback(conn: Connection, trace_ids: Sequence[str]
                   ) -> dict[str, list[AssessmentView]]:
    return views_of(feedback_rows(conn, trace_ids))


def current_tags(conn: Connection, trace_ids: Sequence[str]) -> dict[tuple[str, str], str | None]:
    return {(tid, key): value for tid, key, value in dialect.select_in(
        conn, "SELECT trace_id, tag_key, tag_value FROM trace_tags WHERE trace_id {ids}",
        trace_ids)}


def decision_views(conn: Connection, decider: Decider, traces: Sequence[TraceEvent],
                   assessments: Sequence[AssessmentEvent], prior: Mapping[str, Prior]
                   ) -> dict[str, tuple[TraceView, str]]:
    """Per trace to decide, its view and trigger (steps 1 and 2 of the module docstring). Reads
    the store only for traces that assessments alone brought (and ``prior`` lacks)."""
    views: dict[str, tuple[TraceView, str]] = {}
    for e in traces:
        p = prior.get(e.trace_id)
        views[e.trace_id] = (p.view if p and p.completeness >= e.completeness
                             else event_view(e), "trace")
    if decider.needs_assessments() and assessments:
        late = sorted({a.trace_id for a in assessments} - views.keys())
        known = {tid: prior[tid] for tid in late if tid in prior}
        known.update(prior_versions(conn, [tid for tid in late if tid not in prior]))
        for tid, pr in known.items():
            views[tid] = (pr.view, "assessment")
    return views


def seen_before(views: Mapping[str, tuple[TraceView, str]], prior: Mapping[str, Prior]
                ) -> list[str]:
    """The traces to decide that the store held before this batch: only these can have tags."""
    return [tid for tid, (_v, trigger) in views.items() if tid in prior or trigger == "assessment"]


class Decisions(NamedTuple):
    """A batch's decisions before they are written (``write_decisions``): per group (traces
    seen before, new traces) the decision log, tag and outbox rows; and the tags that changed."""

    rows: Mapping[bool, tuple[list[tuple[Any, ...]], ...]]
    changes: list[TagChange]

    def without_outbox(self) -> Decisions:
        """The same decisions with nothing queued for write-back (write-back is off)."""
        return Decisions({seen: (log, tags, []) for seen, (log, tags, _o) in self.rows.items()},
                         self.changes)


CurrentTags = Mapping[tuple[str, str], str | None]  # (trace id, tag key) -> value as stored


def decide(decider: Decider, views: Mapping[str, tuple[TraceView, str]],
           feedback: Mapping[str, Sequence[AssessmentView]], current: CurrentTags,
           seen: Sequence[str], now_ms: int) -> Decisions:
    """Evaluate ``views`` with their valid ``feedback``, against the ``current`` tags of the
    traces ``seen`` before (step 3 and 4 of the module docstring, without the store)."""
    evaluations = [(decider.evaluate(view, feedback.get(tid, ())), trigger)
                   for tid, (view, trigger) in views.items()]
    return plan_decisions(evaluations, decider.tag_keys(), now_ms, current, set(seen))


_UNINFORMATIVE = frozenset({"no_match", "not_applicable"})
LOG_COLUMNS = ("trace_id", "digest", "decided_ms", "trigger", "outcomes", "tags")
TAG_COLUMNS = ("trace_id", "tag_key", "tag_value", "rule", "digest", "decided_ms")
OUTBOX_COLUMNS = ("trace_id", "tag_key", "tag_value", "digest", "created_ms", "attempts",
                  "next_attempt_ms", "waiting_for_trace", "last_error")


def plan_decisions(evaluations: Sequence[tuple[Evaluation, str]], tag_keys: frozenset[str],
                   now_ms: int, current: CurrentTags, seen: Set[str]) -> Decisions:
    """The rows for ``evaluations``, given the ``current`` tags of the traces ``seen`` before.

    An evaluation where no rule matched, of a trace that never had a tag, is not logged: it is
    most of the traffic, and ``rules explain`` re-evaluates such a trace on demand. The rows of
    a trace not ``seen`` before (so with no tag, log or outbox row yet) form their own group,
    written with ``dialect.inserting_new``: a plain COPY on PostgreSQL, the upsert as its fallback.
    """
    had_tags = {tid for tid, _key in current}
    keys = sorted(tag_keys)
    groups: dict[bool, tuple[list[tuple[Any, ...]], ...]] = {True: ([], [], []),
                                                              False: ([], [], [])}
    changes: list[TagChange] = []
    dumps = orjson.dumps
    for ev, trigger in evaluations:
        tid = ev.trace_id
        had = tid in had_tags
        log_rows, tag_rows, outbox_rows = groups[tid in seen]
        tags = ev.tags
        informative = had
        if not had:
            for o in ev.outcomes:
                if o.outcome not in _UNINFORMATIVE:
                    informative = True
                    break
        if informative:
            log_rows.append((tid, ev.digest, now_ms, trigger,
                             dumps([[o.rule, o.outcome, o.reason] for o in ev.outcomes])
                             .decode(), dumps(tags if type(tags) is dict else dict(tags))
                             .decode()))
        if not tags and not had:
            continue
        for key in keys:
            new = tags.get(key)
            new_value, rule = (new if new is not None else (None, None))
            if had:
                if (tid, key) not in current and new_value is None:
                    continue  # never tagged, still not tagged
                if current.get((tid, key), _ABSENT) == new_value:
                    continue
            elif new_value is None:
                continue  # never tagged, still not tagged
            tag_rows.append((tid, key, new_value, rule, ev.digest, now_ms))
            outbox_rows.append((tid, key, new_value, ev.digest, now_ms, 0, now_ms, False, None))
            changes.append(TagChange(tid, key, new_value))
    return Decisions(groups, changes)


def write_decisions(conn: Connection, decisions: Decisions) -> list[TagChange]:
    """Write what ``plan_decisions`` decided; returns the tags that changed."""
    with writing_decisions(conn, decisions):
        pass
    return decisions.changes


@contextlib.contextmanager
def writing_decisions(conn: Connection, decisions: Decisions) -> Iterator[None]:
    """``write_decisions`` around the body of the ``with``, which runs while PostgreSQL takes
    in the new traces' decision log (``dialect.inserting_new``): it must not use the
    connection."""
    log_rows, tag_rows, outbox_rows = decisions.rows[True]
    dialect.bulk_upsert(conn, DECISION_LOG, ("trace_id", "digest"), LOG_COLUMNS, log_rows,
                        on_conflict="nothing")
    dialect.bulk_upsert(conn, TRACE_TAGS, ("trace_id", "tag_key"), TAG_COLUMNS, tag_rows)
    dialect.bulk_upsert(conn, OUTBOX, ("trace_id", "tag_key"), OUTBOX_COLUMNS, outbox_rows)
    log_rows, tag_rows, outbox_rows = decisions.rows[False]
    with dialect.inserting_new(
            conn, dialect.NewRows(TRACE_TAGS, ("trace_id", "tag_key"), TAG_COLUMNS, tag_rows),
            dialect.NewRows(OUTBOX, ("trace_id", "tag_key"), OUTBOX_COLUMNS, outbox_rows),
            dialect.NewRows(DECISION_LOG, ("trace_id", "digest"), LOG_COLUMNS, log_rows,
                            on_conflict="nothing")):
        yield


_ABSENT = object()


# ---------------------------------------------------------------------------------------------
# Reads for `rules explain` and `rules test`


def explain(conn: Connection, trace_id: str) -> dict[str, Any]:
    """Everything the store knows about a trace's rule decisions, newest log entry first."""
    t, d, o = TRACE_TAGS, DECISION_LOG, OUTBOX
    prior = prior_versions(conn, [trace_id]).get(trace_id)
    return {
        "trace": prior.view if prior else None,
        "tags": conn.execute(select(t).where(t.c.trace_id == trace_id)).mappings().all(),
        "outbox": conn.execute(select(o).where(o.c.trace_id == trace_id)).mappings().all(),
        "log": conn.execute(select(d).where(d.c.trace_id == trace_id)
                            .order_by(d.c.decided_ms.desc(), d.c.id.desc())).mappings().all(),
    }


def stored_traces(conn: Connection, since_ms: int, until_ms: int,
                  chunk: int = 5000) -> Iterable[list[TraceView]]:
    """Stored traces in a time window, in chunks, oldest first (keyset pagination)."""
    last = (since_ms - 1, "")
    while True:
        rows = conn.execute(
            select(*VIEW_COLUMNS).where(
                TRACES.c.timestamp_ms < until_ms,
                (TRACES.c.timestamp_ms > last[0])
                | ((TRACES.c.timestamp_ms == last[0]) & (TRACES.c.trace_id > last[1])))
            .order_by(TRACES.c.timestamp_ms, TRACES.c.trace_id).limit(chunk)).all()
        if not rows:
            return
        yield [row_view(r) for r in rows]
        last = (rows[-1].timestamp_ms, rows[-1].trace_id)
