"""OpenTelemetry spans buffered until their trace is due, then assembled and written as a trace.

Spans of one trace arrive in several records, on several partitions, maybe at several workers:
the buffer lives in the store, so whichever worker reads a span, every worker sees it.

- ``buffer_spans`` runs in the batch's transaction, so offsets are committed only after the
  spans are stored. Under the trace locks it inserts the spans not held yet (a redelivered span
  changes nothing) and moves each touched trace's state: first and last arrival, root seen,
  span count and bytes, and ``pending`` (spans came since the trace was last emitted).
- ``emit_due`` runs in a transaction of its own. It picks due traces, takes their trace locks
  (the lock a buffering batch holds, so the two never interleave on a trace), re-reads their
  state, assembles each from all its buffered spans (``consumers.assembly``) and writes the
  events through ``apply_batch`` (rules, metrics) while clearing ``pending`` in the same
  transaction: a crash before the commit emits them again, after it never twice (so the
  writer may commit it without waiting for the WAL flush: a database crash loses it whole,
  the traces still pending). Two workers may pick the same trace: the second finds it no longer
  pending once the first commits.
- A trace is due once its root came and no span came for ``quiet_ms``, or ``max_wait_ms``
  after its first span without a root (the topmost span stands in). Past ``max_open_traces``
  pending traces or ``max_buffer_bytes`` of their spans, the oldest are due at once and are
  marked (``EMITTED_EARLY_KEY``) and counted.
- Emitted traces keep their spans for ``keep_ms`` (``prune``): a late span amends the stored
  trace with a more complete version (the store's completeness order). Later still, the late
  span alone makes a less complete version, which the store ignores.
- One trace never grows without end (a producer stuck in a loop, a hostile one): it keeps its
  first ``max_trace_spans`` spans and ``max_trace_bytes`` of them; the spans past either cap
  are not stored, change nothing but the trace's ``spans_dropped`` count, and the assembled
  trace says how many (``SPANS_DROPPED_KEY``; spans dropped after its last assembly are only
  counted). The trace's first root span is kept past the caps (one span a trace): with nil
  keys it may come after the caps are full, and it alone gives the trace its status, request
  and response, and makes it due when quiet rather than after ``max_wait_ms``. An emission
  transaction reads at most ``emit_bytes`` of spans (always one trace). So neither memory nor
  the work of a batch grows with the number of spans a trace is sent.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, and_, delete, false, func, or_, select, update

from consumers.assembly import assemble
from consumers.events import Provenance, TraceEvent
from consumers.fields import new_tuple
from consumers.otlp import OtlpSpan
from store import dialect, locks
from store.models import OTLP_SPANS, OTLP_TRACES

EMITTED_EARLY_KEY = "trace_curator.emitted_early"  # metadata of a trace emitted past a bound
SPANS_DROPPED_KEY = "trace_curator.spans_dropped"  # metadata: spans refused past the caps
SPAN_COLUMNS = ("trace_id", "span_id", "span", "received_ms")
TRACE_COLUMNS = ("trace_id", "first_ms", "last_ms", "has_root", "span_count", "span_bytes",
                 "pending", "emitted_ms", "src_topic", "src_partition", "src_offset",
                 "spans_dropped")
_TAGS = OtlpSpan._fields.index("trace_tags")
_FIELDS = len(OtlpSpan._fields)


class OtlpConfig(NamedTuple):
    quiet_ms: int = 2_000
    max_wait_ms: int = 60_000
    max_open_traces: int = 100_000
    max_buffer_bytes: int = 256 * 1024 * 1024
    keep_ms: int = 3_600_000
    max_trace_spans: int = 10_000  # spans kept per trace; later ones are dropped
    max_trace_bytes: int = 32 * 1024 * 1024  # bytes of spans kept per trace
    emit_batch: int = 2_000  # traces per emission transaction
    emit_bytes: int = 64 * 1024 * 1024  # span bytes per emission transaction (one trace always)
    cache_bytes: int = 16 * 1024 * 1024  # span texts kept in memory for assembly (0: none)


DEFAULT_CONFIG = OtlpConfig()


Snapshot = tuple[int, int, int]  # a trace's state row as buffering left it: (first_ms,
# span_count, span_bytes); any span stored moves the count, a row made anew has its own first_ms


class CacheUpdate(NamedTuple):
    """What one buffering transaction did to one trace, for ``SpanCache.add`` once committed."""

    trace_id: str
    before: Snapshot | None  # None: the transaction made the trace's state row
    after: Snapshot
    texts: list[str]  # the spans it stored, as stored


class Buffered(NamedTuple):
    new: int  # spans stored
    dropped: int  # spans refused past their trace's caps
    capped: list[str]  # the traces those were of
    updates: tuple[CacheUpdate, ...] = ()  # for the span cache, once committed


class Due(NamedTuple):
    ids: list[str]  # oldest first
    forced: set[str]  # of them, due only because the buffer is past a bound
    more: bool  # more were due than one transaction takes (``emit_batch``, ``emit_bytes``)


class Emitted(NamedTuple):
    events: list[TraceEvent]
    forced: int  # of them, emitted early past a bound
    more: bool  # more traces are due already
    from_cache: int = 0  # of them, assembled from the span cache (the rest read back)


def span_json(s: OtlpSpan) -> str:
    return orjson.dumps(list(s)).decode()


def span_from_json(text: str) -> OtlpSpan:
    v = orjson.loads(text)
    tags = v[_TAGS]
    v[_TAGS] = tuple(map(tuple, tags)) if tags else ()
    if len(v) != _FIELDS:
        return OtlpSpan(*v)  # raises, naming what is missing or extra
    return new_tuple(OtlpSpan, v)  # the fields in order: no argument parsing


# ---------------------------------------------------------------------------------------------
# The span texts this process buffered


class _Entry:
    __slots__ = ("added_ms", "size", "state", "texts")

    def __init__(self, state: Snapshot, texts: list[str], added_ms: int) -> None:
        self.state, self.texts, self.added_ms = state, texts, added_ms
        self.size = _size(texts)


_TEXT_OVERHEAD = 64  # bytes a text costs in memory besides its characters (object, list slot)


def _size(texts: list[str]) -> int:
    return sum(map(len, texts)) + _TEXT_OVERHEAD * len(texts)


class SpanCache:
    """The span texts this process buffered, per trace, so that assembling a trace whose spans
    all came through this process does not read them back from the store.

    An entry holds a trace's stored span texts and its state row as this process's last
    buffering of it left it (``Snapshot``). It is added to only after that transaction commits
    (``add``), so it holds committed spans only, and only while the row it saw is the one it
    left: a span that another worker stored in between, or a row made anew, drops the entry.
    ``take`` (assembly) hands the texts out only if the row still says what the entry says,
    and forgets the entry either way; the caller reads the spans from the store otherwise.
    Bounded by ``max_bytes`` (texts and their overhead): past it a trace new to the cache is
    not cached, and entries older than ``stale_ms`` (traces assembled elsewhere) are dropped.
    Thread-safe: the loop adds while the assembler takes.
    """

    def __init__(self, max_bytes: int, stale_ms: int) -> None:
        self.max_bytes, self.stale_ms = max_bytes, stale_ms
        self._entries: dict[str, _Entry] = {}  # insertion order: oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # traces assembled from the cache / read from the store

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._bytes

    def add(self, updates: Sequence[CacheUpdate], now_ms: int) -> None:
        """A committed buffering transaction's spans."""
        if self.max_bytes <= 0:
            return
        with self._lock:
            for u in updates:
                entry = self._entries.get(u.trace_id)
                if entry is not None and (u.before is None or entry.state != u.before):
                    self._drop(u.trace_id)  # stale: the row changed elsewhere, or anew
                    entry = None
                if entry is None:
                    if u.before is None and u.texts:  # every span of the trace is here
                        self._put(u.trace_id, _Entry(u.after, u.texts, now_ms), now_ms)
                    continue
                if u.texts:
                    grown = _size(u.texts)
                    if self._bytes + grown > self.max_bytes:
                        self._drop(u.trace_id)
                        continue
                    entry.texts.extend(u.texts)
                    entry.size += grown
                    self._bytes += grown
                entry.state = u.after

    def take(self, trace_id: str, state: Snapshot) -> list[str] | None:
        """The trace's span texts if its row is still ``state`` as the entry says; forgotten."""
        with self._lock:
            entry = self._entries.get(trace_id)
            if entry is not None:
                self._drop(trace_id)
                if entry.state == state:
                    self.hits += 1
                    return entry.texts
            self.misses += 1
            return None

    def _put(self, trace_id: str, entry: _Entry, now_ms: int) -> None:
        if self._bytes + entry.size > self.max_bytes:
            self._sweep(now_ms)
            if self._bytes + entry.size > self.max_bytes:
                return
        self._entries[trace_id] = entry
        self._bytes += entry.size

    def _sweep(self, now_ms: int) -> None:
        """Drop the entries older than ``stale_ms`` (the oldest come first)."""
        horizon = now_ms - self.stale_ms
        while self._entries:
            tid, entry = next(iter(self._entries.items()))
            if entry.added_ms > horizon:
                return
            self._drop(tid)

    def _drop(self, trace_id: str) -> None:
        entry = self._entries.pop(trace_id)
        self._bytes -= entry.size


