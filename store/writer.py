"""The store's transactional edge: one batch, one transaction, errors mapped to the taxonomy.

Disconnects, timeouts and lock waits become ``TransientError`` (the worker retries the whole batch;
upserts make that safe). A row the database refuses (a value it cannot hold, a constraint) becomes
``StoreRejectedError``, a ``DecodeError``: the worker then isolates the offending event and
dead-letters it, so one bad event never blocks a partition. Anything else (a missing table, bad
SQL) is a bug and propagates. The bulk path talks to the DBAPI directly (PostgreSQL COPY), so
the driver's own PEP 249 exceptions are mapped the same way as SQLAlchemy's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from consumers.errors import DecodeError, TransientError
from store.decisions import Decider
from store.metrics import MetricsConfig
from store.upserts import Batch, BatchResult, apply_batch


class StoreRejectedError(DecodeError):
    """The database refused a row of this batch (data error or constraint violation)."""


def _driver_errors(engine: Engine, *names: str) -> tuple[type[BaseException], ...]:
    dbapi: Any = engine.dialect.loaded_dbapi
    return tuple(getattr(dbapi, n) for n in names if hasattr(dbapi, n))


def write_batch(engine: Engine, batch: Batch, now_ms: int,
                decider: Decider | None = None,
                metrics_config: MetricsConfig | None = None) -> BatchResult:
    refused: tuple[type[BaseException], ...] = (
        sa_exc.DataError, sa_exc.IntegrityError,
        *_driver_errors(engine, "DataError", "IntegrityError"))
    gone: tuple[type[BaseException], ...] = (
        sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
        *_driver_errors(engine, "OperationalError", "InterfaceError"))
    try:
        with engine.begin() as conn:
            return apply_batch(conn, batch, now_ms, decider, metrics_config)
    except refused as exc:
        orig = getattr(exc, "orig", None) or exc
        raise StoreRejectedError(f"the store refused the row: {orig!r}"[:1000], "store") from exc
    except gone as exc:
        orig = getattr(exc, "orig", None) or exc
        raise TransientError(f"store unavailable: {type(orig).__name__}: "
                             f"{str(orig).strip()[:300]}") from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise TransientError(f"store connection lost: {exc.orig!r}"[:400]) from exc
        raise


class SqlWriter:
    """The store port the worker writes through: ``write`` one batch, one transaction."""

    def __init__(self, engine: Engine, decider: Decider | None = None,
                 metrics_config: MetricsConfig | None = None) -> None:
        self.engine = engine
        self.decider = decider
        self.metrics_config = metrics_config

    def write(self, batch: Batch, now_ms: int) -> BatchResult:
        return write_batch(self.engine, batch, now_ms, self.decider, self.metrics_config)

    def close(self) -> None:
        self.engine.dispose()
