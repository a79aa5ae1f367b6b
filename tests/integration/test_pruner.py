"""The worker's pruning step (``worker.maintenance.Pruner``) on both backends: bounded steps
that continue while a backlog remains, and an unreachable store only postpones them."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from store.engine import make_engine
from store.metrics import BUCKETS, MetricsConfig, Retention
from store.models import Trace
from store.upserts import Batch
from store.writer import SqlWriter
from tests import metrics_data as M
from tests.integration.test_metrics import BASE_MS, HOUR, _trace
from worker.maintenance import Pruner

pytestmark = pytest.mark.integration
DAY = 86_400_000


def _count(engine: object) -> int:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(Trace.__table__)).scalar())


def test_pruner_steps_are_bounded_and_continue_while_a_backlog_remains(store_url: str) -> None:
    engine = make_engine(store_url)
    SqlWriter(engine, None, MetricsConfig()).write(
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
    assert Pruner(engine, Retention(), interval_s=1).run_due(BASE_MS) is None
