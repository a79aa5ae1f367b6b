"""``--since``/``--until`` values: a duration back from now (``30m``, ``24h``, ``7d``, ``2w``) or an
ISO-8601 time (``2026-11-27``, ``2026-11-27T08:00:00Z``; no zone means UTC). Pure: now is given."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from consumers.errors import ConfigError

_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_time_ms(text: str, now_ms: int) -> int:
    m = _DURATION.match(text)
    if m:
        return now_ms - int(float(m.group(1)) * _UNITS_MS[m.group(2)])
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{text!r} is neither a duration (30m, 24h, 7d, 2w) nor an ISO-8601 "
                          "time (2026-11-27 or 2026-11-27T08:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def parse_window(since: str, until: str | None, now_ms: int,
                 names: tuple[str, str] = ("since", "until")) -> tuple[int, int]:
    """``since`` and ``until`` (default now) as epoch ms; ConfigError unless until > since.
    ``names``: how the caller's user calls the two (``--since``, or a query parameter)."""
    since_ms = parse_time_ms(since, now_ms)
    until_ms = parse_time_ms(until, now_ms) if until else now_ms
    if until_ms <= since_ms:
        raise ConfigError(f"{names[1]} ({until}) must be after {names[0]} ({since})")
    return since_ms, until_ms
