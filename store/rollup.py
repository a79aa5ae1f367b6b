"""Metric maths, pure: a trace's contribution to the buckets, and signed aggregates that merge.

A stored trace contributes to exactly one bucket per resolution (minute, hour), keyed by
``(bucket_ms, experiment_id, trace_name, dimension)``; the dimension is the value of a
configurable tag (default ``environment``). Its contribution is a function of its stored row,
its valid feedback and its current candidate tags only (``contribution``), so the store can
apply ``new - old`` whenever any of them change (a trace never counts twice). Every quantity is an
integer (milliseconds, microseconds, micro-units, counts, sketch bins), so adding and
subtracting contributions in any order gives identical buckets: no float drift. The same holds
for summing a batch's contributions per cell first (``deltas``, ``Agg.of``): the hot path does.
The metric families are declared once in ``SCALARS`` and read by generic code.
Free-form names are capped per trace, deterministically from the trace alone, so that the
subtraction of a contribution removes exactly what was added: a trace names at most
``FEEDBACK_NAMES_PER_TRACE`` feedback names (the first ones in name order; the rest count
under ``OTHER``) and its stored span summary at most 50 span types (``store.upserts``).
Candidate tags need no cap: their keys and values come from the rules file, not from events.
A bucket sums its traces' capped entries; reports fold a bucket's rarest names into ``OTHER``.
There is no cap at bucket write time: which names a full bucket kept would depend on what it
held then, so a later subtraction could miss the entry it added to, and a rebuild (another
order) would differ.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import add as _add
from operator import sub as _sub
from typing import Any, NamedTuple, Protocol

from consumers.events import TraceView
from store.sketch import DEFAULT_MAPPING, Sketch
from store.sketch_column import LATENCY_SERIES, decode_sketches, encode_sketches, split_series

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
MICRO = 1_000_000
# Numeric feedback is summed in micro-units; values are clamped so that sums fit in 64 bits.
NUMERIC_CLAMP = 1e12
# What one trace may add to a bucket's sums. The decoder bounds each value to int64, but a
# bucket sums many traces: unbounded, one trace at the limit would fill its buckets and every
# later trace of that minute would be a refused row. The bounds apply to the contribution (a
# function of the trace alone), so subtraction stays exact; the trace row keeps true values.
METRIC_MAX_MS = 30 * 86_400_000  # a latency or span duration counts at most 30 days
METRIC_MAX_TOKENS = 2**40  # per trace and kind (input, output, total)
_MAX_SPAN_US = METRIC_MAX_MS * 1000

# The scalar columns of a bucket, in storage order: (column, description).
SCALARS: tuple[tuple[str, str], ...] = (
    ("traces", "traces (all statuses)"),
    ("ok", "traces with status OK"),
    ("errors", "traces with status ERROR"),
    ("in_progress", "traces still IN_PROGRESS"),
    ("latency_count", "traces with a latency (finished, execution time known)"),
    ("latency_sum_ms", "sum of their execution times, ms"),
    ("input_tokens", "input tokens (mlflow.trace.tokenUsage)"),
    ("output_tokens", "output tokens"),
    ("total_tokens", "total tokens"),
)
SCALAR_NAMES: tuple[str, ...] = tuple(name for name, _ in SCALARS)
# The entry that free-form names beyond a cap are folded into (span types, feedback names).
OTHER = "other"
FEEDBACK_NAMES_PER_TRACE = 50
PASS_VALUES = frozenset({"yes", "true", "pass", "passed"})
FAIL_VALUES = frozenset({"no", "false", "fail", "failed"})


class BucketKey(NamedTuple):
    """``rollup`` 0: one bucket per (experiment, trace name, dimension value); 1: per experiment
    (trace name and dimension ""); 2: everything (all three ""). Every trace counts once at
    each level, so a report reads the coarsest level that answers it."""

    rollup: int
    experiment_id: str
    trace_name: str
    dimension: str

    def coarser(self) -> tuple[BucketKey, BucketKey]:
        return BucketKey(1, self.experiment_id, "", ""), BucketKey(2, "", "", "")


class TraceFacts(NamedTuple):
    """The stored trace row, as far as metrics read it: the rules' view and the rest."""

    view: TraceView
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    span_summary: Mapping[str, Any]
    completeness: int


class FeedbackFacts(NamedTuple):
    """One valid feedback assessment of a trace."""

    assessment_id: str
    name: str
    value: Any
    numeric_value: float | None
    error: str | None


