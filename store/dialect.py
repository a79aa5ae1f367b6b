"""Dialect differences, in one place: upsert syntax, the bulk path and the parameter limits.

Both SQLite and PostgreSQL speak ``INSERT ... ON CONFLICT``. On PostgreSQL, batches go through
``COPY`` into a per-connection temporary staging table (``ON COMMIT DELETE ROWS``) and one
``INSERT ... SELECT ... ON CONFLICT``: about 2-3x faster than executemany, with the same result;
a few rows go as one multi-row ``INSERT ... VALUES``.
On SQLite, the DBAPI's own executemany on tuples. Rows the caller knows to be new go through
``insert_new`` / ``inserting_new``: on PostgreSQL a plain COPY into the table in a savepoint,
which the upsert replaces should a key exist after all (same result either way), and which the
server can work on while the caller computes. The hot path's reads go through ``select_in``.
Long id and key lists go to the database in ``chunks``, so no statement exceeds SQLite's
bound-parameter limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import orjson
from sqlalchemy import Connection, String, Table, any_, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY

IN_CHUNK = 2000  # ids per ``in_ids`` list
# Up to this many values, a PostgreSQL upsert of ``few`` rows is one multi-row INSERT ... VALUES:
# for a few rows it beats the staging table's statements.
PG_VALUES_PARAMS = 2000
KEY_CHUNK = 500  # composite keys per ``tuple_(...).in_`` list (a few parameters each)

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``, for IN lists under the limit."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def in_ids(conn: Connection, column: Any, ids: Sequence[str]) -> Any:
    """``column IN ids``. On PostgreSQL as ``= ANY(array)``: one parameter instead of thousands
    (psycopg's query splitting of a 2,000-placeholder IN list was a visible hot-path cost)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam("ids", list(ids), type_=ARRAY(String)))
    return column.in_(list(ids))


def select_in(conn: Connection, sql: str, ids: Sequence[str],
              json_columns: Sequence[int] = ()) -> list[tuple[Any, ...]]:
    """The rows of ``sql``, a SELECT whose ``{ids}`` stands for ``IN ids`` after a column, run
    through the DBAPI: the hot path's reads of up to a batch of ids each, without SQLAlchemy's
    per-execution rendering of a 2,000-item IN list. On PostgreSQL one ``= ANY(array)`` of a
    JSON parameter; on SQLite ``IN (?, ...)`` in ``chunks`` (one cached statement per chunk
    size).
    The ``json_columns`` (indexes) come back decoded, as SQLAlchemy's JSON type gives them."""
    rows = _run_in(conn, sql, ids, fetch=True)
    if json_columns and conn.dialect.name != "postgresql":  # psycopg decodes JSON itself
        rows = [tuple(json_value(v) if i in json_columns else v for i, v in enumerate(r))
                for r in rows]
    return rows


def execute_in(conn: Connection, sql: str, ids: Sequence[str]) -> None:
    """Run ``sql``, a statement (an UPDATE, a DELETE) whose ``{ids}`` stands for ``IN ids``
    after a column, through the DBAPI as ``select_in`` runs a SELECT."""
    _run_in(conn, sql, ids, fetch=False)


def _run_in(conn: Connection, sql: str, ids: Sequence[str], *,
            fetch: bool) -> list[tuple[Any, ...]]:
    if not ids:
        return []
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cur = dbapi.cursor()
    rows: list[tuple[Any, ...]] = []
    try:
        if conn.dialect.name == "postgresql":
            # The ids go as one JSON array: orjson writes it at C speed, where psycopg's list
            # dumper escapes element by element in Python (about half the cost of a read
            # that finds nothing). The array from a subquery keeps the index scan.
            cur.execute(sql.replace("{ids}", _PG_IDS), (orjson.dumps(list(ids)).decode(),))
            return list(cur.fetchall()) if fetch else rows
        for chunk in chunks(ids):
            cur.execute(sql.replace("{ids}", f"IN ({', '.join('?' * len(chunk))})"), chunk)
            if fetch:
                rows.extend(cur.fetchall())
    finally:
        cur.close()
    return rows


_PG_IDS = "= ANY(ARRAY(SELECT json_array_elements_text(CAST(%s AS json))))"


def json_value(v: Any) -> Any:
    """A JSON column's value as read from SQLite: text decoded; a number is one already (the
    column has NUMERIC affinity), and NULL stays None."""
    return orjson.loads(v) if isinstance(v, str | bytes) else v


def insert(conn: Connection, table: Table) -> Any:
    """A dialect ``insert`` that has ``on_conflict_do_update`` / ``on_conflict_do_nothing``."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {name!r}: use SQLite or PostgreSQL")


def upsert_newer(conn: Connection, table: Table, key: str, order_col: str,
                 columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows; on a key conflict, update only when ``order_col`` is strictly greater."""
    bulk_upsert(conn, table, (key,), columns, rows, newer_col=order_col)


def bulk_upsert(conn: Connection, table: Table, key: Sequence[str], columns: Sequence[str],
                rows: Sequence[Sequence[Any]], *, newer_col: str | None = None,
                on_conflict: str = "update", few: bool = False) -> None:
    """Insert rows; on a conflict of ``key``, update (only where ``newer_col`` grows, if given)
    or, with ``on_conflict="nothing"``, keep the stored row. ``few``: the caller expects a few
    rows of its own making; on PostgreSQL, up to ``PG_VALUES_PARAMS`` values go as one
    multi-row ``INSERT ... VALUES``.

    ``rows`` are tuples in ``columns`` order, with unique keys and JSON columns already encoded
    as text. Both paths talk to the DBAPI directly: SQLAlchemy's per-row parameter processing
    was the largest cost of the hot path.
    """
    if not rows:
        return
    col_list = column_list(columns)
    keys = column_list(key)
    if on_conflict == "nothing":
        conflict = f"ON CONFLICT ({keys}) DO NOTHING"
    else:
        conflict = (f"ON CONFLICT ({keys}) DO UPDATE SET "
                    + ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in key))
        if newer_col is not None:
            conflict += f' WHERE {table.name}."{newer_col}" < excluded."{newer_col}"'
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    cur = dbapi.cursor()
    try:
        name = conn.dialect.name
        if name == "postgresql" and few and len(rows) * len(columns) <= PG_VALUES_PARAMS:
            # A few rows (a batch's metric buckets): one statement, no staging table. Not for
            # event rows: COPY refuses an int beyond int64 in the client, which names the
            # field (``store.writer``); a parameter would reach the server as a numeric.
            row = f"({', '.join(['%s'] * len(columns))})"
            cur.execute(f"INSERT INTO {table.name} ({col_list}) VALUES "
                        f"{', '.join([row] * len(rows))} {conflict}",
                        [v for r in rows for v in r])
        elif name == "postgresql":
            stage = _pg_stage(cur, table)
            with cur.copy(f"COPY {stage} ({col_list}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
            # Emptied as it is read: the next batch in this transaction starts empty.
            cur.execute(f"WITH staged AS (DELETE FROM {stage} RETURNING {col_list}) "
                        f"INSERT INTO {table.name} ({col_list}) "
                        f"SELECT {col_list} FROM staged {conflict}")
        elif name == "sqlite":
            marks = ", ".join("?" * len(columns))
            cur.executemany(f"INSERT INTO {table.name} ({col_list}) VALUES ({marks}) {conflict}",
                            rows)
        else:
            raise NotImplementedError(f"unsupported database dialect {name!r}")
    finally:
        cur.close()


class NewRows(NamedTuple):
    """Rows for ``inserting_new``: a ``bulk_upsert``'s arguments."""

    table: Table
    key: Sequence[str]
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    newer_col: str | None = None
    on_conflict: str = "update"

    def upsert(self, conn: Connection) -> None:
        bulk_upsert(conn, self.table, self.key, self.columns, self.rows,
                    newer_col=self.newer_col, on_conflict=self.on_conflict)


def insert_new(conn: Connection, table: Table, key: Sequence[str], columns: Sequence[str],
               rows: Sequence[Sequence[Any]], *, newer_col: str | None = None,
               on_conflict: str = "update") -> None:
    """``bulk_upsert`` of rows whose keys the caller found absent (say, traces its read did not
    find, under the trace locks): the same result, cheaper for new rows (``inserting_new``)."""
    with inserting_new(conn, NewRows(table, key, columns, rows, newer_col, on_conflict)):
        pass


@contextlib.contextmanager
def inserting_new(conn: Connection, *parts: NewRows) -> Iterator[None]:
    """``insert_new`` of each part around the body of the ``with``, which runs while
    PostgreSQL takes the last part in: the body must not use the connection (it computes; the
    server works meanwhile).

    On PostgreSQL the rows are COPYed straight into their tables inside one savepoint, with no
    staging table and no conflict check: plain inserts. The last COPY is sent before the body
    and completed after it. Should a key exist after all, a COPY fails on the unique index,
    the savepoint is rolled back and every part goes through ``bulk_upsert``, so a wrong guess
    costs time, never a different result. On SQLite the parts go through ``bulk_upsert``
    first (its conflict clause costs next to nothing there), then the body runs.
    """
    parts = tuple(p for p in parts if p.rows)
    if not parts or conn.dialect.name != "postgresql":
        for part in parts:
            part.upsert(conn)
        yield
        return
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    integrity_error: Any = conn.dialect.loaded_dbapi.IntegrityError
    cur = dbapi.cursor()
    ran = in_body = fallback = False
    try:
        cur.execute("SAVEPOINT tc_insert_new")
        try:
            for i, part in enumerate(parts):
                with cur.copy(f"COPY {part.table.name} ({column_list(part.columns)}) "
                              "FROM STDIN") as copy:
                    for r in part.rows:
                        copy.write_row(r)
                    if i == len(parts) - 1:
                        in_body = ran = True
                        yield
                        in_body = False
        except integrity_error as exc:
            if in_body or getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
                raise
            cur.execute("ROLLBACK TO SAVEPOINT tc_insert_new")
            fallback = True
        cur.execute("RELEASE SAVEPOINT tc_insert_new")
    finally:
        cur.close()
    if fallback:
        for part in parts:
            part.upsert(conn)
    if not ran:
        yield


_UNIQUE_VIOLATION = "23505"


def column_list(columns: Sequence[str]) -> str:
    """Column names quoted for SQL text written by hand (the DBAPI paths)."""
    return ", ".join(f'"{c}"' for c in columns)


def _pg_stage(cur: Any, table: Table) -> str:
    """The session's temporary staging table for COPY. Created (if missing) on every call: a
    rolled-back transaction also rolls back its creation, so no flag could remember it."""
    stage = f"_stage_{table.name}"
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
                f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    return stage
