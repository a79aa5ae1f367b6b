"""One leader per job across workers: a PostgreSQL session advisory lock (invariant 6,
docs/design.md).

``LeaderLock.ensure()`` takes the lock without waiting, on a connection of its own that it keeps
while it leads; it checks that connection on every call, so a leader whose database session died
stops leading, and another worker's next ``ensure()`` takes over. A SQLite store supports one
worker, which always leads. The lock's key and statements are ``store.locks``'s.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from sqlalchemy import Engine, text

from store import locks

logger = logging.getLogger(__name__)


class LeaderLock:
    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.key = locks.session_key(name)
        self._conn: Any = None

    @property
    def leading(self) -> bool:
        return self.engine.dialect.name != "postgresql" or self._conn is not None

    def ensure(self) -> bool:
        """True while this process leads the job; tries to become the leader if it does not."""
        if self.engine.dialect.name != "postgresql":
            return True
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except Exception:  # the session died, and the lock with it
                logger.warning("lost the %s leader lock (database session ended)", self.name)
                self._drop()
        try:
            conn = self.engine.connect()
        except Exception:
            return False
        try:
            got = locks.try_session_lock(conn, self.key)
            conn.commit()
        except Exception:  # the session died while asking: not leading; the job asks again
            logger.warning("could not take the %s leader lock (database session ended)",
                           self.name)
            _discard(conn)
            return False
        if got:
            self._conn = conn
            logger.info("leading %s", self.name)
            return True
        conn.close()
        return False

    def release(self) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(Exception):  # a dead session has released the lock already
            locks.session_unlock(self._conn, self.key)
            self._conn.commit()
        self._drop()

    def _drop(self) -> None:
        _discard(self._conn)
        self._conn = None


def _discard(conn: Any) -> None:
    """Close ``conn`` without handing its session (which may hold the lock) back to the pool."""
    with contextlib.suppress(Exception):
        conn.invalidate()
        conn.close()
