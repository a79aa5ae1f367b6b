"""Dataset specs, record building and sampling: the pure part of the curator.

A spec (``TRACE_CURATOR_DATASETS_FILE``, YAML) says which tagged candidates go into which
dataset, how they become records, how many per version and how they are sampled. A record is
``inputs`` (the trace request, a non-empty dict), ``outputs`` (the response, when the spec keeps
outputs), ``expectations`` (the trace's logged expectations), provenance ``tags`` and an MLflow
``source`` pointing at the trace. Records are identified by MLflow's own key, the SHA-256 of
``json.dumps(inputs, sort_keys=True)``. Stratified sampling is deterministic per seed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from consumers.errors import ConfigError
from consumers.formats import parse_json_text
from store.datasets import Candidate
from worker.yaml_files import brief, cut, load_yaml_file

if TYPE_CHECKING:  # at run time imported where used: it loads MLflow (seconds)
    from worker.rules.filters import Filter

Strategy = Literal["all", "stratified"]
SinkKind = Literal["mlflow", "databricks", "files"]
STRATA = ("fast", "medium", "slow", "error")
DEFAULT_DATASET = "trace_curator_candidates"
EXPECTATION_KEYS = ("expected_response", "expected_facts", "guidelines")


@dataclass(frozen=True, slots=True)
class SinkSpec:
    kind: SinkKind = "mlflow"
    experiment_id: str | None = None  # mlflow: the experiment the dataset is linked to
    uc_table_name: str | None = None  # databricks: catalog.schema.table
    path: str | None = None  # files: the folder
    format: Literal["jsonl", "parquet"] = "jsonl"  # files


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    name: str
    tag_key: str = "eval_candidate"
    tag_values: tuple[str, ...] | None = None  # None: any value
    experiment_id: str | None = None
    environment: str | None = None  # the value of the metrics dimension tag
    since: str | None = None  # a window back from now: 24h, 7d, ...
    filter: str | None = None  # an extra MLflow search filter, evaluated locally
    include_outputs: bool = True
    max_records_per_version: int = 1000
    strategy: Strategy = "all"
    seed: int = 0
    fast_ms: int = 1000  # stratified: below is fast, from here to slow_ms medium
    slow_ms: int = 5000
    sink: SinkSpec = field(default_factory=SinkSpec)


DEFAULT_SPECS = (DatasetSpec(DEFAULT_DATASET),)
# A files sink writes <path>/<name>/: the name is one plain folder name, never a path.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SPEC_KEYS = {f for f in DatasetSpec.__dataclass_fields__} - {"tag_values", "sink"} | {
    "tag", "sink"}


def load_specs(path: str | Path | None) -> tuple[DatasetSpec, ...]:
    """The specs of a datasets file, or the documented default. Raises ConfigError."""
    if path is None:
        return DEFAULT_SPECS
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"datasets file {p} does not exist")
    return parse_specs(load_yaml_file(p, f"datasets file {p}"), str(p))


def parse_specs(data: Any, source: str = "<datasets>") -> tuple[DatasetSpec, ...]:
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list) \
            or not data["datasets"]:
        raise ConfigError(f"{source}: expected a mapping with a non-empty list 'datasets'")
    from worker.rules.filters import prepare

    # Every filter of the file parsed by MLflow in one request (a helper process, see
    # worker.rules.mlflow_parser); each spec's parse_filter then finds its text parsed.
    prepare((d.get("filter") for d in data["datasets"] if isinstance(d, dict)), source)
    specs = tuple(_parse_spec(raw, i + 1, source) for i, raw in enumerate(data["datasets"]))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{source}: dataset names must be unique, got {brief(twice)} twice")
    return specs


def _parse_spec(raw: Any, position: int, source: str) -> DatasetSpec:
    where = f"{source}, dataset #{position}"
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ConfigError(f"{where}: each dataset needs a non-empty 'name'")
    where += f" {brief(raw['name'])}"
    unknown = sorted(set(raw) - _SPEC_KEYS, key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {brief(unknown)}; known: "
                          f"{sorted(_SPEC_KEYS)}")
    kwargs = {k: v for k, v in raw.items() if k not in ("tag", "sink")}
    tag = raw.get("tag", {})
    if not isinstance(tag, dict):
        raise ConfigError(f"{where}: 'tag' must be a mapping like {{key: eval_candidate, "
                          "values: [error_case]}")
    if "key" in tag:
        kwargs["tag_key"] = tag["key"]
    if "values" in tag:
        values = tag["values"]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}: tag.values must be a list of strings")
        kwargs["tag_values"] = tuple(values)
    sink = raw.get("sink", {"kind": "mlflow"})
    if not isinstance(sink, dict):
        raise ConfigError(f"{where}: 'sink' must be a mapping with a 'kind'")
    try:
        kwargs["sink"] = SinkSpec(**sink)
        spec = DatasetSpec(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {cut(str(exc), 200)}") from None
    _check_spec(spec, where)
    return spec


def _check_spec(spec: DatasetSpec, where: str) -> None:
    problems = []
    if spec.strategy not in ("all", "stratified"):
        problems.append(f"strategy must be 'all' or 'stratified', got {brief(spec.strategy)}")
    if not _is_int(spec.max_records_per_version) or spec.max_records_per_version < 1:
        problems.append("max_records_per_version must be a positive integer")
    if not (_is_int(spec.fast_ms) and _is_int(spec.slow_ms) and 0 < spec.fast_ms < spec.slow_ms):
        problems.append("stratified thresholds need integers 0 < fast_ms < slow_ms")
    problems += _sink_problems(spec.sink)
    if spec.sink.kind == "files" and not _FILE_NAME.fullmatch(spec.name):
        problems.append("a files sink needs a dataset name of at most 100 letters, digits, "
                        "'.', '_' or '-', starting with a letter or digit (it names a folder)")
    since: Any = spec.since  # whatever the YAML held
    if since is not None and not isinstance(since, str):
        problems.append("since must be a window such as 24h or 7d, or an ISO-8601 time")
    elif spec.since is not None:
        from worker.timeparse import parse_time_ms

        try:
            parse_time_ms(spec.since, 0)
        except ConfigError as exc:
            problems.append(f"since: {cut(str(exc), 200)}")
    if spec.filter is not None:
        from worker.rules.filters import parse_filter

        try:
            parse_filter(spec.filter, "filter")
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sink_problems(sink: SinkSpec) -> list[str]:
    problems = []
    if sink.kind not in ("mlflow", "databricks", "files"):
        problems.append(f"sink.kind must be mlflow, databricks or files, got {brief(sink.kind)}")
    if sink.kind == "files" and (not sink.path or not isinstance(sink.path, str)):
        problems.append("a files sink needs sink.path (a folder)")
    if sink.kind == "databricks" and (
            not isinstance(sink.uc_table_name, str) or sink.uc_table_name.count(".") != 2):
        problems.append("a databricks sink needs sink.uc_table_name as catalog.schema.table")
    if sink.format not in ("jsonl", "parquet"):
        problems.append("sink.format must be jsonl or parquet")
    return problems


# --- records ---------------------------------------------------------------------------------


def input_hash(inputs: Mapping[str, Any]) -> str:
    """MLflow's record identity: sha256 of ``json.dumps(inputs, sort_keys=True)``."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def as_inputs(request: str | None) -> dict[str, Any] | None:
    """The trace request as record inputs: a dict as is, any other value under ``request``;
    None when there is nothing (a record is never merged with ``inputs={}``)."""
    value = parse_json_text(request)
    if value is None or value == {} or value == "" or value == []:
        return None
    return value if isinstance(value, dict) else {"request": value}


