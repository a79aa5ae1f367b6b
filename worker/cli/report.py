"""``report`` (the quality report of a window, from the metric buckets) and ``metrics rebuild``
(the buckets recomputed from the stored traces).

Both need an existing store with a current schema and create nothing. The report's format comes
from ``--format`` or the ``--output`` extension; the output path is checked before any work and
written whole or not at all (``worker.cli.output_files``). Windows are whole minutes.
"""

from __future__ import annotations

import argparse
import sys
import time

from store.engine import STORE_GONE
from worker.cli import common
from worker.exit_codes import EXIT_OK

REPORT_SUFFIXES = {".html": "html", ".htm": "html", ".json": "json", ".csv": "csv"}


# --help descriptions: common.prose puts each paragraph on one line.
REPORT = """
Volume, success rate, latency p50/p95/p99, per-span-type timings, tokens, assessment scores,
candidates and hourly volume for the traces that started in a window, read from the rolling metric
buckets (milliseconds, whatever the number of traces). Windows are whole minutes: --since rounds
down, --until rounds up. Percentiles are within 1%; counts are exact.
"""
REPORT_EPILOG = """Examples:
  trace-curator report --since 24h
  trace-curator report --since 7d --by trace_name --format csv
  trace-curator report --since 2026-11-26 --until 2026-11-27 --experiment 3 --format json
  trace-curator report --since 24h --format html --output report.html"""
REBUILD = """
Replace the buckets from the hour of the oldest stored trace on with buckets recomputed from the
raw rows (after changing TRACE_CURATOR_METRICS_DIMENSION_TAG, say). Older buckets, kept past raw
retention, stay. Stop the workers first.
"""


def register(sub: common.Subcommands[argparse.ArgumentParser],
             parent: argparse.ArgumentParser) -> None:
    rep = common.command(sub, "report", cmd_report, parent, formatter_class=common.HELP_FORMAT,
                         help="quality report over the metric buckets",
                         description=common.prose(REPORT), epilog=REPORT_EPILOG)
    rep.add_argument("--since", default="24h",
                     help="window start: 30m, 24h, 7d, 2w, or an ISO time (default 24h)")
    rep.add_argument("--until", default=None, help="window end (default now)")
    rep.add_argument("--experiment", metavar="ID", default=None,
                     help="only this experiment id")
    rep.add_argument("--by", choices=("trace_name", "environment", "experiment"),
                     default=None, help="also break the figures down by this dimension")
    rep.add_argument("--format", choices=("table", "json", "csv", "html"), default=None,
                     help="output format (default: from the --output extension, .html .json "
                          ".csv, else table); html: one self-contained page with charts, "
                          "candidates, dataset versions, dead letters and the outbox")
    rep.add_argument("--output", metavar="FILE", default=None,
                     help="write to FILE instead of stdout (written whole or not at all; an "
                          "existing FILE is refused without --force, a symbolic link always)")
    rep.add_argument("--force", action="store_true",
                     help="replace an existing --output FILE")
    metrics = common.group(sub, "metrics", "metric bucket maintenance")
    common.command(metrics, "rebuild", cmd_metrics_rebuild, parent,
                   help="recompute the metric buckets from the stored traces",
                   description=common.prose(REBUILD))


def cmd_report(args: argparse.Namespace) -> int:
    from store.dashboard import gather
    from store.report import summary
    from worker.cli.output_files import write_text
    from worker.report.page import render
    from worker.report.text import FORMATS

    fmt = common.output_format(args, REPORT_SUFFIXES, "table")
    at_ms = common.now_ms()
    since_ms, until_ms = common.window(args, at_ms)
    settings, engine = common.current_store(args)
    try:
        if fmt == "html":  # the page needs more than the summary (store.dashboard)
            text = render(gather(engine, since_ms, until_ms, experiment_id=args.experiment,
                                 by=args.by, now_ms=at_ms,
                                 minute_retention_days=settings.retention_minute_days))
        else:
            result = summary(engine, since_ms, until_ms, experiment_id=args.experiment,
                             by=args.by, now_ms=at_ms,
                             minute_retention_days=settings.retention_minute_days)
            text = FORMATS[fmt](result)
    except STORE_GONE as exc:
        raise common.unreachable(settings, exc) from None
    if args.output:
        write_text(args.output, text, force=args.force)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_metrics_rebuild(args: argparse.Namespace) -> int:
    from store.metrics import rebuild
    from worker.app import bucket_config

    settings, engine = common.current_store(args)
    config = bucket_config(settings)
    started = time.monotonic()
    with engine.begin() as conn:
        n = rebuild(conn, config, common.now_ms())
    print(f"rebuilt the metric buckets from {n:,} stored traces in "
          f"{time.monotonic() - started:.1f}s (dimension tag {settings.metrics_dimension_tag!r})")
    return EXIT_OK
