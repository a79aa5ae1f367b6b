"""``--since``/``--until`` values: a duration back from now (``30m``, ``24h``, ``7d``, ``2w``) or an
ISO-8601 time (``2026-11-27``, ``2026-11-27T08:00:00Z``; no zone means UTC). Pure: now is given.

Invariants: both ends of a window from ``parse_window`` lie in [1970-01-01,
9999-12-31T23:59:59.999Z] as epoch ms, and the window is at most ``MAX_WINDOW_DAYS`` long unless
its caller lifts the cap (the reports, the live page and ``/api/report`` build one entry per
hour, so an unbounded window is an unbounded allocation). Any input, however long or odd, gives
a result or a ConfigError: never an OverflowError.
"""

from __future__ import annotations

import re
from datetime import datetime

from consumers.errors import ConfigError

DAY_MS = 86_400_000
MAX_WINDOW_DAYS = 800  # the hour buckets' default retention is 730 days
MAX_WINDOW_MS = MAX_WINDOW_DAYS * DAY_MS
MIN_TIME_MS = 0
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_TEXT_CHARS = 64  # the longest ISO-8601 time is about 32

_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"\s*([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*([smhdw])\s*", re.ASCII)
_FORMS = "a duration (30m, 24h, 7d, 2w) or an ISO-8601 time (2026-11-27 or 2026-11-27T08:00:00Z)"
_NEITHER = ("neither a duration (30m, 24h, 7d, 2w, at most 15 digits) nor an ISO-8601 time "
            "(2026-11-27 or 2026-11-27T08:00:00Z)")


def _show(text: str) -> str:
    """``text`` as it is when short and printable, else a short repr (a hostile value may hold
    control characters, or be megabytes long)."""
    if len(text) <= 40 and text.isprintable():
        return text
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def parse_time_ms(text: str, now_ms: int) -> int:
    """``text`` as epoch ms, or a ConfigError. An ISO time lies in [``MIN_TIME_MS``,
    ``MAX_TIME_MS``]; a duration is at most ``MAX_TIME_MS`` long, so ``now_ms`` minus it may be
    before 1970 (``rules test --since 10000w``; a dataset spec checked with ``now_ms`` 0)."""
    ms = _unbounded_ms(text, now_ms)
    if not _DURATION.fullmatch(text):
        _check_range(text, ms)
    elif now_ms - ms > MAX_TIME_MS:
        raise ConfigError(f"{_show(text)} is longer than {MAX_TIME_MS // DAY_MS} days")
    return ms


def _unbounded_ms(text: str, now_ms: int) -> int:
    """``text`` as epoch ms, any int (a Python int: no overflow), or a ConfigError."""
    if len(text) > MAX_TEXT_CHARS:
        raise ConfigError(f"{_show(text)} is longer than {MAX_TEXT_CHARS} characters: "
                          f"expected {_FORMS}")
    m = _DURATION.fullmatch(text)
    if m:  # at most 15 digits: the float is finite and exact enough
        return now_ms - int(float(m.group(1)) * _UNITS_MS[m.group(2)])
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{_show(text)} is {_NEITHER}") from None
    # Naive arithmetic, exact integer ms: aware arithmetic overflows past year 1 or 9999 in UTC
    # (0001-01-01T00:00:00+14:00), and timestamp() rounds through a float.
    delta = dt.replace(tzinfo=None) - datetime(1970, 1, 1)
    offset = dt.utcoffset()
    if offset is not None:
        delta -= offset
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _check_range(text: str, ms: int) -> None:
    if ms < MIN_TIME_MS:
        raise ConfigError(f"{_show(text)} is before 1970-01-01")
    if ms > MAX_TIME_MS:
        raise ConfigError(f"{_show(text)} is after 9999-12-31")


def parse_window(since: str, until: str | None, now_ms: int,
                 names: tuple[str, str] = ("since", "until"), *,
                 max_days: int | None = MAX_WINDOW_DAYS) -> tuple[int, int]:
    """``since`` and ``until`` (default now) as epoch ms; ConfigError unless until > since and
    (``max_days`` not None) the window is at most ``max_days`` long. ``names``: how the
    caller's user calls the two (``--since``, or a query parameter)."""
    since_ms = _unbounded_ms(since, now_ms)
    until_ms = _unbounded_ms(until, now_ms) if until else now_ms
    shown = _show(until) if until else "now"
    if until_ms <= since_ms:
        raise ConfigError(f"{names[1]} ({shown}) must be after {names[0]} ({_show(since)})")
    if max_days is not None and until_ms - since_ms > max_days * DAY_MS:
        raise ConfigError(f"the window from {names[0]} ({_show(since)}) to {names[1]} "
                          f"({shown}) is longer than {max_days} days, the longest report "
                          "window: choose a later start or an earlier end")
    _check_range(since, since_ms)
    if until:
        _check_range(until, until_ms)
    return since_ms, until_ms
