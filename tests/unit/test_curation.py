"""The pure curator: dataset specs, record building, stratified sampling, version digests."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from consumers.errors import ConfigError
from consumers.events import TraceView
from store.datasets import Candidate
from worker.curation.specs import (
    DEFAULT_DATASET,
    DatasetSpec,
    as_inputs,
    build_record,
    input_hash,
    load_specs,
    matches,
    parse_specs,
    sample,
    stratum,
    version_digest,
)


def cand(i: int, *, status: str = "OK", ms: int | None = 100, request: str | None = None,
         env: str = "production") -> Candidate:
    view = TraceView(f"tr-{i:05d}", "1", "bot", status, 1_795_000_000_000 + i, ms,
                     {"environment": env}, {})
    return Candidate(view, request if request is not None else json.dumps({"q": f"question {i}"}),
                     json.dumps({"a": f"answer {i}"}), "eval_candidate", "error_case",
                     "error_case", {"quality": 0.2}, {"expected_facts": ["fact"]})


def test_default_spec_without_a_file() -> None:
    (spec,) = load_specs(None)
    assert (spec.name, spec.sink.kind, spec.strategy, spec.include_outputs, spec.tag_values) \
        == (DEFAULT_DATASET, "mlflow", "all", True, None)


@pytest.mark.parametrize(("data", "message"), [
    ({}, "non-empty list 'datasets'"),
    ({"datasets": [{"nam": "x"}]}, "needs a non-empty 'name'"),
    ({"datasets": [{"name": "x", "strategy": "random"}]}, "strategy must be"),
    ({"datasets": [{"name": "x", "colour": 1}]}, "unknown key(s) ['colour']"),
    ({"datasets": [{"name": "x", "sink": {"kind": "files"}}]}, "needs sink.path"),
    ({"datasets": [{"name": "x", "sink": {"kind": "databricks", "uc_table_name": "a.b"}}]},
     "catalog.schema.table"),
    ({"datasets": [{"name": "x", "filter": "attributes.status = 'OK' OR tags.a = 'b'"}]},
     "filter"),
    ({"datasets": [{"name": "x", "since": "yesterday"}]}, "since"),
    ({"datasets": [{"name": "x"}, {"name": "x"}]}, "unique"),
    ({"datasets": [{"name": "x", "max_records_per_version": 0}]}, "positive integer"),
    ({"datasets": [{"name": "x", "tag": {"values": "error_case"}}]}, "list of strings"),
])
def test_invalid_specs_say_what_is_wrong(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        parse_specs(data, "datasets.yaml")
    assert message in str(info.value)


def test_a_specs_file(tmp_path: Path) -> None:
    f = tmp_path / "datasets.yaml"
    f.write_text("datasets:\n  - name: slow_prod\n    tag: {values: [slow_response]}\n"
                 "    environment: production\n    strategy: stratified\n    seed: 7\n"
                 "    sink: {kind: files, path: out, format: parquet}\n")
    (spec,) = load_specs(f)
    assert (spec.tag_values, spec.strategy, spec.seed, spec.sink.format) == (
        ("slow_response",), "stratified", 7, "parquet")
    with pytest.raises(ConfigError, match="does not exist"):
        load_specs(tmp_path / "missing.yaml")


def test_input_hash_is_mlflows_key() -> None:
    inputs = {"b": 1, "a": {"y": [1, 2], "x": "é"}}
    expected = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    assert input_hash(inputs) == expected == input_hash({"a": {"x": "é", "y": [1, 2]}, "b": 1})


@pytest.mark.parametrize(("request_text", "inputs"), [
    ('{"q": "hi"}', {"q": "hi"}), ('"plain text"', {"request": "plain text"}),
    ("not json", {"request": "not json"}), ("{}", None), ("null", None), (None, None),
    ('""', None), ("[]", None), ("[1, 2]", {"request": [1, 2]}),
])
def test_inputs_are_a_non_empty_dict(request_text: str | None, inputs: Any) -> None:
    assert as_inputs(request_text) == inputs


def test_record_has_inputs_outputs_expectations_provenance_and_source() -> None:
    c = cand(3)
    rec = build_record(c, DatasetSpec("d"), 1234)
    assert rec is not None
    assert rec["inputs"] == {"q": "question 3"}
    assert rec["outputs"] == {"a": "answer 3"}
    assert rec["expectations"] == {"expected_facts": ["fact"]}
    assert rec["source"] == {"source_type": "TRACE", "source_data": {"trace_id": "tr-00003"}}
    assert rec["tags"]["trace_curator.original_score"] == '{"quality":0.2}'
    assert rec["tags"]["trace_curator.tag"] == "eval_candidate=error_case"
    assert all(isinstance(v, str) for v in rec["tags"].values())
    assert "outputs" not in build_record(c, DatasetSpec("d", include_outputs=False), 1)  # type: ignore[operator]
    assert build_record(cand(4, request="{}"), DatasetSpec("d"), 1) is None


def test_environment_and_filter_selection() -> None:
    spec = DatasetSpec("d", environment="production",
                       filter="attributes.execution_time_ms > 50 AND tags.environment = "
                              "'production'")
    assert matches(cand(1), spec, "environment")
    assert not matches(cand(2, env="staging"), spec, "environment")
    assert not matches(cand(3, ms=10), DatasetSpec("d", filter="attributes.execution_time_ms "
                                                             "> 50"), "environment")


def _mixed(n: int) -> list[Candidate]:
    out = []
    for i in range(n):
        kind = i % 10
        if kind < 6:
            out.append(cand(i, ms=200))  # fast: the bulk of traffic
        elif kind < 8:
            out.append(cand(i, ms=2000))  # medium
        elif kind < 9:
            out.append(cand(i, ms=9000))  # slow
        else:
            out.append(cand(i, status="ERROR", ms=300))
    return out


def test_stratified_sampling_balances_the_strata() -> None:
    spec = DatasetSpec("d", strategy="stratified", max_records_per_version=40)
    picked = sample(_mixed(1000), spec)
    counts = Counter(stratum(c, spec) for c in picked)
    assert counts == {"fast": 10, "medium": 10, "slow": 10, "error": 10}
    # A small stratum gives its share to the others, and nothing is picked twice.
    few = [c for c in _mixed(1000) if stratum(c, spec) != "slow"][:300] + [cand(5000, ms=9000)]
    picked = sample(few, spec)
    counts = Counter(stratum(c, spec) for c in picked)
    assert counts["slow"] == 1 and sum(counts.values()) == 40
    assert max(counts.values()) - min(v for k, v in counts.items() if k != "slow") <= 1
    assert len({c.trace_id for c in picked}) == 40


def test_stratified_sampling_is_deterministic_per_seed() -> None:
    items = _mixed(500)
    spec = DatasetSpec("d", strategy="stratified", max_records_per_version=20, seed=1)
    a = [c.trace_id for c in sample(items, spec)]
    assert a == [c.trace_id for c in sample(list(reversed(items)), spec)]  # order-independent
    other = DatasetSpec("d", strategy="stratified", max_records_per_version=20, seed=2)
    assert a != [c.trace_id for c in sample(items, other)]


def test_all_strategy_takes_the_oldest_first() -> None:
    items = _mixed(30)
    assert sample(items, DatasetSpec("d", max_records_per_version=5)) == items[:5]


def test_version_digest_ignores_record_order() -> None:
    recs = [{"inputs": {"q": i}, "tags": {"a": str(i)}} for i in range(5)]
    assert version_digest(recs) == version_digest(list(reversed(recs)))
    assert version_digest(recs) != version_digest(recs[:4])
