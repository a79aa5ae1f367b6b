"""``db upgrade`` (create or migrate the store schema) and ``check`` (the healthcheck).

``db upgrade`` may create a SQLite store and is safe to run again. ``check`` creates nothing:
exit 0 when the store is reachable and current, EXIT_UNAVAILABLE when it is unreachable or its
SQLite file does not exist, EXIT_SCHEMA when its schema is out of date; it imports no MLflow, so
a container healthcheck stays fast.
"""

from __future__ import annotations

import argparse

from store import schema
from store.engine import STORE_GONE
from worker.cli import common
from worker.exit_codes import EXIT_OK
from worker.logs import setup_logging

# --help descriptions: common.prose puts each paragraph on one line.
UPGRADE = """
Create or migrate the store schema (Alembic). Safe to run again; run it after every upgrade of
trace-curator.
"""
CHECK = """
Exit 0 when the store is reachable and its schema is current, and print its URL (password masked);
3 when it is unreachable or its SQLite file does not exist (never created here), 4 when its schema
is out of date. For container healthchecks.
"""


def register(sub: common.Subcommands[argparse.ArgumentParser],
             parent: argparse.ArgumentParser) -> None:
    db = common.group(sub, "db", "database schema commands")
    common.command(db, "upgrade", cmd_db_upgrade, parent,
                   help="apply schema migrations to the store", description=common.prose(UPGRADE))
    common.command(sub, "check", cmd_check, parent,
                   help="health check: exit 0 when the store is healthy",
                   description=common.prose(CHECK))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = common.settings_of(args)
    setup_logging(settings.log_level, settings.log_format)
    engine = common.store_engine(settings)
    try:
        before, after = schema.upgrade(engine)
    except STORE_GONE as exc:
        raise common.unreachable(settings, exc) from None
    url = settings.masked()["store_url"]
    if before == after:
        print(f"store {url} is already at schema revision {after}")
    else:
        print(f"store {url} upgraded from {before or 'empty'} to {after}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from store import outbox

    settings, engine = common.current_store(args)
    with engine.connect() as conn:
        lag = outbox.stats(conn)
    age = f", oldest {(common.now_ms() - lag.oldest_created_ms) / 1000:.0f}s" \
        if lag.oldest_created_ms else ""
    print(f"ok: store {settings.masked()['store_url']} reachable, schema at "
          f"{schema.head_revision()}; tag outbox {lag.total} row(s), "
          f"{lag.waiting_for_trace} waiting for traces MLflow does not know{age}")
    return EXIT_OK
