"""The Alembic migrations create exactly what the models declare, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from store.engine import make_engine
from store.models import Base

pytestmark = pytest.mark.integration


def test_migrations_match_the_models(store_url: str) -> None:
    engine = make_engine(store_url)  # the fixture applied every migration
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
