"""Reports over the metric buckets: ``summary(engine, since_ms, until_ms, ...)``.

A window is whole minutes: ``since`` rounds down and ``until`` rounds up to the minute. Whole
hours inside the window are read from the hour buckets and only the edges from the minute
buckets, so the cost of a report depends on the window's length and the number of dimension
values, not on the number of traces. Percentiles come from merged sketches (within 1% of the
exact sample at the same rank); counts, sums and rates are exact. An empty window gives zeros
and a note, never NaN.
Each group lists at most ``REPORT_NAMES`` span types and feedback names, the largest by count;
the others are merged, exactly, into one ``other`` entry. Histograms are summed only for the
listed series, in arrays sized by the bins read, so a bucket with thousands of span types
costs memory in proportion to its size, never to types x sketch key slots.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import orjson
from sqlalchemy import Connection, Engine

from store.metrics import read_buckets
from store.rollup import (
    HOUR_MS,
    MICRO,
    MINUTE_MS,
    OTHER,
    SCALAR_NAMES,
    Agg,
    FeedbackAgg,
    SpanAgg,
    floor_to,
)
from store.sketch import Sketch
from store.sketch_column import (
    KEY_BASE,
    KEY_SLOTS,
    LATENCY_SERIES,
    Packed,
    series_id,
    unpack_sketches,
)

GroupBy = Literal["trace_name", "environment", "experiment"]
GROUP_BY: tuple[str, ...] = ("trace_name", "environment", "experiment")
_GROUP_COLUMN = {"experiment": 2, "trace_name": 3, "environment": 4}
NO_TRACES_NOTE = "no traces in this window"
# Span types and feedback names a report lists per group; the rarer ones are one ``OTHER`` entry.
REPORT_NAMES = 200
# Histogram sums use a dense array up to this many (series x key) cells (8 MB), else sparse.
DENSE_MAX_SLOTS = 1 << 20


@dataclass(frozen=True, slots=True)
class SpanTypeStats:
    count: int
    total_time_s: float
    avg_time_s: float
    max_time_s: float
    p95_time_s: float


@dataclass(frozen=True, slots=True)
class AssessmentStats:
    count: int
    mean: float | None  # over numeric values (bool and yes/no count as 1/0)
    pass_rate: float | None  # over bool and yes/no values
    passed: int
    failed: int
    judge_errors: int


@dataclass(frozen=True, slots=True)
class Stats:
    total_traces: int
    ok_count: int
    error_count: int
    in_progress_count: int
    success_rate: float
    avg_latency_ms: float
    p50_latency_ms: float
    p95_latency_ms: float
    p99_latency_ms: float
    max_latency_ms: float
    tokens: dict[str, int]
    span_types: dict[str, SpanTypeStats]
    assessments: dict[str, AssessmentStats]
    candidates: dict[str, int]
    candidates_by_tag: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_traces": self.total_traces, "ok_count": self.ok_count,
            "error_count": self.error_count, "in_progress_count": self.in_progress_count,
            "success_rate": self.success_rate, "avg_latency_ms": self.avg_latency_ms,
            "p50_latency_ms": self.p50_latency_ms, "p95_latency_ms": self.p95_latency_ms,
            "p99_latency_ms": self.p99_latency_ms, "max_latency_ms": self.max_latency_ms,
            "tokens": dict(self.tokens),
            "span_types": {k: _asdict(v) for k, v in self.span_types.items()},
            "assessments": {k: _asdict(v) for k, v in self.assessments.items()},
            "candidates": dict(self.candidates),
            "candidates_by_tag": {k: dict(v) for k, v in self.candidates_by_tag.items()},
        }


def _asdict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


@dataclass(frozen=True, slots=True)
class Summary:
    since_ms: int
    until_ms: int
    generated_ms: int
    experiment_id: str | None
    by: str | None
    overall: Stats
    hourly_volume: dict[str, int]
    groups: dict[str, Stats] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: the classic ``analyze_trace_quality`` keys at the top level."""
        out: dict[str, Any] = {
            "window": {"since": iso(self.since_ms), "until": iso(self.until_ms),
                       "since_ms": self.since_ms, "until_ms": self.until_ms},
            "generated_at": iso(self.generated_ms),
            "experiment_id": self.experiment_id,
        }
        out.update(self.overall.to_dict())
        out["hourly_volume"] = dict(self.hourly_volume)
        if self.by is not None:
            out["by"] = self.by
            out["groups"] = {k: v.to_dict() for k, v in self.groups.items()}
        out["notes"] = list(self.notes)
        return out


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stats_of(agg: Agg) -> Stats:
    """The report figures of one merged aggregate (pure), at most ``REPORT_NAMES`` named span
    types and feedback names (``fold_names``)."""
    agg = fold_names(agg)
    s = dict(zip(SCALAR_NAMES, agg.scalars, strict=True))
    total = s["traces"]
    p50, p95, p99, top = (float(v) if v is not None else 0.0
                          for v in agg.latency_sketch().quantiles((0.5, 0.95, 0.99, 1.0)))

    spans = {}
    for t, sp in sorted(agg.spans.items()):
        sp95, smax = Sketch.from_counts(sp.bins).quantiles((0.95, 1.0))
        spans[t] = SpanTypeStats(
            sp.count, sp.total_us / MICRO, sp.total_us / MICRO / sp.count if sp.count else 0.0,
            (smax or 0.0) / 1000, (sp95 or 0.0) / 1000)
    assessments = {}
    for name, fa in sorted(agg.feedback.items()):
        judged = fa.passed + fa.failed
        assessments[name] = AssessmentStats(
            fa.count, fa.numeric_sum_micro / MICRO / fa.numeric_count if fa.numeric_count
            else None, fa.passed / judged if judged else None, fa.passed, fa.failed,
            fa.judge_errors)
    flat: dict[str, int] = {}
    for values in agg.candidates.values():
        for value, n in values.items():
            flat[value] = flat.get(value, 0) + n
    return Stats(
        total, s["ok"], s["errors"], s["in_progress"], s["ok"] / total if total else 0.0,
        s["latency_sum_ms"] / s["latency_count"] if s["latency_count"] else 0.0,
        p50, p95, p99, top,
        {"input": s["input_tokens"], "output": s["output_tokens"], "total": s["total_tokens"]},
        spans, assessments, dict(sorted(flat.items())),
        {k: dict(sorted(v.items())) for k, v in sorted(agg.candidates.items())})


