"""The curator on both backends with the files sink: versions, dedupe, skips, exports, and a
failed merge retried without duplicates (invariant 4 in docs/design.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from consumers.events import Provenance
from consumers.formats import decode_assessment, decode_trace
from store import datasets as ds
from store.engine import make_engine
from store.upserts import Batch
from store.writer import SqlWriter
from tests import payloads as P
from worker.cli.main import main
from worker.curation.curator import Curator
from worker.curation.sinks import FileDatasetSink
from worker.curation.specs import DatasetSpec, SinkSpec, input_hash, parse_specs
from worker.rules.engine import load_rules

pytestmark = pytest.mark.integration
BASE_MS = 1_795_000_000_000
PROV = Provenance("t", 0, 0)


def _ingest(engine: Any, docs: list[dict[str, Any]], assessments: list[dict[str, Any]] = ()
            ) -> None:  # type: ignore[assignment]
    SqlWriter(engine, load_rules(None)).write(Batch(
        traces=[decode_trace(P.dumps(d), PROV, 1 << 22) for d in docs],
        assessments=[decode_assessment(P.dumps(a), PROV, 1 << 22) for a in assessments]),
        BASE_MS)


def _flat(i: int, status: str = "ERROR", request: Any = None, latency: int = 300) -> dict[str, Any]:
    return {"trace_id": f"tr-cur-{i:05d}", "experiment_id": "1", "timestamp_ms": BASE_MS + i,
            "execution_time_ms": latency, "status": status,
            "request": {"question": f"q{i}"} if request is None else request,
            "response": {"answer": f"a{i}"}, "tags": {"environment": "production"},
            "metadata": {}}


class FlakySink(FileDatasetSink):
    """The files sink, failing the first ``failures`` merges after writing half the records."""

    def __init__(self, path: str, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.calls = 0

    def merge(self, dataset: str, sink_dataset_id: str | None, records: Any, version: int,
              digest: str) -> str | None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            super().merge(dataset, sink_dataset_id, records[: len(records) // 2], version,
                          digest)
            raise ConnectionError("sink went away mid-merge")
        return super().merge(dataset, sink_dataset_id, records, version, digest)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_versions_dedupe_and_exports(store_url: str, tmp_path: Path, capsys: Any,
                                     monkeypatch: Any) -> None:
    engine = make_engine(store_url)
    docs = [_flat(i) for i in range(6)] + [_flat(6, request={})]  # 7 errors, one without inputs
    docs.append(_flat(7, request={"question": "q0"}))  # the same inputs as trace 0
    docs.append(_flat(8, status="OK"))  # not a candidate
    expect = P.assessment_doc("expectation", trace_id=docs[1]["trace_id"])
    _ingest(engine, docs, [expect])
    spec = DatasetSpec("regressions", sink=SinkSpec("files", path=str(tmp_path)))
    sink = FileDatasetSink(str(tmp_path))
    curator = Curator(engine, [spec], {"regressions": sink})

    first = curator.run_cycle()[0]
    assert (first.version, first.state, first.records, first.skipped) == (1, "done", 6, 2)
    v1 = _lines(sink.file_for("regressions", 1))
    assert sorted(r["inputs"]["question"] for r in v1) == [f"q{i}" for i in range(6)]
    rec1 = next(r for r in v1 if r["inputs"]["question"] == "q1")
    assert rec1["expectations"] == {"expected_response": expect["expectation"]["value"]}
    assert rec1["outputs"] == {"answer": "a1"}
    assert rec1["source"] == {"source_type": "TRACE",
                              "source_data": {"trace_id": docs[1]["trace_id"]}}
    assert rec1["tags"]["trace_curator.rule"] == "error_case"
    assert rec1["tags"]["trace_curator.dataset_version"] == "1"

    assert curator.run_cycle()[0].state == "nothing new"  # no version without new candidates
    _ingest(engine, [_flat(20), _flat(21)])
    second = curator.run_cycle()[0]
    assert (second.version, second.records) == (2, 2)
    with engine.connect() as conn:
        versions = ds.versions(conn, "regressions")
        skips = conn.exec_driver_sql("SELECT trace_id, reason FROM dataset_skips").all()
    assert [(v.version, v.state, v.record_count) for v in versions] == [(1, "done", 6),
                                                                         (2, "done", 2)]
    assert dict(skips) == {docs[6]["trace_id"]: "no inputs",
                           docs[7]["trace_id"]: f"same inputs as {docs[0]['trace_id']}"}

    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    out = tmp_path / "v1.jsonl"
    assert main(["datasets", "export", "regressions", "--version", "1", "--output",
                 str(out)]) == 0
    assert _lines(out) == sorted(v1, key=lambda r: input_hash(r["inputs"]))  # exactly v1
    assert main(["datasets", "export", "regressions", "--version", "2", "--format",
                 "parquet", "--output", str(tmp_path / "v2.parquet")]) == 0
    frame = pd.read_parquet(tmp_path / "v2.parquet")
    assert len(frame) == 8  # the dataset as of version 2
    capsys.readouterr()
    assert main(["datasets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "regressions" in listing and "error_case 6" in listing
    assert main(["datasets", "show", "regressions", "--version", "1"]) == 0
    assert "6 added, 6 in the dataset as of this version" in capsys.readouterr().out
    assert main(["datasets", "show", "regressions", "--version", "9"]) == 1


def test_a_failed_merge_is_retried_before_anything_new(store_url: str, tmp_path: Path) -> None:
    engine = make_engine(store_url)
    _ingest(engine, [_flat(i) for i in range(10)])
    spec = DatasetSpec("flaky", sink=SinkSpec("files", path=str(tmp_path)))
    sink = FlakySink(str(tmp_path), failures=2)
    curator = Curator(engine, [spec], {"flaky": sink})
    assert curator.run_cycle()[0].state == "pending"
    _ingest(engine, [_flat(50)])  # new candidates wait until version 1 is confirmed
    retry = curator.run_cycle()[0]
    assert (retry.version, retry.state) == (1, "pending")
    with engine.connect() as conn:
        v = ds.versions(conn, "flaky")[0]
    assert (v.state, v.attempts) == ("pending", 2)
    assert "sink went away" in (v.last_error or "")
    done = curator.run_cycle()[0]
    assert (done.version, done.state, done.records) == (1, "done", 10)
    assert len(_lines(sink.file_for("flaky", 1))) == 10
    assert curator.run_cycle()[0].version == 2  # then the new candidate
    with engine.connect() as conn:
        rows = ds.version_records(conn, "flaky", 2, cumulative=True)
    assert len(rows) == 11 == len({input_hash(r["inputs"]) for r in rows})


def test_spec_selection_environment_filter_and_tag_values(store_url: str,
                                                          tmp_path: Path) -> None:
    engine = make_engine(store_url)
    docs = [_flat(i) for i in range(4)] + [_flat(10, status="OK", latency=9000)]
    docs[3]["tags"] = {"environment": "staging"}
    _ingest(engine, docs)
    specs = parse_specs({"datasets": [
        {"name": "prod_errors", "tag": {"values": ["error_case"]}, "environment": "production",
         "sink": {"kind": "files", "path": str(tmp_path)}},
        {"name": "slow", "tag": {"values": ["slow_response"]}, "include_outputs": False,
         "filter": "attributes.execution_time_ms > 8000",
         "sink": {"kind": "files", "path": str(tmp_path)}},
    ]})
    sinks = {s.name: FileDatasetSink(str(tmp_path)) for s in specs}
    results = {r.dataset: r for r in Curator(engine, specs, sinks).run_cycle()}
    assert results["prod_errors"].records == 3
    assert results["slow"].records == 1
    slow = _lines(sinks["slow"].file_for("slow", 1))
    assert "outputs" not in slow[0]


def test_the_worker_curates_beside_the_loop(settings_factory: Any, producer: Any,
                                            run_worker: Any, store_url: str,
                                            tmp_path: Path) -> None:
    """Curation on: the worker's curator thread creates a version from what it ingested."""
    from tests.conftest import publish

    specs = tmp_path / "datasets.yaml"
    specs.write_text(f"datasets:\n  - name: from_worker\n    sink: {{kind: files, path: "
                     f"{tmp_path}}}\n")
    settings = settings_factory(curation="on", datasets_file=specs, curate_interval_s=0.3)
    publish(producer, settings.trace_topic, [_flat(i) for i in range(5)])
    run_worker(settings, idle_s=2.0)
    engine = make_engine(store_url)
    with engine.connect() as conn:
        versions = ds.versions(conn, "from_worker")
    assert versions and all(v.state == "done" for v in versions)
    assert sum(v.record_count for v in versions) == 5
    engine.dispose()
