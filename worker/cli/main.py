"""The ``trace-curator`` command line (also ``python -m worker``).

Every command reads the settings once (``--config FILE`` plus ``TRACE_CURATOR_*`` variables) and
exits with a named code: ``EXIT_OK`` 0, ``EXIT_FAILURE`` 1, ``EXIT_CONFIG`` 2 (bad settings or
usage), ``EXIT_UNAVAILABLE`` 3 (store or broker unreachable), ``EXIT_SCHEMA`` 4 (run
``trace-curator db upgrade``).

Only ``db upgrade``, ``run`` and ``backfill`` may create a SQLite store; every other command refuses
a store file that does not exist (a mistyped setting must not leave an empty store behind). Errors
about the store name its URL, password masked. Output files go through ``worker.cli.output_files``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from consumers.errors import ConfigError, SchemaOutOfDateError, TransientError
from consumers.redact import redact
from store import schema
from worker.exit_codes import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SCHEMA,
    EXIT_UNAVAILABLE,
)
from worker.logs import setup_logging
from worker.rules import explain as rules_view
from worker.settings import Settings, describe_settings, load_settings
from worker.signals import StopSignals
from worker.timeparse import MAX_WINDOW_DAYS, parse_time_ms, parse_window

logger = logging.getLogger(__name__)



class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None


def _engine(settings: Settings, *, create: bool = True) -> Engine:
    """The store's engine. ``create=False``: a SQLite file that does not exist is a CliError
    (EXIT_UNAVAILABLE) instead of a new, empty store."""
    # Not worker.app: it imports the rules, hence MLflow (seconds), which `check` does not need.
    from store.engine import make_engine, sqlite_file

    if not create:
        path = sqlite_file(settings.store_url_plain)
        if path is not None and not path.exists():
            raise CliError(
                f"no store at {_store_url(settings)} (the file {path} does not exist): set "
                "TRACE_CURATOR_STORE_URL to your store, or run `trace-curator db upgrade` to "
                "create a new one there", EXIT_UNAVAILABLE)
    return make_engine(settings.store_url_plain, pool_size=settings.db_pool_size,
                       connect_timeout_s=settings.db_connect_timeout_s)


def _store_url(settings: Settings) -> str:
    """The store URL for messages, password masked."""
    return str(settings.masked()["store_url"])


def _unreachable(settings: Settings, exc: sa_exc.OperationalError) -> CliError:
    return CliError(f"the store {_store_url(settings)} is unreachable: "
                    f"{str(exc.orig).strip()[:300]}", EXIT_UNAVAILABLE)


def _ensure_schema(settings: Settings, engine: Engine) -> None:
    try:
        schema.ensure_current(engine)
    except SchemaOutOfDateError as exc:
        raise CliError(str(exc), EXIT_SCHEMA) from None
    except sa_exc.OperationalError as exc:
        raise _unreachable(settings, exc) from None


def _current_store(args: argparse.Namespace) -> tuple[Settings, Engine]:
    """Settings and an engine on an existing, reachable store with a current schema, or a
    CliError. Creates nothing."""
    settings = _settings(args)
    engine = _engine(settings, create=False)
    _ensure_schema(settings, engine)
    return settings, engine


def cmd_run(args: argparse.Namespace) -> int:
    from worker.app import create_worker

    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    logger.info("starting settings=%s", settings.masked())
    engine = _engine(settings)
    _ensure_schema(settings, engine)
    _check_metrics(settings, engine)
    try:
        worker = create_worker(settings, engine)
    except ConfigError as exc:  # an invalid rules file
        raise CliError(str(exc), EXIT_CONFIG) from None
    except TransientError as exc:  # no broker answered within the bootstrap bound
        raise CliError(_kafka_unreachable(settings, str(exc)), EXIT_UNAVAILABLE) from None
    except Exception as exc:  # any other kafka error while connecting
        if settings.source == "mlflow":
            raise CliError(f"the worker could not start: {exc!r}", EXIT_UNAVAILABLE) from None
        raise CliError(_kafka_unreachable(settings, repr(exc)), EXIT_UNAVAILABLE) from None
    http = _start_http(settings, worker, engine)
    StopSignals(worker.stop, shutdown_timeout_s=settings.shutdown_timeout_s).install()
    _tune_gc()
    try:
        worker.run(exit_when_idle_s=args.exit_when_idle, max_records=args.max_records)
    finally:
        if http is not None:
            http.stop()
        worker.close()
    return EXIT_OK


def _kafka_unreachable(settings: Settings, detail: str) -> str:
    return (f"Kafka at {settings.kafka_bootstrap_servers} is unreachable ({detail}): check "
            "TRACE_CURATOR_KAFKA_BOOTSTRAP_SERVERS, or set TRACE_CURATOR_SOURCE=mlflow to poll "
            "an MLflow server instead")


def _start_http(settings: Settings, worker: Any, engine: Engine) -> Any:
    """/metrics, /healthz, /readyz and the dashboard (/, /api/report) beside the worker, unless
    TRACE_CURATOR_HTTP_PORT=0."""
    if settings.http_port == 0:
        return None
    from worker.serve.dashboard import dashboard_routes
    from worker.serve.server import HttpServer
    from worker.serve.telemetry import routes

    served = {**routes(worker, engine),
              **dashboard_routes(engine, minute_retention_days=settings.retention_minute_days)}
    try:
        return HttpServer(settings.http_host, settings.http_port, served).start()
    except ConfigError as exc:
        worker.close()
        raise CliError(str(exc), EXIT_CONFIG) from None


def cmd_backfill(args: argparse.Namespace) -> int:
    from worker.app import create_mlflow_worker, poll_config
    from worker.cli.backfill import ProgressReporter

    now_ms = int(time.time() * 1000)
    # A backfill streams page by page: its window needs no cap, only the 1970-9999 bounds.
    since_ms, until_ms = _window(args, now_ms, max_days=None)
    settings = _settings(args)
    if not settings.mlflow_tracking_uri:
        raise CliError("backfill reads an MLflow server: set TRACE_CURATOR_MLFLOW_TRACKING_URI "
                       "(or MLFLOW_TRACKING_URI)", EXIT_CONFIG)
    setup_logging(settings.log_level, settings.log_format)
    engine = _engine(settings)
    _ensure_schema(settings, engine)
    _check_metrics(settings, engine)
    experiments = tuple(args.experiment) if args.experiment else None
    config = poll_config(settings, backfill=(since_ms, until_ms), experiments=experiments)
    try:
        worker = create_mlflow_worker(settings, engine, config)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    StopSignals(worker.stop, shutdown_timeout_s=settings.shutdown_timeout_s).install()
    reporter = ProgressReporter(worker, sys.stderr)
    reporter.start()
    try:
        stats = worker.run()
    finally:
        reporter.stop()
        worker.close()
    print(reporter.final_line(stats))
    if worker.stop.is_set():
        print("interrupted: run the same command again to resume where it stopped",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _window(args: argparse.Namespace, now_ms: int,
            max_days: int | None = MAX_WINDOW_DAYS) -> tuple[int, int]:
    """``--since`` / ``--until`` as epoch ms, or a CliError that says what is wrong."""
    try:
        return parse_window(args.since, args.until, now_ms, ("--since", "--until"),
                            max_days=max_days)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None


def _check_metrics(settings: Settings, engine: Engine) -> None:
    """Buckets are keyed by one dimension tag; refuse to mix in another (ConfigError)."""
    from store.metrics import check_dimension_tag
    from worker.app import metrics_config

    config = metrics_config(settings)
    if config is None:
        return
    try:
        with engine.begin() as conn:
            check_dimension_tag(conn, config)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None


REPORT_SUFFIXES = {".html": "html", ".htm": "html", ".json": "json", ".csv": "csv"}
EXPORT_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


def _output_format(args: argparse.Namespace, by_suffix: dict[str, str], default: str) -> str:
    """``--format``, or the one ``--output``'s extension names; the output path is checked
    now, before any work (missing folder, a directory, a link, an existing file)."""
    from worker.cli.output_files import check_target, format_for

    try:
        fmt = format_for(args.output, args.format, by_suffix, default)
        if args.output:
            check_target(args.output, force=args.force)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    return fmt


def cmd_report(args: argparse.Namespace) -> int:
    from store.dashboard import gather
    from store.report import summary
    from worker.cli.output_files import write_text
    from worker.report.page import render
    from worker.report.text import FORMATS

    fmt = _output_format(args, REPORT_SUFFIXES, "table")
    now_ms = int(time.time() * 1000)
    since_ms, until_ms = _window(args, now_ms)
    settings, engine = _current_store(args)
    try:
        if fmt == "html":  # the page needs more than the summary (store.dashboard)
            text = render(gather(engine, since_ms, until_ms, experiment_id=args.experiment,
                                 by=args.by, now_ms=now_ms,
                                 minute_retention_days=settings.retention_minute_days))
        else:
            result = summary(engine, since_ms, until_ms, experiment_id=args.experiment,
                             by=args.by, now_ms=now_ms,
                             minute_retention_days=settings.retention_minute_days)
            text = FORMATS[fmt](result)
    except sa_exc.OperationalError as exc:
        raise _unreachable(settings, exc) from None
    if args.output:
        try:
            write_text(args.output, text, force=args.force)
        except ConfigError as exc:
            raise CliError(str(exc), EXIT_CONFIG) from None
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_metrics_rebuild(args: argparse.Namespace) -> int:
    from store.metrics import rebuild
    from worker.app import bucket_config

    settings, engine = _current_store(args)
    config = bucket_config(settings)
    started = time.monotonic()
    with engine.begin() as conn:
        n = rebuild(conn, config, int(time.time() * 1000))
    print(f"rebuilt the metric buckets from {n:,} stored traces in "
          f"{time.monotonic() - started:.1f}s (dimension tag {settings.metrics_dimension_tag!r})")
    return EXIT_OK


def _curator(settings: Settings, engine: Engine) -> Any:
    from worker.app import create_curator

    try:
        return create_curator(settings, engine)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None


def cmd_curate(args: argparse.Namespace) -> int:
    from worker.curation.curator import CuratorThread

    settings, engine = _current_store(args)
    setup_logging(settings.log_level, settings.log_format)
    curator = _curator(settings, engine)
    if args.once:
        results = curator.run_cycle()
        for r in results:
            print(r.line())
        return EXIT_FAILURE if any(r.state in ("pending", "failed") for r in results) \
            else EXIT_OK
    stop = threading.Event()
    StopSignals(stop, shutdown_timeout_s=settings.shutdown_timeout_s).install()
    thread = CuratorThread(curator, settings.curate_interval_s, engine)
    thread.start()
    stop.wait()
    thread.stop()
    return EXIT_OK


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from store import datasets as ds

    _, engine = _current_store(args)
    with engine.connect() as conn:
        rows = ds.versions(conn)
    if not rows:
        print("no dataset versions yet (run `trace-curator curate --once`)")
        return EXIT_OK
    print(f"{'dataset':<32}{'version':>8}  {'state':<8}{'records':>8}  {'created (UTC)':<20}"
          f"  rules")
    for v in rows:
        mix = ", ".join(f"{k} {n}" for k, n in sorted(v.rule_mix.items()))
        print(f"{v.dataset:<32}{v.version:>8}  {v.state:<8}{v.record_count:>8}  "
              f"{_iso(v.created_ms):<20}  {mix}")
    return EXIT_OK


def _iso(ms: int) -> str:
    from store.report import iso

    return iso(ms)


def _version_of(conn: Any, name: str, version: int | None) -> Any:
    from store import datasets as ds

    rows = ds.versions(conn, name)
    if not rows:
        raise CliError(f"no dataset named {name!r} (see `trace-curator datasets list`)",
                       EXIT_FAILURE)
    if version is None:
        return rows[-1]
    for v in rows:
        if v.version == version:
            return v
    raise CliError(f"dataset {name!r} has versions {rows[0].version}..{rows[-1].version}, "
                   f"not {version}", EXIT_FAILURE)


def cmd_datasets_show(args: argparse.Namespace) -> int:
    from store import datasets as ds

    _, engine = _current_store(args)
    with engine.connect() as conn:
        v = _version_of(conn, args.name, args.version)
        added = ds.version_records(conn, args.name, v.version)
        total = sum(x.record_count for x in ds.versions(conn, args.name) if x.version <= v.version)
    print(f"dataset {v.dataset} version {v.version} ({v.state})")
    print(f"  created   {_iso(v.created_ms)}" + (f", confirmed by the sink {_iso(v.committed_ms)}"
                                                   if v.committed_ms else ""))
    print(f"  records   {v.record_count} added, {total} in the dataset as of this version")
    print(f"  digest    {v.digest}")
    print("  rules     " + ", ".join(f"{k} {n}" for k, n in sorted(v.rule_mix.items())))
    if v.last_error:
        print(f"  last error {redact(v.last_error)} (attempts {v.attempts})")
    for rec in added[:args.limit]:
        tags = rec.get("tags", {})
        print(f"  - {tags.get('trace_curator.source_trace_id')} "
              f"[{tags.get('trace_curator.tag')}] inputs={_preview(rec.get('inputs'))}")
    if len(added) > args.limit:
        print(f"  ... {len(added) - args.limit} more (`datasets export`)")
    return EXIT_OK


def _preview(value: Any, width: int = 80) -> str:
    import orjson

    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[:width - 3] + "..."


def cmd_datasets_export(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from store import datasets as ds
    from worker.cli.output_files import atomic_output
    from worker.curation.sinks import write_records

    fmt = _output_format(args, EXPORT_SUFFIXES, "jsonl")
    _, engine = _current_store(args)
    with engine.connect() as conn:
        v = _version_of(conn, args.name, args.version)
        records = ds.version_records(conn, args.name, v.version, cumulative=not args.only_added)
    if args.output:
        try:
            with atomic_output(args.output, force=args.force) as tmp:
                write_records(records, tmp, fmt)
        except ConfigError as exc:
            raise CliError(str(exc), EXIT_CONFIG) from None
    else:
        with tempfile.TemporaryDirectory() as tmp_dir:
            path = Path(tmp_dir) / f"export.{fmt}"
            write_records(records, path, fmt)
            sys.stdout.flush()
            sys.stdout.buffer.write(path.read_bytes())
            sys.stdout.buffer.flush()
    print(f"exported {len(records)} records of {args.name} version {v.version} as {fmt}"
          + (f" to {args.output}" if args.output else ""), file=sys.stderr)
    return EXIT_OK


def _tune_gc() -> None:
    """The hot path allocates many short-lived objects per event and keeps none: move what
    start-up built out of the collector's way, and collect the young generation less often.
    In bench/ingest.py this took SQLite from about 13.2k to 15.4k events/s."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    engine = _engine(settings)
    try:
        before, after = schema.upgrade(engine)
    except sa_exc.OperationalError as exc:
        raise _unreachable(settings, exc) from None
    url = settings.masked()["store_url"]
    if before == after:
        print(f"store {url} is already at schema revision {after}")
    else:
        print(f"store {url} upgraded from {before or 'empty'} to {after}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from store import outbox

    settings, engine = _current_store(args)
    with engine.connect() as conn:
        lag = outbox.stats(conn)
    now_ms = int(time.time() * 1000)
    age = f", oldest {(now_ms - lag.oldest_created_ms) / 1000:.0f}s" \
        if lag.oldest_created_ms else ""
    print(f"ok: store {settings.masked()['store_url']} reachable, schema at "
          f"{schema.head_revision()}; tag outbox {lag.total} row(s), "
          f"{lag.waiting_for_trace} waiting for traces MLflow does not know{age}")
    return EXIT_OK


def cmd_rules_explain(args: argparse.Namespace) -> int:
    from store.decisions import explain

    settings, engine = _current_store(args)
    with engine.connect() as conn:
        info = explain(conn, args.trace_id)
        if info["trace"] is None and not info["log"]:
            raise CliError(f"trace {args.trace_id} is not in the store", EXIT_FAILURE)
        if not info["log"] and info["trace"] is not None:
            info["now"] = _evaluate_now(settings, conn, info["trace"])
    print(rules_view.explain_text(args.trace_id, info))
    return EXIT_OK


def _evaluate_now(settings: Settings, conn: Any, view: Any) -> Any:
    """Evaluations where nothing matched are not logged: show what the rules say now."""
    from store.decisions import valid_feedback
    from worker.rules.engine import load_rules

    try:
        rules = load_rules(settings.rules_file)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    feedback = valid_feedback(conn, [view.trace_id]).get(view.trace_id, [])
    return rules.evaluate(view, feedback)


def cmd_rules_test(args: argparse.Namespace) -> int:
    from store.decisions import stored_traces, valid_feedback
    from worker.rules.engine import load_rules

    try:
        rules = load_rules(args.rules_file)
        now_ms = int(time.time() * 1000)
        since_ms = parse_time_ms(args.since, now_ms)
        until_ms = parse_time_ms(args.until, now_ms) if args.until else now_ms + 1
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    _, engine = _current_store(args)
    tally = rules_view.DryRun(rules, examples=args.examples)
    with engine.connect() as conn:
        for chunk in stored_traces(conn, since_ms, until_ms):
            feedback = valid_feedback(conn, [t.trace_id for t in chunk]) \
                if rules.needs_assessments() else {}
            for view in chunk:
                tally.add(rules.evaluate(view, feedback.get(view.trace_id, ())))
    print(tally.text(args.since, args.until))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="trace-curator", formatter_class=fmt,
        description="Ingest MLflow 3 traces and assessments from Kafka into a SQL store, "
                    "exactly once in effect.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad settings or usage, 3 store or broker "
               "unreachable, 4 schema out of date (run `trace-curator db upgrade`).")
    p.add_argument("--config", metavar="FILE",
                   help="YAML settings file (keys as below, without the prefix)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the long-lived worker", formatter_class=fmt,
        description="Consume the trace and assessment topics, upsert events into the store in "
                    "one transaction per batch, and commit Kafka offsets only after that "
                    "transaction. Malformed records are dead-lettered to <topic>.dlq and the "
                    "dead_letters table. With TRACE_CURATOR_SOURCE=mlflow, poll the MLflow "
                    "server instead (new traces oldest first from a stored watermark, and "
                    "rescans for late assessments). SIGTERM/SIGINT drain the batch in hand and "
                    "exit.",
        epilog="Settings (environment variables; YAML keys are the lower-case names without "
               "the prefix):\n" + describe_settings())
    run.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                     help="YAML settings file")
    run.add_argument("--exit-when-idle", type=float, metavar="SECONDS", default=None,
                     help="stop after this many seconds with nothing to do")
    run.add_argument("--max-records", type=int, metavar="N", default=None,
                     help="stop after about N records (whole batches)")
    run.set_defaults(func=cmd_run)

    bf = sub.add_parser(
        "backfill", help="load history from the MLflow server", formatter_class=fmt,
        description="Read the traces that started in a window, with their assessments, from "
                    "the MLflow server (TRACE_CURATOR_MLFLOW_TRACKING_URI or "
                    "MLFLOW_TRACKING_URI) through the worker's path: decode, rules, metrics, "
                    "store, in one transaction per page. Traces already stored are skipped. "
                    "Progress (traces, rate, share of the window, ETA) goes to stderr. Ctrl+C "
                    "stops after the page in hand; the same command then resumes from there.",
        epilog="Examples:\n  trace-curator backfill --since 7d\n"
               "  trace-curator backfill --since 2026-11-01 --until 2026-11-15 --experiment 3")
    bf.add_argument("--since", required=True,
                    help="window start: 24h, 7d, 2w, or an ISO time")
    bf.add_argument("--until", default=None, help="window end (default now)")
    bf.add_argument("--experiment", metavar="ID", action="append", default=None,
                    help="experiment id (repeatable; default: TRACE_CURATOR_MLFLOW_EXPERIMENT_IDS, "
                         "or every active experiment)")
    bf.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    bf.set_defaults(func=cmd_backfill)

    db = sub.add_parser("db", help="database schema commands")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    up = dbsub.add_parser("upgrade", help="apply schema migrations to the store",
                          description="Create or migrate the store schema (Alembic). Safe to "
                                      "run again; run it after every upgrade of trace-curator.")
    up.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    up.set_defaults(func=cmd_db_upgrade)

    check = sub.add_parser("check", help="health check: exit 0 when the store is healthy",
                           description="Exit 0 when the store is reachable and its schema is "
                                       "current, and print its URL (password masked); 3 when it "
                                       "is unreachable or its SQLite file does not exist (never "
                                       "created here), 4 when its schema is out of date. For "
                                       "container healthchecks.")
    check.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    check.set_defaults(func=cmd_check)

    rules = sub.add_parser("rules", help="rule decisions: explain a trace, dry-run a rules file")
    rsub = rules.add_subparsers(dest="rules_command", required=True, metavar="COMMAND")
    ex = rsub.add_parser("explain", help="why a trace has (or lost) its tags",
                         description="Print the stored trace, its current rule tags, their "
                                     "write-back state, and every logged evaluation: each "
                                     "rule's outcome (tagged, superseded, sampled_out, no_match, "
                                     "not_applicable) and reason, newest first.")
    ex.add_argument("trace_id")
    ex.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    ex.set_defaults(func=cmd_rules_explain)
    rt = rsub.add_parser("test", help="dry-run a rules file over stored traces",
                         formatter_class=fmt,
                         description="Evaluate RULES_FILE over the stored traces of a window "
                                     "(with their valid feedback) and print, per rule, how many "
                                     "would be tagged, superseded or sampled out, with example "
                                     "trace ids. Writes nothing.\n\nThe built-in rules, used "
                                     "when TRACE_CURATOR_RULES_FILE is unset:\n\n"
                                     + rules_view.default_rules_text())
    rt.add_argument("rules_file", metavar="RULES_FILE")
    rt.add_argument("--since", default="7d", help="window start: 24h, 7d, or ISO (default 7d)")
    rt.add_argument("--until", default=None, help="window end (default now)")
    rt.add_argument("--examples", type=int, default=3, help="example ids per rule (default 3)")
    rt.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    rt.set_defaults(func=cmd_rules_test)

    rep = sub.add_parser(
        "report", help="quality report over the metric buckets", formatter_class=fmt,
        description="Volume, success rate, latency p50/p95/p99, per-span-type timings, tokens, "
                    "assessment scores, candidates and hourly volume for the traces that "
                    "started in a window, read from the rolling metric buckets (milliseconds, "
                    "whatever the number of traces). Windows are whole minutes: --since rounds "
                    "down, --until rounds up. Percentiles are within 1%; counts are exact.",
        epilog="Examples:\n  trace-curator report --since 24h\n"
               "  trace-curator report --since 7d --by trace_name --format csv\n"
               "  trace-curator report --since 2026-11-26 --until 2026-11-27 --experiment 3 "
               "--format json\n"
               "  trace-curator report --since 24h --format html --output report.html")
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
    rep.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    rep.set_defaults(func=cmd_report)

    met = sub.add_parser("metrics", help="metric bucket maintenance")
    msub = met.add_subparsers(dest="metrics_command", required=True, metavar="COMMAND")
    rb = msub.add_parser("rebuild", help="recompute the metric buckets from the stored traces",
                         description="Replace the buckets from the hour of the oldest stored "
                                     "trace on with buckets recomputed from the raw rows (after "
                                     "changing TRACE_CURATOR_METRICS_DIMENSION_TAG, say). Older "
                                     "buckets, kept past raw retention, stay. Stop the workers "
                                     "first.")
    rb.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    rb.set_defaults(func=cmd_metrics_rebuild)

    cur = sub.add_parser(
        "curate", help="merge tagged candidates into versioned evaluation datasets",
        formatter_class=fmt,
        description="One curation cycle per dataset spec (TRACE_CURATOR_DATASETS_FILE; unset: "
                    "'trace_curator_candidates' in MLflow with every tagged candidate): finish "
                    "a version an earlier cycle could not confirm, else select new candidates, "
                    "build records (inputs, outputs, expectations, provenance tags), sample, "
                    "write version N as pending, merge it into the sink, and mark it done. "
                    "Without --once, cycles every TRACE_CURATOR_CURATE_INTERVAL_S until "
                    "SIGTERM. Exit 1 when a merge failed (it is retried next cycle).")
    cur.add_argument("--once", action="store_true", help="run one cycle now and exit")
    cur.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    cur.set_defaults(func=cmd_curate)

    dsp = sub.add_parser("datasets", help="list, show and export dataset versions")
    dsub = dsp.add_subparsers(dest="datasets_command", required=True, metavar="COMMAND")
    dl = dsub.add_parser("list", help="every dataset version: state, records, rule mix")
    dl.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    dl.set_defaults(func=cmd_datasets_list)
    dsh = dsub.add_parser("show", help="one version (the latest by default)")
    dsh.add_argument("name")
    dsh.add_argument("--version", type=int, default=None)
    dsh.add_argument("--limit", type=int, default=10, help="records to preview (default 10)")
    dsh.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    dsh.set_defaults(func=cmd_datasets_show)
    dex = dsub.add_parser(
        "export", help="the dataset as of version N, as JSONL or Parquet",
        description="Write the records of NAME as of version N (every record added by versions "
                    "1..N), exactly as they were merged; --only-added: only version N's.")
    dex.add_argument("name")
    dex.add_argument("--version", type=int, required=True)
    dex.add_argument("--format", choices=("jsonl", "parquet"), default=None,
                     help="default: from the --output extension (.jsonl .json: jsonl, "
                          ".parquet: parquet), else jsonl")
    dex.add_argument("--only-added", action="store_true",
                     help="only the records version N added")
    dex.add_argument("--output", metavar="FILE", default=None,
                     help="default: stdout (written whole or not at all; an existing FILE is "
                          "refused without --force, a symbolic link always)")
    dex.add_argument("--force", action="store_true", help="replace an existing --output FILE")
    dex.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    dex.set_defaults(func=cmd_datasets_export)

    from worker.demo import runner as demo

    d = sub.add_parser(
        "demo", help="run the whole path on embedded defaults, with demo traffic",
        formatter_class=fmt,
        description="Run the whole product live with no infrastructure: a backdated history of "
                    "real MLflow traces of a small support bot in a local MLflow store, then "
                    "live traffic (feedback on about half, some of it late) while the real "
                    "worker ingests it into a SQLite store, from an embedded Kafka-protocol "
                    "broker (with 3 malformed records) or, with --source mlflow, by polling "
                    "MLflow. Progress once a second; at the end the report, the rule tags, the "
                    "dataset versions and how to open the MLflow UI. Needs the demo extra: "
                    "pip install 'trace-curator[demo]'.")
    demo.configure_parser(d)
    d.set_defaults(func=demo.cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"trace-curator: error: {redact(str(exc))}", file=sys.stderr)
        return exc.code
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