def window(since_ms: int, until_ms: int) -> tuple[int, int]:
    """The report window in whole minutes: since rounds down, until rounds up."""
    since = floor_to(since_ms, MINUTE_MS)
    until = -floor_to(-until_ms, MINUTE_MS)
    return since, max(until, since)


def bucket_ranges(since_ms: int, until_ms: int) -> list[tuple[str, int, int]]:
    """(resolution, start, end) ranges that tile the window: whole hours from the hour buckets,
    the edges from the minute buckets."""
    first_hour = -floor_to(-since_ms, HOUR_MS)
    last_hour = floor_to(until_ms, HOUR_MS)
    if first_hour >= last_hour:
        return [("minute", since_ms, until_ms)]
    return [r for r in (("minute", since_ms, first_hour), ("hour", first_hour, last_hour),
                        ("minute", last_hour, until_ms)) if r[1] < r[2]]


class GroupAccumulator:
    """Merges stored bucket rows of one group. Sketch bins are collected as numpy views and
    summed once at the end (``np.bincount``), so the cost per row is a few array slices, not
    a Python operation per bin."""

    __slots__ = ("candidates", "feedback", "latency_only", "scalars", "sketches", "spans")

    def __init__(self, *, latency_only: bool = False) -> None:
        # latency_only: scalars and the latency histogram only (the dashboard's series).
        self.latency_only = latency_only
        self.scalars = [0] * len(SCALAR_NAMES)
        self.sketches: list[Packed] = []
        self.spans: dict[str, list[int]] = {}
        self.feedback: dict[str, list[int]] = {}
        self.candidates: dict[str, dict[str, int]] = {}

    def add_row(self, scalars: Any, sketches: bytes | None, spans: str | None,
                feedback: str | None, candidates: str | None) -> None:
        sc = self.scalars
        for i, v in enumerate(scalars):
            sc[i] += v
        if sketches:
            self.sketches.append(unpack_sketches(sketches))
        if self.latency_only:
            return
        if spans and spans != "{}":
            for t, sp in orjson.loads(spans).items():
                acc = self.spans.setdefault(t, [0, 0])
                acc[0] += sp["count"]
                acc[1] += sp["total_us"]
        if feedback and feedback != "{}":
            for name, f in orjson.loads(feedback).items():
                acc = self.feedback.setdefault(name, [0] * len(f))
                for i, v in enumerate(f):
                    acc[i] += v
        if candidates and candidates != "{}":
            for key, values in orjson.loads(candidates).items():
                per_key = self.candidates.setdefault(key, {})
                for value, n in values.items():
                    per_key[value] = per_key.get(value, 0) + n

    def to_agg(self) -> Agg:
        """The merged aggregate, with at most ``REPORT_NAMES`` named span types and feedback
        names (the largest by count; the rest merged into ``OTHER``). The histograms are summed
        for those series only, so memory follows the rows' bins, not types x key slots."""
        agg = Agg(scalars=list(self.scalars))
        target = _fold_targets({t: sp[0] for t, sp in self.spans.items()})
        for t, (count, total_us) in self.spans.items():
            sp = agg.spans.get(target[t])
            if sp is None:
                sp = agg.spans[target[t]] = SpanAgg()
            sp.count += count
            sp.total_us += total_us
        for name, bins in _sum_series(self.sketches, target,
                                      latency_only=self.latency_only).items():
            if name == LATENCY_SERIES:
                agg.latency = bins
            else:
                agg.spans.setdefault(name, SpanAgg()).bins = bins
        kept = _fold_targets({n: f[0] for n, f in self.feedback.items()})
        for name, f in self.feedback.items():
            _add_feedback(agg.feedback, kept[name], f)
        agg.candidates = {k: dict(v) for k, v in self.candidates.items()}
        return agg


