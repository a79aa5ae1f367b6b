"""Polling benchmark: how fast the MLflow source reads a server, and how fresh the store stays.

In one run, against a real ``mlflow server`` (SQLite backend, one worker, a temp folder):
  1. log ``--traces`` real traces (CHAIN root + CHAT_MODEL child; 20% errors) with feedback on a
     third of them, spread over the last 6 hours, and print MLflow's own write rate;
  2. ``backfill`` them into a fresh store per backend through the worker's path (decode, rules,
     metrics, one transaction a page): traces/s and assessments/s;
  3. freshness: with a live polling worker (``--interval`` s), log one trace at a time and time
     until it is in the store; p50/p95 over ``--samples``;
  4. the baseline a notebook uses to read the same traces: ``mlflow.search_traces`` into a
     DataFrame, with spans.
Figures are printed, never asserted.

    .venv/bin/python -m bench.poll --traces 2000
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlflow  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from store import schema  # noqa: E402
from store.engine import make_engine  # noqa: E402
from store.models import Trace  # noqa: E402
from tests import mlflow_traffic as T  # noqa: E402
from tests.mlflow_server import MlflowServer  # noqa: E402
from worker.app import create_mlflow_worker, poll_config  # noqa: E402
from worker.settings import Settings  # noqa: E402

HOUR_MS = 3_600_000
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def settings_for(store_url: str, uri: str, experiment: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {name: f.default for name, f in Settings.model_fields.items()}
    values.update(store_url=store_url, source="mlflow", mlflow_tracking_uri=uri,
                  mlflow_experiment_ids=experiment, curation="off", tag_writeback="off",
                  log_level="WARNING", **extra)
    return Settings(**values)


def fresh_store(backend: str, folder: Path) -> tuple[str, Any]:
    if backend == "sqlite":
        url = f"sqlite:///{folder / f'poll-{uuid.uuid4().hex[:6]}.db'}"
        cleanup = None
    else:
        import psycopg

        name = f"bench_poll_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"

        def cleanup() -> None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine = make_engine(url)
    schema.upgrade(engine)
    engine.dispose()
    return url, cleanup


def count(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Trace)).scalar_one())
    finally:
        engine.dispose()


def log_traffic(experiment: str, n: int) -> tuple[list[str], float]:
    now_ms = int(time.time() * 1000)
    started = time.perf_counter()
    ids = []
    for i in range(n):
        start = now_ms - 6 * HOUR_MS + i * (6 * HOUR_MS // n)
        ids.append(T.log_trace(experiment, "error" if i % 5 == 0 else "ok", start_ms=start,
                               question=f"question {i}"))
    T.flush()
    for tid in ids[::3]:
        mlflow.log_feedback(trace_id=tid, name="quality", value=0.3)
    return ids, time.perf_counter() - started


def bench_backfill(backend: str, folder: Path, uri: str, experiment: str, n: int) -> None:
    url, cleanup = fresh_store(backend, folder)
    try:
        settings = settings_for(url, uri, experiment)
        now_ms = int(time.time() * 1000)
        worker = create_mlflow_worker(settings, None, poll_config(
            settings, backfill=(now_ms - 7 * HOUR_MS, now_ms)))
        started = time.perf_counter()
        stats = worker.run()
        elapsed = time.perf_counter() - started
        worker.close()
        stored = count(url)
        print(f"  backfill {backend:<10} {stored:>6} traces + {stats.assessments} assessments "
              f"in {elapsed:6.1f} s: {stored / elapsed:6.0f} traces/s"
              + ("" if stored == n else f"  (expected {n}!)"))
    finally:
        if cleanup:
            cleanup()


def bench_freshness(folder: Path, uri: str, samples: int, interval_s: float) -> None:
    experiment = mlflow.create_experiment(f"bench-fresh-{uuid.uuid4().hex[:6]}")
    url, _ = fresh_store("sqlite", folder)
    settings = settings_for(url, uri, experiment, mlflow_poll_interval_s=interval_s,
                            poll_timeout_ms=100)
    worker = create_mlflow_worker(settings)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    lags = []
    try:
        for i in range(samples):
            tid = T.log_trace(experiment, "ok", question=f"fresh {i}")
            T.flush()
            landed = time.perf_counter()
            while count(url) < i + 1:
                time.sleep(0.02)
            lags.append(time.perf_counter() - landed)
    finally:
        worker.stop.set()
        runner.join(30)
        worker.close()
    print(f"  freshness (poll interval {interval_s:g} s, {samples} traces, last trace {tid}): "
          f"p50 {statistics.median(lags):.2f} s, p95 "
          f"{sorted(lags)[int(0.95 * (len(lags) - 1))]:.2f} s, max {max(lags):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = MlflowServer(folder / "mlflow").start()
        try:
            mlflow.set_tracking_uri(server.uri)
            experiment = mlflow.create_experiment(f"bench-poll-{uuid.uuid4().hex[:6]}")
            ids, logged_s = log_traffic(experiment, args.traces)
            print(f"MLflow server: logged {len(ids)} traces (+{len(ids[::3])} feedback) in "
                  f"{logged_s:.1f} s ({len(ids) / logged_s:.0f} traces/s)")
            for backend in args.backends.split(","):
                bench_backfill(backend, folder, server.uri, experiment, len(ids))
            started = time.perf_counter()
            df = mlflow.search_traces(locations=[experiment], max_results=args.traces)
            nb_s = time.perf_counter() - started
            print(f"  notebook baseline: mlflow.search_traces -> DataFrame of {len(df)} rows with "
                  f"spans in {nb_s:.1f} s ({len(df) / nb_s:.0f} traces/s)")
            bench_freshness(folder, server.uri, args.samples, args.interval)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
