"""What every command shares: the settings, the store, the ``--since``/``--until`` window, the
output format, and ``CliError`` (a message and its exit code).

Only ``db upgrade``, ``run`` and ``backfill`` may create a SQLite store (``store_engine``); every
other command goes through ``current_store``, which refuses a store file that does not exist (a
mistyped setting must not leave an empty store behind). Errors about the store name its URL,
password masked. ConfigError and SchemaOutOfDateError are left to ``main``, which maps them to
their exit codes. Nothing here imports MLflow.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Engine

from store import schema
from store.engine import STORE_GONE
from worker.exit_codes import EXIT_UNAVAILABLE
from worker.settings import Settings, load_settings
from worker.timeparse import MAX_WINDOW_DAYS, parse_window

HELP_FORMAT = argparse.RawDescriptionHelpFormatter  # descriptions and epilogs keep their lines
Subcommands = argparse._SubParsersAction  # what add_subparsers returns


def prose(text: str) -> str:
    """A help text written as a block of lines: each paragraph on one line (argparse rewraps it,
    or with HELP_FORMAT prints it as it is), paragraphs apart by a blank line."""
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


def command(sub: Subcommands[argparse.ArgumentParser], name: str,
            func: Callable[[argparse.Namespace], int], parent: argparse.ArgumentParser,
            **kwargs: Any) -> argparse.ArgumentParser:
    """A command that reads settings: ``--config`` from ``parent``; ``main`` runs ``func``."""
    p = sub.add_parser(name, parents=[parent], **kwargs)
    p.set_defaults(func=func)
    return p


def group(sub: Subcommands[argparse.ArgumentParser], name: str,
          summary: str) -> Subcommands[argparse.ArgumentParser]:
    """A command group (``db``, ``rules``...) whose subcommands go under ``<name>_command``."""
    return sub.add_parser(name, help=summary).add_subparsers(
        dest=f"{name}_command", required=True, metavar="COMMAND")


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def now_ms() -> int:
    return int(time.time() * 1000)


def settings_of(args: argparse.Namespace) -> Settings:
    """``--config FILE`` (absent: none) plus the ``TRACE_CURATOR_*`` variables."""
    return load_settings(getattr(args, "config", None))


def store_engine(settings: Settings, *, create: bool = True) -> Engine:
    """The store's engine. ``create=False``: a SQLite file that does not exist is a CliError
    (EXIT_UNAVAILABLE) instead of a new, empty store."""
    # Not worker.app: it imports the rules, hence MLflow (seconds), which `check` does not need.
    from store.engine import make_engine, sqlite_file

    if not create:
        path = sqlite_file(settings.store_url_plain)
        if path is not None and not path.exists():
            raise CliError(
                f"no store at {store_url(settings)} (the file {path} does not exist): set "
                "TRACE_CURATOR_STORE_URL to your store, or run `trace-curator db upgrade` to "
                "create a new one there", EXIT_UNAVAILABLE)
    return make_engine(settings.store_url_plain, pool_size=settings.db_pool_size,
                       connect_timeout_s=settings.db_connect_timeout_s)


def store_url(settings: Settings) -> str:
    """The store URL for messages, password masked."""
    return str(settings.masked()["store_url"])


def unreachable(settings: Settings, exc: BaseException) -> CliError:
    detail = getattr(exc, "orig", None) or exc
    return CliError(f"the store {store_url(settings)} is unreachable: "
                    f"{str(detail).strip()[:300]}", EXIT_UNAVAILABLE)


def ensure_schema(settings: Settings, engine: Engine) -> None:
    """SchemaOutOfDateError when the schema is not current; a CliError when unreachable."""
    try:
        schema.ensure_current(engine)
    except STORE_GONE as exc:
        raise unreachable(settings, exc) from None


def current_store(args: argparse.Namespace) -> tuple[Settings, Engine]:
    """Settings and an engine on an existing, reachable store with a current schema, or an
    error. Creates nothing."""
    settings = settings_of(args)
    store = store_engine(settings, create=False)
    ensure_schema(settings, store)
    return settings, store


def check_metrics(settings: Settings, engine: Engine) -> None:
    """Buckets are keyed by one dimension tag; refuse to mix in another (ConfigError). A store
    that goes away now, after the schema check, is a CliError (EXIT_UNAVAILABLE) like before it."""
    from store.metrics import check_dimension_tag
    from worker.app import metrics_config

    config = metrics_config(settings)
    if config is None:
        return
    try:
        with engine.begin() as conn:
            check_dimension_tag(conn, config)
    except STORE_GONE as exc:
        raise unreachable(settings, exc) from None


def window(args: argparse.Namespace, at_ms: int,
           max_days: int | None = MAX_WINDOW_DAYS) -> tuple[int, int]:
    """``--since`` / ``--until`` as epoch ms, or a ConfigError that says what is wrong."""
    return parse_window(args.since, args.until, at_ms, ("--since", "--until"), max_days=max_days)


def output_format(args: argparse.Namespace, by_suffix: Mapping[str, str], default: str) -> str:
    """``--format``, or the one ``--output``'s extension names; the output path is checked
    now, before any work (missing folder, a directory, a link, an existing file)."""
    from worker.cli.output_files import check_target, format_for

    fmt = format_for(args.output, args.format, by_suffix, default)
    if args.output:
        check_target(args.output, force=args.force)
    return fmt
