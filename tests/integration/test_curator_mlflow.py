"""Curation end to end against a real MLflow server: real traces with feedback and expectation
assessments flow through the broker and the worker, ``trace-curator curate --once`` merges the
tagged candidates into an MLflow evaluation dataset, and ``mlflow.genai.datasets`` finds exactly
the records our version ledger holds. A second cycle adds version 2 with only the new records,
and ``datasets export NAME --version 1`` still gives exactly version 1
(invariant 4 in docs/design.md).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.genai import datasets as mlflow_datasets
from sqlalchemy import func, select

from consumers.producer import publish_assessment, publish_trace
from store import datasets as ds
from store.engine import make_engine
from store.models import DeadLetter
from tests import mlflow_traffic as T
from worker.cli.main import main

pytestmark = [
    pytest.mark.integration,
    # MLflow 3.17's SQL store module uses a loader strategy SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    # MLflow warns while it starts a span; raised, the warning makes it return a no-op span.
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]
PROVENANCE = ("trace_curator.source_trace_id", "trace_curator.rule",
              "trace_curator.dataset_version")


@dataclass
class Logged:
    """The traces and assessments logged once per module, shared by both store backends."""

    experiment_id: str
    first: list[Any]  # Trace objects of the first round (candidates and others)
    first_assessments: list[Any]
    second: list[Any]  # the second round: new errors, one with inputs already curated, an OK
    rules: dict[str, str] = field(default_factory=dict)  # candidate id -> rule, round 1
    rules2: dict[str, str] = field(default_factory=dict)  # candidate id -> rule, round 2
    expectations: dict[str, dict[str, Any]] = field(default_factory=dict)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def logged(mlflow_server: Any) -> Iterator[Logged]:
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        run = uuid.uuid4().hex[:8]
        eid = mlflow.create_experiment(f"curate-e2e-{run}")

        def log(kind: str, name: str) -> str:
            return T.log_trace(eid, kind, question=f"{name} {run}?")

        err = [log("error", f"error {i}") for i in range(4)]
        low = [log("ok", f"low {i}") for i in range(2)]
        slow = log("slow", "slow 0")
        others = [log("ok", "fine 0"), log("ok", "fine 1"), log("ok", "passing 0")]
        passing = others[2]
        first = T.fetch([*err, *low, slow, *others])
        assessments = [
            mlflow.log_feedback(trace_id=err[1], name="quality", value=0.1),
            mlflow.log_feedback(trace_id=low[0], name="quality", value=0.2),
            mlflow.log_feedback(trace_id=low[1], name="is_correct", value=False),
            mlflow.log_feedback(trace_id=passing, name="quality", value=0.9),
            mlflow.log_expectation(trace_id=err[0], name="expected_response",
                                   value="Refunds take 30 days."),
            mlflow.log_expectation(trace_id=low[0], name="expected_facts",
                                   value=["refund", "30 days"]),
            mlflow.log_expectation(trace_id=passing, name="expected_response", value="x"),
        ]
        new_err = [log("error", f"error {i}") for i in range(4, 7)]
        same_inputs = log("error", "error 0")  # the inputs of a record version 1 holds
        second = T.fetch([*new_err, same_inputs, log("ok", "fine 2")])
        data = Logged(eid, first, assessments, second)
        data.rules = {**dict.fromkeys(err, "error_case"), **dict.fromkeys(low, "low_score"),
                      slow: "slow_response"}
        data.rules2 = dict.fromkeys(new_err, "error_case")
        data.expectations = {err[0]: {"expected_response": "Refunds take 30 days."},
                             low[0]: {"expected_facts": ["refund", "30 days"]}}
        data.scores = {err[1]: {"quality": 0.1}, low[0]: {"quality": 0.2},
                       low[1]: {"is_correct": False}}
        yield data
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets; not in the hint


@pytest.fixture
def tracking(mlflow_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The tracking URI for this test's MLflow calls and for the curator run in-process."""
    mlflow.set_tracking_uri(mlflow_server.uri)
    # The curator sets these two in os.environ (no MLflow retries); restore them afterwards.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    yield mlflow_server.uri
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def _ingest(settings: Any, producer: Any, run_worker: Any, traces: list[Any],
            assessments: list[Any] = ()) -> None:  # type: ignore[assignment]
    for t in traces:
        publish_trace(producer, t, settings.trace_topic)
    for a in assessments:
        publish_assessment(producer, a, settings.assessment_topic)
    producer.flush()
    stats = run_worker(settings)
    assert stats.records == len(traces) + len(assessments)
    engine = make_engine(settings.store_url_plain)
    with engine.connect() as conn:  # list expectations arrive as MLflow's serialized_value
        dead = conn.execute(select(func.count()).select_from(DeadLetter)).scalar()
    engine.dispose()
    assert dead == 0


