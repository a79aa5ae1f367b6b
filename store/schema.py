"""Schema versions: apply Alembic migrations, and refuse to run on an out-of-date schema.

``upgrade`` is what ``trace-curator db upgrade`` runs. ``ensure_current`` is called at start-up by
``run`` and ``check``; it raises ``SchemaOutOfDateError`` with the command that fixes it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from consumers.errors import SchemaOutOfDateError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Apply migrations up to ``revision``. Returns (revision before, revision after)."""
    before = current_revision(engine)
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return before, current_revision(engine) or ""


def ensure_current(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    what = "has no trace-curator schema" if current is None else (
        f"is at schema revision {current}, this version needs {head}")
    raise SchemaOutOfDateError(
        f"the store {engine.url.render_as_string(hide_password=True)} {what}. "
        "Run `trace-curator db upgrade` (with the same settings) and start again.")