# ---------------------------------------------------------------------------------------------
# Buffering, in the batch's transaction


def buffer_spans(conn: Connection, spans: Sequence[tuple[OtlpSpan, Provenance]],
                 now_ms: int, cfg: OtlpConfig = DEFAULT_CONFIG) -> Buffered:
    """Store the spans not held yet, up to their trace's caps, and move their traces' state."""
    # Each span once, its first delivery in the batch, in batch order (the caps keep the first).
    first = dict(zip([(s.trace_id, s.span_id) for s, _ in spans], spans, strict=True))
    if len(first) < len(spans):  # a span twice in the batch (rare): keep its first delivery
        first = {}
        for s, p in spans:
            first.setdefault((s.trace_id, s.span_id), (s, p))
    if not first:
        return Buffered(0, 0, [])
    ids = sorted({tid for tid, _ in first})
    locks.lock_traces(conn, ids)
    state = {r[0]: r for r in dialect.select_in(
        conn, f"SELECT {', '.join(TRACE_COLUMNS)} FROM otlp_traces WHERE trace_id {{ids}}",
        ids)}
    # Only a trace the buffer knows can hold spans already (its state row goes with its spans).
    known = [tid for tid in ids if tid in state]
    held = {(r[0], r[1]) for r in dialect.select_in(
        conn, "SELECT trace_id, span_id FROM otlp_spans WHERE trace_id {ids}", known)} \
        if known else set()
    max_spans, max_bytes = cfg.max_trace_spans, cfg.max_trace_bytes
    rows: dict[str, list[Any]] = {}  # TRACE_COLUMNS of each touched trace, as they become
    new: list[tuple[str, str, str, int]] = []
    texts: dict[str, list[str]] = {}  # the stored texts of each touched trace
    dropped = 0
    dumps = orjson.dumps
    for key, (s, p) in first.items():
        if key in held:
            continue
        row = rows.get(s.trace_id)
        if row is None:
            old = state.get(s.trace_id)
            row = rows[s.trace_id] = list(old) if old else [
                s.trace_id, now_ms, now_ms, False, 0, 0, False, None, p.topic, p.partition,
                p.offset, 0]
            texts[s.trace_id] = []
        bound = not (s.root and not row[3])  # the caps apply; a trace's first root is kept
        # A span past the count cap is not even serialized: a flood costs its decoding only.
        text = None if bound and row[4] >= max_spans else dumps(list(s)).decode()  # span_json
        if text is None or (bound and row[5] + len(text) > max_bytes):
            row[11] += 1
            dropped += 1
            continue
        new.append((s.trace_id, s.span_id, text, now_ms))
        texts[s.trace_id].append(text)
        row[2] = now_ms
        row[3] = row[3] or s.root
        row[4] += 1
        row[5] += len(text)
        row[6] = True
        row[8:11] = [p.topic, p.partition, p.offset]
    over = [tid for tid, r in rows.items() if r[11] > (state[tid][11] if tid in state else 0)]
    # A trace the buffer did not know, all of whose spans were dropped (each over the byte
    # cap), gets no state row: it holds nothing to assemble.
    inserts = [tuple(r) for tid, r in rows.items() if tid not in state and r[4]]
    # Under the trace locks, the new spans and the traces the buffer did not know are absent:
    # plain inserts (``inserting_new``); the known traces' state rows are updated.
    with dialect.inserting_new(
            conn,
            dialect.NewRows(OTLP_SPANS, ("trace_id", "span_id"), SPAN_COLUMNS, new,
                            on_conflict="nothing"),
            dialect.NewRows(OTLP_TRACES, ("trace_id",), TRACE_COLUMNS, inserts)):
        pass
    dialect.bulk_upsert(conn, OTLP_TRACES, ("trace_id",), TRACE_COLUMNS,
                        [tuple(r) for tid, r in rows.items() if tid in state])
    updates = tuple(CacheUpdate(tid, _snapshot(state[tid]) if tid in state else None,
                                _snapshot(r), texts.get(tid, [])) for tid, r in rows.items())
    return Buffered(len(new), dropped, over, updates)


