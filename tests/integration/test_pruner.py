"""The worker's pruning step (``worker.maintenance.Pruner``) on both backends: bounded steps
that continue while a backlog remains, and an unreachable store only postpones them."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from store.engine import make_engine
from store.metrics import BUCKETS, MetricsConfig, rebuild
from store.models import Trace
from store.retention import Retention
from store.upserts import Batch
from store.writer import SqlWriter
from tests import metrics_data as M
from tests.helpers import bucket_snapshot
from tests.integration.test_metrics import BASE_MS, HOUR, _trace
from worker.maintenance import Pruner

pytestmark = pytest.mark.integration
DAY = 86_400_000


def _count(engine: object) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(Trace.__table__)).scalar())


def test_pruner_steps_are_bounded_and_continue_while_a_backlog_remains(store_url: str) -> None:
    engine = make_engine(store_url)
    SqlWriter(engine, None, MetricsConfig("environment", None, None)).write(
        Batch(traces=[_trace(d) for d in M.traffic(250, BASE_MS, HOUR, seed=4)]), BASE_MS)
    pruner = Pruner(engine, Retention(raw_days=1, minute_days=1, hour_days=2,
                                      max_rows_per_cycle=100), interval_s=3600)
    later = BASE_MS + 3 * DAY // 2  # raw rows and minute buckets are past retention
    first = pruner.run_due(later)
    assert first is not None and first.traces == 100 and _count(engine) == 150
    steps = [first]
    while (step := pruner.run_due(later)) is not None:  # full steps are due again at once
        steps.append(step)
        assert len(steps) < 50
    assert len(steps) >= 3
    assert all(max(s.traces, s.minute_buckets, s.hour_buckets) <= 100 for s in steps)
    assert _count(engine) == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(BUCKETS["minute"])).scalar() == 0
        assert conn.execute(select(func.count()).select_from(BUCKETS["hour"])).scalar() > 0
    assert pruner.run_due(later) is None  # nothing left: wait for the interval
    engine.dispose()


def test_an_unreachable_store_postpones_pruning() -> None:
    engine = make_engine("postgresql://nobody@127.0.0.1:1/none")
    assert Pruner(engine, Retention(raw_days=30.0, minute_days=30.0, hour_days=730.0,
                                    max_rows_per_cycle=5000),
                  interval_s=1).run_due(BASE_MS) is None


def test_a_late_trace_past_raw_retention_counts_once_across_pruning(store_url: str) -> None:
    """A trace whose start is older than raw retention arrives IN_PROGRESS, a pruning step runs,
    then its final version arrives. The row was kept (its write is recent), so the final
    version replaces its contribution instead of adding a second one; and the minute bucket
    past retention is neither recreated nor subtracted below zero."""
    engine = make_engine(store_url)
    now = BASE_MS + 40 * DAY
    config = MetricsConfig(dimension_tag="environment", minute_days=30, hour_days=730)
    writer = SqlWriter(engine, None, config)
    docs = M.traffic(20, BASE_MS, HOUR, seed=5)
    writer.write(Batch(traces=[_trace(M.in_progress_version(d)) for d in docs]), now)
    pruner = Pruner(engine, Retention(raw_days=30, minute_days=30, hour_days=730,
                                      max_rows_per_cycle=5000), interval_s=0)
    first = pruner.run_due(now + 1)
    assert first is not None and first.traces == 0 and _count(engine) == 20
    writer.write(Batch(traces=[_trace(d) for d in docs]), now + 2)
    buckets = bucket_snapshot(engine)
    assert buckets["minute"] == []  # past minute retention: never written, never subtracted
    assert sum(r[5] for r in buckets["hour"] if r[1] == 2) == 20  # each trace once
    assert sum(r[6] for r in buckets["hour"] if r[1] == 2) == sum(
        d["status"] == "OK" for d in docs)
    with engine.begin() as conn:
        rebuild(conn, config, now + 2)
    assert bucket_snapshot(engine) == buckets
    # 30 days after its last write the row goes too; its hour buckets stay.
    step = pruner.run_due(now + 31 * DAY)
    assert step is not None and step.traces == 20
    assert _count(engine) == 0
    assert bucket_snapshot(engine)["hour"] == buckets["hour"]
    engine.dispose()
