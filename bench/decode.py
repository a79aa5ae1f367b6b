"""Decode benchmark: trace records/s of ``decode_trace`` against bare ``orjson.loads``.

Builds N realistic trace records, the very bytes the ingest benchmark produces (``Trace.to_json()``
clones of the real MLflow fixtures, compact orjson, 2.7-5.1 KB, each with its own trace id), then
times, in one run and over the same bytes:
  * ``orjson.loads`` alone: the baseline, what parsing the record into dicts costs;
  * ``decode_trace``: bytes to a checked ``TraceEvent``, what the worker runs per record;
  * the reference path of ``consumers.formats`` (orjson, then the field checks), which decides
    every record the fast path does not take, where the module has one.
The records are timed in chunks of C, the candidates interleaved chunk by chunk so that a busy
neighbour slows them alike; each chunk's best of K runs counts, and a candidate's time is the sum
over the chunks. Twice: with the garbage collector on, as in the worker (allocations trigger its
collections), and off. It prints records/s, microseconds per record and each one's ratio to the
baseline, and checks that every record decodes and that both paths give equal events. Timings
are printed, never asserted.

    python -m bench.decode [--records N] [--runs K] [--chunk C]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench.ingest import TEMPLATE_MIX, make_templates
from bench.ingest import event as make_event
from consumers import formats
from consumers.events import Provenance

MAX_BYTES = 4 * 1024 * 1024  # the worker's default max_event_bytes
PROV = Provenance("bench-traces", 0, 0)


def records(n: int) -> list[bytes]:
    templates = make_templates()
    run_id = b"%08x" % 0xBE4C4
    return [make_event(templates, run_id, i)[1] for i in range(n)]


def timed(fn: Callable[[bytes], Any], values: list[bytes]) -> float:
    """Seconds for one pass of ``fn`` over ``values``."""
    t0 = time.perf_counter()
    for v in values:
        fn(v)
    return time.perf_counter() - t0


def measure(fns: dict[str, Callable[[bytes], Any]], values: list[bytes], runs: int, chunk: int,
            collector: bool) -> dict[str, float]:
    """Each candidate's seconds over ``values``: per chunk the best of ``runs``, summed."""
    chunks = [values[i:i + chunk] for i in range(0, len(values), chunk)]
    best = {name: [float("inf")] * len(chunks) for name in fns}
    gc.collect()
    if not collector:
        gc.disable()
    try:
        for _ in range(runs):
            for i, part in enumerate(chunks):
                for name, fn in fns.items():
                    best[name][i] = min(best[name][i], timed(fn, part))
    finally:
        gc.enable()
    return {name: sum(times) for name, times in best.items()}


def candidates() -> dict[str, Callable[[bytes], Any]]:
    out: dict[str, Callable[[bytes], Any]] = {
        "orjson.loads": orjson.loads,
        "decode_trace": lambda v: formats.decode_trace(v, PROV, MAX_BYTES),
    }
    reference = getattr(formats, "decode_trace_reference", None)
    if reference is not None:
        out["reference path"] = lambda v: reference(v, PROV, MAX_BYTES)
    return out


def check(values: list[bytes]) -> str:
    """Every record decodes, on both paths alike; how many the fast path takes."""
    reference = getattr(formats, "decode_trace_reference", None)
    fast = getattr(formats, "decode_trace_fast", None)
    taken = 0
    for v in values:
        ev = formats.decode_trace(v, PROV, MAX_BYTES)
        if reference is not None and reference(v, PROV, MAX_BYTES) != ev:
            raise SystemExit(f"MISMATCH: the paths disagree on {v[:80]!r}...")
        if fast is not None and fast(v, PROV, MAX_BYTES) is not None:
            taken += 1
    return "no fast path" if fast is None else f"fast path took {taken} of {len(values)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000, metavar="N",
                   help="records to build and decode per run (default: 10000)")
    p.add_argument("--runs", type=int, default=7, metavar="K",
                   help="timed runs of each chunk; the best counts (default: 7)")
    p.add_argument("--chunk", type=int, default=500, metavar="C",
                   help="records per timed chunk (default: 500)")
    p.add_argument("--json", action="store_true", help="also print one JSON line of results")
    args = p.parse_args(argv)
    if min(args.records, args.runs, args.chunk) < 1:
        p.error("--records, --runs and --chunk must be positive")
    values = records(args.records)
    sizes = [len(v) for v in values]
    print(f"records: {len(values)} trace records ({', '.join(f'{c}x {k}' for k, c in TEMPLATE_MIX)}"
          f" templates), mean {sum(sizes) / len(sizes):,.0f} bytes, min {min(sizes):,}, "
          f"max {max(sizes):,}; {check(values)}")
    fns = candidates()
    results: dict[str, dict[str, float]] = {}
    for collector in (True, False):
        label = "gc on" if collector else "gc off"
        best = measure(fns, values, args.runs, args.chunk, collector)
        results[label] = {k: round(s / len(values) * 1e6, 3) for k, s in best.items()}
        base = best["orjson.loads"]
        print(f"{label + ':':16} {'records/s':>12} {'us/record':>10} {'x orjson.loads':>15}")
        for name, secs in best.items():
            print(f"{name:16} {len(values) / secs:12,.0f} {secs / len(values) * 1e6:10.2f} "
                  f"{secs / base:15.2f}")
    if args.json:
        print(orjson.dumps({"bench": "decode", "records": len(values), "runs": args.runs,
                            "chunk": args.chunk, "us_per_record": results}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
