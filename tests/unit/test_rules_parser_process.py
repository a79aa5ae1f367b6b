"""MLflow stays out of the worker's memory: filters are parsed by a short-lived helper process.

Loading the default rules, a rules file or a datasets file in a process that has not imported
MLflow leaves ``mlflow`` out of ``sys.modules`` and starts at most one helper per file (these run
in child interpreters, so this test process's own imports do not interfere). The helper's answers
equal MLflow's in-process ones (clauses with IN tuples restored, floats, unicode, and the parser's
error texts); one that cannot start, fails or does not answer is a ``ConfigError`` that says
so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.errors import ConfigError
from worker.rules import filters, mlflow_parser
from worker.rules.mlflow_parser import ParserUnavailable, parse_here, parse_in_helper

ROOT = Path(__file__).resolve().parents[2]

TEXTS = [
    "attributes.status IN ('OK', 'ERROR') AND tags.`mlflow.traceName` LIKE 'chk%'",
    "attributes.request_id NOT IN ('tr-1')",
    "attributes.execution_time_ms > 1.5e3 AND timestamp <= 1700000000000",
    "metadata.`ключ` ILIKE '%é_\\n%' AND tags.env IS NOT NULL AND tags.x is null",
    "name = 'my_app' AND run_id != 'r'",
    "tags.a = 1",  # MLflow's error: a tag value must be quoted
    "attributes.status = 'OK' OR tags.a = 'b'",  # MLflow's error: OR
    "span.name = 'llm'",
    "tags.a = 'it''s'",
]


def run_python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_CURATOR_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_loading_the_default_rules_leaves_mlflow_out_and_starts_one_helper() -> None:
    out = run_python(
        "import sys\n"
        "import worker.rules.engine\n"
        "from worker.rules.engine import load_rules\n"
        "from worker.rules import mlflow_parser\n"
        "rules = load_rules(None)\n"
        "assert any(r.filters for r in rules.rules)\n"
        "print('mlflow' in sys.modules, mlflow_parser.helpers_started())\n"
    )
    assert out == "False 1"


def test_a_rules_file_and_a_datasets_file_cost_one_helper_each_at_most(tmp_path: Path) -> None:
    rules = {"rules": [
        {"name": f"r{i}", "filters": [f"tags.env = 'e{i}'", f"attributes.execution_time_ms > {i}"]}
        for i in range(5)]}
    datasets = {"datasets": [{"name": f"d{i}", "filter": f"tags.team = 't{i}'"}
                             for i in range(4)]}
    (tmp_path / "rules.yaml").write_text(json.dumps(rules))
    out = run_python(
        "import sys\n"
        "from worker.rules.engine import load_rules\n"
        "from worker.curation.specs import parse_specs\n"
        "from worker.rules import mlflow_parser\n"
        f"load_rules({str(tmp_path / 'rules.yaml')!r})\n"
        "after_rules = mlflow_parser.helpers_started()\n"
        f"specs = parse_specs({datasets!r})\n"
        "print('mlflow' in sys.modules, after_rules, mlflow_parser.helpers_started())\n"
    )
    assert out == "False 1 2"


def test_the_helper_answers_what_mlflow_answers_in_process() -> None:
    assert parse_in_helper(TEXTS) == [parse_here(text) for text in TEXTS]
    assert parse_in_helper(TEXTS[:1])[0][0]["value"] == ("OK", "ERROR")  # type: ignore[index]


def test_a_config_error_from_the_helper_path_reads_as_in_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def messages() -> list[str]:
        out = []
        for text in TEXTS:
            filters._PARSED.clear()
            try:
                filters.parse_filter(text, "rules file r.yaml, rule #1 'x'")
                out.append("ok")
            except ConfigError as exc:
                out.append(str(exc))
        return out

    here = messages()
    monkeypatch.setattr(filters, "parse_texts", parse_in_helper)
    assert messages() == here
    assert sum(m != "ok" for m in here) == 4


def test_a_helper_that_fails_names_its_last_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    started = mlflow_parser.helpers_started()
    assert parse_in_helper(["tags.a = 'b'"]) == [parse_here("tags.a = 'b'")]
    assert mlflow_parser.helpers_started() == started + 1  # one helper per request
    monkeypatch.setattr(mlflow_parser, "_BOOT", "raise SystemExit('MLflow is broken here')")
    with pytest.raises(ParserUnavailable,
                       match=r"a helper process\) exited: MLflow is broken here$"):
        parse_in_helper(["tags.a = 'b'"])


def test_a_helper_that_cannot_start_or_answer_is_a_clear_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(Path("/nonexistent/python")))
    with pytest.raises(ParserUnavailable, match="cannot start MLflow's filter parser"):
        parse_in_helper(["tags.a = 'b'"])
    monkeypatch.undo()
    monkeypatch.setattr(mlflow_parser, "REPLY_TIMEOUT_S", 0.01)  # less than importing MLflow
    with pytest.raises(ParserUnavailable, match="did not answer within 0.01 s"):
        parse_in_helper(["tags.a = 'b'"])
    monkeypatch.setattr(filters, "parse_texts", parse_in_helper)
    filters._PARSED.clear()
    with pytest.raises(ConfigError) as info:
        filters.parse_filter("tags.a = 'zz'", "datasets.yaml, dataset #1 'd': filter")
    assert str(info.value) == (
        "datasets.yaml, dataset #1 'd': filter: filter \"tags.a = 'zz'\": MLflow's filter "
        "parser (a helper process) did not answer within 0.01 s")
    with pytest.raises(ConfigError, match=r"^rules file r.yaml: cannot parse its filters: "):
        filters.prepare(["tags.a = 'yy'"], "rules file r.yaml")
