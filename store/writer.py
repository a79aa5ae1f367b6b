"""The store's transactional edge: one batch, one transaction, errors mapped to the taxonomy.

Disconnects, timeouts and lock waits become ``TransientError`` (the worker retries the whole batch;
upserts make that safe). A row the database refuses (a value it cannot hold, a constraint) becomes
``StoreRejectedError``, a ``DecodeError``: the worker then isolates the offending event and
dead-letters it, so one bad event never blocks a partition. So does a value that fails to encode
before the database sees it (the decoder refuses such values; this is the safety net): a JSON
value orjson cannot write, an int beyond int64 (sqlite3's OverflowError, where PostgreSQL raises
a DataError), text a driver cannot encode. A TypeError or ValueError that no value of the batch
explains is a bug. Anything else (a missing table, bad SQL) is a bug and propagates. The bulk
path talks to the DBAPI directly (PostgreSQL COPY), so the driver's own PEP 249 exceptions are
mapped the same way as SQLAlchemy's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from consumers.errors import DecodeError, TransientError
from consumers.events import AssessmentEvent, TraceEvent
from store import otlp_buffer
from store.decisions import Decider
from store.metrics import MetricsConfig
from store.otlp_buffer import DEFAULT_CONFIG, OtlpConfig
from store.upserts import Batch, BatchResult, apply_batch, assessment_version

# What encoding a value raises: orjson's JSONEncodeError is a TypeError, UnicodeEncodeError a
# ValueError, and sqlite3 raises OverflowError for an int beyond int64.
_ENCODING_ERRORS = (TypeError, ValueError, OverflowError)
_JSON_FIELDS = frozenset({"value", "tags", "metadata"})  # the event fields stored as JSON
PRUNE_EVERY_MS = 10_000  # emission prunes the span buffer at most this often (store clock)
_SQLITE_ERROR = 1  # SQLite's generic result code: bad SQL, a missing table or column


class StoreRejectedError(DecodeError):
    """The database refused a row of this batch (data error or constraint violation)."""


def _driver_errors(engine: Engine, *names: str) -> tuple[type[BaseException], ...]:
    dbapi: Any = engine.dialect.loaded_dbapi
    return tuple(getattr(dbapi, n) for n in names if hasattr(dbapi, n))


@contextlib.contextmanager
def store_errors(engine: Engine, batch: Batch) -> Iterator[None]:
    """The taxonomy around one transaction: refused rows and values that cannot be encoded
    (``StoreRejectedError``, ``batch`` names the culprit), a store that is gone
    (``TransientError``); bad SQL and bugs propagate."""
    refused: tuple[type[BaseException], ...] = (
        sa_exc.DataError, sa_exc.IntegrityError,
        *_driver_errors(engine, "DataError", "IntegrityError"))
    gone: tuple[type[BaseException], ...] = (
        sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
        *_driver_errors(engine, "OperationalError", "InterfaceError"))
    try:
        yield
    except refused as exc:
        orig = getattr(exc, "orig", None) or exc
        raise StoreRejectedError(f"the store refused the row: {orig!r}"[:1000], "store") from exc
    except gone as exc:
        orig = getattr(exc, "orig", None) or exc
        if getattr(orig, "sqlite_errorcode", None) == _SQLITE_ERROR:
            raise  # SQLite reports bad SQL and a missing table as an OperationalError too
        raise TransientError(f"store unavailable: {type(orig).__name__}: "
                             f"{str(orig).strip()[:300]}") from exc
    except _ENCODING_ERRORS as exc:
        problem = unwritable(batch)
        if problem is None and not isinstance(exc, OverflowError):
            raise  # no value of the batch explains it: a bug
        # An OverflowError that no event explains is a metric bucket's sum beyond int64.
        raise StoreRejectedError(f"cannot write {problem or f'a value: {exc}'}"[:1000],
                                 "store") from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise TransientError(f"store connection lost: {exc.orig!r}"[:400]) from exc
        raise


def write_batch(engine: Engine, batch: Batch, now_ms: int,
                decider: Decider | None = None,
                metrics_config: MetricsConfig | None = None, *,
                outbox: bool = True, otlp: OtlpConfig = DEFAULT_CONFIG) -> BatchResult:
    with store_errors(engine, batch), engine.begin() as conn:
        return apply_batch(conn, batch, now_ms, decider, metrics_config, outbox=outbox,
                           otlp=otlp)


def unwritable(batch: Batch) -> str | None:
    """The first event field of ``batch`` that cannot be encoded for the store, and why."""
    events: list[TraceEvent | AssessmentEvent] = [*batch.traces, *batch.assessments]
    for e in events:
        fields: dict[str, Any] = e._asdict()
        kind = "trace"
        if isinstance(e, AssessmentEvent):
            kind, fields["version"] = "assessment", assessment_version(e)
        for name, v in fields.items():
            reason = _encoding_problem(v, name in _JSON_FIELDS)
            if reason is not None:
                return f"the {kind}'s {name}: {reason}"
    return None


def _encoding_problem(v: Any, as_json: bool) -> str | None:
    try:
        if as_json:
            orjson.dumps(v)
        elif isinstance(v, tuple):  # spans, provenance
            return next((r for x in v if (r := _encoding_problem(x, False))), None)
        elif type(v) is int and not -(2**63) <= v < 2**63:
            return f"{v} is beyond int64"
        elif type(v) is str:
            v.encode()
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError, UnicodeEncodeError
        return str(exc)[:200]
    return None


class EmitResult(NamedTuple):
    traces: int  # assembled and written
    forced: int  # of them, assembled early: the buffer was past a bound
    tags_changed: int
    pruned: int  # emitted traces whose spans were dropped (kept past otlp_keep_s)
    refused: list[tuple[str, str]]  # (trace id, why): traces the store refused, given up
    more: bool = False  # more traces were due than one transaction takes
    from_cache: int = 0  # traces assembled from the span cache (the rest read back)


class SqlWriter:
    """The store port the worker writes through: ``write`` one batch, one transaction.
    ``outbox``: queue changed tags for the MLflow write-back; False when write-back is off, as
    nothing would ever drain them. ``otlp``: the span buffer's caps per trace."""

    def __init__(self, engine: Engine, decider: Decider | None = None,
                 metrics_config: MetricsConfig | None = None, *, outbox: bool = True,
                 otlp: OtlpConfig = DEFAULT_CONFIG) -> None:
        self.engine = engine
        self.decider = decider
        self.metrics_config = metrics_config
        self.outbox = outbox
        self.otlp = otlp
        self._pruned_ms = -PRUNE_EVERY_MS  # when emission last pruned the span buffer
        # Spans this process buffered, for assembly without reading them back (the loop adds
        # after each commit, the assembler takes).
        self.span_cache = otlp_buffer.SpanCache(otlp.cache_bytes,
                                                stale_ms=otlp.max_wait_ms + otlp.quiet_ms)

    def write(self, batch: Batch, now_ms: int) -> BatchResult:
        result = write_batch(self.engine, batch, now_ms, self.decider, self.metrics_config,
                             outbox=self.outbox, otlp=self.otlp)
        if result.span_updates:  # committed: the spans are the store's now
            self.span_cache.add(result.span_updates, now_ms)
        return result

    def emit_otlp(self, now_ms: int, cfg: OtlpConfig) -> EmitResult:
        """One transaction: assemble the due OpenTelemetry traces and write them as a batch
        (rules, metrics), then (every ``PRUNE_EVERY_MS`` at most) drop spans kept past
        ``cfg.keep_ms``. A trace the store refuses is emitted on its own and, refused again,
        given up (``EmitResult.refused``): it is not pending any more, so it cannot block the
        others. Raises TransientError."""
        try:
            return self._emit(now_ms, cfg, only=None)
        except StoreRejectedError:
            pass
        result = EmitResult(0, 0, 0, 0, [])
        with store_errors(self.engine, Batch()), self.engine.begin() as conn:
            due = otlp_buffer.due_traces(conn, now_ms, cfg)
        result = result._replace(more=due.more)
        for tid in due.ids:
            try:
                one = self._emit(now_ms, cfg, only=tid)
            except StoreRejectedError as exc:
                with store_errors(self.engine, Batch()), self.engine.begin() as conn:
                    otlp_buffer.give_up(conn, tid, now_ms)
                result.refused.append((tid, str(exc)))
                continue
            result = result._replace(traces=result.traces + one.traces,
                                     forced=result.forced + one.forced,
                                     from_cache=result.from_cache + one.from_cache,
                                     tags_changed=result.tags_changed + one.tags_changed)
        return result

    @property
    def beside_loop(self) -> bool:
        """Assembly on a thread of its own pays where the store takes concurrent writers:
        not on SQLite, where the two would only wait for each other's write lock."""
        return self.engine.dialect.name != "sqlite"

    def pending_otlp(self) -> int:
        with store_errors(self.engine, Batch()), self.engine.connect() as conn:
            return otlp_buffer.pending(conn)

    def _emit(self, now_ms: int, cfg: OtlpConfig, only: str | None) -> EmitResult:
        batch = Batch()
        prune_now = only is None and now_ms >= self._pruned_ms + min(cfg.keep_ms, PRUNE_EVERY_MS)
        with store_errors(self.engine, batch), self.engine.begin() as conn:
            emitted = otlp_buffer.emit_due(conn, now_ms, cfg, only=only, cache=self.span_cache)
            if emitted.events and conn.dialect.name == "postgresql":
                # Lost in a database crash, this transaction is lost whole, spans still
                # pending: they are assembled again. Buffering (offsets follow) stays durable.
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            batch.traces = emitted.events
            # emit_due holds the trace locks of the traces it assembled.
            written = apply_batch(conn, batch, now_ms, self.decider, self.metrics_config,
                                  outbox=self.outbox, traces_locked=True) \
                if emitted.events else None
            pruned = otlp_buffer.prune(conn, now_ms, cfg.keep_ms) if prune_now else 0
        if prune_now and pruned < otlp_buffer.PRUNE_LIMIT:  # else more are due: again next time
            self._pruned_ms = now_ms
        return EmitResult(len(emitted.events), emitted.forced,
                          written.tags_changed if written else 0, pruned, [], emitted.more,
                          emitted.from_cache)

    def close(self) -> None:
        self.engine.dispose()