class SpanPart(NamedTuple):
    span_type: str
    n: int
    total_us: int
    bins: Sequence[Sequence[int]]  # [(key, n), ...]


class FeedbackPart(NamedTuple):
    name: str
    numeric_micro: int | None
    verdict: bool | None  # pass / fail for bool and yes/no feedback
    failed_judge: bool


class Contribution(NamedTuple):
    timestamp_ms: int
    key: BucketKey
    scalars: tuple[int, ...]  # in SCALAR_NAMES order
    latency_bin: int | None
    spans: tuple[SpanPart, ...]
    feedback: tuple[FeedbackPart, ...]
    candidates: tuple[tuple[str, str], ...]  # (tag key, tag value)


# ``tuple.__new__(NamedTupleClass, values)`` builds the same tuple as the class's own
# ``__new__``, without its Python-level argument handling: the hot path builds several a trace.
_tuple_new = tuple.__new__


def bucket_key(trace: TraceLike, dimension_tag: str) -> BucketKey:
    dim = trace.tags.get(dimension_tag) or trace.metadata.get(dimension_tag) or ""
    return _tuple_new(BucketKey, (0, trace.experiment_id or "", trace.name or "", str(dim)))


def _span_parts(summary: Mapping[str, Any]) -> tuple[SpanPart, ...]:
    """Span types and bins in stored order (``span_summary``'s): a trace's contribution
    computed from its event and from its stored row then compare equal."""
    parts = []
    for span_type, s in summary.items():
        count = s.get("count", 0)
        if count <= 0:
            continue
        total_ms = s.get("total_ms", 0.0)
        # [[key, n], ...] as stored; a row written before span bins were stored has all its
        # spans at the mean duration.
        bins = s.get("bins") or ((DEFAULT_MAPPING.key_for(max(total_ms / count, 0.0)), count),)
        total_us = round(total_ms * 1000)
        cap = count * _MAX_SPAN_US
        parts.append(_tuple_new(SpanPart, (span_type, count, total_us if total_us <= cap else cap,
                                           bins)))
    return tuple(parts)


def verdict(value: Any) -> bool | None:
    """Pass/fail of a bool or yes/no feedback value; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in PASS_VALUES:
            return True
        if v in FAIL_VALUES:
            return False
    return None


def _feedback_part(f: FeedbackFacts) -> FeedbackPart:
    micro = None
    if f.numeric_value is not None and f.numeric_value == f.numeric_value:  # not NaN
        v = min(max(f.numeric_value, -NUMERIC_CLAMP), NUMERIC_CLAMP)
        micro = round(v * MICRO)
    return FeedbackPart(f.name, micro, verdict(f.value), f.value is None and f.error is not None)


class TraceLike(Protocol):
    """What a contribution reads of a trace's row: a ``TraceView``, or the ``TraceEvent``
    itself (same field names) for a trace the store did not hold."""

    @property
    def experiment_id(self) -> str | None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def execution_time_ms(self) -> int | None: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def metadata(self) -> Mapping[str, str]: ...


def _scalars(view: TraceLike, input_tokens: int | None, output_tokens: int | None,
             total_tokens: int | None) -> tuple[tuple[int, ...], int | None]:
    """A trace's scalars (``SCALAR_NAMES`` order) and latency bin (None without a latency)."""
    status = view.status
    latency = view.execution_time_ms
    if status != "IN_PROGRESS" and latency is not None and latency >= 0:
        if latency > METRIC_MAX_MS:
            latency = METRIC_MAX_MS
        has_latency, latency_bin = 1, DEFAULT_MAPPING.key_for(float(latency))
    else:
        has_latency, latency, latency_bin = 0, 0, None
    tokens_in, tokens_out, tokens_total = input_tokens or 0, output_tokens or 0, total_tokens or 0
    return (1, int(status == "OK"), int(status == "ERROR"), int(status == "IN_PROGRESS"),
            has_latency, latency,
            tokens_in if tokens_in <= METRIC_MAX_TOKENS else METRIC_MAX_TOKENS,
            tokens_out if tokens_out <= METRIC_MAX_TOKENS else METRIC_MAX_TOKENS,
            tokens_total if tokens_total <= METRIC_MAX_TOKENS else METRIC_MAX_TOKENS
            ), latency_bin


