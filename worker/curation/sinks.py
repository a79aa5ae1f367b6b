"""Dataset sinks: where a curated version's records go. Ports are Protocols; three adapters.

Every ``merge`` is idempotent for the same version: the MLflow sinks dedupe records by their
inputs hash (merging the same record again updates it in place), and the files sink rewrites
the version's file atomically. The curator therefore retries a merge whose outcome it does not
know (a crash, a timeout) without risk of duplicates.

* ``MlflowDatasetSink``: an MLflow evaluation dataset on the tracking server, found by name
  (``search_datasets``; names are not unique in MLflow OSS, and MLflow's filter grammar has no
  escapes: a name is quoted with the quote it does not hold, and one holding both kinds is
  found by listing every dataset; names are always compared exactly) or created, its
  ``dataset_id`` then kept in our store; ``merge_records`` in batches; dataset tags ``version`` and
  ``digest`` set after each version.
* ``DatabricksDatasetSink``: the same API against a Databricks tracking URI and a Unity Catalog
  table (``create_dataset(uc_table_name=...)``), with databricks-connect (the ``databricks``
  extra). It is validated at start-up; it cannot be exercised without a workspace.
* ``FileDatasetSink``: ``<path>/<dataset>/v0001.jsonl`` (or ``.parquet``), one file per version.
  The dataset's folder, symlinks resolved, must lie inside ``<path>`` (checked at start-up and
  before every write), so a dataset name never writes elsewhere.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from consumers.errors import ConfigError
from worker.curation.specs import SinkSpec

logger = logging.getLogger(__name__)
MERGE_BATCH = 500  # records per merge_records call (about 0.3 s each on an OSS server)


class DatasetSink(Protocol):
    kind: str

    def validate(self) -> None:
        """Check the configuration at start-up; raise ConfigError with what to fix."""
        ...

    def merge(self, dataset: str, sink_dataset_id: str | None, records: Sequence[dict[str, Any]],
              version: int, digest: str) -> str | None:
        """Merge one version's records; return the sink's dataset id (None if it has none).
        Raise on failure: the version stays pending and is merged again next cycle."""
        ...


class MlflowDatasetSink:
    kind = "mlflow"

    def __init__(self, tracking_uri: str | None, experiment_id: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id

    def validate(self) -> None:
        if not self.tracking_uri:
            raise ConfigError("the mlflow dataset sink needs MLFLOW_TRACKING_URI (or "
                              "TRACE_CURATOR_MLFLOW_TRACKING_URI); or use a files sink in "
                              "TRACE_CURATOR_DATASETS_FILE")

    def _client(self) -> Any:
        import mlflow
        from mlflow import MlflowClient

        # merge_records resolves its store from the global tracking URI: keep them the same.
        assert self.tracking_uri is not None  # validate() ran
        if mlflow.get_tracking_uri() != self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        return MlflowClient(self.tracking_uri)

    def find_or_create(self, client: Any, name: str, sink_dataset_id: str | None) -> Any:
        if sink_dataset_id:
            try:
                return client.get_dataset(sink_dataset_id)
            except Exception as exc:  # deleted on the server: find or create it again
                logger.warning("dataset %s (id %s) not found on the server, looking it up by "
                               "name error=%s", name, sink_dataset_id, exc)
        found = self.named(client, name)
        if found:
            if len(found) > 1:
                logger.warning("%d MLflow datasets are named %s; using the oldest, id %s",
                               len(found), name, found[0].dataset_id)
            return found[0]
        return client.create_dataset(name=name, experiment_id=self.experiment_id,
                                     tags={"trace_curator.managed": "true"})

    @staticmethod
    def named(client: Any, name: str) -> list[Any]:
        """The datasets named exactly ``name``, oldest first."""
        filter_string = name_filter(name)
        found: list[Any] = []
        token = None
        while True:
            page = client.search_datasets(filter_string=filter_string, page_token=token,
                                          order_by=["created_time ASC"])
            found += [d for d in page if d.name == name]
            token = page.token
            if not token:
                return found

    def merge(self, dataset: str, sink_dataset_id: str | None, records: Sequence[dict[str, Any]],
              version: int, digest: str) -> str | None:
        client = self._client()
        ds = self.find_or_create(client, dataset, sink_dataset_id)
        for i in range(0, len(records), MERGE_BATCH):
            ds.merge_records([dict(r) for r in records[i:i + MERGE_BATCH]])
        client.set_dataset_tags(ds.dataset_id, {"version": str(version), "digest": digest})
        return str(ds.dataset_id)


class DatabricksDatasetSink:
    """Unity Catalog through MLflow's datasets API. Thin on purpose: untested here."""

    kind = "databricks"

    def __init__(self, tracking_uri: str | None, uc_table_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.uc_table_name = uc_table_name

    def validate(self) -> None:
        if not (self.tracking_uri or "").startswith("databricks"):
            raise ConfigError("a databricks dataset sink needs MLFLOW_TRACKING_URI=databricks "
                              f"(or databricks://PROFILE), got {self.tracking_uri!r}")
        try:
            import databricks.connect  # noqa: F401
        except ImportError:
            raise ConfigError("a databricks dataset sink needs databricks-connect: "
                              "pip install 'trace-curator[databricks]' (Python 3.12)") from None

    def merge(self, dataset: str, sink_dataset_id: str | None, records: Sequence[dict[str, Any]],
              version: int, digest: str) -> str | None:
        import mlflow
        from mlflow.genai import datasets

        assert self.tracking_uri is not None  # validate() ran
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            ds = datasets.get_dataset(uc_table_name=self.uc_table_name)
        except Exception:
            ds = datasets.create_dataset(uc_table_name=self.uc_table_name)
        for i in range(0, len(records), MERGE_BATCH):
            ds = ds.merge_records([dict(r) for r in records[i:i + MERGE_BATCH]])
        datasets.set_dataset_tags(ds.dataset_id, {"version": str(version), "digest": digest})
        return str(ds.dataset_id)


class FileDatasetSink:
    kind = "files"

    def __init__(self, path: str, fmt: str = "jsonl") -> None:
        self.path = Path(path)
        self.format = fmt

    def validate(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"files dataset sink: cannot create {self.path}: {exc}") from None

    def folder_for(self, dataset: str) -> Path:
        """``<path>/<dataset>``, refused (ConfigError) unless it resolves inside ``<path>``."""
        root = self.path.resolve()
        folder = (root / dataset).resolve()
        if folder == root or not folder.is_relative_to(root) or Path(dataset).is_absolute():
            raise ConfigError(f"files dataset sink: dataset name {dataset[:80]!r} would "
                              f"write outside {self.path}; use a plain folder name")
        return folder

    def file_for(self, dataset: str, version: int) -> Path:
        return self.folder_for(dataset) / f"v{version:04d}.{self.format}"

    def merge(self, dataset: str, sink_dataset_id: str | None, records: Sequence[dict[str, Any]],
              version: int, digest: str) -> str | None:
        target = self.file_for(dataset, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            write_records(records, Path(tmp), self.format)
            os.replace(tmp, target)  # atomic: a crash leaves the old file or the new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return None


def write_records(records: Sequence[dict[str, Any]], path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        with open(path, "wb") as f:
            for r in records:
                f.write(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n")
        return
    import pandas as pd

    # Nested columns as JSON text: Parquet needs one schema, records' dicts vary.
    frame = pd.DataFrame([{k: orjson.dumps(v).decode() for k, v in r.items()} for r in records],
                         columns=["inputs", "outputs", "expectations", "tags", "source"])
    frame.to_parquet(path, index=False)


def name_filter(name: str) -> str | None:
    """An exact-name ``search_datasets`` filter, or None when MLflow's grammar cannot say it.
    MLflow strips the outer quotes of a value and unescapes nothing, so a name is quoted with
    the quote it does not contain; the filter is parsed back here to be sure."""
    from mlflow.utils.search_utils import SearchEvaluationDatasetsUtils

    for quote in ("'", '"'):
        if quote in name:
            continue
        text = f"name = {quote}{name}{quote}"
        try:
            clauses = SearchEvaluationDatasetsUtils.parse_search_filter(  # type: ignore[no-untyped-call]
                text)
        except Exception:  # noqa: S112 (whatever the parser refuses, try the next quote)
            continue
        if [(c["key"], c["comparator"], c["value"]) for c in clauses] == [("name", "=", name)]:
            return text
    return None


def make_sink(spec: SinkSpec, tracking_uri: str | None) -> DatasetSink:
    if spec.kind == "files":
        assert spec.path is not None
        return FileDatasetSink(spec.path, spec.format)
    if spec.kind == "databricks":
        assert spec.uc_table_name is not None
        return DatabricksDatasetSink(tracking_uri, spec.uc_table_name)
    return MlflowDatasetSink(tracking_uri, spec.experiment_id)
