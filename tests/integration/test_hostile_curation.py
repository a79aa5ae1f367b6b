"""Hostile input to the curator, on both stores: a trace whose request cannot be written again
(valid JSON nested deeper than orjson writes) is skipped and logged while the other records and
the other datasets go on; a files-sink dataset name that would write outside the sink's folder
is refused at start-up; a dataset name with a quote is found again in a real MLflow server."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

from consumers.errors import ConfigError
from store import datasets as ds
from store.engine import make_engine
from tests.integration.test_curator import _flat, _ingest, _lines
from worker.cli.main import main
from worker.curation.curator import Curator
from worker.curation.sinks import FileDatasetSink, MlflowDatasetSink
from worker.curation.specs import DatasetSpec, SinkSpec, input_hash, parse_specs

pytestmark = [
    pytest.mark.integration,
    # MLflow 3.17's SQL store module uses a loader strategy SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]
DEEP = "[" * 400 + "]" * 400  # orjson reads 400 levels, and writes at most 254
DEEP_ID = "tr-cur-00099"


def _docs() -> list[dict[str, Any]]:
    return [_flat(i) for i in range(5)] + [_flat(99, request=DEEP)]


def _datasets_file(tmp_path: Path, names: list[str], fmt: str = "jsonl") -> Path:
    path = tmp_path / "datasets.yaml"
    path.write_text("datasets:\n" + "".join(
        f"  - name: {n}\n    sink: {{kind: files, path: '{tmp_path / 'out'}', format: {fmt}}}\n"
        for n in names))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_curate_once_skips_a_record_it_cannot_serialize(
        store_url: str, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(store_url)
    _ingest(engine, _docs())
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    monkeypatch.setenv("TRACE_CURATOR_DATASETS_FILE",
                       str(_datasets_file(tmp_path, ["first", "second"], fmt)))
    assert main(["curate", "--once"]) == 0  # its logs go to stderr
    out, err = capsys.readouterr()
    assert "first: version 1 done, 5 records (skipped 1)" in out
    assert "second: version 1 done, 5 records (skipped 1)" in out  # the next spec still ran
    logged = [line for line in err.splitlines() if DEEP_ID in line]
    assert len(logged) == 2 and all("cannot be serialized" in line for line in logged)
    with engine.connect() as conn:
        for name in ("first", "second"):
            [v] = ds.versions(conn, name)
            assert (v.version, v.state, v.record_count) == (1, "done", 5)
            records = ds.version_records(conn, name, 1)
            assert sorted(r["tags"]["trace_curator.source_trace_id"] for r in records) == [
                f"tr-cur-{i:05d}" for i in range(5)]
    folder = FileDatasetSink(str(tmp_path / "out"), fmt)
    if fmt == "jsonl":
        assert len(_lines(folder.file_for("first", 1))) == 5
    else:
        import pandas as pd

        assert len(pd.read_parquet(folder.file_for("first", 1))) == 5
    # The skip is remembered: the next cycle creates nothing and logs nothing new.
    assert main(["curate", "--once"]) == 0
    out, err = capsys.readouterr()
    assert "first: nothing new (skipped 0)" in out and DEEP_ID not in err


def test_a_failing_dataset_does_not_stop_the_others(store_url: str, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(store_url)
    _ingest(engine, _docs())
    sink = SinkSpec("files", path=str(tmp_path))
    # A spec built without validation, whose window cannot be parsed: its cycle raises.
    broken, good = DatasetSpec("broken", since="not a time", sink=sink), DatasetSpec(
        "good", sink=sink)
    curator = Curator(engine, [broken, good], {n: FileDatasetSink(str(tmp_path))
                                               for n in ("broken", "good")})
    with caplog.at_level(logging.ERROR, logger="worker.curation.curator"):
        results = curator.run_cycle()
    assert [(r.dataset, r.state) for r in results] == [("broken", "failed"), ("good", "done")]
    assert "not a time" in (results[0].error or "")
    assert results[1].records == 5
    assert any("broken" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["../escape", "/tmp/elsewhere", "a/../../b", "..", "a\\b",
                                  "x" * 200, "bob's set"])
def test_a_files_sink_name_that_is_not_a_folder_name_is_refused(tmp_path: Path,
                                                                  name: str) -> None:
    with pytest.raises(ConfigError, match="files sink needs a dataset name"):
        parse_specs({"datasets": [{"name": name, "sink": {"kind": "files",
                                                          "path": str(tmp_path)}}]})


def test_a_files_sink_folder_that_is_a_symlink_out_is_refused(store_url: str,
                                                              tmp_path: Path) -> None:
    root, outside = tmp_path / "sink", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    spec = DatasetSpec("linked", sink=SinkSpec("files", path=str(root)))
    curator = Curator(make_engine(store_url), [spec], {"linked": FileDatasetSink(str(root))})
    with pytest.raises(ConfigError, match="outside"):
        curator.validate()


def test_curate_once_refuses_an_escaping_name_with_exit_2(
        store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    monkeypatch.setenv("TRACE_CURATOR_DATASETS_FILE",
                       str(_datasets_file(tmp_path, ["'../../escape'"])))
    assert main(["curate", "--once"]) == 2
    err = capsys.readouterr().err
    assert "files sink needs a dataset name" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path.parent / "escape").exists()


def _bomb(indent: str) -> str:
    """The 'billion laughs' mapping: each level lists nine aliases of the one before."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    return "".join(f"{indent}{line}\n" for line in lines)


