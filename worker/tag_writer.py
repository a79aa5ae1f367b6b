"""The tag writer: a thread that drains the outbox into MLflow (invariant 3, docs/design.md).

Each round takes the rows that are due, sends them with bounded concurrency
(``set_trace_tag`` / ``delete_trace_tag``; one call per tag, MLflow has no batch API), and then,
per row: MLflow confirmed -> delete that revision; MLflow unreachable or 5xx (after a few quick
tenacity retries) -> reschedule with exponential backoff; MLflow refused (4xx: above all a trace
it does not know yet, whose error text depends on its backend) -> reschedule, flagged
``waiting_for_trace``. Nothing is dropped, and a restart resumes from the table. Writing the same
tag twice is harmless, so a crash between MLflow's confirmation and the delete only repeats a call.
With several workers on one PostgreSQL store, an advisory lock makes one of them the writer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol

from sqlalchemy import Engine
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from consumers.errors import CuratorError, TransientError
from consumers.mlflow_client import is_transient
from consumers.redact import redact
from store import outbox
from store.engine import STORE_GONE
from store.leader import LeaderLock
from store.outbox import OutboxRow, OutboxStats

logger = logging.getLogger(__name__)

Result = Literal["done", "transient", "refused"]
MAX_BACKOFF_MS = 60_000
LAG_REPORT_S = 30.0  # how often a non-empty outbox is logged


class TagRefusedError(CuratorError):
    """MLflow answered 4xx: most often a trace it does not know (yet)."""


class TagSink(Protocol):
    """Where tags go: MLflow (``MlflowTagSink``) or an in-memory fake in unit tests."""

    def set_tag(self, trace_id: str, key: str, value: str) -> None: ...

    def delete_tag(self, trace_id: str, key: str) -> None: ...


class MlflowTagSink:
    """``MlflowClient`` with MLflow's own retries off (one 500 would block a call for minutes,
    docs/platform-notes.md); errors are sorted into TransientError and TagRefusedError."""

    def __init__(self, tracking_uri: str | None) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri)

    def set_tag(self, trace_id: str, key: str, value: str) -> None:
        self._call(lambda: self._client.set_trace_tag(trace_id, key, value), False)

    def delete_tag(self, trace_id: str, key: str) -> None:
        self._call(lambda: self._client.delete_trace_tag(trace_id, key), True)

    @staticmethod
    def _call(fn: Callable[[], Any], missing_is_done: bool) -> None:
        from mlflow.exceptions import MlflowException

        try:
            fn()
        except MlflowException as exc:
            status = exc.get_http_status_code()  # type: ignore[no-untyped-call]
            if missing_is_done and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return  # the tag is already absent: the goal of a delete
            if is_transient(exc):
                raise TransientError(redact(f"MLflow {status}: {exc}", 300)) from exc
            raise TagRefusedError(redact(f"MLflow {status}: {exc}", 300)) from exc
        except OSError as exc:  # requests' connection errors derive from it
            raise TransientError(redact(f"MLflow unreachable: {exc!r}", 300)) from exc


class TagWriter:
    """Runs rounds on a thread until ``stop()``; ``run_round`` is also callable directly."""

    def __init__(self, engine: Engine, sink: TagSink, *, concurrency: int = 4,
                 interval_s: float = 0.5, batch_size: int = 200,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        # With several workers on one PostgreSQL store, one of them writes tags at a time.
        self.leader = LeaderLock(engine, "tag-writer")
        self.sink = sink
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.clock = clock
        self.written = 0
        self.failed_attempts = 0
        self.last_round_unix: float | None = None  # the last round that ran through (/metrics)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tag")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tag-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.leader.release()

    def _loop(self) -> None:
        next_report = time.monotonic() + LAG_REPORT_S
        while not self._stop.is_set():
            if not self.leader.ensure():  # another worker writes the tags, or the store is away
                self._stop.wait(max(self.interval_s, 1.0))
                continue
            try:
                sent = self.run_round()
                self.last_round_unix = time.time()
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + LAG_REPORT_S
                    self._report_lag()
            except Exception:  # the database is away: the rows wait in the outbox
                logger.exception("tag write-back round failed; retrying")
                sent = 0
            if sent < self.batch_size:
                self._stop.wait(self.interval_s)

    def run_round(self) -> int:
        """Send the due rows once. Returns how many were attempted."""
        now_ms = int(self.clock() * 1000)
        with self.engine.begin() as conn:
            rows = outbox.due(conn, now_ms, self.batch_size)
        if not rows:
            return 0
        results = list(self._pool.map(self._send, rows))
        with self.engine.begin() as conn:
            for row, (result, error) in zip(rows, results, strict=True):
                if result == "done":
                    outbox.confirm(conn, row)
                    continue
                delay = min(MAX_BACKOFF_MS, 500 * 2 ** min(row.attempts, 10))
                outbox.reschedule(conn, row, now_ms + int(delay * random.uniform(0.5, 1.0)),  # noqa: S311
                                  error, waiting_for_trace=result == "refused")
        done = sum(1 for r, _ in results if r == "done")
        self.written += done
        self.failed_attempts += len(rows) - done
        if done < len(rows):
            logger.warning("tag write-back round sent=%d done=%d retry_later=%d first_error=%s",
                           len(rows), done, len(rows) - done,
                           next(e for r, e in results if r != "done"))
        return len(rows)

    def _send(self, row: OutboxRow) -> tuple[Result, str]:
        retrying = Retrying(retry=retry_if_exception_type(TransientError),
                            wait=wait_random_exponential(multiplier=0.2, max=2),
                            stop=stop_after_attempt(3), reraise=True)
        try:
            if row.tag_value is None:
                retrying(self.sink.delete_tag, row.trace_id, row.tag_key)
            else:
                retrying(self.sink.set_tag, row.trace_id, row.tag_key, row.tag_value)
        except TransientError as exc:
            return "transient", str(exc)
        except TagRefusedError as exc:
            return "refused", str(exc)
        return "done", ""

    def _report_lag(self) -> None:
        lag = self.stats()
        if lag.total:
            age_s = (self.clock() * 1000 - (lag.oldest_created_ms or 0)) / 1000
            logger.info("tag outbox pending=%d waiting_for_trace=%d oldest_s=%.0f written=%d",
                        lag.total, lag.waiting_for_trace, age_s, self.written)

    def stats(self) -> OutboxStats:
        with self.engine.connect() as conn:
            return outbox.stats(conn)

    def drained(self) -> bool:
        """Nothing left that MLflow could take now (rows waiting for unknown traces aside).
        False while the store cannot say: an outage is not the end of the work."""
        try:
            return self.stats().ready == 0
        except STORE_GONE as exc:
            logger.debug("tag outbox unreadable, not drained error=%s", exc)
            return False
