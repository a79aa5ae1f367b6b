"""The polling source's pure logic with an in-memory server and store: what a page fetches and
emits, that a watermark moves only through checkpoint + commit, that an uncommitted page is read
again, and the backfill's resume and progress. The real-server behaviour is in
tests/integration/test_mlflow_source.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from consumers.errors import ConfigError, TransientError
from consumers.mlflow_plan import (
    ASSESSMENTS_TOPIC,
    TRACES_TOPIC,
    Known,
    PollConfig,
    plan_page,
    record_offset,
)
from consumers.mlflow_source import MlflowSource

NOW_MS = 1_800_000_000_000


@dataclass
class FakeAssessment:
    assessment_id: str
    trace_id: str
    last_update_time_ms: int

    def to_dictionary(self) -> dict[str, Any]:
        return {"assessment_id": self.assessment_id, "trace_id": self.trace_id,
                "last_update_time_ms": self.last_update_time_ms}


@dataclass
class FakeInfo:
    trace_id: str
    request_time: int
    state: str = "OK"
    assessments: list[FakeAssessment] = field(default_factory=list)


@dataclass
class FakeTrace:
    info: FakeInfo

    def to_json(self) -> str:
        return orjson.dumps({"info": {"trace_id": self.info.trace_id}}).decode()


class FakeServer:
    def __init__(self, infos: list[FakeInfo], fail_pages: int = 0) -> None:
        self.infos = infos
        self.fetched: list[str] = []
        self.pages: list[tuple[int, str | None]] = []
        self.fail_pages = fail_pages
        self.paged_with_spans = 0
        self.drop_from_page: set[str] = set()  # as if the page moved before it was re-read

    def experiments(self) -> list[tuple[str, int]]:
        return [("1", 0)]

    def page(self, experiment_id: str, since_ms: int, until_ms: int | None,
             page_token: str | None, max_results: int) -> tuple[list[Any], str | None]:
        if self.fail_pages:
            self.fail_pages -= 1
            raise ConnectionError("Connection refused")
        self.pages.append((since_ms, page_token))
        rows = sorted((i for i in self.infos if i.request_time >= since_ms
                       and (until_ms is None or i.request_time <= until_ms)),
                      key=lambda i: i.request_time)
        start = int(page_token or 0)
        end = start + max_results
        return rows[start:end], (str(end) if end < len(rows) else None)

    def fetch(self, trace_ids: Sequence[str]) -> list[Any]:
        self.fetched.extend(trace_ids)
        by_id = {i.trace_id: i for i in self.infos}
        return [FakeTrace(by_id[t]) for t in trace_ids if t in by_id]

    def page_traces(self, experiment_id: str, since_ms: int, until_ms: int | None,
                    page_token: str | None, max_results: int) -> list[Any]:
        self.paged_with_spans += 1
        rows, _ = self.page(experiment_id, since_ms, until_ms, page_token, max_results)
        self.pages.pop()
        return [FakeTrace(i) for i in rows if i.trace_id not in self.drop_from_page]


class FakeStore:
    def __init__(self) -> None:
        self.traces: dict[str, str] = {}
        self.assessments: dict[str, int] = {}
        self.marks: dict[str, dict[str, Any]] = {}

    def checkpoints(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.marks.items() if k.startswith(prefix)}

    def known(self, trace_ids: Sequence[str]) -> Known:
        return Known({t: s for t, s in self.traces.items() if t in trace_ids},
                     dict(self.assessments))

    def store(self, source: MlflowSource, records: list[Any]) -> None:
        """What the worker does with a batch: write it and the checkpoint, then commit."""
        marks = source.checkpoint()
        for r in records:
            doc = orjson.loads(r.value)
            if r.topic == TRACES_TOPIC:
                self.traces[doc["info"]["trace_id"]] = "OK"
            else:
                self.assessments[doc["assessment_id"]] = doc["last_update_time_ms"]
        self.marks.update(marks)
        source.commit({})


def _source(server: FakeServer, store: FakeStore, **config: Any) -> MlflowSource:
    cfg = PollConfig(**{"experiment_ids": ("1",), "page_size": 3, "overlap_s": 10.0,
                        "start_lookback_s": 3600.0, **config})
    return MlflowSource(server, store, cfg, clock=lambda: NOW_MS / 1000, sleep=lambda s: None)


def _drain(source: MlflowSource, store: FakeStore, polls: int = 20) -> int:
    n = 0
    for _ in range(polls):
        records = source.poll(0, 100)
        if records:
            n += len(records)
            store.store(source, records)
    return n


def test_a_page_fetches_new_and_finished_traces_and_emits_newer_assessments() -> None:
    a_old = FakeAssessment("a1", "t1", 5)
    a_new = FakeAssessment("a2", "t1", 9)
    infos = [FakeInfo("t1", 1, assessments=[a_old, a_new]), FakeInfo("t2", 2),
             FakeInfo("t3", 3, state="OK"), FakeInfo("t4", 4, state="IN_PROGRESS")]
    known = Known({"t1": "OK", "t3": "IN_PROGRESS", "t4": "IN_PROGRESS"}, {"a1": 5, "a2": 7})
    plan = plan_page(infos, known)
    assert plan.fetch == ["t2", "t3"]  # new; and IN_PROGRESS in the store, finished in MLflow
    assert plan.assessments == [a_new]  # a1 is stored at that version


def test_watermark_moves_only_with_a_committed_batch_and_a_page_is_reread_until_then() -> None:
    infos = [FakeInfo(f"t{i}", NOW_MS - 1000 + i) for i in range(5)]
    server, store = FakeServer(infos), FakeStore()
    source = _source(server, store)
    first = source.poll(0, 100)
    assert [r.key for r in first] == [b"t0", b"t1", b"t2"]
    marks = source.checkpoint()
    assert marks == {"mlflow:tail:1": {"watermark_ms": NOW_MS - 998}}
    again = source.poll(0, 100)  # the batch was not committed: the same page again
    assert [r.key for r in again] == [b"t0", b"t1", b"t2"]
    store.store(source, again)
    rest = source.poll(0, 100)
    assert [r.key for r in rest] == [b"t3", b"t4"]
    store.store(source, rest)
    assert store.marks["mlflow:tail:1"]["watermark_ms"] == NOW_MS - 996
    assert _drain(source, store) == 0  # later polls find nothing new: the store is the seen-set


def test_a_restart_resumes_from_the_stored_watermark_minus_the_overlap() -> None:
    infos = [FakeInfo(f"t{i}", NOW_MS - 60_000 + i * 1000) for i in range(10)]
    server, store = FakeServer(infos), FakeStore()
    assert _drain(_source(server, store), store) == 10
    server2 = FakeServer(infos)
    restarted = _source(server2, store)
    assert _drain(restarted, store) == 0
    wm = store.marks["mlflow:tail:1"]["watermark_ms"]
    assert server2.pages[0][0] == wm - 10_000  # the overlap window
    assert server2.fetched == []


def test_a_mostly_new_page_is_read_again_with_spans_a_mostly_stored_one_by_id() -> None:
    infos = [FakeInfo(f"t{i}", NOW_MS - 100 + i) for i in range(8)]
    server, store = FakeServer(infos), FakeStore()
    server.drop_from_page = {"t1"}  # the page moved before it was read again
    store.traces.update(dict.fromkeys(["t2", "t3", "t4", "t5", "t6"], "OK"))
    source = _source(server, store, page_size=8)
    records = source.poll(0, 100)  # 3 of 8 needed: the page again, with spans
    assert [r.key for r in records] == [b"t0", b"t1", b"t7"]  # in page order
    assert server.paged_with_spans == 1 and server.fetched == ["t1"]
    server2, store2 = FakeServer(infos), FakeStore()
    store2.traces.update({i.trace_id: "OK" for i in infos[:7]})
    records = _source(server2, store2, page_size=8).poll(0, 100)  # 1 of 8: by id
    assert [r.key for r in records] == [b"t7"]
    assert server2.paged_with_spans == 0 and server2.fetched == ["t7"]


def test_unreachable_mlflow_is_transient_and_the_page_is_read_after() -> None:
    infos = [FakeInfo("t0", NOW_MS - 10)]
    server, store = FakeServer(infos, fail_pages=1), FakeStore()
    source = _source(server, store)
    with pytest.raises(TransientError, match="Connection refused"):
        source.poll(0, 100)
    assert [r.key for r in source.poll(0, 100)] == [b"t0"]


def test_backfill_resumes_reports_progress_and_ends() -> None:
    since, until = NOW_MS - 100_000, NOW_MS
    infos = [FakeInfo(f"t{i}", since + i * 10_000) for i in range(10)]
    infos.append(FakeInfo("older", since - 1))
    server, store = FakeServer(infos), FakeStore()
    part = _source(server, store, backfill=(since, until))
    store.store(part, part.poll(0, 100))  # one page, then "interrupted"
    assert not part.exhausted()
    assert 0 < part.progress.fraction() < 1
    resumed = _source(FakeServer(infos), store, backfill=(since, until))
    n = _drain(resumed, store)
    assert resumed.exhausted() and resumed.progress.fraction() == 1.0
    assert n == 7 and set(store.traces) == {f"t{i}" for i in range(10)}  # "older" is outside
    assert store.marks["mlflow:backfill:1"]["since_ms"] == since


def test_record_offsets_are_stable_and_assessments_go_to_their_topic() -> None:
    a = FakeAssessment("a1", "t1", 5)
    server, store = FakeServer([FakeInfo("t1", NOW_MS - 5, assessments=[a])]), FakeStore()
    records = _source(server, store).poll(0, 100)
    assert [r.topic for r in records] == [TRACES_TOPIC, ASSESSMENTS_TOPIC]
    assert records[0].offset == record_offset("t1", "OK") >= 0


def test_page_size_is_bounded_by_mlflow() -> None:
    with pytest.raises(ConfigError, match="1..500"):
        PollConfig(page_size=501)


def test_a_long_rescan_yields_to_due_tail_scans_and_still_finishes() -> None:
    infos = [FakeInfo(f"t{i}", NOW_MS - 1_000_000 + i) for i in range(10)]
    server, store = FakeServer(infos), FakeStore()
    store.traces.update({i.trace_id: "OK" for i in infos})  # nothing new: pure scanning
    source = _source(server, store, page_size=2, poll_interval_s=0.0,
                     assessment_rescan_interval_s=3600.0, assessment_window_s=3600.0,
                     start_lookback_s=60.0)
    for _ in range(40):
        assert source.poll(0, 100) == []
    rescan_since = NOW_MS - 3_600_000
    kinds = ["rescan" if since == rescan_since else "tail" for since, _ in server.pages]
    rescan_tokens = [tok for since, tok in server.pages if since == rescan_since]
    assert rescan_tokens[:5] == [None, "2", "4", "6", "8"]  # it got through, page by page
    at = [i for i, k in enumerate(kinds) if k == "rescan"]
    assert "tail" in kinds[at[0]:at[4]]  # tails ran while the rescan was under way


def test_only_server_side_and_connection_errors_are_transient() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    from consumers.mlflow_client import is_transient

    assert is_transient(ConnectionRefusedError("refused"))
    assert is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert is_transient(MlflowException("API request failed"))  # INTERNAL_ERROR: a 500
    assert not is_transient(MlflowException("bad filter", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(ValueError("a bug"))
