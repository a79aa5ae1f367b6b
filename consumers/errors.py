"""The error taxonomy shared by every layer (in the lowest package, so nothing imports upward).

- ``DecodeError``: poison input. The record is dead-lettered at once and never retried.
- ``TransientError``: a database disconnect, an MLflow 5xx, a broker hiccup. Retried with bounded,
  jittered exponential backoff; offsets are not committed while it lasts.
- ``ConfigError``: bad settings or files, found at start-up; the CLI exits with ``EXIT_CONFIG``.
Anything else is a bug: the worker stops and commits nothing for the batch in hand.
"""

from __future__ import annotations


class CuratorError(Exception):
    """Root of every error trace-curator raises on purpose."""


class DecodeError(CuratorError):
    """A record that cannot be decoded or validated. ``field`` names the offending field, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class TransientError(CuratorError):
    """A failure of a dependency that is expected to go away; the operation is retried."""


class ConfigError(CuratorError):
    """Invalid settings, rules or dataset files. Raised at start-up, never mid-run."""


class SchemaOutOfDateError(CuratorError):
    """The store's schema is older (or newer) than this code; run ``trace-curator db upgrade``."""
