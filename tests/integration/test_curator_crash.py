"""kill -9 the curator in the middle of an MLflow merge, restart it: the dataset holds each record
once and the ledger is consistent (invariant 4 in docs/design.md).

Thousands of ERROR traces are written straight into the store, so the merge into the real MLflow
server takes seconds (``merge_records`` in batches of 500). ``trace-curator curate --once`` runs
as a subprocess and is killed with SIGKILL once MLflow holds some but not all of the records.
Version 1 must still be pending; the restarted run merges exactly its stored records again and
marks it done; a third run finds nothing new.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.genai import datasets as mlflow_datasets
from sqlalchemy import func, select

from consumers.events import Provenance
from consumers.formats import decode_trace
from store import datasets as ds
from store.engine import make_engine
from store.models import DatasetRecord
from store.upserts import Batch
from store.writer import SqlWriter
from tests import payloads as P
from worker.curation.specs import input_hash
from worker.rules.engine import load_rules

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # MLflow 3.17's SQL store module uses a loader strategy SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]
N = 4000  # about 2.5 s of merging on the test server: room to kill it half way
BASE_MS = 1_795_000_000_000


@pytest.fixture
def experiment(mlflow_server: Any) -> Iterator[str]:
    mlflow.set_tracking_uri(mlflow_server.uri)
    yield mlflow.create_experiment(f"curate-crash-{uuid.uuid4().hex[:8]}")
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets; not in the hint


def _candidates(store_url: str, run: str) -> list[str]:
    """N ERROR traces (error_case candidates) with distinct inputs, written to the store."""
    docs = [{"trace_id": f"tr-crash-{run}-{i:05d}", "experiment_id": "1",
             "timestamp_ms": BASE_MS + i, "execution_time_ms": 300, "status": "ERROR",
             "request": {"question": f"q{i} {run}"}, "response": {"answer": f"a{i}"},
             "tags": {"environment": "production"}, "metadata": {}} for i in range(N)]
    engine = make_engine(store_url)
    SqlWriter(engine, load_rules(None)).write(Batch(traces=[
        decode_trace(P.dumps(d), Provenance("t", 0, i), 1 << 22) for i, d in enumerate(docs)]),
        BASE_MS)
    engine.dispose()
    return [d["trace_id"] for d in docs]


def _server_count(db: Path, name: str) -> int:
    """Records of the datasets named ``name``, read from the server's own SQLite file (cheap,
    and no load on its single worker while it merges)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM evaluation_dataset_records r JOIN evaluation_datasets d "
            "ON r.dataset_id = d.dataset_id WHERE d.name = ?", (name,)).fetchone()
    return int(row[0])


def test_kill_9_mid_merge_then_restart_holds_each_record_once(
        store_url: str, mlflow_server: Any, experiment: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    name = f"cur-crash-{run}"
    trace_ids = _candidates(store_url, run)
    spec = tmp_path / "datasets.yaml"
    spec.write_text(f"datasets:\n  - name: {name}\n    max_records_per_version: {N}\n"
                    f"    sink: {{kind: mlflow, experiment_id: '{experiment}'}}\n")
    env = {**os.environ, "TRACE_CURATOR_STORE_URL": store_url,
           "MLFLOW_TRACKING_URI": mlflow_server.uri, "TRACE_CURATOR_DATASETS_FILE": str(spec)}
    cmd = [sys.executable, "-m", "worker", "curate", "--once"]
    db = mlflow_server.folder / "mlflow.db"

    with open(tmp_path / "curate-1.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen = 0
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and proc.poll() is None:
                seen = _server_count(db, name)
                if seen > 0:
                    break
                time.sleep(0.05)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            code = proc.wait()
    log_text = (tmp_path / "curate-1.log").read_text()
    assert code == -signal.SIGKILL, f"curate ended before the kill:\n{log_text[-2000:]}"
    time.sleep(1)  # the server finishes the batch it was given
    landed = _server_count(db, name)
    assert 0 < seen <= landed < N, f"the kill was not mid-merge: {seen}, then {landed} of {N}"

    engine = make_engine(store_url)
    with engine.connect() as conn:
        versions = ds.versions(conn, name)
        stored = conn.execute(select(func.count()).select_from(DatasetRecord)
                              .where(DatasetRecord.dataset == name)).scalar()
    assert [(v.version, v.state, v.record_count, v.committed_ms) for v in versions] == [
        (1, "pending", N, None)]
    assert stored == N  # the version's records were written before the merge began

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{name}: version 1 done, {N} records" in again.stdout
    with engine.connect() as conn:
        versions = ds.versions(conn, name)
        records = ds.version_records(conn, name, 1, cumulative=True)
        _sink, sink_id = ds.ensure_dataset(conn, name, "mlflow", 0)
    assert [(v.version, v.state, v.record_count) for v in versions] == [(1, "done", N)]
    assert versions[0].committed_ms is not None and versions[0].last_error is None
    assert len(records) == N
    assert sorted(r["tags"]["trace_curator.source_trace_id"] for r in records) == trace_ids

    found = list(mlflow_datasets.search_datasets(filter_string=f"name = '{name}'"))
    assert [d.dataset_id for d in found] == [sink_id]  # the killed run's dataset, reused
    dataset = mlflow_datasets.get_dataset(dataset_id=sink_id)
    assert {k: dataset.tags[k] for k in ("version", "digest")} == {
        "version": "1", "digest": versions[0].digest}
    frame = dataset.to_df()
    assert len(frame) == N == _server_count(db, name)
    assert len({input_hash(i) for i in frame["inputs"]}) == N
    sources = sorted(t["trace_curator.source_trace_id"] for t in frame["tags"])
    assert sources == trace_ids  # one record per trace
    assert {t["trace_curator.dataset_version"] for t in frame["tags"]} == {"1"}
    assert {input_hash(i) for i in frame["inputs"]} == {
        input_hash(r["inputs"]) for r in records}

    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"{name}: nothing new" in third.stdout
    with engine.connect() as conn:
        assert [(v.version, v.state) for v in ds.versions(conn, name)] == [(1, "done")]
    assert _server_count(db, name) == N
    engine.dispose()
