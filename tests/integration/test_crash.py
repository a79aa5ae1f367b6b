"""kill -9 at random points, restart, exact totals (invariant 1 in docs/design.md), on both stores.

5,000 trace events (duplicates, IN_PROGRESS versions before and after the finished trace) and
2,000 assessment events (duplicates, older versions after newer ones, overrides before what they
override) are published. The real worker runs as a subprocess and is killed with SIGKILL each time
the store has grown past a random point; it is then restarted, until a run drains the topics and
exits on idle. The store must then hold exactly the expected rows, and the committed offsets must
cover every record.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient
from sqlalchemy import func, select

from store.engine import make_engine
from store.metrics import MetricsConfig, rebuild
from store.models import Assessment, Trace
from tests import payloads as P
from tests.conftest import publish, settings_env
from tests.helpers import bucket_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("CRASH_SEED", "20261127"))


def _build(rng: random.Random) -> tuple[list[Any], list[Any], dict[str, Any], dict[str, Any]]:
    base_ms = 1_795_000_000_000
    finals: dict[str, Any] = {}
    traces: list[Any] = []
    for i in range(3500):
        kind = rng.choice(["ok", "ok", "ok", "error", "slow"])
        doc = P.trace_doc(kind, start_ms=base_ms + i * 10)
        finals[doc["info"]["trace_id"]] = doc
        traces.append(doc)
    ids = list(finals)
    for tid in rng.sample(ids, 1000):  # IN_PROGRESS versions, before or after the final one
        early = P.trace_doc("ok", trace_id=tid, in_progress=True, keep_spans=rng.randint(0, 2))
        pos = traces.index(finals[tid])
        traces.insert(pos + (1 if rng.random() < 0.5 else 0), early)
    traces += [finals[t] for t in rng.sample(ids, 500)]  # plain duplicates, at the end
    assert len(traces) == 5000

    expected_a: dict[str, Any] = {}
    assessments: list[Any] = []
    for i in range(1200):
        tid = ids[i]
        doc = P.assessment_doc(rng.choice(["feedback_numeric", "feedback_bool", "feedback_no",
                                           "expectation"]), trace_id=tid,
                               updated_ms=base_ms + i)
        expected_a[doc["assessment_id"]] = {"doc": doc, "valid": True}
        assessments.append(doc)
    for i in range(150):  # overrides, published BEFORE the assessment they override
        old = assessments[i]
        new = P.assessment_doc("override_new", trace_id=old["trace_id"],
                               overrides=old["assessment_id"], updated_ms=base_ms + 10_000 + i)
        expected_a[old["assessment_id"]]["valid"] = False
        expected_a[new["assessment_id"]] = {"doc": new, "valid": True}
        assessments.insert(0, new)
    for i in range(150, 600):  # a newer version, published before the older one
        old = assessments[i]
        if "feedback" not in old:
            continue
        newer = {**old, "feedback": {"value": 0.77}, "last_update_time": P.iso(base_ms + 99_999)}
        expected_a[old["assessment_id"]]["doc"] = newer
        assessments.insert(i, newer)
    while len(assessments) < 2000:  # plain duplicates fill up to 2,000
        assessments.append(rng.choice(assessments[:1200]))
    return traces, assessments, finals, expected_a


def _count(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Trace)).scalar() or 0)


def assert_exact(engine: Any, settings: Any, traces: list[Any], assessments: list[Any],
                 finals: dict[str, Any], expected_a: dict[str, Any]) -> None:
    """The store holds each final trace and assessment version once, no dead letter, the
    committed offsets cover every record, and the buckets count each trace once."""
    with engine.connect() as conn:
        rows = {r.trace_id: r for r in conn.execute(select(Trace))}
        arows = {r.assessment_id: r for r in conn.execute(select(Assessment))}
        dead = conn.execute(select(func.count()).select_from(Trace.metadata.tables[
            "dead_letters"])).scalar()
    assert dead == 0
    assert set(rows) == set(finals)
    for tid, doc in finals.items():
        row = rows[tid]
        assert (row.status, row.execution_time_ms, row.span_count) == (
            doc["info"]["state"], doc["info"]["execution_duration_ms"],
            len(doc["data"]["spans"])), tid
    assert set(arows) == set(expected_a)
    for aid, exp in expected_a.items():
        row, doc = arows[aid], exp["doc"]
        body = doc.get("feedback") or doc.get("expectation")
        assert row.value == body["value"], aid
        assert row.valid is exp["valid"], aid

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    committed = admin.list_group_offsets(settings.group_id)[settings.group_id]
    admin.close()
    assert sum(o.offset for o in committed.values()) == len(traces) + len(assessments)

    # Metric buckets (invariant 2, docs/design.md): after the kills and redeliveries they hold each
    # trace once, in its final version: exactly what a recomputation from the raw rows gives.
    buckets = bucket_snapshot(engine)
    assert sum(r[5] for r in buckets["hour"] if r[1] == 2) == len(finals)  # rollup 2 traces
    with engine.begin() as conn:
        rebuild(conn, MetricsConfig("environment", None, None), 0)
    assert bucket_snapshot(engine) == buckets


def test_kill_9_at_random_points_loses_and_duplicates_nothing(
        settings_factory: Any, producer: Any, tmp_path: Any) -> None:
    rng = random.Random(SEED)
    settings = settings_factory(batch_max_records=150)
    traces, assessments, finals, expected_a = _build(rng)
    publish(producer, settings.trace_topic, traces, key=lambda d: d["info"]["trace_id"].encode())
    publish(producer, settings.assessment_topic, assessments,
            key=lambda d: d["trace_id"].encode())

    env = settings_env(settings)
    engine = make_engine(settings.store_url_plain)
    cmd = [sys.executable, "-m", "worker", "run", "--exit-when-idle", "4"]
    kills_mid_run = 0
    for attempt in range(4):
        target = rng.randint(300, 3300)  # kill once the store holds this many traces
        log = open(tmp_path / f"worker-{attempt}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and _count(engine) < target:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            log.close()
            if _count(engine) < len(finals):
                kills_mid_run += 1
    assert kills_mid_run >= 2, f"only {kills_mid_run} kills landed mid-run (seed {SEED})"

    final = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert final.returncode == 0, final.stderr.decode()[-3000:]

    assert_exact(engine, settings, traces, assessments, finals, expected_a)
    engine.dispose()