@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("where", ["datasets", "config"])
def test_the_cli_refuses_an_alias_bomb_with_exit_2(
        store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    if where == "datasets":
        path = tmp_path / "datasets.yaml"
        path.write_text("datasets:\n  - name: x\n    strategy:\n" + _bomb(" " * 6))
        monkeypatch.setenv("TRACE_CURATOR_DATASETS_FILE", str(path))
        code = main(["curate", "--once"])
    else:
        path = tmp_path / "config.yaml"
        path.write_text("log_level:\n" + _bomb("  "))
        code = main(["run", "--config", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "YAML aliases/anchors are not allowed" in err and len(err.strip().splitlines()) == 1


class LostReplySink(MlflowDatasetSink):
    """The MLflow sink whose first merge succeeds on the server but whose reply is lost: the
    version stays pending without a dataset id, so the retry must find the dataset by name."""

    lost = 1

    def merge(self, dataset: str, sink_dataset_id: str | None, records: Any, version: int,
              digest: str) -> str | None:
        out = super().merge(dataset, sink_dataset_id, records, version, digest)
        if self.lost:
            self.lost -= 1
            raise TimeoutError("the reply was lost")
        return out


def _named(uri: str, name: str) -> list[Any]:
    client, found, token = MlflowClient(uri), [], None
    while True:
        page = client.search_datasets(max_results=1000, page_token=token)
        found += [d for d in page if d.name == name]
        token = page.token
        if not token:
            return found


@pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")
def test_a_dataset_name_with_a_quote_is_found_again_in_mlflow(
        store_url: str, mlflow_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    name = f"bob's set {uuid.uuid4().hex[:8]}"  # one per backend: the server is shared
    engine = make_engine(store_url)
    _ingest(engine, _docs())  # the deep request is skipped here too
    spec = DatasetSpec(name)
    curator = Curator(engine, [spec], {name: LostReplySink(mlflow_server.uri)})
    try:
        curator.validate()
        first = curator.run_cycle()[0]
        assert (first.version, first.state) == (1, "pending")
        second = curator.run_cycle()[0]
        assert (second.version, second.state, second.records) == (1, "done", 5)
        _ingest(engine, [_flat(7)])
        third = curator.run_cycle()[0]
        assert (third.version, third.state, third.records) == (2, "done", 1)
        found = _named(mlflow_server.uri, name)
        assert len(found) == 1, f"{len(found)} MLflow datasets named {name!r}"
        with engine.connect() as conn:
            assert ds.sink_dataset_id(conn, name) == found[0].dataset_id
            ledger = ds.version_records(conn, name, 2, cumulative=True)
        rows = MlflowClient(mlflow_server.uri).get_dataset(found[0].dataset_id) \
            .to_df().to_dict("records")
        ids = sorted(r["tags"]["trace_curator.source_trace_id"] for r in rows)
        assert ids == sorted([f"tr-cur-{i:05d}" for i in (0, 1, 2, 3, 4, 7)])
        assert len({input_hash(r["inputs"]) for r in rows}) == len(rows) == len(ledger)
        assert DEEP_ID not in json.dumps(ids)
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets
