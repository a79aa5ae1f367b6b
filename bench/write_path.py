"""Write-path benchmark: events/s of ``store.writer.write_batch`` alone, in-process, no Kafka.

N realistic MLflow trace events (``bench.ingest``'s templates: 8 real trace documents, 60%
rule candidates) are decoded once, as the worker decodes them, then written in batches of
``--batch`` (the worker's default, 2000) through ``write_batch``, on a fresh SQLite file and a
fresh PostgreSQL database per run:
  * full: the default rules (``load_rules(None)``) and the default metric buckets (the
    settings' ``MetricsConfig``), as the worker runs by default;
  * bare: the same batches with rules and metrics off (decider=None, metrics_config=None).
Each configuration runs ``--repeat`` times, alternating, each on a fresh store; the best rate
is kept (a shared 2-core machine is noisy) and the ratio full/bare is printed, with the
benchmark process's own CPU time per event (the least noisy figure; on PostgreSQL the
server's share is not in it). The full runs also report a split of the batch transaction by
stage: an accumulating timer wraps the named functions (inclusive times; a nested stage is
indented under its caller), so the split costs a few microseconds a call. ``--profile``
prints cProfile's top functions of one more full run instead. The collector is tuned as the
worker tunes it (``gc.freeze`` after start-up, a larger young generation). Afterwards every
store must hold exactly N traces, else it prints MISMATCH and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import importlib
import io
import pstats
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest import event, fresh_store, make_templates  # noqa: E402
from consumers.events import Provenance, TraceEvent  # noqa: E402
from consumers.formats import decode_trace  # noqa: E402
from store import schema, writer  # noqa: E402
from store.engine import make_engine  # noqa: E402
from store.metrics import MetricsConfig, check_dimension_tag  # noqa: E402
from store.upserts import Batch  # noqa: E402
from worker.rules.engine import load_rules  # noqa: E402
from worker.settings import Settings  # noqa: E402

TOPIC = "bench-traces"
PARTITIONS = 4

# The stages timed in a full run: (depth, label, module, attribute). Each is patched where its
# caller looks it up, so the timer sees every call; a missing attribute is skipped (a stage
# renamed by later work drops out of the split instead of failing the bench). Depth
# only indents the printout: times are inclusive. A COPY held open around computing
# (``dialect.inserting_new``) has no line: its wait is in apply_batch's remainder.
STAGES: tuple[tuple[int, str, str, str], ...] = (
    (0, "write_batch (transaction incl. begin/commit)", "store.writer", "write_batch"),
    (1, "apply_batch", "store.writer", "apply_batch"),
    (2, "locks.lock_traces", "store.locks", "lock_traces"),
    (2, "metrics.read_state", "store.metrics", "read_state"),
    (2, "span_summary", "store.upserts", "span_summary"),
    (2, "trace_row", "store.upserts", "trace_row"),
    (2, "_read_inputs (feedback, current tags)", "store.upserts", "_read_inputs"),
    (3, "decisions.feedback_rows", "store.upserts", "feedback_rows"),
    (2, "_decide (rules, no store)", "store.upserts", "_decide"),
    (3, "decider.evaluate (RuleSet)", "worker.rules.engine", "RuleSet.evaluate"),
    (3, "plan_decisions", "store.decisions", "plan_decisions"),
    (2, "_metric_deltas (no store)", "store.upserts", "_metric_deltas"),
    (3, "rollup.cells_of_new", "store.upserts", "cells_of_new"),
    (3, "rollup.deltas", "store.upserts", "deltas"),
    (2, "dialect.upsert_newer (stored traces, assessments)", "store.dialect", "upsert_newer"),
    (2, "metrics.apply_deltas", "store.metrics", "apply_deltas"),
    (3, "locks.lock_buckets", "store.locks", "lock_buckets"),
    (3, "read_buckets_by_key", "store.metrics", "read_buckets_by_key"),
    (3, "bucket_row", "store.metrics", "bucket_row"),
    (1, "dialect.bulk_upsert (all tables)", "store.dialect", "bulk_upsert"),
)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


class StageTimer:
    """Accumulated wall time and calls per stage, by patching the stages' functions."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        seconds, calls, clock = self.seconds, self.calls, self.clock

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += clock() - t0
                calls[label] += 1
        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[StageTimer]:
        for _depth, label, module_name, attr in STAGES:
            owner: Any = importlib.import_module(module_name)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            original = getattr(owner, name, None) if owner is not None else None
            if original is None or not callable(original):
                continue
            setattr(owner, name, self._wrap(label, original))
            self._undo.append(functools.partial(setattr, owner, name, original))
        try:
            yield self
        finally:
            while self._undo:
                self._undo.pop()()