def contribution(trace: TraceFacts, feedback: Sequence[FeedbackFacts],
                 candidates: Iterable[tuple[str, str]], dimension_tag: str) -> Contribution:
    view = trace.view
    scalars, latency_bin = _scalars(view, trace.input_tokens, trace.output_tokens,
                                    trace.total_tokens)
    summary = trace.span_summary
    return _tuple_new(Contribution, (
        view.timestamp_ms, bucket_key(view, dimension_tag), scalars, latency_bin,
        _span_parts(summary) if summary else (),
        _feedback_parts(feedback) if feedback else (),
        tuple(sorted(set(candidates))) if candidates else ()))


# A trace new to the store, as ``cells_of_new`` takes it: (row, input, output and total tokens,
# span summary, valid feedback, candidate tags).
NewTrace = tuple[TraceLike, int | None, int | None, int | None, Mapping[str, Any],
                 Sequence[FeedbackFacts], Sequence[tuple[str, str]]]


def cells_of_new(traces: Iterable[NewTrace], dimension_tag: str) -> dict[DeltaKey, Agg]:
    """The finest cells of traces new to the store: per cell, the sum of their contributions,
    equal to ``add_deltas`` of each ``contribution`` (the tests hold it to that), built
    without them: the scalars come from ``_scalars`` as for a contribution, the spans as
    ``_span_parts`` reads them (``Agg._add_summary``), and are summed as they come. A new
    trace has nothing to subtract."""
    cells: dict[tuple[int, str, str, str], tuple[list[tuple[int, ...]], Agg]] = {}
    for view, tokens_in, tokens_out, tokens_total, summary, feedback, candidates in traces:
        ts = view.timestamp_ms
        dim = view.tags.get(dimension_tag) or view.metadata.get(dimension_tag) or ""
        ck = (ts - ts % MINUTE_MS, view.experiment_id or "", view.name or "", str(dim))
        cell = cells.get(ck)
        if cell is None:
            cell = cells[ck] = ([], Agg())
        trace_scalars, latency_bin = _scalars(view, tokens_in, tokens_out, tokens_total)
        cell[0].append(trace_scalars)
        agg = cell[1]
        if latency_bin is not None:
            agg.latency[latency_bin] = agg.latency.get(latency_bin, 0) + 1
        if summary:
            agg._add_summary(summary)
        if feedback:
            for fp in _feedback_parts(feedback):
                agg._add_feedback(fp, 1)
        if candidates:
            agg._add_candidates(set(candidates))
    out: dict[DeltaKey, Agg] = {}
    for (minute, experiment_id, name, dim), (rows, agg) in cells.items():
        agg.scalars[:] = map(sum, zip(*rows, strict=True))
        agg._drop_zero_spans()
        out[("minute", minute, _tuple_new(BucketKey, (0, experiment_id, name, dim)))] = agg
    return out


def _feedback_parts(feedback: Sequence[FeedbackFacts]) -> tuple[FeedbackPart, ...]:
    """One part per valid feedback, sorted by name; the feedback of names after the first
    ``FEEDBACK_NAMES_PER_TRACE`` (in name order) counts under ``OTHER``."""
    parts = sorted((_feedback_part(f) for f in feedback), key=lambda p: p.name)
    names = sorted({p.name for p in parts} - {OTHER})
    if len(names) <= FEEDBACK_NAMES_PER_TRACE:
        return tuple(parts)
    kept = set(names[:FEEDBACK_NAMES_PER_TRACE])
    return tuple(sorted((p if p.name in kept else p._replace(name=OTHER) for p in parts),
                        key=lambda p: p.name))


@dataclass(slots=True)
class SpanAgg:
    count: int = 0
    total_us: int = 0
    bins: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class FeedbackAgg:
    count: int = 0
    numeric_count: int = 0
    numeric_sum_micro: int = 0
    passed: int = 0
    failed: int = 0
    judge_errors: int = 0

    def as_list(self) -> list[int]:
        return [self.count, self.numeric_count, self.numeric_sum_micro, self.passed,
                self.failed, self.judge_errors]


def _add_bins(into: dict[int, int], bins: Iterable[Sequence[int]], sign: int) -> None:
    for k, n in bins:
        left = into.get(k, 0) + sign * n
        if left:
            into[k] = left
        else:
            del into[k]