def _fold_targets(counts: Mapping[str, int]) -> dict[str, str]:
    """Name -> the name it is reported under: itself for the ``REPORT_NAMES`` largest counts
    (ties by name), ``OTHER`` for the rest (and for ``OTHER`` itself)."""
    if len(counts) <= REPORT_NAMES:
        return {n: n for n in counts}
    ranked = sorted((n for n in counts if n != OTHER), key=lambda n: (-counts[n], n))
    kept = set(ranked[:REPORT_NAMES])
    return {n: n if n in kept else OTHER for n in counts}


def fold_names(agg: Agg) -> Agg:
    """``agg`` with at most ``REPORT_NAMES`` named span types and feedback names (the largest;
    the rest merged exactly into ``OTHER``). A report of several groups merges groups folded
    each on its own, so the overall figures are folded once more here."""
    spans = _fold_targets({t: sp.count for t, sp in agg.spans.items()})
    feedback = _fold_targets({n: fa.count for n, fa in agg.feedback.items()})
    if all(k == v for k, v in spans.items()) and all(k == v for k, v in feedback.items()):
        return agg
    out = Agg(scalars=list(agg.scalars), latency=dict(agg.latency),
              candidates={k: dict(v) for k, v in agg.candidates.items()})
    for t, sp in agg.spans.items():
        into = out.spans.setdefault(spans[t], SpanAgg())
        into.count += sp.count
        into.total_us += sp.total_us
        for k, n in sp.bins.items():
            into.bins[k] = into.bins.get(k, 0) + n
    for name, fa in agg.feedback.items():
        _add_feedback(out.feedback, feedback[name], fa.as_list())
    return out


def _add_feedback(into: dict[str, FeedbackAgg], name: str, values: Sequence[int]) -> None:
    """Add one feedback aggregate's counts (``FeedbackAgg.as_list`` order) under ``name``."""
    cur = into.get(name)
    into[name] = FeedbackAgg(*values) if cur is None else FeedbackAgg(
        *(a + b for a, b in zip(cur.as_list(), values, strict=True)))


def _sum_series(parts: list[Packed], target: Mapping[str, str], *,
                latency_only: bool = False) -> dict[str, dict[int, int]]:
    """Sum the bins of every row per reported series and key. Each bin's series is mapped to
    the index of the name it is reported under (``target``: span type -> reported name; a
    vectorized lookup over the rows' series tables), and the index and the 16-bit key offset
    make one position. With few series the positions are counted in a dense ``bincount``;
    with more, over the distinct positions only (``np.unique``), so memory follows the number
    of bins read, never series x key slots. With ``latency_only``, the span histograms are
    left out (a chart of latency needs no span types)."""
    if not parts:
        return {}
    names = [LATENCY_SERIES]
    index = {LATENCY_SERIES: 0}
    pairs = [(series_id(LATENCY_SERIES), 0)]
    if not latency_only:
        for t, to in target.items():
            i = index.get(to)
            if i is None:
                i = index[to] = len(names)
                names.append(to)
            pairs.append((series_id(t), i))
    pairs.sort()
    known = np.array([sid for sid, _ in pairs], dtype=np.int64)
    slot = np.array([i for _, i in pairs], dtype=np.int64)
    table = np.concatenate([p[0] for p in parts]).astype(np.int64)
    where = np.minimum(np.searchsorted(known, table), len(known) - 1)
    hit = known[where] == table
    if not latency_only and not hit.all():
        raise ValueError("a bucket holds a span histogram without its span type")
    per_bin = np.repeat(np.where(hit, slot[where], -1),
                        np.concatenate([p[1] for p in parts]).astype(np.int64))
    keys = np.concatenate([p[3] for p in parts])
    weights = np.concatenate([p[2] for p in parts])
    if latency_only:
        keep = per_bin >= 0
        per_bin, keys, weights = per_bin[keep], keys[keep], weights[keep]
    position = per_bin * KEY_SLOTS + keys
    if len(names) * KEY_SLOTS <= DENSE_MAX_SLOTS:
        total = np.bincount(position, weights=weights, minlength=len(names) * KEY_SLOTS)
        at = np.flatnonzero(total)
        sums = total[at]
    else:
        at, inverse = np.unique(position, return_inverse=True)
        sums = np.bincount(inverse.reshape(-1), weights=weights, minlength=len(at))
        nonzero = sums != 0
        at, sums = at[nonzero], sums[nonzero]
    series = at // KEY_SLOTS
    bin_keys = (at % KEY_SLOTS + KEY_BASE).tolist()
    counts = sums.astype(np.int64).tolist()
    out: dict[str, dict[int, int]] = {}
    bounds = [0, *(np.flatnonzero(np.diff(series)) + 1).tolist(), len(series)]
    for a, b in itertools.pairwise(bounds):
        if a < b:
            out[names[int(series[a])]] = dict(zip(bin_keys[a:b], counts[a:b], strict=True))
    return out


