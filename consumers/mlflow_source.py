"""Polling an MLflow tracking server: the source for teams whose traces have no stream.

Scans read trace infos per experiment, oldest first, page by page, and compare each page with
the store: only what the store lacks (or holds older) is fetched and emitted, as the JSON Kafka
carries (``Trace.to_json()``, ``Assessment.to_dictionary()``) on the pseudo topics
``mlflow:traces`` and ``mlflow:assessments``; decode -> rules -> store is the Kafka path.
Invariant: a watermark moves only through ``checkpoint()``, written in the transaction of the
batch it covers and applied in memory at ``commit``; a restart resumes from the stored watermark.
Nothing is skipped or counted twice. The MLflow calls are ``consumers.mlflow_client``; what a
scan decides without calling MLflow (page plans, records, settings) is ``consumers.mlflow_plan``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from consumers.errors import TransientError
from consumers.events import DeadLetter, RawRecord
from consumers.mlflow_client import is_transient
from consumers.mlflow_plan import (
    ASSESSMENTS_TOPIC,
    FETCH_CHUNK,
    TRACES_TOPIC,
    PollConfig,
    Progress,
    Scan,
    ScanKind,
    StoreView,
    TraceServer,
    assessment_record,
    checkpoint_name,
    new_assessments,
    plan_page,
    trace_record,
)
from consumers.ports import TopicKind
from consumers.redact import redact

logger = logging.getLogger(__name__)

# --- the source --------------------------------------------------------------------------------


class MlflowSource:
    """An ``EventSource`` over an MLflow tracking server.

    A *scan* reads trace infos oldest first (``timestamp_ms ASC``, pages of at most 500, without
    spans) from a start time to the end, and compares each page with the store
    (``StoreView.known``): a trace is fetched with its spans only when the store lacks it, or
    holds it IN_PROGRESS and MLflow has it finished; an assessment is emitted when its
    ``(assessment_id, last_update_time)`` is not what the store holds. Three kinds of scan:
      * *tail*, every ``poll_interval_s``: from the experiment's watermark minus ``overlap_s``.
        Ascending order means a trace that lands while we page only ever causes a duplicate,
        never a skip; the overlap finds traces that land after newer ones (long traces, clock
        skew); the store is the seen-set, bounded by that window.
      * *rescan*, every ``assessment_rescan_interval_s``: the last ``assessment_window_s``.
        MLflow has no "assessments since" query, so late feedback is found by diffing; traces
        that finished after they were first seen IN_PROGRESS are completed here too.
      * *backfill*: a closed window ``[since, until]``, once (``trace-curator backfill``).
    With ``assessments_only`` there are only rescans, and they emit assessments only: the
    traces come from Kafka (``consumers.combined_source``).
    """

    def __init__(self, server: TraceServer, store: StoreView, config: PollConfig, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.server = server
        self.store = store
        self.config = config
        self.clock = clock
        self._sleep = sleep
        self._watermarks: dict[str, int] = {}  # tail or backfill watermark per experiment
        self._saved: dict[str, int] = {}  # the watermarks as stored
        self._offered: dict[str, int] = {}  # the watermarks the last checkpoint() handed over
        self._experiments: list[str] = []
        self._experiments_at = -1.0
        self._due: dict[tuple[ScanKind, str], float] = {}  # next start of each scan (monotonic)
        self._scan: Scan | None = None
        self._queue: list[Scan] = []
        # A long rescan (a busy day of infos) yields to a due tail scan, one page at a time, so
        # new traces stay fresh; after each tail scan the paused rescan is owed one page.
        self._paused: list[Scan] = []
        self._rescan_owed = False
        self._pending: tuple[Scan | None, dict[str, int]] | None = None
        self._ready = False
        self.progress = Progress()
        if config.backfill is not None:
            self.progress.since_ms, self.progress.until_ms = config.backfill

    @property
    def name(self) -> str:
        return "mlflow"

    def topics(self) -> Mapping[str, TopicKind]:
        if self.config.assessments_only:
            return {ASSESSMENTS_TOPIC: "assessment"}
        return {TRACES_TOPIC: "trace", ASSESSMENTS_TOPIC: "assessment"}

    def ready(self) -> bool:
        return self._ready

    def exhausted(self) -> bool:
        """A backfill has read its whole window; a live source never is."""
        return self.progress.done

    def checkpoint(self) -> dict[str, dict[str, Any]]:
        """The watermarks not yet stored, as the last ``poll`` leaves them: the worker writes
        them in the batch's transaction. Every trace a watermark passed is in the store by
        then (it was on an earlier page, or is in this batch)."""
        marks = dict(self._watermarks)
        if self._pending is not None:
            marks.update(self._pending[1])
        kind: Literal["tail", "backfill"] = "backfill" if self.config.backfill else "tail"
        out: dict[str, dict[str, Any]] = {}
        for exp, wm in marks.items():
            if self._saved.get(exp) == wm:
                continue
            value: dict[str, Any] = {"watermark_ms": wm}
            if self.config.backfill is not None:
                value.update(since_ms=self.config.backfill[0], until_ms=self.config.backfill[1])
            out[checkpoint_name(kind, exp)] = value
        self._offered = marks
        return out

    def commit(self, next_offsets: Mapping[tuple[str, int], int]) -> bool:
        """The batch is stored: move on to the next page, and keep the new watermarks."""
        self._apply_pending()
        self._saved.update(self._offered)
        self._offered = {}
        return True

    def lag(self) -> dict[tuple[str, int], int]:
        return {}  # MLflow cannot count what is not read yet without reading it

    def close(self) -> None:
        self._scan = None

    # -- poll ------------------------------------------------------------------------------------

    def poll(self, timeout_ms: int, max_records: int) -> list[RawRecord]:
        """The records of the next page that holds something new, or [] after ``timeout_ms``.
        Raises TransientError when MLflow or the store cannot be reached."""
        self._pending = None  # a batch that was not committed is read again
        deadline = time.monotonic() + timeout_ms / 1000
        try:
            self._refresh_experiments()
            while True:
                scan = self._scan or self._next_scan()
                if scan is None:
                    if self.config.backfill is not None and not self._queue:
                        self.progress.done = True
                    self._sleep(max(0.0, min(deadline - time.monotonic(),
                                             self._until_next_due())))
                    return []
                if scan.kind == "rescan" and not self._rescan_owed and (
                        tail := self._due_tail()) is not None:
                    self._paused.append(scan)  # new traces first; the rescan resumes after
                    scan = tail
                self._scan = scan
                records = self._read_page(scan, min(self.config.page_size, max_records))
                if scan.kind == "rescan":
                    self._rescan_owed = False
                if records:
                    return records
                self._apply_pending()  # nothing new on that page: move on at once
                if time.monotonic() >= deadline:
                    return []
        except TransientError:
            raise
        except Exception as exc:  # MLflow's client and the DB driver raise many types
            if is_transient(exc):
                raise TransientError(
                    redact(f"mlflow polling: {type(exc).__name__}: {exc}", 500)) from exc
            raise

    def _read_page(self, scan: Scan, page_size: int) -> list[RawRecord]:
        infos, token = self.server.page(scan.experiment_id, scan.start_ms, scan.until_ms,
                                        scan.token, page_size)
        known = self.store.known([i.trace_id for i in infos])
        plan = plan_page(infos, known, assessments_only=self.config.assessments_only)
        records: list[RawRecord] = []
        for trace in self._fetch(scan, page_size, plan.fetch, len(infos)):
            records.append(trace_record(trace))
            self.progress.traces += 1
            for a in new_assessments(trace.info.assessments or (), known):
                records.append(assessment_record(a))
                self.progress.assessments += 1
        for a in plan.assessments:
            records.append(assessment_record(a))
            self.progress.assessments += 1
        newest = max((int(i.request_time) for i in infos), default=scan.newest_ms)
        after = replace(scan, token=token, newest_ms=max(scan.newest_ms, newest))
        marks: dict[str, int] = {}
        if newest >= 0 and not self.config.assessments_only:
            # every trace of the page is stored once the batch is
            old = self._watermarks.get(scan.experiment_id, -1)
            if newest > old:
                marks[scan.experiment_id] = newest
        self._pending = (after if token else None, marks)
        return records

    def _fetch(self, scan: Scan, page_size: int, ids: list[str], page_len: int) -> list[Any]:
        """The traces ``ids`` with spans, in page order. When many of the page are needed (a
        backfill, a busy tail), reading the page again with spans is about twice as fast as
        fetching by id; what that read misses (the page moved) is fetched by id."""
        if not ids:
            return []
        found: dict[str, Any] = {}
        if len(ids) * 4 >= page_len:
            wanted = set(ids)
            for t in self.server.page_traces(scan.experiment_id, scan.start_ms, scan.until_ms,
                                             scan.token, page_size):
                if t.info.trace_id in wanted:
                    found[t.info.trace_id] = t
        missing = [t for t in ids if t not in found]
        for i in range(0, len(missing), FETCH_CHUNK):
            for t in self.server.fetch(missing[i:i + FETCH_CHUNK]):
                found[t.info.trace_id] = t
        return [found[t] for t in ids if t in found]

    def _apply_pending(self) -> None:
        if self._pending is None:
            return
        after, marks = self._pending
        self._pending = None
        self._watermarks.update(marks)
        if self.config.backfill is not None:
            self.progress.covered.update(marks)
        finished = self._scan
        self._scan = after
        if after is None and finished is not None:
            if finished.kind == "backfill" and self.config.backfill is not None:
                self.progress.covered[finished.experiment_id] = self.config.backfill[1]
            interval = (self.config.poll_interval_s if finished.kind == "tail"
                        else self.config.assessment_rescan_interval_s)
            if finished.kind == "tail":
                self._rescan_owed = True  # a paused or due rescan gets the next page
            self._due[(finished.kind, finished.experiment_id)] = time.monotonic() + interval

    # -- scheduling ------------------------------------------------------------------------------

    def _refresh_experiments(self) -> None:
        now = time.monotonic()
        if self._experiments_at >= 0 and (self.config.experiment_ids or now - self._experiments_at
                                          < self.config.experiments_refresh_s):
            return
        if self.config.experiment_ids:
            ids = list(self.config.experiment_ids)
            created = dict.fromkeys(ids, 0)
        else:
            found = self.server.experiments()
            ids, created = [e for e, _ in found], dict(found)
        new = [e for e in ids if e not in self._experiments]
        if new:
            self._load_watermarks(new, created, first=self._experiments_at < 0)
        self._experiments = ids
        self._experiments_at = now
        self._ready = True

    def _load_watermarks(self, experiments: Sequence[str], created: Mapping[str, int],
                         first: bool) -> None:
        now_ms = int(self.clock() * 1000)
        if self.config.backfill is not None:
            since, until = self.config.backfill
            stored = self.store.checkpoints("mlflow:backfill:")
            for exp in experiments:
                prev = stored.get(checkpoint_name("backfill", exp))
                start = since
                # Resume an interrupted backfill whose window covers this one's start.
                if prev is not None and prev.get("since_ms", since) <= since:
                    start = max(since, int(prev["watermark_ms"]))
                    if start > since:
                        logger.info("backfill resumes experiment=%s from_ms=%d", exp, start)
                self._watermarks[exp] = start
                self.progress.covered[exp] = start
                self._queue.append(Scan("backfill", exp, start, until))
            return
        stored = self.store.checkpoints("mlflow:tail:")
        lookback = now_ms - int(self.config.start_lookback_s * 1000)
        for exp in experiments:
            prev = stored.get(checkpoint_name("tail", exp))
            if prev is not None:
                self._watermarks[exp] = self._saved[exp] = int(prev["watermark_ms"])
            else:  # a new experiment found later is read from its creation
                self._watermarks[exp] = lookback if first else min(
                    lookback, created.get(exp, lookback))
            logger.info("mlflow polling experiment=%s watermark_ms=%d", exp,
                        self._watermarks[exp])

    def _next_scan(self) -> Scan | None:
        if self._queue:
            return self._queue.pop(0)
        if self.config.backfill is not None:
            return None
        if self._rescan_owed:
            rescan = self._paused.pop(0) if self._paused else self._due_rescan()
            if rescan is not None:
                return rescan
            self._rescan_owed = False
        tail = self._due_tail()
        if tail is not None:
            return tail
        if self._paused:
            return self._paused.pop(0)
        return self._due_rescan()

    def _due_rescan(self) -> Scan | None:
        now, now_ms = time.monotonic(), int(self.clock() * 1000)
        for exp in self._experiments:
            if self._due.get(("rescan", exp), 0.0) <= now:
                return Scan("rescan", exp, now_ms - int(self.config.assessment_window_s * 1000))
        return None

    def _due_tail(self) -> Scan | None:
        if self.config.backfill is not None or self.config.assessments_only:
            return None
        now = time.monotonic()
        for exp in self._experiments:
            if self._due.get(("tail", exp), 0.0) <= now:
                start = self._watermarks[exp] - int(self.config.overlap_s * 1000)
                return Scan("tail", exp, start)
        return None

    def _until_next_due(self) -> float:
        if self.config.backfill is not None:
            return 0.05
        if not self._due:
            return 0.0
        return max(0.0, min(self._due.values()) - time.monotonic())


class TableOnlyDeadLetters:
    """The dead-letter sink with no broker: the worker's batch already writes each dead letter
    to the ``dead_letters`` table, with the raw payload and the reason; nothing else to do."""

    def publish(self, letters: Iterable[DeadLetter]) -> None:
        for d in letters:
            logger.warning("dead letter (table only) origin=%s error=%s", d.provenance.topic,
                           d.error[:200])

    def flush(self, timeout_s: float = 30.0) -> None:
        return None

    def close(self) -> None:
        return None