def _mlflow_records(name: str) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The one MLflow dataset named ``name``, and its records by source trace id."""
    found = list(mlflow_datasets.search_datasets(filter_string=f"name = '{name}'"))
    assert len(found) == 1, f"{len(found)} MLflow datasets named {name}"
    dataset = mlflow_datasets.get_dataset(dataset_id=found[0].dataset_id)
    rows = dataset.to_df().to_dict("records")
    by_trace = {r["tags"]["trace_curator.source_trace_id"]: r for r in rows}
    assert len(by_trace) == len(rows), "a trace is in the MLflow dataset more than once"
    return dataset, by_trace


def _request(trace: Any) -> dict[str, Any]:
    return json.loads(trace.data.request)  # type: ignore[no-any-return]


def _outputs(trace: Any) -> dict[str, Any]:
    response = json.loads(trace.data.response) if trace.data.response else None
    return {} if response is None else response if isinstance(response, dict) else {
        "response": response}


def _own_tags(row: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in row["tags"].items() if k != "mlflow.user"}


def test_curated_versions_in_mlflow_match_the_ledger(
        logged: Logged, tracking: str, store_url: str, settings_factory: Any, producer: Any,
        run_worker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cur-e2e-{uuid.uuid4().hex[:8]}"  # one per backend: the server is shared
    spec = tmp_path / "datasets.yaml"
    spec.write_text(f"datasets:\n  - name: {name}\n    experiment_id: '{logged.experiment_id}'\n"
                    f"    sink: {{kind: mlflow, experiment_id: '{logged.experiment_id}'}}\n")
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("TRACE_CURATOR_DATASETS_FILE", str(spec))
    settings = settings_factory()  # no tag write-back, no curation inside the worker
    engine = make_engine(store_url)
    by_id = {t.info.trace_id: t for t in [*logged.first, *logged.second]}

    # Round 1: 7 candidates (4 errors, 2 low scores, 1 slow) among 10 traces.
    _ingest(settings, producer, run_worker, logged.first, logged.first_assessments)
    capsys.readouterr()
    assert main(["curate", "--once"]) == 0
    assert f"{name}: version 1 done, 7 records (skipped 0)" in capsys.readouterr().out
    with engine.connect() as conn:
        v1 = ds.versions(conn, name)
        v1_records = ds.version_records(conn, name, 1, cumulative=True)
        _sink, sink_id = ds.ensure_dataset(conn, name, "mlflow", 0)
    assert [(v.version, v.state, v.record_count) for v in v1] == [(1, "done", 7)]
    assert dict(v1[0].rule_mix) == {"error_case": 4, "low_score": 2, "slow_response": 1}

    dataset, rows = _mlflow_records(name)
    assert dataset.dataset_id == sink_id
    assert dataset.experiment_ids == [logged.experiment_id]
    assert {k: dataset.tags[k] for k in ("version", "digest")} == {
        "version": "1", "digest": v1[0].digest}
    assert set(rows) == set(logged.rules)
    for tid, row in rows.items():
        trace = by_id[tid]
        assert row["inputs"] == _request(trace), tid
        assert row["outputs"] == _outputs(trace), tid
        assert (row["expectations"] or {}) == logged.expectations.get(tid, {}), tid
        assert (row["source_type"], row["source_id"]) == ("TRACE", tid)
        tags = _own_tags(row)
        assert [tags[k] for k in PROVENANCE] == [tid, logged.rules[tid], "1"], tid
        assert tags["trace_curator.tag"] == f"eval_candidate={logged.rules[tid]}"
        score = tags["trace_curator.original_score"]
        assert (json.loads(score) if score else {}) == logged.scores.get(tid, {}), tid
    assert {r["tags"]["trace_curator.source_trace_id"]: r["tags"] for r in v1_records} == {
        tid: _own_tags(row) for tid, row in rows.items()}  # MLflow holds what the ledger says

    assert main(["datasets", "list"]) == 0
    listing = capsys.readouterr().out
    assert name in listing and "error_case 4, low_score 2, slow_response 1" in listing
    assert main(["curate", "--once"]) == 0  # no new candidates: no version
    assert f"{name}: nothing new" in capsys.readouterr().out

    # Round 2: 3 new errors become version 2; one error repeats version 1's inputs: skipped.
    _ingest(settings, producer, run_worker, logged.second)
    assert main(["curate", "--once"]) == 0
    assert f"{name}: version 2 done, 3 records (skipped 1)" in capsys.readouterr().out
    with engine.connect() as conn:
        v2 = ds.versions(conn, name)
        added2 = ds.version_records(conn, name, 2)
        v1_again = ds.version_records(conn, name, 1, cumulative=True)
    engine.dispose()
    assert [(v.version, v.state, v.record_count) for v in v2] == [(1, "done", 7), (2, "done", 3)]
    assert v1_again == v1_records
    assert {r["tags"]["trace_curator.source_trace_id"] for r in added2} == set(logged.rules2)

    dataset2, rows2 = _mlflow_records(name)
    assert dataset2.dataset_id == sink_id
    assert {k: dataset2.tags[k] for k in ("version", "digest")} == {
        "version": "2", "digest": v2[1].digest}
    assert set(rows2) == {*logged.rules, *logged.rules2}
    assert len({json.dumps(r["inputs"], sort_keys=True) for r in rows2.values()}) == 10
    for tid, row in rows2.items():
        version = "1" if tid in logged.rules else "2"
        assert row["tags"]["trace_curator.dataset_version"] == version, tid
        assert row["inputs"] == _request(by_id[tid]), tid

    out = tmp_path / "v1.jsonl"
    assert main(["datasets", "export", name, "--version", "1", "--output", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported == v1_records  # exactly version 1, as it was merged
    assert {r["tags"]["trace_curator.source_trace_id"] for r in exported} == set(logged.rules)
    for rec in exported:
        row = rows2[rec["tags"]["trace_curator.source_trace_id"]]
        assert rec["inputs"] == row["inputs"]
        assert rec.get("expectations", {}) == (row["expectations"] or {})
        assert rec["tags"] == _own_tags(row)
