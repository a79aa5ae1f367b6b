"""The store's transactional edge: one batch, one transaction, errors mapped to the taxonomy.

Disconnects, timeouts and lock waits become ``TransientError`` (the worker retries the whole batch;
upserts make that safe). A row the database refuses (a value it cannot hold) becomes
``StoreRejectedError``, a ``DecodeError``: the worker then isolates the offending event and
dead-letters it, so one bad event never blocks a partition.
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from consumers.errors import DecodeError, TransientError
from store.upserts import Batch, BatchResult, apply_batch


class StoreRejectedError(DecodeError):
    """The database refused a row of this batch (data error or constraint violation)."""


def write_batch(engine: Engine, batch: Batch, now_ms: int) -> BatchResult:
    try:
        with engine.begin() as conn:
            return apply_batch(conn, batch, now_ms)
    except (sa_exc.DataError, sa_exc.IntegrityError) as exc:
        raise StoreRejectedError(f"the store refused the row: {exc.orig!r}"[:1000],
                                 "store") from exc
    except sa_exc.DBAPIError as exc:
        # OperationalError, InterfaceError, invalidated connections: the database went away.
        # Anything else (ProgrammingError: a missing table, bad SQL) is a bug and propagates.
        if not (exc.connection_invalidated
                or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)):
            raise
        raise TransientError(f"store unavailable: {type(exc.orig).__name__}: "
                             f"{str(exc.orig).strip()[:300]}") from exc
    except sa_exc.TimeoutError as exc:  # connection pool exhausted
        raise TransientError(f"store pool timeout: {exc}") from exc
