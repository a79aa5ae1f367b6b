"""The Alembic migrations create exactly what the models declare, on both backends."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from store import schema
from store.engine import make_engine
from store.models import Base

pytestmark = pytest.mark.integration


def test_migrations_match_the_models(store_url: str) -> None:
    engine = make_engine(store_url)  # the fixture applied every migration
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_a_new_sqlite_store_has_16_kib_pages_and_an_existing_one_keeps_its_own(
        tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(old)) as c:  # a store made before: 4 KiB pages
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t (x)")
    new = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    schema.upgrade(new)
    for engine, size in ((new, 16384), (make_engine(f"sqlite:///{old}"), 4096)):
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA page_size").scalar_one() == size
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        finally:
            engine.dispose()
