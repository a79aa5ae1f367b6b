"""The ``trace-curator`` command line (also ``python -m worker``).

Start with ``main`` (the parser and the exit codes). Commands import what they need when they
run, so ``--help`` and ``check`` start without loading MLflow.
"""

from worker.cli.main import main

__all__ = ["main"]