def _snapshot(row: Sequence[Any]) -> Snapshot:
    """A ``TRACE_COLUMNS`` row's ``Snapshot``."""
    return int(row[1]), int(row[4]), int(row[5])


# ---------------------------------------------------------------------------------------------
# Emission, in a transaction of its own


def due_traces(conn: Connection, now_ms: int, cfg: OtlpConfig) -> Due:
    """The due traces one emission transaction takes, oldest first: up to ``cfg.emit_batch``
    of them and ``cfg.emit_bytes`` of their spans (the first whatever its size), and those
    of them that are due only because the buffer is past a bound."""
    t = OTLP_TRACES.c
    ready = and_(t.pending, or_(and_(t.has_root, t.last_ms <= now_ms - cfg.quiet_ms),
                                t.first_ms <= now_ms - cfg.max_wait_ms))
    due: list[str] = []
    size = 0

    def take(tid: str, nbytes: int) -> bool:
        nonlocal size
        if due and size + nbytes > cfg.emit_bytes:
            return False
        due.append(tid)
        size += nbytes
        return True

    rows = conn.execute(select(t.trace_id, t.span_bytes).where(ready)
                        .order_by(t.first_ms, t.trace_id).limit(cfg.emit_batch)).all()
    for tid, nbytes in rows:
        if not take(tid, nbytes):
            return Due(due, set(), True)
    forced: set[str] = set()
    room = cfg.emit_batch - len(due)
    if room <= 0:
        return Due(due, forced, True)
    count, pending_bytes = conn.execute(
        select(func.count(), func.coalesce(func.sum(t.span_bytes), 0)).where(t.pending)).one()
    over = max(count - cfg.max_open_traces, 0)
    if over or pending_bytes > cfg.max_buffer_bytes:
        taken = set(due)
        for tid, nbytes in conn.execute(
                select(t.trace_id, t.span_bytes).where(t.pending)
                .order_by(t.first_ms, t.trace_id).limit(room + len(due))):
            if tid in taken:
                continue
            if over <= 0 and pending_bytes <= cfg.max_buffer_bytes:
                break
            if len(due) >= cfg.emit_batch or not take(tid, nbytes):
                return Due(due, forced, True)
            forced.add(tid)
            over -= 1
            pending_bytes -= nbytes
    return Due(due, forced, False)


