"""What an MLflow scan reads, decides and emits, without calling MLflow: the pure half of polling.

The ports a scan needs (``TraceServer``, ``StoreView``), its configuration and progress, the
page plan (``plan_page``: which traces of a page the store lacks or holds older) and the records
it emits on the pseudo topics ``mlflow:traces`` and ``mlflow:assessments``, as the JSON Kafka
carries. Record offsets are stable hashes of (id, version), so a re-read page re-emits the same
records and the store's upserts make that harmless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from consumers.errors import ConfigError
from consumers.events import RawRecord

TRACES_TOPIC = "mlflow:traces"
ASSESSMENTS_TOPIC = "mlflow:assessments"
MAX_PAGE = 500  # MLflow's own limit for search_traces
FETCH_CHUNK = 100  # traces fetched with spans per call
IN_PROGRESS = "IN_PROGRESS"

ScanKind = Literal["tail", "rescan", "backfill"]


# --- ports -----------------------------------------------------------------------------------


class InfoLike(Protocol):
    """What a scan reads of ``mlflow.entities.TraceInfo``."""

    trace_id: str
    request_time: int
    assessments: Sequence[Any]

    @property
    def state(self) -> Any: ...


class TraceLike(Protocol):
    """What a scan reads of ``mlflow.entities.Trace``."""

    @property
    def info(self) -> Any: ...

    def to_json(self) -> str: ...


class TraceServer(Protocol):
    """The MLflow calls a scan needs (``consumers.mlflow_client.MlflowTraceServer``; a fake in
    unit tests)."""

    def experiments(self) -> list[tuple[str, int]]:
        """Active experiments: (id, creation time ms)."""
        ...

    def page(self, experiment_id: str, since_ms: int, until_ms: int | None,
             page_token: str | None, max_results: int) -> tuple[list[Any], str | None]:
        """Trace infos with ``since_ms <= timestamp_ms [<= until_ms]``, oldest first."""
        ...

    def fetch(self, trace_ids: Sequence[str]) -> list[Any]:
        """The traces, with spans (missing ids are left out)."""
        ...

    def page_traces(self, experiment_id: str, since_ms: int, until_ms: int | None,
                    page_token: str | None, max_results: int) -> list[Any]:
        """The same page as ``page``, as whole traces with spans."""
        ...


@dataclass(frozen=True, slots=True)
class Known:
    """What the store holds of some traces: trace status, and assessment update times."""

    traces: Mapping[str, str]
    assessments: Mapping[str, int]


class StoreView(Protocol):
    """The store as the source reads it (``store.checkpoints.StoreCheckpoints``)."""

    def checkpoints(self, prefix: str) -> dict[str, dict[str, Any]]: ...

    def known(self, trace_ids: Sequence[str]) -> Known: ...


# --- configuration and state -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PollConfig:
    experiment_ids: tuple[str, ...] = ()  # empty: every active experiment
    poll_interval_s: float = 5.0
    overlap_s: float = 300.0
    start_lookback_s: float = 3600.0
    assessment_window_s: float = 86_400.0
    assessment_rescan_interval_s: float = 120.0
    page_size: int = MAX_PAGE
    experiments_refresh_s: float = 60.0
    backfill: tuple[int, int] | None = None  # (since_ms, until_ms): a finite backfill instead
    # Only assessments, by rescans: the traces come from another source (Kafka, OpenTelemetry).
    assessments_only: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= MAX_PAGE:
            raise ConfigError(f"mlflow page size must be 1..{MAX_PAGE}, got {self.page_size}")


@dataclass(slots=True)
class Scan:
    kind: ScanKind
    experiment_id: str
    start_ms: int
    until_ms: int | None = None
    token: str | None = None
    newest_ms: int = -1  # the newest trace start read so far


@dataclass(slots=True)
class Progress:
    """Backfill progress: traces and assessments emitted, and the window covered so far."""

    since_ms: int = 0
    until_ms: int = 0
    covered: dict[str, int] = field(default_factory=dict)  # experiment -> watermark
    traces: int = 0
    assessments: int = 0
    done: bool = False

    def fraction(self) -> float:
        span = max(self.until_ms - self.since_ms, 1)
        if not self.covered:
            return 1.0 if self.done else 0.0
        return min(1.0, sum(max(0, min(w, self.until_ms) - self.since_ms)
                            for w in self.covered.values()) / (span * len(self.covered)))


def checkpoint_name(kind: Literal["tail", "backfill"], experiment_id: str) -> str:
    return f"mlflow:{kind}:{experiment_id}"


def record_offset(*parts: object) -> int:
    """A stable offset for a polled record (63 bits), so a poison trace polled again maps to the
    same dead letter."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def state_name(state: Any) -> str:
    return str(getattr(state, "value", state))


# --- the pure part: one page of infos -> what to fetch and what to emit -----------------------


@dataclass(frozen=True, slots=True)
class PagePlan:
    fetch: list[str]  # trace ids to fetch with spans
    assessments: list[Any]  # assessments to emit (of traces not fetched)


def plan_page(infos: Sequence[InfoLike], known: Known, *,
              assessments_only: bool = False) -> PagePlan:
    """Compare a page with the store: fetch new traces and IN_PROGRESS ones that finished; emit
    assessments that are new or newer than the stored version. ``assessments_only``: fetch no
    trace (another source brings them), emit the assessments of every trace of the page."""
    fetch: list[str] = []
    emit: list[Any] = []
    for info in infos:
        stored = known.traces.get(info.trace_id)
        state = state_name(info.state)
        if assessments_only:
            emit.extend(new_assessments(info.assessments or (), known))
            continue
        if stored is None or (stored == IN_PROGRESS and state != IN_PROGRESS):
            fetch.append(info.trace_id)  # its assessments come with the fetched trace
            continue
        emit.extend(new_assessments(info.assessments, known))
    return PagePlan(fetch, emit)


def new_assessments(assessments: Sequence[Any], known: Known) -> list[Any]:
    out = []
    for a in assessments:
        updated = _ms(getattr(a, "last_update_time_ms", None))
        stored = known.assessments.get(a.assessment_id)
        if stored is None or (updated is not None and updated > stored):
            out.append(a)
    return out


def _ms(value: Any) -> int | None:
    return int(value) if value is not None else None


def trace_record(trace: TraceLike) -> RawRecord:
    info = trace.info
    return RawRecord(TRACES_TOPIC, 0, record_offset(info.trace_id, state_name(info.state)),
                     info.trace_id.encode(), trace.to_json().encode(), int(info.request_time))


def assessment_record(a: Any) -> RawRecord:
    doc = a.to_dictionary()
    return RawRecord(ASSESSMENTS_TOPIC, 0,
                     record_offset(a.assessment_id, getattr(a, "last_update_time_ms", "")),
                     str(a.trace_id).encode(), orjson.dumps(doc, default=str),
                     int(getattr(a, "last_update_time_ms", 0) or 0))
