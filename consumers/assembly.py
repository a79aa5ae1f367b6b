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

from collections.abc import Iterable, Sequence

import orjson

from consumers.events import Provenance, SpanSummary, TraceEvent
from consumers.otlp import OtlpSpan

SOURCE_FORMAT = "otlp"
ROOT_MISSING_KEY = "trace_curator.root_missing"  # metadata of a trace emitted without its root
SESSION_KEY = "mlflow.trace.session"
USER_KEY = "mlflow.trace.user"
TOKEN_USAGE_KEY = "mlflow.trace.tokenUsage"  # noqa: S105 - a metadata key, not a secret
TRACE_NAME_TAG = "mlflow.traceName"


def unique_spans(spans: Iterable[OtlpSpan]) -> list[OtlpSpan]:
    """One span per span id (the last given wins: a redelivery is the same span), in start
    order, then span id order: the same list whatever order the spans came in."""
    by_id = {s.span_id: s for s in spans}
    return sorted(by_id.values(), key=lambda s: (s.start_ns, s.span_id))


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
    if any(s.trace_id != trace_id for s in ordered):
        raise ValueError("spans of several traces")
    root = find_root(ordered)
    metadata: dict[str, str] = {}
    if root is None:
        ids = {s.span_id for s in ordered}
        # the earliest topmost span; in a parent cycle (hostile spans), the earliest span
        root = next((s for s in ordered if s.parent_id not in ids), ordered[0])
        metadata[ROOT_MISSING_KEY] = "true"
    start_ms = ordered[0].start_ns // 1_000_000
    ends = [s.end_ns for s in ordered if s.end_ns is not None]
    end_ms = max(ends) // 1_000_000 if ends else None
    tags = dict(root.trace_tags)
    session = next((s.session_id for s in ordered if s.session_id), None)
    user = next((s.user_id for s in ordered if s.user_id), None)
    if session:
        metadata[SESSION_KEY] = session
    if user:
        metadata[USER_KEY] = user
    usage = token_usage(ordered)
    if usage is not None:
        metadata[TOKEN_USAGE_KEY] = orjson.dumps(
            {"input_tokens": usage[0], "output_tokens": usage[1],
             "total_tokens": usage[2]}).decode()
    experiment_id = root.experiment_id or next(
        (s.experiment_id for s in ordered if s.experiment_id), None)
    return TraceEvent(
        trace_id=trace_id, experiment_id=experiment_id,
        name=tags.get(TRACE_NAME_TAG) or root.name or None,
        status="ERROR" if root.status == "ERROR" else "OK",
        timestamp_ms=start_ms,
        execution_time_ms=end_ms - start_ms if end_ms is not None else None,
        request=root.inputs, response=root.outputs, tags=tags, metadata=metadata,
        input_tokens=usage[0] if usage else None, output_tokens=usage[1] if usage else None,
        total_tokens=usage[2] if usage else None,
        spans=tuple(SpanSummary(s.name, s.span_type, (s.end_ns - s.start_ns) / 1e6, s.status)
                    for s in ordered if s.end_ns is not None),
        source_format=SOURCE_FORMAT, provenance=prov)


def token_usage(spans: Sequence[OtlpSpan]) -> tuple[int, int, int] | None:
    """(input, output, total) tokens summed down the span tree: a span's usage counts only if
    no ancestor of it records usage. None if no span records usage."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[OtlpSpan]] = {}
    stack: list[tuple[OtlpSpan, bool]] = []
    for s in spans:
        if s.parent_id is not None and s.parent_id in ids and s.parent_id != s.span_id:
            children.setdefault(s.parent_id, []).append(s)
        else:
            stack.append((s, False))
    totals = [0, 0, 0]
    found = False
    seen: set[str] = set()
    while stack:  # iterative: a hostile trace may nest deeper than Python's recursion limit
        s, counted_above = stack.pop()
        if s.span_id in seen:
            continue  # a parent cycle in hostile spans: each span is visited once
        seen.add(s.span_id)
        if s.has_usage and not counted_above:
            totals[0] += s.input_tokens or 0
            totals[1] += s.output_tokens or 0
            totals[2] += s.total_tokens or 0
            found = True
        stack.extend((c, counted_above or s.has_usage) for c in children.get(s.span_id, ()))
    return (totals[0], totals[1], totals[2]) if found else None
