"""``traces_frame``: notebook-style pandas analysis runs unchanged on the store (both backends)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from consumers.events import Provenance
from consumers.formats import decode_assessment, decode_trace
from store.engine import make_engine
from store.frames import traces_frame
from store.upserts import Batch
from store.writer import SqlWriter
from tests import payloads as P

pytestmark = pytest.mark.integration
BASE_MS = 1_795_000_000_000  # 2026-11-18T...Z


def _ingest(store_url: str) -> tuple[Any, list[dict[str, Any]], str, str]:
    docs = [P.trace_doc(kind, start_ms=BASE_MS + i * 600_000)  # one every 10 minutes
            for i, kind in enumerate(["ok", "ok", "error", "slow", "ok", "error", "ok", "slow"])]
    prov = Provenance("t", 0, 0)
    traces = [decode_trace(P.dumps(d), prov, 1 << 22) for d in docs]
    bad = P.assessment_doc("feedback_no", trace_id=docs[0]["info"]["trace_id"])
    old = P.assessment_doc("feedback_numeric", trace_id=docs[1]["info"]["trace_id"], value=0.1)
    new = P.assessment_doc("override_new", trace_id=docs[1]["info"]["trace_id"],
                           overrides=old["assessment_id"])
    assessments = [decode_assessment(P.dumps(a), prov, 1 << 22) for a in (bad, old, new)]
    engine = make_engine(store_url)
    SqlWriter(engine).write(Batch(traces=traces, assessments=assessments), BASE_MS)
    return engine, docs, bad["assessment_id"], old["assessment_id"]


def test_classic_quality_analysis_runs_on_the_store(store_url: str) -> None:
    engine, docs, bad_id, overridden_id = _ingest(store_url)
    traces = traces_frame(engine, since_ms=BASE_MS)

    # The notebook's quality analysis, as users write it against the old DataFrame shape.
    analysis = {
        "total_traces": len(traces),
        "success_rate": (traces["status"] == "OK").mean(),
        "avg_latency_ms": traces["execution_time_ms"].mean(),
        "p95_latency_ms": traces["execution_time_ms"].quantile(0.95),
        "error_count": len(traces[traces["status"] == "ERROR"]),
    }
    durations = [d["info"]["execution_duration_ms"] for d in docs]
    assert analysis["total_traces"] == 8
    assert analysis["success_rate"] == 6 / 8
    assert analysis["error_count"] == 2
    assert analysis["avg_latency_ms"] == pytest.approx(sum(durations) / 8)
    assert analysis["p95_latency_ms"] == pytest.approx(pd.Series(durations).quantile(0.95))
    samples = traces[traces["status"] == "ERROR"]["request"].head(5).tolist()
    assert all(isinstance(s, dict) for s in samples)  # parsed inputs, as search_traces gave

    traces["hour"] = pd.to_datetime(traces["timestamp_ms"], unit="ms").dt.hour
    hourly = traces.groupby("hour").size().to_dict()
    assert sum(hourly.values()) == 8 and len(hourly) >= 2

    failures = [row["trace_id"] for _, row in traces.iterrows()
                for a in row.get("assessments", [])
                if "feedback" in a and a["feedback"]["value"] in ["no", False]]
    assert failures == [docs[0]["info"]["trace_id"]]
    all_ids = {a["assessment_id"] for lst in traces["assessments"] for a in lst}
    assert bad_id in all_ids and overridden_id not in all_ids  # overridden: invalid, left out

    assert len(traces_frame(engine, since_ms=BASE_MS, until_ms=BASE_MS + 1_800_000)) == 3
    assert traces_frame(engine, since_ms=BASE_MS + 10**9).empty
    engine.dispose()