def decode_events(n: int) -> list[TraceEvent]:
    templates = make_templates()
    run_id = uuid.uuid4().hex[:8].encode()
    max_bytes = Settings.model_fields["max_event_bytes"].default
    out = []
    for i in range(n):
        _key, value = event(templates, run_id, i)
        out.append(decode_trace(value, Provenance(TOPIC, i % PARTITIONS, i // PARTITIONS),
                                max_bytes))
    return out


def default_metrics() -> MetricsConfig:
    """The worker's default bucket settings (``worker.app.bucket_config`` of the defaults)."""
    f = Settings.model_fields
    return MetricsConfig(dimension_tag=f["metrics_dimension_tag"].default,
                         minute_days=f["retention_minute_days"].default,
                         hour_days=f["retention_hour_days"].default)


def count_traces(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM traces")).scalar_one())


def write_all(url: str, events: list[TraceEvent], batch: int, full: bool,
              timer: StageTimer | None = None, profile: cProfile.Profile | None = None
              ) -> tuple[float, float, int]:
    """Write ``events`` into a fresh migrated store at ``url``; (wall seconds, this process's
    CPU seconds, traces stored)."""
    engine = make_engine(url)
    try:
        schema.upgrade(engine)
        decider = load_rules(None) if full else None
        config = default_metrics() if full else None
        if config is not None:
            with engine.begin() as conn:
                check_dimension_tag(conn, config)
        batches = [Batch(traces=events[i:i + batch]) for i in range(0, len(events), batch)]
        with engine.connect():  # warm the pool: the first connect is not the write path
            pass
        ctx = timer.installed() if timer is not None else contextlib.nullcontext()
        with ctx:
            if profile is not None:
                profile.enable()
            t0, c0 = time.perf_counter(), time.process_time()
            for b in batches:
                writer.write_batch(engine, b, int(time.time() * 1000), decider, config)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            if profile is not None:
                profile.disable()
        return elapsed, cpu, count_traces(engine)
    finally:
        engine.dispose()


def print_split(timer: StageTimer, elapsed: float, n: int) -> None:
    print(f"    {'stage (inclusive)':<52}{'share':>7}{'us/event':>10}{'calls':>8}")
    for depth, label, _m, _a in STAGES:
        if label not in timer.calls:
            continue
        s = timer.seconds[label]
        print(f"    {'  ' * depth + label:<52}{100 * s / elapsed:>6.1f}%"
              f"{1e6 * s / n:>10.1f}{timer.calls[label]:>8}")


def run_backend(backend: str, args: argparse.Namespace, events: list[TraceEvent],
                tmp: Path) -> tuple[dict[str, float], dict[str, float], bool]:
    best = {"full": 0.0, "bare": 0.0}
    cpu_us = {"full": float("inf"), "bare": float("inf")}
    ok = True
    last_timer: StageTimer | None = None
    last_elapsed = 0.0
    for r in range(args.repeat):
        for mode in ("full", "bare"):
            timer = StageTimer(CLOCKS[args.clock]) if mode == "full" and args.split else None
            with fresh_store(backend, args.pg_dsn, tmp) as url:
                elapsed, cpu, rows = write_all(url, events, args.batch, mode == "full", timer)
            rate = len(events) / elapsed
            cpu_us[mode] = min(cpu_us[mode], 1e6 * cpu / len(events))
            print(f"  {backend:<10} run {r + 1} {mode}: {rate:>9,.0f} events/s "
                  f"({elapsed:.2f} s, {1e6 * cpu / len(events):.1f} us CPU/event here, "
                  f"{rows} traces)")
            if rows != len(events):
                print(f"MISMATCH on {backend} {mode}: wrote {len(events)} events, the store "
                      f"holds {rows} traces")
                ok = False
            if rate > best[mode]:
                best[mode] = rate
                if timer is not None:
                    last_timer, last_elapsed = timer, elapsed
    if last_timer is not None:
        print(f"  {backend}: split of the best full run ({last_elapsed:.2f} s; stage timers "
              "on)")
        print_split(last_timer, last_elapsed, len(events))
    if args.profile:
        prof = cProfile.Profile()
        with fresh_store(backend, args.pg_dsn, tmp) as url:
            write_all(url, events, args.batch, True, profile=prof)
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.profile)
        print(f"  {backend}: cProfile, top {args.profile} by cumulative time")
        print(out.getvalue())
    return best, cpu_us, ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/write_path.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, metavar="N",
                   help="trace events to decode and write (default: 20000)")
    p.add_argument("--batch", type=int, default=Settings.model_fields["batch_max_records"].default,
                   metavar="N", help="events per batch, one transaction each (default: the "
                                     "worker's, %(default)s)")
    p.add_argument("--repeat", type=int, default=3, metavar="R",
                   help="runs per backend and configuration; the best is kept (default: 3)")
    p.add_argument("--backends", default="sqlite,postgresql",
                   help="comma-separated: sqlite, postgresql (default: both)")
    p.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test",
                   help="admin DSN; a fresh database is created beside it and dropped")
    p.add_argument("--no-split", dest="split", action="store_false",
                   help="no stage timers (the full runs then measure the bare code)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="what the stage timers measure: wall time, or this process's CPU time "
                        "(steadier on a busy machine; blind to the PostgreSQL server's share; "
                        "a system call a timing)")
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="also run cProfile on one more full run and print its top K functions")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if set(args.backends) - {"sqlite", "postgresql"} or not args.backends:
        p.error("--backends: choose from sqlite, postgresql")
    if min(args.events, args.batch, args.repeat) < 1:
        p.error("--events, --batch and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    events = decode_events(args.events)
    # As the worker does (worker.cli.run._tune_gc): the decoded events are start-up state here.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    print(f"decoded {len(events)} events in {time.perf_counter() - t0:.1f} s; batches of "
          f"{args.batch}, best of {args.repeat} runs per configuration"
          f"{' (stage timers on in the full runs)' if args.split else ''}")
    results = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="tc-write-path-") as tmp:
        for backend in args.backends:
            rates, cpu_us, fine = run_backend(backend, args, events, Path(tmp))
            results.append((backend, rates, cpu_us))
            ok = ok and fine
    print(f"\n{'backend':<11}{'full events/s':>15}{'bare events/s':>15}{'full/bare':>11}"
          f"{'full CPU us/ev':>16}{'bare CPU us/ev':>16}")
    for backend, rates, cpu_us in results:
        print(f"{backend:<11}{rates['full']:>15,.0f}{rates['bare']:>15,.0f}"
              f"{rates['full'] / rates['bare']:>11.2f}{cpu_us['full']:>16.1f}"
              f"{cpu_us['bare']:>16.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