def build_record(c: Candidate, spec: DatasetSpec, now_ms: int) -> dict[str, Any] | None:
    """A dataset record for candidate ``c`` (None when it has no inputs)."""
    inputs = as_inputs(c.request)
    if inputs is None:
        return None
    record: dict[str, Any] = {"inputs": inputs}
    if spec.include_outputs:
        out = parse_json_text(c.response)
        if out is not None:
            record["outputs"] = out if isinstance(out, dict) else {"response": out}
    if c.expectations:
        record["expectations"] = dict(c.expectations)
    score = {k: v for k, v in c.feedback.items() if not isinstance(v, dict | list)}
    record["tags"] = {
        "trace_curator.source_trace_id": c.view.trace_id,
        "trace_curator.rule": c.rule or "",
        "trace_curator.tag": f"{c.tag_key}={c.tag_value}",
        "trace_curator.original_score": orjson.dumps(score).decode() if score else "",
        "trace_curator.captured_ms": str(now_ms),
        "trace_curator.status": c.view.status,
    }
    record["source"] = {"source_type": "TRACE", "source_data": {"trace_id": c.view.trace_id}}
    return record


def record_problem(record: Mapping[str, Any]) -> str | None:
    """Why ``record`` cannot be stored, digested or written to a sink, or None. Every step of
    a cycle re-serializes records (orjson for the ledger, the digest and the files sink, json
    for the inputs hash and MLflow); a value orjson can read may still be one it cannot write,
    such as an array nested deeper than its 254 levels."""
    try:
        orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        json.dumps(record["inputs"], sort_keys=True)
    except (TypeError, ValueError, RecursionError) as exc:  # orjson.JSONEncodeError: TypeError
        return f"cannot be serialized: {type(exc).__name__}: {cut(str(exc), 200)}"
    return None