@dataclass(slots=True)
class Agg:
    """A bucket's content, or a signed difference of contributions. Merge = add, in any order."""

    scalars: list[int] = field(default_factory=lambda: [0] * len(SCALAR_NAMES))
    latency: dict[int, int] = field(default_factory=dict)
    spans: dict[str, SpanAgg] = field(default_factory=dict)
    feedback: dict[str, FeedbackAgg] = field(default_factory=dict)
    candidates: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, c: Contribution, sign: int = 1) -> None:
        sc = self.scalars
        sc[:] = map(_add if sign == 1 else _sub, sc, c.scalars) if sign in (1, -1) \
            else [a + sign * v for a, v in zip(sc, c.scalars, strict=True)]
        if c.latency_bin is not None:
            latency = self.latency
            k = c.latency_bin
            left = latency.get(k, 0) + sign
            if left:
                latency[k] = left
            else:
                del latency[k]
        spans = self.spans
        for sp in c.spans:
            agg = spans.get(sp.span_type)
            if agg is None:
                agg = spans[sp.span_type] = SpanAgg()
            agg.count += sign * sp.n
            agg.total_us += sign * sp.total_us
            bins = agg.bins
            for k, n in sp.bins:
                left = bins.get(k, 0) + sign * n
                if left:
                    bins[k] = left
                else:
                    del bins[k]
            if not agg.count and not agg.total_us and not bins:
                del spans[sp.span_type]
        for fp in c.feedback:
            self._add_feedback(fp, sign)
        for tag_key, value in c.candidates:
            per_key = self.candidates.setdefault(tag_key, {})
            left = per_key.get(value, 0) + sign
            if left:
                per_key[value] = left
            else:
                del per_key[value]
                if not per_key:
                    del self.candidates[tag_key]

    def _add_feedback(self, fp: FeedbackPart, sign: int) -> None:
        fa = self.feedback.get(fp.name)
        if fa is None:
            fa = self.feedback[fp.name] = FeedbackAgg()
        fa.count += sign
        if fp.numeric_micro is not None:
            fa.numeric_count += sign
            fa.numeric_sum_micro += sign * fp.numeric_micro
        if fp.verdict is True:
            fa.passed += sign
        elif fp.verdict is False:
            fa.failed += sign
        if fp.failed_judge:
            fa.judge_errors += sign
        if not any(fa.as_list()):
            del self.feedback[fp.name]

    @classmethod
    def of(cls, cs: Sequence[Contribution]) -> Agg:
        """The sum of ``cs``: equal to ``add`` of each in turn (a sum of integers and a removal
        of the entries back at zero do not depend on the order), built a column at a time."""
        agg = cls()
        if not cs:
            return agg
        agg.scalars[:] = map(sum, zip(*[c.scalars for c in cs], strict=True))
        agg.latency = dict(Counter([c.latency_bin for c in cs if c.latency_bin is not None]))
        for c in cs:
            agg._add_spans(c.spans)
            for fp in c.feedback:
                agg._add_feedback(fp, 1)
            agg._add_candidates(c.candidates)
        agg._drop_zero_spans()
        return agg

    def _add_spans(self, parts: Iterable[SpanPart]) -> None:
        """Add span parts, leaving the entries back at zero to ``_drop_zero_spans``."""
        spans = self.spans
        for span_type, n, total_us, bins in parts:
            sp = spans.get(span_type)
            if sp is None:
                sp = spans[span_type] = SpanAgg()
            sp.count += n
            sp.total_us += total_us
            sb = sp.bins
            for k, kn in bins:
                sb[k] = sb.get(k, 0) + kn

    def _add_summary(self, summary: Mapping[str, Any]) -> None:
        """``_add_spans(_span_parts(summary))`` without building the parts: the same entries
        (``_span_parts`` is the definition; the tests hold the two equal)."""
        spans = self.spans
        key_for = DEFAULT_MAPPING.key_for
        for span_type, s in summary.items():
            count = s.get("count", 0)
            if count <= 0:
                continue
            total_ms = s.get("total_ms", 0.0)
            bins = s.get("bins") or ((key_for(max(total_ms / count, 0.0)), count),)
            total_us = round(total_ms * 1000)
            cap = count * _MAX_SPAN_US
            sp = spans.get(span_type)
            if sp is None:
                sp = spans[span_type] = SpanAgg()
            sp.count += count
            sp.total_us += total_us if total_us <= cap else cap
            sb = sp.bins
            for k, kn in bins:
                sb[k] = sb.get(k, 0) + kn

    def _add_candidates(self, candidates: Iterable[tuple[str, str]]) -> None:
        """Count each (tag key, value) once more: a count only grows, never back to zero."""
        for tag_key, value in candidates:
            per_key = self.candidates.setdefault(tag_key, {})
            per_key[value] = per_key.get(value, 0) + 1

    def _drop_zero_spans(self) -> None:
        """Remove the bins and span types summed back to zero (as ``add`` does step by step)."""
        spans = self.spans
        for t in list(spans):
            sp = spans[t]
            if not all(sp.bins.values()):
                sp.bins = {k: kn for k, kn in sp.bins.items() if kn}
            if not sp.count and not sp.total_us and not sp.bins:
                del spans[t]

    def merge(self, other: Agg, sign: int = 1) -> None:
        for i, v in enumerate(other.scalars):
            self.scalars[i] += sign * v
        _add_bins(self.latency, other.latency.items(), sign)
        for name, sp in other.spans.items():
            agg = self.spans.setdefault(name, SpanAgg())
            agg.count += sign * sp.count
            agg.total_us += sign * sp.total_us
            _add_bins(agg.bins, sp.bins.items(), sign)
            if not agg.count and not agg.total_us and not agg.bins:
                del self.spans[name]
        for name, fb in other.feedback.items():
            fa = self.feedback.setdefault(name, FeedbackAgg())
            fa.count += sign * fb.count
            fa.numeric_count += sign * fb.numeric_count
            fa.numeric_sum_micro += sign * fb.numeric_sum_micro
            fa.passed += sign * fb.passed
            fa.failed += sign * fb.failed
            fa.judge_errors += sign * fb.judge_errors
            if not any(fa.as_list()):
                del self.feedback[name]
        for tag_key, values in other.candidates.items():
            per_key = self.candidates.setdefault(tag_key, {})
            for value, n in values.items():
                left = per_key.get(value, 0) + sign * n
                if left:
                    per_key[value] = left
                else:
                    per_key.pop(value, None)
            if not per_key:
                del self.candidates[tag_key]

    def is_zero(self) -> bool:
        return not (any(self.scalars) or self.latency or self.spans or self.feedback
                    or self.candidates)

    def negative_part(self) -> str | None:
        """What went below zero, if anything: a stored bucket never may (it signals a bug)."""
        for name, v in zip(SCALAR_NAMES, self.scalars, strict=True):
            if v < 0:
                return f"{name}={v}"
        if any(n < 0 for n in self.latency.values()):
            return "latency bins"
        for t, sp in self.spans.items():
            if sp.count < 0 or any(n < 0 for n in sp.bins.values()):
                return f"span type {t}"
        for name, fa in self.feedback.items():
            if min(fa.as_list()[:2] + fa.as_list()[3:]) < 0:
                return f"feedback {name}"
        for key, values in self.candidates.items():
            if any(n < 0 for n in values.values()):
                return f"candidates {key}"
        return None

    def latency_sketch(self) -> Sketch:
        return _sketch(self.latency)

    # --- storage form: a binary sketches column and JSON columns ---------------------------

    def json_columns(self) -> dict[str, Any]:
        return {
            "spans": {t: {"count": s.count, "total_us": s.total_us}
                      for t, s in sorted(self.spans.items())},
            "feedback": {n: f.as_list() for n, f in sorted(self.feedback.items())},
            "candidates": {k: dict(sorted(v.items())) for k, v in sorted(self.candidates.items())},
        }

    def sketches_blob(self) -> bytes:
        series = {LATENCY_SERIES: self.latency}
        series.update({t: s.bins for t, s in self.spans.items()})
        return encode_sketches(series)

    @classmethod
    def from_columns(cls, scalars: Sequence[int], sketches: bytes | None, spans: Any,
                     feedback: Any, candidates: Any) -> Agg:
        agg = cls(scalars=[int(v) for v in scalars])
        for t, s in (spans or {}).items():
            agg.spans[t] = SpanAgg(int(s["count"]), int(s["total_us"]))
        for name, bins in split_series(*decode_sketches(sketches or b""), agg.spans).items():
            if name == LATENCY_SERIES:
                agg.latency = bins
            else:
                agg.spans.setdefault(name, SpanAgg()).bins = bins
        for n, f in (feedback or {}).items():
            agg.feedback[n] = FeedbackAgg(*(int(x) for x in f))
        for k, values in (candidates or {}).items():
            agg.candidates[k] = {v: int(c) for v, c in values.items()}
        return agg


