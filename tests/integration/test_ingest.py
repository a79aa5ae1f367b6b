"""End to end on the real broker and store: real MLflow payloads in, exact rows out.

Every test runs on SQLite and on PostgreSQL (the ``store_url`` fixture).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text

from store.engine import make_engine
from store.models import Assessment, Trace
from store.sketch import key_for
from tests import payloads as P
from tests.conftest import publish

pytestmark = pytest.mark.integration


def _key(doc: dict[str, Any]) -> bytes:
    info = doc.get("info", doc)
    return str(info["trace_id"]).encode()


def test_real_payloads_land_exactly(settings_factory: Any, producer: Any,
                                    run_worker: Any) -> None:
    settings = settings_factory(batch_max_records=7)  # many small batches
    base_ms = 1_795_000_000_000
    finals: dict[str, dict[str, Any]] = {}
    trace_docs: list[dict[str, Any]] = []
    for i, kind in enumerate(["ok"] * 12 + ["error"] * 4 + ["slow"] * 4):
        doc = P.trace_doc(kind, start_ms=base_ms + i * 1000)
        tid = doc["info"]["trace_id"]
        finals[tid] = doc
        early = P.trace_doc(kind, trace_id=tid, start_ms=base_ms + i * 1000, in_progress=True,
                            keep_spans=1)
        info_only = {**doc["info"]}
        if i % 4 == 0:      # IN_PROGRESS first, then the finished trace: the row is updated
            trace_docs += [early, doc]
        elif i % 4 == 1:    # out of order: the stale IN_PROGRESS version comes last
            trace_docs += [doc, early]
        elif i % 4 == 2:    # a duplicate, and the bare TraceInfo after the full trace
            trace_docs += [doc, doc, info_only]
        else:               # the bare TraceInfo first, then the full trace adds the spans
            trace_docs += [info_only, doc]
    flat = {"trace_id": P.new_trace_id(), "experiment_id": "7", "timestamp_ms": base_ms,
            "execution_time_ms": 1234, "status": "OK", "request": {"question": "flat?"},
            "response": "yes", "tags": {"environment": "staging"}, "metadata": {},
            "spans": [{"name": "llm", "span_type": "CHAT_MODEL", "start_time_ns": 0,
                       "end_time_ns": 5_000_000, "status": "OK"}]}
    trace_docs.append(flat)
    publish(producer, settings.trace_topic, trace_docs, key=_key)

    tids = list(finals)
    numeric = P.assessment_doc("feedback_numeric", trace_id=tids[0], value=0.25)
    boolean = P.assessment_doc("feedback_bool", trace_id=tids[1])
    no = P.assessment_doc("feedback_no", trace_id=tids[2])
    expect = P.assessment_doc("expectation", trace_id=tids[3])
    old = P.assessment_doc("override_old", trace_id=tids[4], valid=True, value=0.2)
    new = P.assessment_doc("override_new", trace_id=tids[4], overrides=old["assessment_id"],
                           value=0.9)
    v1 = P.assessment_doc("feedback_numeric", trace_id=tids[5], value=0.1,
                          updated_ms=base_ms + 1000)
    v2 = {**v1, "feedback": {"value": 0.8}, "last_update_time": P.iso(base_ms + 2000)}
    # The override arrives before what it overrides; the newer version before the older one.
    assessment_docs = [numeric, boolean, no, expect, new, old, v2, v1, numeric]
    publish(producer, settings.assessment_topic, assessment_docs, key=lambda d: d["trace_id"]
            .encode())

    stats = run_worker(settings)
    assert stats.dead_letters == 0
    assert stats.records == len(trace_docs) + len(assessment_docs)

    engine = make_engine(settings.store_url_plain)
    with engine.connect() as conn:
        rows = {r.trace_id: r for r in conn.execute(select(Trace))}
        arows = {r.assessment_id: r for r in conn.execute(select(Assessment))}
    assert set(rows) == set(finals) | {flat["trace_id"]}
    for tid, doc in finals.items():
        row, info = rows[tid], doc["info"]
        assert row.status == info["state"], tid
        assert row.execution_time_ms == info["execution_duration_ms"]
        assert row.span_count == len(doc["data"]["spans"])
        assert row.source_format == "trace"
        assert row.request == next(s for s in doc["data"]["spans"]
                                   if s["parent_span_id"] is None)["attributes"][
            "mlflow.spanInputs"]
    ok = P.fixture("trace_ok")
    any_ok = next(rows[t] for t, d in finals.items() if d["info"]["state"] == "OK"
                  and d["info"]["execution_duration_ms"] == ok["info"]["execution_duration_ms"])
    assert any_ok.total_tokens is not None and any_ok.total_tokens > 0
    assert set(any_ok.span_summary) >= {"RETRIEVER", "CHAT_MODEL"}
    assert any_ok.tags.get("environment") == "production"
    frow = rows[flat["trace_id"]]
    assert (frow.experiment_id, frow.execution_time_ms, frow.status) == ("7", 1234, "OK")
    assert frow.span_summary == {"CHAT_MODEL": {"count": 1, "total_ms": 5.0, "max_ms": 5.0,
                                                 "bins": [[key_for(5.0), 1]]}}

    assert len(arows) == 7
    assert arows[numeric["assessment_id"]].numeric_value == 0.25
    assert arows[boolean["assessment_id"]].numeric_value == 0.0
    assert arows[no["assessment_id"]].numeric_value == 0.0
    assert arows[expect["assessment_id"]].kind == "expectation"
    assert arows[old["assessment_id"]].valid is False      # overridden, though it came last
    assert arows[new["assessment_id"]].valid is True
    assert arows[v1["assessment_id"]].numeric_value == 0.8  # the newer version won
    engine.dispose()


def test_redelivery_changes_nothing(settings_factory: Any, producer: Any,
                                    run_worker: Any) -> None:
    """The same events consumed again by a new group leave every row byte-for-byte unchanged."""
    settings = settings_factory()
    docs = [P.trace_doc("ok", start_ms=1_795_000_000_000 + i) for i in range(30)]
    publish(producer, settings.trace_topic, docs, key=_key)
    run_worker(settings)
    engine = make_engine(settings.store_url_plain)
    snapshot = "SELECT trace_id, status, span_count, completeness, ingested_ms FROM traces " \
               "ORDER BY trace_id"
    with engine.connect() as conn:
        before = conn.execute(text(snapshot)).all()
    run_worker(settings.model_copy(update={"group_id": settings.group_id + "-again"}))
    with engine.connect() as conn:
        after = conn.execute(text(snapshot)).all()
    assert len(before) == 30
    assert before == after  # ingested_ms unchanged: the redelivered rows were not rewritten
    engine.dispose()