def emit_due(conn: Connection, now_ms: int, cfg: OtlpConfig, *,
             only: str | None = None, cache: SpanCache | None = None) -> Emitted:
    """Assemble the due traces (under their trace locks; still pending once locked), or just
    the trace ``only`` if it is due, and clear their ``pending``. The caller writes the events
    in this same transaction. A trace's spans come from ``cache`` where it holds them all."""
    due = due_traces(conn, now_ms, cfg)
    candidates, forced = due.ids, due.forced
    if only is not None:
        candidates = [t for t in candidates if t == only]
    if not candidates:
        return Emitted([], 0, False)
    locks.lock_traces(conn, candidates)
    state = _claim(conn, candidates, now_ms)
    ids = sorted(state)
    if not ids:
        return Emitted([], 0, due.more and only is None)
    texts: dict[str, list[str]] = {}
    for tid in ids:
        row = state[tid]
        got = cache.take(tid, (row[5], row[6], row[7])) if cache is not None else None
        if got is not None:
            texts[tid] = got
    cached = len(texts)
    for tid, text in dialect.select_in(
            conn, "SELECT trace_id, span FROM otlp_spans WHERE trace_id {ids}",
            [tid for tid in ids if tid not in texts]):
        texts.setdefault(tid, []).append(text)
    events = []
    for tid in ids:
        _, topic, partition, offset, dropped = state[tid][:5]
        e = assemble([span_from_json(t) for t in texts.get(tid, ())],
                     Provenance(topic, partition, offset))
        if tid in forced or dropped:
            marks = dict(e.metadata)
            if tid in forced:
                marks[EMITTED_EARLY_KEY] = "buffer_full"
            if dropped:
                marks[SPANS_DROPPED_KEY] = str(dropped)
            e = e._replace(metadata=marks)
        events.append(e)
    return Emitted(events, len(forced & set(ids)), due.more and only is None, cached)