def _sketch(bins: Mapping[int, int]) -> Sketch:
    return Sketch.from_counts(bins)


def floor_to(ms: int, step_ms: int) -> int:
    return ms - ms % step_ms


class Resolution(NamedTuple):
    name: str  # "minute" | "hour": the table suffix
    step_ms: int


RESOLUTIONS = (Resolution("minute", MINUTE_MS), Resolution("hour", HOUR_MS))
DeltaKey = tuple[str, int, BucketKey]  # (resolution name, bucket start ms, key)


def add_deltas(deltas: dict[DeltaKey, Agg], c: Contribution, sign: int) -> None:
    """Add ``sign`` × ``c`` to its finest cell: its minute, at rollup level 0. ``expand`` then
    derives the hour buckets and the coarser levels by merging cells, once per cell rather
    than once per trace."""
    dk = ("minute", c.timestamp_ms - c.timestamp_ms % MINUTE_MS, c.key)
    agg = deltas.get(dk)
    if agg is None:
        agg = deltas[dk] = Agg()
    agg.add(c, sign)


def _merge_into(out: dict[DeltaKey, Agg], dk: DeltaKey, agg: Agg) -> None:
    into = out.get(dk)
    if into is None:
        into = out[dk] = Agg()
    into.merge(agg)


def expand(cells: Mapping[DeltaKey, Agg]) -> dict[DeltaKey, Agg]:
    """Every bucket the finest cells (from ``add_deltas``) contribute to: minute and hour, at
    every rollup level."""
    out: dict[DeltaKey, Agg] = {}
    for (_res, start, key), agg in cells.items():
        hour = start - start % HOUR_MS
        for k in (key, *key.coarser()):
            _merge_into(out, ("minute", start, k), agg)
            _merge_into(out, ("hour", hour, k), agg)
    return {k: v for k, v in out.items() if not v.is_zero()}


