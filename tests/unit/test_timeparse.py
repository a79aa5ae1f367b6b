"""The window parser's bounds: every window is at most ``MAX_WINDOW_DAYS`` (accepted at the cap,
refused past it), both its ends lie in [1970, 9999], an ISO time does too, and no input raises
anything but ConfigError (no OverflowError, no ValueError from float or datetime)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.errors import ConfigError
from worker.timeparse import (
    DAY_MS,
    MAX_TIME_MS,
    MAX_WINDOW_DAYS,
    MAX_WINDOW_MS,
    parse_time_ms,
    parse_window,
)

NOW_MS = 1_795_000_000_000  # 2026-11-18


def test_the_cap_is_named_and_in_days() -> None:
    assert MAX_WINDOW_MS == MAX_WINDOW_DAYS * DAY_MS
    assert MAX_WINDOW_DAYS >= 731  # two years of hour buckets (the default retention: 730 days)


def test_a_window_at_the_cap_is_accepted_and_one_past_it_refused() -> None:
    assert parse_window(f"{MAX_WINDOW_DAYS}d", None, NOW_MS) == (NOW_MS - MAX_WINDOW_MS, NOW_MS)
    assert parse_window(f"{MAX_WINDOW_DAYS * 24}h", None, NOW_MS)[0] == NOW_MS - MAX_WINDOW_MS
    with pytest.raises(ConfigError, match=f"{MAX_WINDOW_DAYS} days"):
        parse_window(f"{MAX_WINDOW_DAYS * 24 * 3600 + 1}s", None, NOW_MS)
    with pytest.raises(ConfigError, match=rf"--since.*--until.*{MAX_WINDOW_DAYS} days"):
        parse_window("10000w", None, NOW_MS, ("--since", "--until"))
    # ISO ends: the cap holds to the millisecond.
    since = "2024-01-01T00:00:00Z"  # 800 days before 2026-03-11
    since_ms, until_ms = parse_window(since, "2026-03-11T00:00:00Z", NOW_MS)
    assert until_ms - since_ms == MAX_WINDOW_MS
    with pytest.raises(ConfigError, match=f"{MAX_WINDOW_DAYS} days"):
        parse_window(since, "2026-03-11T00:00:00.001Z", NOW_MS)
    with pytest.raises(ConfigError, match="must be after"):
        parse_window(since, since, NOW_MS)


def test_a_caller_may_lift_the_cap_but_not_the_time_bounds() -> None:
    since_ms, _ = parse_window("10000w", None, NOW_MS + 10000 * 604_800_000, max_days=None)
    assert since_ms == NOW_MS
    with pytest.raises(ConfigError, match="1970"):
        parse_window("0001-01-01", None, NOW_MS, max_days=None)
    with pytest.raises(ConfigError, match="1970"):
        parse_window("10000w", None, NOW_MS, max_days=None)  # before the epoch


@pytest.mark.parametrize("text", [
    "0001-01-01", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
    "1969-12-31T23:59:59Z", "99999999999999999999w", "9" * 400 + "w", "1" + "0" * 5000 + "s",
    "1e400w", "nan", "nanw", "inf", "infd", "-1h", "\x00", "1h\x00", "2026-11-27\x00",
    "\u0663h",  # ARABIC-INDIC DIGIT THREE: only ASCII digits
    "", "   ", "x" * 100_000,
])
def test_hostile_times_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_time_ms(text, NOW_MS)
    assert len(str(info.value)) < 400  # the message quotes at most a short prefix


def test_a_duration_alone_may_reach_before_1970_but_not_without_bound() -> None:
    # ``rules test --since 10000w`` (all stored traces), and dataset specs checked with now 0.
    assert parse_time_ms("10000w", NOW_MS) == NOW_MS - 10000 * 604_800_000
    assert parse_time_ms("7d", 0) == -7 * DAY_MS
    with pytest.raises(ConfigError, match="longer than"):
        parse_time_ms("999999999999999w", NOW_MS)


def test_the_time_bounds_are_inclusive() -> None:
    assert parse_time_ms("1970-01-01", NOW_MS) == 0
    assert parse_time_ms("9999-12-31T23:59:59.999Z", NOW_MS) == MAX_TIME_MS
    assert parse_time_ms(f"{NOW_MS // 1000}s", NOW_MS) == NOW_MS % 1000


@given(st.text(max_size=60))
def test_any_text_is_a_time_in_bounds_or_a_config_error(text: str) -> None:
    try:
        ms = parse_time_ms(text, NOW_MS)
    except ConfigError:
        return
    assert NOW_MS - MAX_TIME_MS <= ms <= MAX_TIME_MS


@given(st.from_regex(r"\A[0-9]{1,30}(\.[0-9]{1,30})?[smhdw]\Z"),
       st.one_of(st.none(), st.from_regex(r"\A[0-9]{1,30}[smhdw]\Z")))
def test_any_duration_window_is_bounded_or_a_config_error(since: str, until: str | None) -> None:
    try:
        since_ms, until_ms = parse_window(since, until, NOW_MS)
    except ConfigError:
        return
    assert 0 <= since_ms < until_ms <= NOW_MS and until_ms - since_ms <= MAX_WINDOW_MS


def test_the_store_dashboard_guard_uses_the_same_cap() -> None:
    """``store.dashboard.gather`` keeps its own guard for Python callers (the store cannot
    import the worker); it must be the cap the CLI and the routes enforce."""
    from store import dashboard
    from worker import timeparse

    assert dashboard.MAX_WINDOW_DAYS == timeparse.MAX_WINDOW_DAYS
