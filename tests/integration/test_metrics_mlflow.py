"""Our metric report against MLflow's own server-side metrics as the oracle.

Real traces with exact durations are logged once to the real MLflow server (SQLite backend),
fetched back, written into our store on both backends, and the report (``report --format json``
and ``summary``) is compared with ``query_trace_metrics`` on the same traces: counts exactly,
averages to 1e-6, percentiles within the sketch's 1% plus the interpolation gap MLflow adds.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import orjson
import pytest
from mlflow.entities.trace_metrics import (
    AggregationType,
    MetricAggregation,
    MetricDataPoint,
    MetricViewType,
)
from mlflow.tracing.client import TracingClient

from consumers.events import Provenance
from consumers.formats import decode_trace
from store.engine import make_engine
from store.metrics import MetricsConfig
from store.report import iso, summary
from store.upserts import Batch
from store.writer import SqlWriter
from tests import mlflow_traffic as T
from worker.cli.main import main
from worker.rules.engine import load_rules

pytestmark = [
    pytest.mark.integration,
    # MLflow 3.17's SQL store module uses a loader strategy SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    # MLflow warns while it starts a span; raised, the warning makes it return a no-op span.
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]

N_TRACES = 240
BATCH = 48  # modest bursts: the SDK's async export drops spans in big ones (docs/platform-notes.md)
ERROR_RATE = 0.15
MINUTE, HOUR = 60_000, 3_600_000

AVG = MetricAggregation(AggregationType.AVG)
MAX = MetricAggregation(AggregationType.MAX)
COUNT = MetricAggregation(AggregationType.COUNT)
# Float percentiles: the server labels a value ``str(agg)`` after a proto round trip, which
# turns 95 into 95.0 ("P95.0"); built from floats here, the labels match.
PCTS = {q: MetricAggregation(AggregationType.PERCENTILE, q * 100.0) for q in (0.5, 0.95, 0.99)}


@dataclass(frozen=True)
class Logged:
    experiment_id: str
    traces_json: list[str]
    durations_ms: dict[str, int]  # trace_id -> the root span's exact duration
    errors: set[str]
    first_ms: int  # request_time of the earliest trace
    last_ms: int


@pytest.fixture(scope="module")
def logged(mlflow_server: Any) -> Iterator[Logged]:
    """~240 real traces with lognormal durations (15% errors), logged once for both backends."""
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        eid = mlflow.create_experiment(f"metrics-oracle-{uuid.uuid4().hex[:8]}")
        rng = np.random.default_rng(20260)
        durations = np.clip(np.rint(rng.lognormal(np.log(700), 0.9, N_TRACES)), 5, 30_000)
        is_error = rng.random(N_TRACES) < ERROR_RATE
        traces, wanted, errors = [], {}, set()
        for start in range(0, N_TRACES, BATCH):
            ids = []
            for d, err in zip(durations[start:start + BATCH], is_error[start:start + BATCH],
                              strict=True):
                tid = T.log_trace(eid, "error" if err else "ok", duration_ms=int(d))
                ids.append(tid)
                wanted[tid] = int(d)
                if err:
                    errors.add(tid)
            traces += T.fetch(ids)  # raises if any trace of the batch never landed
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets; not in the hint
    assert len({t.info.trace_id for t in traces}) == N_TRACES
    for t in traces:  # what MLflow stored is exactly what was logged
        assert t.info.execution_duration == wanted[t.info.trace_id]
        assert t.info.state.value == ("ERROR" if t.info.trace_id in errors else "OK")
        assert len(t.data.spans) == 2
    stamps = [t.info.request_time for t in traces]
    yield Logged(eid, [t.to_json() for t in traces], wanted, errors, min(stamps), max(stamps))


def _oracle(server: Any, eid: str, view: MetricViewType, metric: str,
            aggs: list[MetricAggregation], since_ms: int, until_ms: int,
            **kwargs: Any) -> list[MetricDataPoint]:
    """``query_trace_metrics`` over our half-open window: MLflow's ``end_time_ms`` is inclusive
    (``timestamp_ms <= end``), ours is exclusive, hence ``until_ms - 1``."""
    store = TracingClient(tracking_uri=server.uri).store
    return list(store.query_trace_metrics(
        experiment_ids=[eid], view_type=view, metric_name=metric, aggregations=aggs,
        start_time_ms=since_ms, end_time_ms=until_ms - 1, **kwargs))


def _one(points: list[MetricDataPoint]) -> dict[str, float]:
    assert len(points) == 1, points
    return points[0].values


def _assert_percentile(ours: float, mlflow_value: float, samples: list[float], q: float) -> None:
    """Our percentile comes from a sketch: within 1% of the sample at the same rank,
    ``y[j]`` with ``j = floor(q (n-1))`` (numpy's method="lower"). MLflow's PERCENTILE_CONT is
    ``y[j] + g (y[j+1] - y[j])`` with ``g`` the fraction of ``q (n-1)``. So the two may differ by
    at most ``0.01 y[j] + g (y[j+1] - y[j])``: the sketch's error plus the interpolation step,
    derived from the neighbouring samples, not a guessed slack. (With a few hundred samples
    the step alone can exceed 1%, e.g. at p99.)"""
    ys = sorted(samples)
    pos = q * (len(ys) - 1)
    j = math.floor(pos)
    g = pos - j
    lower, upper = ys[j], ys[min(j + 1, len(ys) - 1)]
    assert lower == np.quantile(ys, q, method="lower")
    # The oracle itself is exact: linear interpolation over the very durations we logged.
    assert mlflow_value == pytest.approx(np.quantile(ys, q), rel=1e-9)
    assert ours == pytest.approx(lower, rel=0.01)
    assert abs(ours - mlflow_value) <= 0.01 * lower + g * (upper - lower) + 1e-9


def test_report_matches_mlflow_query_trace_metrics(logged: Logged, mlflow_server: Any,
                                                   store_url: str, capsys: Any,
                                                   monkeypatch: Any) -> None:
    engine = make_engine(store_url)
    events = [decode_trace(j.encode(), Provenance("t", 0, 0), 1 << 22)
              for j in logged.traces_json]
    writer = SqlWriter(engine, load_rules(None), MetricsConfig("environment", None, None))
    for i in range(0, len(events), 100):
        writer.write(Batch(traces=events[i:i + 100]), logged.last_ms + MINUTE)

    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    capsys.readouterr()
    assert main(["report", "--format", "json", "--since", iso(logged.first_ms),
                 "--until", iso(logged.last_ms + 1_000), "--experiment",
                 logged.experiment_id]) == 0
    report = orjson.loads(capsys.readouterr().out)
    since, until = report["window"]["since_ms"], report["window"]["until_ms"]
    assert since <= logged.first_ms and logged.last_ms < until  # the window covers them all

    def oracle(view: MetricViewType, metric: str, aggs: list[MetricAggregation],
               **kwargs: Any) -> list[MetricDataPoint]:
        return _oracle(mlflow_server, logged.experiment_id, view, metric, aggs, since, until,
                       **kwargs)

    # Counts: exact.
    assert _one(oracle(MetricViewType.TRACES, "trace_count", [COUNT]))["COUNT"] \
        == report["total_traces"] == N_TRACES
    by_status = {p.dimensions["trace_status"]: p.values["COUNT"] for p in oracle(
        MetricViewType.TRACES, "trace_count", [COUNT], dimensions=["trace_status"])}
    assert by_status == {"OK": report["ok_count"], "ERROR": report["error_count"]}
    assert report["error_count"] == len(logged.errors)
    assert report["success_rate"] == pytest.approx(by_status["OK"] / N_TRACES, abs=1e-12)

    # Latency: the average is exact in both (sums of whole milliseconds), so 1e-6 relative only
    # absorbs float formatting; percentiles and the max come from our sketch (1%).
    lat = _one(oracle(MetricViewType.TRACES, "latency", [AVG, MAX, *PCTS.values()]))
    samples = [float(d) for d in logged.durations_ms.values()]
    assert lat["AVG"] == pytest.approx(np.mean(samples), rel=1e-9)
    assert report["avg_latency_ms"] == pytest.approx(lat["AVG"], rel=1e-6)
    assert report["max_latency_ms"] == pytest.approx(lat["MAX"], rel=0.01)
    for q, key in ((0.5, "p50_latency_ms"), (0.95, "p95_latency_ms"), (0.99, "p99_latency_ms")):
        _assert_percentile(report[key], lat[str(PCTS[q])], samples, q)

    # Per span type: MLflow's span latency has no span_type dimension, but takes a span.type
    # filter; its latency is whole milliseconds ((end_ns - start_ns) // 1e6), which ours are.
    span_counts = {p.dimensions["span_type"]: p.values["COUNT"] for p in oracle(
        MetricViewType.SPANS, "span_count", [COUNT], dimensions=["span_type"])}
    assert span_counts == {"CHAIN": N_TRACES, "CHAT_MODEL": N_TRACES}
    assert {t: s["count"] for t, s in report["span_types"].items()} == span_counts
    span_samples = {"CHAIN": samples, "CHAT_MODEL": [d - 2 for d in samples]}  # child: 1 ms in
    for span_type, ours in report["span_types"].items():
        sp = _one(oracle(MetricViewType.SPANS, "latency", [AVG, MAX, PCTS[0.95]],
                         filters=[f"span.type = '{span_type}'"]))
        assert sp["AVG"] == pytest.approx(np.mean(span_samples[span_type]), rel=1e-9)
        assert ours["avg_time_s"] * 1000 == pytest.approx(sp["AVG"], rel=1e-6)
        assert ours["total_time_s"] * 1000 == pytest.approx(sp["AVG"] * ours["count"], rel=1e-6)
        assert ours["max_time_s"] * 1000 == pytest.approx(sp["MAX"], rel=0.01)
        _assert_percentile(ours["p95_time_s"] * 1000, sp[str(PCTS[0.95])],
                           span_samples[span_type], 0.95)

    # Time buckets: MLflow floors timestamp_ms to the interval; ours are minute and hour buckets
    # over the same start time, so the per-minute and per-hour volumes agree exactly.
    per_minute = oracle(MetricViewType.TRACES, "trace_count", [COUNT], time_interval_seconds=60)
    assert sum(p.values["COUNT"] for p in per_minute) == N_TRACES
    for p in per_minute:
        start = int(np.datetime64(p.dimensions["time_bucket"][:19], "ms").astype(np.int64))
        assert start % MINUTE == 0
        got = summary(engine, start, start + MINUTE, experiment_id=logged.experiment_id)
        assert got.overall.total_traces == p.values["COUNT"], p.dimensions["time_bucket"]
    per_hour = oracle(MetricViewType.TRACES, "trace_count", [COUNT], time_interval_seconds=3600)
    hourly = {p.dimensions["time_bucket"][:19] + "Z": p.values["COUNT"] for p in per_hour}
    assert {k: v for k, v in report["hourly_volume"].items() if v} == hourly

    # The Python API gives the same figures as the JSON report.
    s = summary(engine, since, until, experiment_id=logged.experiment_id).overall
    assert (s.total_traces, s.error_count) == (report["total_traces"], report["error_count"])
    assert s.p95_latency_ms == report["p95_latency_ms"]
    engine.dispose()