def deltas(removed: Iterable[Contribution], added: Iterable[Contribution],
           cells_added: Mapping[DeltaKey, Agg] | None = None) -> dict[DeltaKey, Agg]:
    """Bucket deltas that add ``added`` (and the finest cells ``cells_added``, from
    ``cells_of_new``) and subtract ``removed``: the contributions are first grouped by finest
    cell and summed there (``Agg.of``), then ``expand``ed; equal to ``add_deltas`` of each,
    one by one."""
    groups: dict[DeltaKey, tuple[list[Contribution], list[Contribution]]] = {}
    for side, cs in ((0, added), (1, removed)):
        for c in cs:
            ts = c.timestamp_ms
            dk = ("minute", ts - ts % MINUTE_MS, c.key)
            group = groups.get(dk)
            if group is None:
                group = groups[dk] = ([], [])
            group[side].append(c)
    cells: dict[DeltaKey, Agg] = {}
    for dk, (plus, minus) in groups.items():
        cell = Agg.of(plus)
        if minus:
            cell.merge(Agg.of(minus), -1)
        cells[dk] = cell
    for dk, cell in (cells_added or {}).items():
        _merge_into(cells, dk, cell)
    return expand(cells)


def diff(before: Mapping[str, Contribution], after: Mapping[str, Contribution]
         ) -> dict[DeltaKey, Agg]:
    """Bucket deltas that turn ``before`` contributions into ``after`` ones (per trace id)."""
    removed, added = [], []
    for tid in before.keys() | after.keys():
        old, new = before.get(tid), after.get(tid)
        if old == new:
            continue
        if old is not None:
            removed.append(old)
        if new is not None:
            added.append(new)
    return deltas(removed, added)


class StreamRollup:
    """Buckets from contributions that arrive in time order (rebuilds and bulk loads).

    ``completed(watermark_ms)`` hands over, once, every bucket that ends at or before the
    watermark (all of them for None); memory holds about one hour of cells.
    """

    def __init__(self) -> None:
        self._minutes: dict[DeltaKey, Agg] = {}
        self._hours: dict[DeltaKey, Agg] = {}

    def add(self, c: Contribution) -> None:
        add_deltas(self._minutes, c, +1)

    def completed(self, watermark_ms: int | None) -> dict[DeltaKey, Agg]:
        done = [dk for dk in self._minutes
                if watermark_ms is None or dk[1] + MINUTE_MS <= watermark_ms]
        out: dict[DeltaKey, Agg] = {}
        for dk in done:
            agg = self._minutes.pop(dk)
            _res, start, key = dk
            for k in (key, *key.coarser()):
                _merge_into(out, ("minute", start, k), agg)
                _merge_into(self._hours, ("hour", start - start % HOUR_MS, k), agg)
        for dk in [dk for dk in self._hours
                   if watermark_ms is None or dk[1] + HOUR_MS <= watermark_ms]:
            out[dk] = self._hours.pop(dk)
        return out
