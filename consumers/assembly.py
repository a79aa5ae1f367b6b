"""The spans of one OpenTelemetry trace -> one trace event. Pure: no I/O, no clock.

Spans of a trace arrive in several records, on several partitions, in any order and sometimes
twice; the store buffers them and hands a trace's spans here once it is due. The event is what
MLflow's own OTLP ingestion (``SqlAlchemyStore.log_spans``) makes of the same spans:

- the root is the span without a parent; failing that, one whose parent is remote (span flags),
  the local root of a trace that began in another service; failing that (the root never came),
  the earliest of the topmost spans stands in, and the event says so in its metadata
  (``ROOT_MISSING_KEY``);
- status: ERROR if the root's status is ERROR, else OK; timestamp: the earliest span start;
  execution time: the latest span end minus it, both in whole milliseconds;
- request and response: the root's inputs and outputs; name: the ``mlflow.traceName`` tag, else
  the root's name; tags: the root's ``mlflow.traceTag.*`` attributes;
- token usage: summed down the span tree, a span's usage counted only if no ancestor records
  usage (frameworks that roll usage up onto a parent span would otherwise count twice);
- spans: one summary per ended span; the event's completeness grows with their number, so a
  late span makes a more complete version of a trace already stored.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

import orjson

from consumers.events import Provenance, SpanSummary, TraceEvent
from consumers.fields import new_tuple
from consumers.otlp import OtlpSpan

SOURCE_FORMAT = "otlp"
ROOT_MISSING_KEY = "trace_curator.root_missing"  # metadata of a trace emitted without its root
SESSION_KEY = "mlflow.trace.session"
USER_KEY = "mlflow.trace.user"
TOKEN_USAGE_KEY = "mlflow.trace.tokenUsage"  # noqa: S105 - a metadata key, not a secret
TRACE_NAME_TAG = "mlflow.traceName"


_START_THEN_ID = operator.itemgetter(OtlpSpan._fields.index("start_ns"),
                                     OtlpSpan._fields.index("span_id"))


def unique_spans(spans: Iterable[OtlpSpan]) -> list[OtlpSpan]:
    """One span per span id (the last given wins: a redelivery is the same span), in start
    order, then span id order: the same list whatever order the spans came in."""
    by_id = {s.span_id: s for s in spans}
    return sorted(by_id.values(), key=_START_THEN_ID)


def find_root(spans: Sequence[OtlpSpan]) -> OtlpSpan | None:
    """The span without a parent, else the first whose parent is remote; None without either."""
    for s in spans:
        if s.parent_id is None:
            return s
    for s in spans:
        if s.root:
            return s
    return None


def assemble(spans: Iterable[OtlpSpan], prov: Provenance) -> TraceEvent:
    """The trace event of one trace's spans (at least one, all of one trace id)."""
    ordered = unique_spans(spans)
    if not ordered:
        raise ValueError("a trace needs at least one span")
    trace_id = ordered[0].trace_id
    root = find_root(ordered)
    metadata: dict[str, str] = {}
    if root is None:
        ids = {s.span_id for s in ordered}
        # the earliest topmost span; in a parent cycle (hostile spans), the earliest span
        root = next((s for s in ordered if s.parent_id not in ids), ordered[0])
        metadata[ROOT_MISSING_KEY] = "true"
    end_ns, session, user, experiment_id, summaries = _scan(ordered, root)
    if session:
        metadata[SESSION_KEY] = session
    if user:
        metadata[USER_KEY] = user
    usage = token_usage(ordered)
    if usage is not None:
        metadata[TOKEN_USAGE_KEY] = orjson.dumps(
            {"input_tokens": usage[0], "output_tokens": usage[1],
             "total_tokens": usage[2]}).decode()
    start_ms = ordered[0].start_ns // 1_000_000
    tags = dict(root.trace_tags)
    return TraceEvent(
        trace_id, experiment_id, tags.get(TRACE_NAME_TAG) or root.name or None,
        "ERROR" if root.status == "ERROR" else "OK", start_ms,
        end_ns // 1_000_000 - start_ms if end_ns is not None else None,
        root.inputs, root.outputs, tags, metadata,
        usage[0] if usage else None, usage[1] if usage else None, usage[2] if usage else None,
        tuple(summaries), SOURCE_FORMAT, prov)


def _scan(ordered: Sequence[OtlpSpan], root: OtlpSpan
          ) -> tuple[int | None, str | None, str | None, str | None, list[SpanSummary]]:
    """One pass over a trace's spans: the latest end, the first session, user and experiment
    id (the root's first), and the summaries of the ended spans."""
    trace_id = ordered[0].trace_id
    end_ns: int | None = None
    session = user = None
    experiment_id = root.experiment_id or None
    summaries = []
    for s in ordered:
        if s.trace_id != trace_id:
            raise ValueError("spans of several traces")
        if s.end_ns is not None:
            if end_ns is None or s.end_ns > end_ns:
                end_ns = s.end_ns
            summaries.append(new_tuple(SpanSummary, (s.name, s.span_type,
                                                      (s.end_ns - s.start_ns) / 1e6, s.status)))
        if session is None and s.session_id:
            session = s.session_id
        if user is None and s.user_id:
            user = s.user_id
        if experiment_id is None and s.experiment_id:
            experiment_id = s.experiment_id
    return end_ns, session, user, experiment_id, summaries


def token_usage(spans: Sequence[OtlpSpan]) -> tuple[int, int, int] | None:
    """(input, output, total) tokens summed down the span tree: a span's usage counts only if
    no ancestor of it records usage. None if no span records usage. ``spans`` have unique span
    ids (``unique_spans``): each span is then reached once, from the top of its tree, and spans
    in a parent cycle (hostile) are not reached at all."""
    if not any(s.has_usage for s in spans):
        return None
    ids = {s.span_id for s in spans}
    children: dict[str, list[OtlpSpan]] = {}
    stack: list[tuple[OtlpSpan, bool]] = []
    for s in spans:
        p = s.parent_id
        if p is not None and p in ids and p != s.span_id:
            kids = children.get(p)
            if kids is None:
                children[p] = [s]
            else:
                kids.append(s)
        else:
            stack.append((s, False))
    totals = [0, 0, 0]
    found = False
    while stack:  # iterative: a hostile trace may nest deeper than Python's recursion limit
        s, counted_above = stack.pop()
        if s.has_usage:
            if not counted_above:
                totals[0] += s.input_tokens or 0
                totals[1] += s.output_tokens or 0
                totals[2] += s.total_tokens or 0
                found = True
            counted_above = True
        kids = children.get(s.span_id)
        if kids:
            for c in kids:
                stack.append((c, counted_above))
    return (totals[0], totals[1], totals[2]) if found else None
