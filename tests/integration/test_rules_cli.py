"""``rules test`` (dry run) and ``rules explain`` on a store the worker's write path filled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from consumers.events import Provenance
from consumers.formats import decode_assessment, decode_trace
from store.engine import make_engine
from store.models import DecisionLog, TagOutbox
from store.upserts import Batch
from store.writer import SqlWriter
from tests import payloads as P
from tests.integration.test_cli import cli
from worker.rules.engine import load_rules

pytestmark = pytest.mark.integration
NOW_MS = 1_795_000_000_000


def _fill(store_url: str) -> tuple[list[dict[str, Any]], str]:
    kinds = ["ok"] * 6 + ["error"] * 3 + ["slow"] * 2
    docs = [P.trace_doc(k, start_ms=NOW_MS - 3_600_000 + i * 1000,
                        tags={"environment": "production" if i % 2 else "staging"})
            for i, k in enumerate(kinds)]
    prov = Provenance("t", 0, 0)
    low = P.assessment_doc("feedback_numeric", trace_id=docs[0]["info"]["trace_id"], value=0.2)
    engine = make_engine(store_url)
    SqlWriter(engine, load_rules(None)).write(
        Batch(traces=[decode_trace(P.dumps(d), prov, 1 << 22) for d in docs],
              assessments=[decode_assessment(P.dumps(low), prov, 1 << 22)]), NOW_MS)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(TagOutbox)).scalar() == 6
        assert conn.execute(select(func.count()).select_from(DecisionLog)).scalar() == 6
    engine.dispose()
    return docs, docs[0]["info"]["trace_id"]


def test_rules_test_is_a_dry_run_with_counts(store_url: str, tmp_path: Path) -> None:
    docs, _ = _fill(store_url)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: prod_errors\n"
        "    filter: \"attributes.status = 'ERROR' AND tags.environment = 'production'\"\n"
        "  - name: any_error\n"
        "    filter: \"attributes.status = 'ERROR'\"\n"
        "    tag: {value: prod_errors}\n")
    env = {"TRACE_CURATOR_STORE_URL": store_url}
    out = cli("rules", "test", str(rules), "--since", "2026-11-01", env=env)
    assert out.returncode == 0, out.stderr
    prod_errors = [d for i, d in enumerate(docs) if d["info"]["state"] == "ERROR" and i % 2]
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:]
             if line.startswith("  ") and not line.startswith("  eval_candidate")}
    assert lines["prod_errors"][1] == str(len(prod_errors))          # tagged
    assert lines["any_error"][1:3] == [str(3 - len(prod_errors)), str(len(prod_errors))]
    assert "eval_candidate=prod_errors: 3" in out.stdout
    assert "dry run over 11 stored trace(s)" in out.stdout
    engine = make_engine(store_url)
    with engine.connect() as conn:  # nothing written
        assert conn.execute(select(func.count()).select_from(DecisionLog)).scalar() == 6
    engine.dispose()

    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: x\n    filter: \"tags.x RLIKE 'a'\"\n")
    err = cli("rules", "test", str(bad), env=env)
    assert err.returncode == 2 and "rule #1 'x'" in err.stderr


def test_explain_shows_decisions_or_reevaluates(store_url: str) -> None:
    docs, low_id = _fill(store_url)
    env = {"TRACE_CURATOR_STORE_URL": store_url}
    out = cli("rules", "explain", low_id, env=env)
    assert out.returncode == 0, out.stderr
    assert "eval_candidate = low_score" in out.stdout
    assert "pending: 0 attempt(s)" in out.stdout  # no MLflow here: still in the outbox
    plain = next(d["info"]["trace_id"] for d in docs[1:] if d["info"]["state"] == "OK"
                 and d["info"]["execution_duration_ms"] < 5000)
    out = cli("rules", "explain", plain, env=env)
    assert "no rule has matched this trace" in out.stdout
    assert "evaluated now with the configured rules" in out.stdout
    missing = cli("rules", "explain", "tr-nope", env=env)
    assert missing.returncode == 1 and "not in the store" in missing.stderr
