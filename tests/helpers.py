"""Small helpers shared by the tests and the benchmarks (plain functions, no pytest)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psycopg
from sqlalchemy import Engine, select

from store.metrics import BUCKETS


@contextlib.contextmanager
def fresh_pg_database(admin_dsn: str, prefix: str = "tc_") -> Iterator[str]:
    """A new, empty PostgreSQL database next to ``admin_dsn``'s, dropped (forcibly) afterwards."""
    name = prefix + uuid.uuid4().hex[:16]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str,
               every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def bucket_snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every bucket row, JSON decoded, without the write time: comparable across stores."""
    out = {}
    with engine.connect() as conn:
        for res, table in BUCKETS.items():
            cols = [c for c in table.c if c.name != "updated_ms"]
            rows = conn.execute(select(*cols).order_by(*table.primary_key.columns)).all()
            out[res] = [tuple(orjson.dumps(v).decode() if isinstance(v, dict) else v
                              for v in r) for r in rows]
    return out
