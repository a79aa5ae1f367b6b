"""``run`` (the long-lived worker over the configured source) and ``backfill`` (history from the
MLflow server, through the same path, until its window is read).

Both may create a SQLite store, refuse a schema that is not current, and check the metric
dimension tag before the worker starts. The first SIGTERM/SIGINT drains the batch in hand
(``worker.signals``); a backfill stopped that way exits EXIT_INTERRUPTED and resumes where it
stopped when run again. A source that cannot be reached at start exits EXIT_UNAVAILABLE.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import Any

from sqlalchemy import Engine

from consumers.errors import ConfigError, TransientError
from consumers.redact import redact
from store.engine import STORE_GONE
from worker.cli import common
from worker.exit_codes import EXIT_CONFIG, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE
from worker.logs import setup_logging
from worker.settings import Settings, describe_settings
from worker.signals import StopSignals

logger = logging.getLogger(__name__)

# --help descriptions: common.prose puts each paragraph on one line.
RUN = """
Consume the trace and assessment topics, upsert events into the store in one transaction per batch,
and commit Kafka offsets only after that transaction. Malformed records are dead-lettered to
<topic>.dlq and the dead_letters table. With TRACE_CURATOR_SOURCE=mlflow, poll the MLflow server
instead (new traces oldest first from a stored watermark, and rescans for late assessments).
SIGTERM/SIGINT drain the batch in hand and exit.
"""
RUN_EPILOG = """Settings (environment variables; YAML keys are the lower-case names without the \
prefix):
"""
BACKFILL = """
Read the traces that started in a window, with their assessments, from the MLflow server
(TRACE_CURATOR_MLFLOW_TRACKING_URI or MLFLOW_TRACKING_URI) through the worker's path: decode,
rules, metrics, store, in one transaction per page. Traces already stored are skipped. Progress
(traces, rate, share of the window, ETA) goes to stderr. Ctrl+C stops after the page in hand; the
same command then resumes from there.
"""
BACKFILL_EPILOG = """Examples:
  trace-curator backfill --since 7d
  trace-curator backfill --since 2026-11-01 --until 2026-11-15 --experiment 3"""


def register(sub: common.Subcommands[argparse.ArgumentParser],
             parent: argparse.ArgumentParser) -> None:
    run = common.command(sub, "run", cmd_run, parent, formatter_class=common.HELP_FORMAT,
                         help="run the long-lived worker", description=common.prose(RUN),
                         epilog=RUN_EPILOG + describe_settings())
    run.add_argument("--exit-when-idle", type=float, metavar="SECONDS", default=None,
                     help="stop after this many seconds with nothing to do")
    run.add_argument("--max-records", type=int, metavar="N", default=None,
                     help="stop after about N records (whole batches)")
    bf = common.command(sub, "backfill", cmd_backfill, parent, formatter_class=common.HELP_FORMAT,
                        help="load history from the MLflow server",
                        description=common.prose(BACKFILL), epilog=BACKFILL_EPILOG)
    bf.add_argument("--since", required=True,
                    help="window start: 24h, 7d, 2w, or an ISO time")
    bf.add_argument("--until", default=None, help="window end (default now)")
    bf.add_argument("--experiment", metavar="ID", action="append", default=None,
                    help="experiment id (repeatable; default: TRACE_CURATOR_MLFLOW_EXPERIMENT_IDS, "
                         "or every active experiment)")


def _store(settings: Settings) -> Engine:
    """The worker's store: created if need be, schema current, metrics keyed as configured."""
    engine = common.store_engine(settings)
    common.ensure_schema(settings, engine)
    common.check_metrics(settings, engine)
    return engine


def cmd_run(args: argparse.Namespace) -> int:
    settings = common.settings_of(args)
    setup_logging(settings.log_level, settings.log_format)
    logger.info("starting settings=%s", settings.masked())
    engine = _store(settings)
    worker = _start_worker(settings, engine)
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


def _start_worker(settings: Settings, engine: Engine) -> Any:
    """The worker over the configured source; a ConfigError (an invalid rules file) goes up."""
    from worker.app import create_worker

    try:
        return create_worker(settings, engine)
    except ConfigError:
        raise
    except STORE_GONE as exc:  # the store went away after the start-up checks
        raise common.unreachable(settings, exc) from None
    except TransientError as exc:  # the source did not answer (Kafka: within the bootstrap bound)
        raise common.CliError(_source_unreachable(settings, str(exc)),
                              EXIT_UNAVAILABLE) from None
    except Exception as exc:  # any other kafka error while connecting
        if settings.source == "mlflow":
            raise common.CliError(f"the worker could not start: {exc!r}",
                                  EXIT_UNAVAILABLE) from None
        raise common.CliError(_source_unreachable(settings, repr(exc)),
                              EXIT_UNAVAILABLE) from None


def _source_unreachable(settings: Settings, detail: str) -> str:
    """What could not be reached, and the setting that names it: the MLflow tracking server
    (URI masked) for source=mlflow, else the Kafka brokers."""
    if settings.source == "mlflow":
        return (f"the MLflow tracking server at {redact(settings.mlflow_tracking_uri or '')} is "
                f"unreachable ({detail}): check TRACE_CURATOR_MLFLOW_TRACKING_URI")
    return (f"Kafka at {settings.kafka_bootstrap_servers} is unreachable ({detail}): check "
            "TRACE_CURATOR_KAFKA_BOOTSTRAP_SERVERS, or set TRACE_CURATOR_SOURCE=mlflow to poll "
            "an MLflow server instead")


def _start_http(settings: Settings, worker: Any, engine: Engine) -> Any:
    """/metrics, /healthz, /readyz and the dashboard (/, /api/report) beside the worker, unless
    TRACE_CURATOR_HTTP_PORT=0. A port that cannot be bound is a ConfigError."""
    if settings.http_port == 0:
        return None
    from worker.serve.dashboard import dashboard_routes
    from worker.serve.server import HttpServer
    from worker.serve.telemetry import routes

    served = {**routes(worker, engine),
              **dashboard_routes(engine, minute_retention_days=settings.retention_minute_days)}
    try:
        return HttpServer(settings.http_host, settings.http_port, served).start()
    except ConfigError:
        worker.close()
        raise


def _tune_gc() -> None:
    """The hot path allocates many short-lived objects per event and keeps none: move what
    start-up built out of the collector's way, and collect the young generation less often.
    In bench/ingest.py this took SQLite from about 13.2k to 15.4k events/s.

    The loop and the OpenTelemetry assembler thread hand the interpreter over at every database
    round trip: a 1 ms switch interval (instead of 5) lets the one whose result came back run
    sooner (bench/ingest.py --format otlp, alternating runs: 33.7-36.0k against 32.3-32.8k
    spans/s on PostgreSQL)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    sys.setswitchinterval(0.001)


def cmd_backfill(args: argparse.Namespace) -> int:
    from worker.app import create_mlflow_worker, poll_config
    from worker.cli.backfill import ProgressReporter

    # A backfill streams page by page: its window needs no cap, only the 1970-9999 bounds.
    since_ms, until_ms = common.window(args, common.now_ms(), max_days=None)
    settings = common.settings_of(args)
    if not settings.mlflow_tracking_uri:
        raise common.CliError("backfill reads an MLflow server: set "
                              "TRACE_CURATOR_MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_URI)",
                              EXIT_CONFIG)
    setup_logging(settings.log_level, settings.log_format)
    engine = _store(settings)
    experiments = tuple(args.experiment) if args.experiment else None
    config = poll_config(settings, backfill=(since_ms, until_ms), experiments=experiments)
    worker = create_mlflow_worker(settings, engine, config)
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
