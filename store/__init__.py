"""Persistence: SQLAlchemy models, Alembic migrations, the engine, idempotent upserts, metrics.

Start with ``models`` (the schema), ``upserts`` (how a batch is written, exactly once in effect)
and ``writer`` (the transaction and its error mapping). ``rollup`` is the pure metric maths
(``sketch`` the latency sketch, ``sketch_column`` its stored form),
``metrics`` the buckets in SQL, ``retention`` the pruning, ``report`` the ``summary`` API,
``frames`` a pandas view (``traces_frame``); ``datasets`` is the curator's ledger. ``engine`` is
the one engine factory, ``dialect`` holds the SQLite/PostgreSQL differences and the parameter
limits, ``locks`` every advisory lock, ``schema`` applies migrations.
"""

from store.engine import make_engine
from store.report import summary
from store.schema import ensure_current, upgrade
from store.upserts import Batch, apply_batch
from store.writer import SqlWriter

__all__ = ["Batch", "SqlWriter", "apply_batch", "ensure_current", "make_engine", "summary",
           "upgrade"]
