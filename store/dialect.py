"""Dialect differences, in one place: upsert syntax and the bulk path.

Both SQLite and PostgreSQL speak ``INSERT ... ON CONFLICT``. On PostgreSQL, large batches go
through ``COPY`` into a per-connection temporary staging table (``ON COMMIT DELETE ROWS``) and one
``INSERT ... SELECT ... ON CONFLICT``: about 2-3x faster than executemany, with the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

COPY_MIN_ROWS = 200  # below this, COPY's fixed cost is not worth it


def insert(conn: Connection, table: Table) -> Any:
    """A dialect ``insert`` that has ``on_conflict_do_update`` / ``on_conflict_do_nothing``."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {name!r}: use SQLite or PostgreSQL")


def upsert_newer(conn: Connection, table: Table, key: str, order_col: str,
                 rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows; on a key conflict, update only when ``order_col`` is strictly greater.

    ``rows`` must have unique keys and the same columns each.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql" and len(rows) >= COPY_MIN_ROWS:
        _pg_copy_upsert(conn, table, key, order_col, rows)
        return
    stmt = insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[key], set_={c: stmt.excluded[c] for c in rows[0] if c != key},
        where=table.c[order_col] < stmt.excluded[order_col])
    conn.execute(stmt, list(rows))


def _pg_copy_upsert(conn: Connection, table: Table, key: str, order_col: str,
                    rows: Sequence[dict[str, Any]]) -> None:
    cols = list(rows[0])
    stage = f"_stage_{table.name}"
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    info = conn.connection.info
    cur = dbapi.cursor()
    if stage not in info:
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
                    f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        info[stage] = True
    json_cols = {c for c in cols if isinstance(table.c[c].type, JSON)}
    col_list = ", ".join(f'"{c}"' for c in cols)
    with cur.copy(f"COPY {stage} ({col_list}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row([orjson.dumps(r[c]).decode() if c in json_cols and r[c] is not None
                            else r[c] for c in cols])
    updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in cols if c != key)
    cur.execute(
        f"INSERT INTO {table.name} ({col_list}) SELECT {col_list} FROM {stage} "
        f'ON CONFLICT ("{key}") DO UPDATE SET {updates} '
        f'WHERE {table.name}."{order_col}" < EXCLUDED."{order_col}"')
    cur.execute(f"DELETE FROM {stage}")  # a later batch in the same transaction starts empty
    cur.close()
