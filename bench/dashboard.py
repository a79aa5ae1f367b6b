"""Dashboard benchmark: how long the live page (``store.dashboard.gather`` + the HTML render)
takes over a store of N synthetic traces, for 24 h, 7 d and 30 d windows ending now.

The traces are loaded with ``bench.report``'s bulk path (the same buckets as the worker's
upsert path) into a fresh PostgreSQL database, dropped afterwards. Medians of ``--repeat``
runs are printed, never asserted.

    .venv/bin/python -m bench.dashboard --traces 1000000
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.report import events, fresh_store, load_bulk
from store.dashboard import gather
from worker.report.page import render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=1_000_000)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    now_ms = (int(time.time() * 1000) // 60_000) * 60_000
    with fresh_store("postgresql") as engine:
        started = time.perf_counter()
        load_bulk(engine, events(args.traces, now_ms, args.days), now_ms)
        print(f"loaded {args.traces:,} traces over {args.days:g} days in "
              f"{time.perf_counter() - started:.0f} s (PostgreSQL)")
        for label, hours in (("24h", 24), ("7d", 168), ("30d", 720)):
            since = now_ms - hours * 3_600_000
            times, page, board = [], "", None
            for _ in range(args.repeat):
                t = time.perf_counter()
                board = gather(engine, since, now_ms, now_ms=now_ms)
                page = render(board)
                times.append((time.perf_counter() - t) * 1000)
            assert board is not None
            print(f"  {label:>4}: gather + render {statistics.median(times):6.1f} ms "
                  f"(median of {args.repeat}), page {len(page) // 1024} KiB, "
                  f"{board.summary.overall.total_traces:,} traces in the window")


if __name__ == "__main__":
    main()