def stamp_version(record: Mapping[str, Any], version: int) -> dict[str, Any]:
    out = dict(record)
    out["tags"] = {**record.get("tags", {}), "trace_curator.dataset_version": str(version)}
    return out


def version_digest(records: Iterable[Mapping[str, Any]]) -> str:
    """A content digest of a version's records, independent of their order."""
    h = hashlib.sha256()
    for line in sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records):
        h.update(line)
        h.update(b"\n")
    return h.hexdigest()


# --- selection and sampling ------------------------------------------------------------------


def matches(c: Candidate, spec: DatasetSpec, dimension_tag: str) -> bool:
    """The spec's selections that SQL does not already apply: environment and extra filter."""
    view = c.view
    if spec.environment is not None:
        env = view.tags.get(dimension_tag) or view.metadata.get(dimension_tag)
        if env != spec.environment:
            return False
    if spec.filter is not None:
        from worker.rules.filters import TraceInfoView

        return _spec_filter(spec.filter).matches(TraceInfoView(view, view.tags))
    return True


@functools.lru_cache(maxsize=64)
def _spec_filter(text: str) -> Filter:
    """A spec's filter, parsed once (MLflow's parser costs about 0.3 ms a call)."""
    from worker.rules.filters import parse_filter

    return parse_filter(text, "filter")


def stratum(c: Candidate, spec: DatasetSpec) -> str:
    if c.view.status == "ERROR":
        return "error"
    ms = c.view.execution_time_ms or 0
    return "fast" if ms < spec.fast_ms else "medium" if ms < spec.slow_ms else "slow"


def _rank(seed: int, trace_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{trace_id}".encode(), digest_size=8).digest()


def sample(items: Sequence[Candidate], spec: DatasetSpec) -> list[Candidate]:
    """At most ``max_records_per_version`` candidates. ``all``: the oldest first.
    ``stratified``: an equal share per non-empty stratum (fast / medium / slow / error), the
    share of a small stratum going to the others, each stratum in a seeded hash order."""
    n = spec.max_records_per_version
    if spec.strategy == "all" or len(items) <= n:
        return list(items[:n])
    strata: dict[str, list[Candidate]] = {s: [] for s in STRATA}
    for c in items:
        strata[stratum(c, spec)].append(c)
    for members in strata.values():
        members.sort(key=lambda c: _rank(spec.seed, c.trace_id))
    quota = dict.fromkeys(STRATA, 0)
    left = n
    open_strata = [s for s in STRATA if strata[s]]
    while left and open_strata:  # round-robin: balanced, and no quota is wasted
        for s in list(open_strata):
            if not left:
                break
            if quota[s] < len(strata[s]):
                quota[s] += 1
                left -= 1
            else:
                open_strata.remove(s)
    return [c for s in STRATA for c in strata[s][:quota[s]]]
