"""The one engine factory. SQLite gets its pragmas here and nowhere else.

SQLite (the embedded default) runs in WAL mode with a busy timeout and foreign keys on; it
supports one worker. PostgreSQL (``postgresql+psycopg://``) is for production and several
workers. JSON columns are encoded with orjson, about 10x faster than ``json.dumps``.
Connecting to a SQLite URL creates its file: commands that only read check ``sqlite_file``
first, so a mistyped setting never leaves an empty store behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_MS = 10_000

# What a call raises when the store went away (a refused or dropped connection, a database
# shutting down, a pool wait that ran out): an outage to wait out, never a crash.
STORE_GONE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def _json_dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _json_loads(value: Any) -> Any:
    # A SQLite column declared JSON has NUMERIC affinity: a stored '0.25' comes back as 0.25.
    if isinstance(value, str | bytes):
        return orjson.loads(value)
    return value


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3, the driver we install."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (relative to the current folder, as SQLite opens it),
    or None for in-memory SQLite and other backends."""
    u = make_url(normalize_url(url))
    if u.get_backend_name() != "sqlite":
        return None
    database = u.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None  # in memory, or a URI filename (SQLite's own mode= decides)
    return Path(database).absolute()


def make_engine(url: str, *, pool_size: int = 5, connect_timeout_s: int = 10) -> Engine:
    url = normalize_url(url)
    u = make_url(url)
    kwargs: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": _json_loads}
    if u.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    elif u.get_backend_name() == "postgresql":
        kwargs.update(pool_size=pool_size, pool_pre_ping=True,
                      connect_args={"connect_timeout": connect_timeout_s})
    engine = create_engine(url, **kwargs)
    if u.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # A new store's pages hold a few trace rows each (a row is ~1-5 KB with its request and
    # response) rather than one: ~7% faster ingest. Set before WAL mode; an existing store
    # keeps its own page size (this is then a no-op).
    cur.execute("PRAGMA page_size=16384")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cur.close()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
