"""The ``trace-curator`` command line (also ``python -m worker``): the parser and the exit codes.

``COMMANDS`` is the one table of command modules, in the order of ``--help``; each declares its
commands with ``register(subparsers, parent)``. ``parent`` carries ``--config FILE`` for every
command that reads settings; its default is SUPPRESS, so ``trace-curator --config F CMD`` and
``trace-curator CMD --config F`` both work (the latter wins). ``main`` maps errors to exit codes
in one place (``EXIT_CODES``; a CliError carries its own) and prints ``trace-curator: error: ...``
with credentials masked. Building the parser imports no MLflow: commands import what they need
when they run, so ``--help`` and ``check`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from consumers.errors import ConfigError, SchemaOutOfDateError
from consumers.redact import redact
from worker.cli import datasets, db, report, rules, run
from worker.cli.common import HELP_FORMAT, CliError
from worker.demo import runner as demo
from worker.exit_codes import EXIT_CONFIG, EXIT_SCHEMA

COMMANDS = (run, db, rules, report, datasets, demo)
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (ConfigError, EXIT_CONFIG),  # bad settings, rules, datasets or output files
    (SchemaOutOfDateError, EXIT_SCHEMA),  # run `trace-curator db upgrade`
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trace-curator", formatter_class=HELP_FORMAT,
        description="Ingest MLflow 3 traces and assessments from Kafka into a SQL store, "
                    "exactly once in effect.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad settings or usage, 3 store or broker "
               "unreachable, 4 schema out of date (run `trace-curator db upgrade`).")
    p.add_argument("--config", metavar="FILE",
                   help="YAML settings file (keys as below, without the prefix)")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML settings file")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub, config)
    return p


def exit_code(exc: Exception) -> int | None:
    """The exit code of an error ``main`` reports in one line, or None for a bug."""
    if isinstance(exc, CliError):
        return exc.code
    return next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except Exception as exc:
        failed = exit_code(exc)
        if failed is None:
            raise
        print(f"trace-curator: error: {redact(str(exc))}", file=sys.stderr)
        return failed
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