def rollup_for(by: str | None, experiment_id: str | None) -> int:
    """The coarsest rollup level that answers a query (``store.rollup.BucketKey``)."""
    if by in ("trace_name", "environment"):
        return 0
    if by == "experiment" or experiment_id is not None:
        return 1
    return 2


def merge_rows(rows: Iterable[Any], by: str | None, hourly: dict[int, int],
               groups: dict[str, GroupAccumulator]) -> None:
    """Merge bucket rows (from ``read_buckets``) into per-group accumulators and hourly counts."""
    n = len(SCALAR_NAMES)
    col = _GROUP_COLUMN[by] if by else None
    for r in rows:
        group = r[col] if col is not None else ""
        into = groups.get(group)
        if into is None:
            into = groups[group] = GroupAccumulator()
        into.add_row(r[5:5 + n], *r[5 + n:])
        hour = r[0] - r[0] % HOUR_MS
        hourly[hour] = hourly.get(hour, 0) + r[5]


def summary_conn(conn: Connection, since_ms: int, until_ms: int, *,
                 experiment_id: str | None = None, by: str | None = None,
                 now_ms: int | None = None, minute_retention_days: float | None = None
                 ) -> Summary:
    if by is not None and by not in GROUP_BY:
        raise ValueError(f"by must be one of {', '.join(GROUP_BY)}, got {by!r}")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    since, until = window(since_ms, until_ms)
    hourly_counts: dict[int, int] = {}
    accumulators: dict[str, GroupAccumulator] = {}
    rows = read_buckets(conn, bucket_ranges(since, until), rollup_for(by, experiment_id),
                        experiment_id)
    merge_rows(rows, by, hourly_counts, accumulators)
    groups = {k: acc.to_agg() for k, acc in accumulators.items()}
    overall = Agg()
    for agg in groups.values():
        overall.merge(agg)
    hourly = {iso(h): hourly_counts.get(h, 0)
              for h in range(floor_to(since, HOUR_MS), until, HOUR_MS)}
    notes = []
    if not overall.scalars[0]:
        notes.append(NO_TRACES_NOTE)
    if minute_retention_days is not None and since < now - minute_retention_days * 86_400_000 \
            and since % HOUR_MS:
        notes.append("the window starts before the minute buckets' retention: its first "
                     "partial hour may be incomplete")
    return Summary(since, until, now, experiment_id, by, stats_of(overall), hourly,
                   {k: stats_of(v) for k, v in sorted(groups.items())} if by else {},
                   tuple(notes))


def summary(engine: Engine, since_ms: int, until_ms: int | None = None, *,
            experiment_id: str | None = None, by: str | None = None,
            now_ms: int | None = None, minute_retention_days: float | None = None) -> Summary:
    """The quality summary of the traces that started in ``[since_ms, until_ms)``.

    ``by`` groups the figures by ``trace_name``, ``environment`` (the dimension tag) or
    ``experiment``; ``experiment_id`` filters. ``until_ms`` defaults to now.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    # One read-only statement: autocommit saves the BEGIN and ROLLBACK round trips.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return summary_conn(conn, since_ms, now if until_ms is None else until_ms,
                            experiment_id=experiment_id, by=by, now_ms=now,
                            minute_retention_days=minute_retention_days)


def scalar_row(stats: Stats) -> Mapping[str, Any]:
    """The flat columns of one group, for CSV output."""
    d = stats.to_dict()
    row = {k: v for k, v in d.items() if not isinstance(v, dict)}
    row.update({f"tokens_{k}": v for k, v in stats.tokens.items()})
    for t, sp in stats.span_types.items():
        row.update({f"span_{t}_count": sp.count, f"span_{t}_avg_time_s": sp.avg_time_s,
                    f"span_{t}_p95_time_s": sp.p95_time_s})
    for name, a in stats.assessments.items():
        row.update({f"assessment_{name}_count": a.count, f"assessment_{name}_mean": a.mean,
                    f"assessment_{name}_pass_rate": a.pass_rate})
    row.update({f"candidates_{k}": v for k, v in stats.candidates.items()})
    return row