_CLAIMED = ("trace_id, src_topic, src_partition, src_offset, spans_dropped, first_ms, "
            "span_count, span_bytes")


def _claim(conn: Connection, ids: Sequence[str], now_ms: int) -> dict[str, tuple[Any, ...]]:
    """Of the (locked) traces ``ids``, those still pending: their state (``_CLAIMED``), with
    ``pending`` cleared and ``emitted_ms`` set. One statement on PostgreSQL (``RETURNING``)."""
    emitted = f"UPDATE otlp_traces SET pending = false, emitted_ms = {int(now_ms)} WHERE "
    if conn.dialect.name == "postgresql":
        rows = dialect.select_in(conn, f"{emitted}pending AND trace_id {{ids}} "
                                       f"RETURNING {_CLAIMED}", ids)
    else:
        rows = dialect.select_in(conn, f"SELECT {_CLAIMED} FROM otlp_traces WHERE pending AND "
                                       "trace_id {ids}", ids)
        dialect.execute_in(conn, emitted + "trace_id {ids}", [r[0] for r in rows])
    return {r[0]: r for r in rows}


def pending(conn: Connection) -> int:
    """Traces with spans not yet assembled."""
    t = OTLP_TRACES.c
    return int(conn.execute(select(func.count()).where(t.pending)).scalar_one())


def give_up(conn: Connection, trace_id: str, now_ms: int) -> None:
    """A trace the store refused: no longer pending, so it cannot block the others; its spans
    go with the next ``prune``."""
    locks.lock_traces(conn, [trace_id])
    conn.execute(update(OTLP_TRACES).where(OTLP_TRACES.c.trace_id == trace_id)
                 .values(pending=False, emitted_ms=now_ms))


PRUNE_LIMIT = 5_000  # traces one ``prune`` drops at most


def prune(conn: Connection, now_ms: int, keep_ms: int, limit: int = PRUNE_LIMIT) -> int:
    """Drop up to ``limit`` traces emitted over ``keep_ms`` ago with nothing pending, and their
    spans. Returns the traces dropped."""
    t = OTLP_TRACES.c
    old = and_(t.pending == false(), t.emitted_ms < now_ms - keep_ms)
    ids = list(conn.execute(select(t.trace_id).where(old).limit(limit)).scalars())
    if not ids:
        return 0
    locks.lock_traces(conn, ids)  # then again: a span may have come meanwhile
    ids = list(conn.execute(select(t.trace_id).where(
        old, dialect.in_ids(conn, t.trace_id, ids))).scalars())
    if ids:
        conn.execute(delete(OTLP_SPANS).where(dialect.in_ids(conn, OTLP_SPANS.c.trace_id, ids)))
        conn.execute(delete(OTLP_TRACES).where(dialect.in_ids(conn, t.trace_id, ids)))
    return len(ids)
