"""The curator: each cycle merges new tagged candidates into every dataset as a new version.

Per dataset, a cycle is (invariant 4 in docs/design.md):
  1. finish a pending version first: merge exactly its stored records again, then mark it done;
  2. select candidates that are neither in the dataset nor skipped by it, and apply the spec's
     selection (environment, extra filter);
  3. build records; skip, log and remember traces without inputs, inputs the dataset holds,
     and records that cannot be serialized (e.g. nested deeper than orjson writes);
  4. sample (``all`` or ``stratified``), at most ``max_records_per_version``;
  5. write version N as ``pending`` with its records, in one transaction;
  6. merge the records into the sink; 7. mark version N ``done``.
A failure or a crash at 6 leaves N pending, and the next cycle retries it before anything new.
A cycle that finds nothing new creates no version. A dataset whose cycle fails (a bad spec,
a store error) is logged and reported ``failed``; the other datasets go on. ``CuratorThread``
runs cycles beside the worker loop every ``curate_interval_s``, under a PostgreSQL advisory
lock (one curator among several workers); ``trace-curator curate --once`` runs one cycle now.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from consumers.redact import redact
from store import datasets as ds
from store.leader import LeaderLock
from worker.curation.sinks import DatasetSink, FileDatasetSink
from worker.curation.specs import (
    DatasetSpec,
    build_record,
    input_hash,
    matches,
    record_problem,
    sample,
    stamp_version,
    version_digest,
)
from worker.timeparse import parse_time_ms

logger = logging.getLogger(__name__)
SCAN_LIMIT = 20_000  # candidates read per dataset and cycle


@dataclass(frozen=True, slots=True)
class CycleResult:
    dataset: str
    version: int | None
    records: int
    skipped: int
    state: str  # "done" | "pending" | "nothing new" | "failed"
    error: str | None = None

    def line(self) -> str:
        if self.state == "failed":
            return f"{self.dataset}: failed; error: {self.error}"
        if self.version is None:
            return f"{self.dataset}: nothing new (skipped {self.skipped})"
        text = (f"{self.dataset}: version {self.version} {self.state}, {self.records} records"
                f" (skipped {self.skipped})")
        return text + (f"; error: {self.error}" if self.error else "")


def selection_digest(spec: DatasetSpec) -> str:
    raw = f"{spec.environment!r}|{spec.filter!r}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class Curator:
    def __init__(self, engine: Engine, specs: Sequence[DatasetSpec],
                 sinks: Mapping[str, DatasetSink], *, dimension_tag: str = "environment",
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.specs = tuple(specs)
        self.sinks = dict(sinks)  # by dataset name
        self.dimension_tag = dimension_tag
        self.clock = clock

    def validate(self) -> None:
        """Every sink's configuration; raises ConfigError."""
        for spec in self.specs:
            sink = self.sinks[spec.name]
            sink.validate()
            if isinstance(sink, FileDatasetSink):
                sink.folder_for(spec.name)  # inside the sink's folder, symlinks resolved

    def run_cycle(self) -> list[CycleResult]:
        """One cycle per dataset; a dataset whose cycle fails does not stop the others."""
        results = []
        for spec in self.specs:
            try:
                result = self.curate(spec)
            except Exception as exc:  # a bug or an outage in one dataset: log, go on
                error = redact(f"{type(exc).__name__}: {str(exc).strip()}", 500)
                logger.exception("curation %s: cycle failed error=%s", spec.name, error)
                result = CycleResult(spec.name, None, 0, 0, "failed", error)
            else:
                logger.info("curation %s", result.line())
            results.append(result)
        return results

    # -- the named steps -----------------------------------------------------------------------

    def curate(self, spec: DatasetSpec) -> CycleResult:
        now_ms = int(self.clock() * 1000)
        with self.engine.begin() as conn:
            ds.ensure_dataset(conn, spec.name, spec.sink.kind, now_ms)
            pending = ds.pending_version(conn, spec.name)
        if pending is not None:  # step 1: what an earlier cycle could not confirm
            return self.merge(spec, pending.version, pending.digest, skipped=0)
        records, skips = self.select(spec, now_ms)
        if not records:
            if skips:
                with self.engine.begin() as conn:
                    ds.skip(conn, spec.name, skips, now_ms)
            return CycleResult(spec.name, None, 0, len(skips), "nothing new")
        with self.engine.begin() as conn:  # step 5
            version = ds.next_version(conn, spec.name)
            stamped = [(h, tid, stamp_version(rec, version)) for h, tid, rec in records]
            digest = version_digest(rec for _h, _t, rec in stamped)
            mix = Counter(rec["tags"]["trace_curator.rule"] or "?" for _h, _t, rec in stamped)
            ds.create_version(conn, spec.name, version, stamped, digest, mix, now_ms)
            ds.skip(conn, spec.name, skips, now_ms)
        return self.merge(spec, version, digest, skipped=len(skips))

    def select(self, spec: DatasetSpec, now_ms: int
               ) -> tuple[list[tuple[str, str, dict[str, Any]]], list[tuple[str, str, str]]]:
        """Steps 2-4: (records as (hash, trace id, record), skips as (trace id, reason, sel))."""
        since_ms = parse_time_ms(spec.since, now_ms) if spec.since else None
        selection = selection_digest(spec)
        with self.engine.connect() as conn:
            found = ds.candidates(conn, spec.name, spec.tag_key, spec.tag_values, since_ms,
                                  spec.experiment_id, SCAN_LIMIT, selection)
            skips: list[tuple[str, str, str]] = []
            chosen = []
            for c in found:
                if matches(c, spec, self.dimension_tag):
                    chosen.append(c)
                else:
                    skips.append((c.trace_id, "not selected by the spec", selection))
            built: dict[str, tuple[str, str, dict[str, Any]]] = {}
            for c in sample(chosen, spec) if spec.strategy == "all" else chosen:
                record = build_record(c, spec, now_ms)
                if record is None:
                    logger.info("curation %s: skipped trace_id=%s: it has no inputs",
                                spec.name, c.trace_id)
                    skips.append((c.trace_id, "no inputs", ""))
                    continue
                if problem := record_problem(record):
                    logger.warning("curation %s: skipped trace_id=%s reason=%s",
                                   spec.name, c.trace_id, problem)
                    skips.append((c.trace_id, problem, ""))
                    continue
                h = input_hash(record["inputs"])
                if h in built:
                    skips.append((c.trace_id, f"same inputs as {built[h][1]}", ""))
                    continue
                built[h] = (h, c.trace_id, record)
            held = ds.known_hashes(conn, spec.name, list(built))
        for h in held:
            skips.append((built[h][1], "inputs already in the dataset", ""))
            del built[h]
        if spec.strategy == "stratified":
            by_trace = {tid: (h, tid, rec) for h, tid, rec in built.values()}
            keep = sample([c for c in chosen if c.trace_id in by_trace], spec)
            return [by_trace[c.trace_id] for c in keep], skips
        return list(built.values())[:spec.max_records_per_version], skips

    def merge(self, spec: DatasetSpec, version: int, digest: str, skipped: int) -> CycleResult:
        """Steps 6-7: merge the version's stored records; done only once the sink confirmed."""
        with self.engine.connect() as conn:
            records = ds.version_records(conn, spec.name, version)
            sink_id = ds.sink_dataset_id(conn, spec.name)
        try:
            new_id = self.sinks[spec.name].merge(spec.name, sink_id, records, version, digest)
        except Exception as exc:  # any failure: the version stays pending, retried next cycle
            error = redact(f"{type(exc).__name__}: {str(exc).strip()}", 500)
            logger.warning("curation %s: merge of version %d failed, retrying next cycle "
                           "error=%s", spec.name, version, error)
            with self.engine.begin() as conn:
                ds.mark_failed(conn, spec.name, version, error)
            return CycleResult(spec.name, version, len(records), skipped, "pending", error)
        with self.engine.begin() as conn:
            if new_id and new_id != sink_id:
                ds.set_sink_dataset_id(conn, spec.name, new_id)
            ds.mark_done(conn, spec.name, version, int(self.clock() * 1000))
        return CycleResult(spec.name, version, len(records), skipped, "done")


class CuratorThread:
    """Curation cycles beside the worker loop, one leader among workers (PostgreSQL lock)."""

    def __init__(self, curator: Curator, interval_s: float, engine: Engine) -> None:
        self.curator = curator
        self.interval_s = interval_s
        self.lock = LeaderLock(engine, "curator")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="curator", daemon=True)
        self.cycles = 0
        # For /metrics: dataset cycles by outcome ("done", "pending", "nothing new", "failed"),
        # and the wall time of the last cycle in which every dataset succeeded.
        self.outcomes: dict[str, int] = {}
        self.last_success_unix: float | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self.lock.release()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.lock.ensure():
                    results = self.curator.run_cycle()
                    self.cycles += 1
                    for r in results:
                        self.outcomes[r.state] = self.outcomes.get(r.state, 0) + 1
                    if all(r.state not in ("pending", "failed") for r in results):
                        self.last_success_unix = time.time()
            except Exception:  # a store outage or a bug in one cycle must not end curation
                self.outcomes["failed"] = self.outcomes.get("failed", 0) + 1
                logger.exception("curation cycle failed; retrying in %.0fs", self.interval_s)
            self._stop.wait(self.interval_s)
