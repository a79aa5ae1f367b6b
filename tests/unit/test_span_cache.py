"""The span cache of ``store.otlp_buffer``: a trace's span texts are handed out for assembly only
while its state row is the one this process's buffering left, and the cache stays in its bound."""

from __future__ import annotations

from store.otlp_buffer import CacheUpdate, SpanCache

T = "tr-" + "1" * 32
U = "tr-" + "2" * 32


def test_a_trace_this_process_made_is_handed_out_once_while_its_row_is_unchanged() -> None:
    cache = SpanCache(1 << 20, stale_ms=60_000)
    cache.add([CacheUpdate(T, None, (100, 2, 6), ["aaa", "bbb"])], 100)
    cache.add([CacheUpdate(T, (100, 2, 6), (100, 3, 9), ["ccc"])], 150)
    assert cache.take(T, (100, 3, 9)) == ["aaa", "bbb", "ccc"]
    assert cache.take(T, (100, 3, 9)) is None  # forgotten once taken
    assert (cache.hits, cache.misses, len(cache), cache.size) == (1, 1, 0, 0)


def test_a_row_another_worker_moved_is_not_handed_out_and_the_entry_goes() -> None:
    cache = SpanCache(1 << 20, stale_ms=60_000)
    cache.add([CacheUpdate(T, None, (100, 2, 6), ["aaa", "bbb"])], 100)
    assert cache.take(T, (100, 3, 9)) is None  # a span stored elsewhere
    assert len(cache) == 0 and cache.size == 0


def test_buffering_over_a_row_it_did_not_leave_drops_the_entry() -> None:
    cache = SpanCache(1 << 20, stale_ms=60_000)
    cache.add([CacheUpdate(T, None, (100, 1, 3), ["aaa"])], 100)
    # Another worker stored a span in between: the row this batch found is not the entry's.
    cache.add([CacheUpdate(T, (100, 2, 6), (100, 3, 9), ["ccc"])], 150)
    assert len(cache) == 0 and cache.take(T, (100, 3, 9)) is None


def test_a_row_made_anew_replaces_the_entry() -> None:
    cache = SpanCache(1 << 20, stale_ms=60_000)
    cache.add([CacheUpdate(T, None, (100, 1, 3), ["old"])], 100)
    cache.add([CacheUpdate(T, None, (900, 1, 3), ["new"])], 900)  # pruned, then a late span
    assert cache.take(T, (900, 1, 3)) == ["new"]


def test_a_trace_known_to_the_store_but_not_to_the_cache_is_not_cached() -> None:
    cache = SpanCache(1 << 20, stale_ms=60_000)
    cache.add([CacheUpdate(T, (100, 1, 3), (100, 2, 6), ["bbb"])], 100)
    assert len(cache) == 0


def test_only_dropped_spans_leave_the_entry_as_it_is() -> None:
    cache = SpanCache(1 << 20, stale_ms=60_000)
    cache.add([CacheUpdate(T, None, (100, 1, 3), ["aaa"])], 100)
    cache.add([CacheUpdate(T, (100, 1, 3), (100, 1, 3), [])], 120)  # past the trace's caps
    assert cache.take(T, (100, 1, 3)) == ["aaa"]


def test_past_its_bound_a_new_trace_is_not_cached_and_a_growing_one_is_dropped() -> None:
    one = len("x" * 100) + 64
    cache = SpanCache(2 * one, stale_ms=60_000)
    cache.add([CacheUpdate(T, None, (1, 1, 100), ["x" * 100])], 1)
    cache.add([CacheUpdate(U, None, (1, 2, 200), ["y" * 100, "z" * 100])], 1)
    assert len(cache) == 1 and cache.size == one  # U did not fit
    cache.add([CacheUpdate(T, (1, 1, 100), (1, 3, 300), ["x" * 100, "x" * 100])], 2)
    assert len(cache) == 0 and cache.size == 0  # T grew past the bound: its entry is useless


def test_entries_older_than_stale_ms_make_room() -> None:
    one = 3 + 64
    cache = SpanCache(one, stale_ms=1_000)
    cache.add([CacheUpdate(T, None, (1, 1, 3), ["aaa"])], 0)  # assembled elsewhere, say
    cache.add([CacheUpdate(U, None, (500, 1, 3), ["bbb"])], 500)
    assert cache.take(U, (500, 1, 3)) is None  # not yet stale: no room
    cache.add([CacheUpdate(U, None, (2_000, 1, 3), ["bbb"])], 2_000)
    assert cache.take(U, (2_000, 1, 3)) == ["bbb"] and cache.take(T, (1, 1, 3)) is None


def test_a_cache_of_no_bytes_keeps_nothing() -> None:
    cache = SpanCache(0, stale_ms=1_000)
    cache.add([CacheUpdate(T, None, (1, 1, 3), ["aaa"])], 0)
    assert len(cache) == 0
