"""The ``trace-curator`` command line (also ``python -m worker``).

Start with ``main``: the parser, its one table of command modules and the one mapping of errors
to exit codes. One module per command group: ``run`` (run, backfill; progress in ``backfill``),
``db`` (db upgrade, check), ``report`` (report, metrics rebuild), ``rules`` (rules explain, rules
test), ``datasets`` (curate, datasets list/show/export); ``demo`` lives in ``worker.demo``. What
they share is in ``common``; files they write go through ``output_files``. Commands import what
they need when they run, so ``--help`` and ``check`` start without loading MLflow.
"""

from worker.cli.main import main

__all__ = ["main"]
