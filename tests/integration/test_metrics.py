"""Metric buckets and ``report`` on both backends: accurate against pandas on the raw rows,
identical whatever the delivery order, duplicates or IN_PROGRESS versions, and pruned by
retention while reports keep their history."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from sqlalchemy import Engine, func, select

from consumers.events import Provenance
from consumers.formats import decode_assessment, decode_trace
from store import schema
from store.engine import make_engine
from store.frames import traces_frame
from store.metrics import MetricsConfig, rebuild
from store.models import Trace, TraceTag
from store.report import summary
from store.retention import Retention, prune
from store.upserts import Batch
from store.writer import SqlWriter
from tests import metrics_data as M
from tests import payloads as P
from tests.helpers import bucket_snapshot, fresh_pg_database
from worker.cli.main import main
from worker.rules.engine import load_rules

pytestmark = pytest.mark.integration
HOUR = 3_600_000
BASE_MS = 1_795_000_000_000 + 17 * 60_000 + 23_456  # deliberately not hour- or minute-aligned
PROV = Provenance("t", 0, 0)


def _trace(doc: dict[str, Any]) -> Any:
    return decode_trace(P.dumps(doc), PROV, 1 << 22)


def _assessment(doc: dict[str, Any]) -> Any:
    return decode_assessment(P.dumps(doc), PROV, 1 << 22)


def _writer(engine: Engine) -> SqlWriter:
    return SqlWriter(engine, load_rules(None), MetricsConfig("environment", None, None))


def _write(engine: Engine, traces: list[Any], assessments: list[Any], batch: int = 500) -> None:
    w = _writer(engine)
    for i in range(0, max(len(traces), len(assessments)), batch):
        w.write(Batch(traces=traces[i:i + batch], assessments=assessments[i:i + batch]),
                BASE_MS)


@contextlib.contextmanager
def second_store(store_url: str, tmp_path: Any, pg_admin: Any) -> Iterator[str]:
    if store_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path}/second.db"
        yield url
        return
    with fresh_pg_database(pg_admin()) as url:
        yield url


def _migrated(url: str) -> Engine:
    engine = make_engine(url)
    schema.upgrade(engine)
    return engine


# ---------------------------------------------------------------------------------------------


def _report_json(capsys: Any, monkeypatch: Any, store_url: str, *args: str) -> dict[str, Any]:
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    capsys.readouterr()
    assert main(["report", "--format", "json", *args]) == 0
    return orjson.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _iso(ms: int) -> str:
    return P.iso(ms).replace(".000Z", "Z")


def test_report_matches_pandas_on_the_raw_rows(store_url: str, capsys: Any,
                                               monkeypatch: Any) -> None:
    docs = M.traffic(3000, BASE_MS, 30 * HOUR)
    feedback = M.feedback_for(docs)
    engine = make_engine(store_url)
    _write(engine, [_trace(d) for d in docs], [_assessment(a) for a in feedback])

    # A window with partial hours at both edges: hour buckets inside, minute buckets outside.
    since, until = BASE_MS + 2 * HOUR + 25 * 60_000, BASE_MS + 27 * HOUR + 41 * 60_000
    report = _report_json(capsys, monkeypatch, store_url, "--since", _iso(since),
                          "--until", _iso(until))
    w = report["window"]
    assert w["since_ms"] % 60_000 == 0 and w["until_ms"] % 60_000 == 0
    assert w["since_ms"] <= since < w["since_ms"] + 60_000
    assert w["until_ms"] - 60_000 < until <= w["until_ms"]

    df = traces_frame(engine, since_ms=w["since_ms"], until_ms=w["until_ms"])
    assert 2000 < len(df) < 3000
    lat = df["execution_time_ms"].astype(float)
    assert report["total_traces"] == len(df)
    assert report["ok_count"] == int((df["status"] == "OK").sum())
    assert report["error_count"] == int((df["status"] == "ERROR").sum())
    assert report["success_rate"] == pytest.approx((df["status"] == "OK").mean(), abs=1e-12)
    assert report["avg_latency_ms"] == pytest.approx(lat.mean(), rel=1e-12)
    for q, key in ((0.5, "p50_latency_ms"), (0.95, "p95_latency_ms"), (0.99, "p99_latency_ms")):
        # Within 1% of the sample at the same rank; pandas interpolates between neighbours,
        # which adds well under 0.1% at these sizes.
        assert report[key] == pytest.approx(np.quantile(lat, q, method="lower"), rel=0.01)
        assert report[key] == pytest.approx(lat.quantile(q), rel=0.011)
    assert report["max_latency_ms"] == pytest.approx(lat.max(), rel=0.01)

    hours = pd.to_datetime(df["timestamp_ms"], unit="ms").dt.strftime("%Y-%m-%dT%H:00:00Z")
    expected_hourly = hours.value_counts().to_dict()
    assert {k: v for k, v in report["hourly_volume"].items() if v} == expected_hourly
    assert sum(report["hourly_volume"].values()) == len(df)

    tokens = [orjson.loads(m["mlflow.trace.tokenUsage"]) for m in df["trace_metadata"]]
    assert report["tokens"] == {"input": sum(t["input_tokens"] for t in tokens),
                                "output": sum(t["output_tokens"] for t in tokens),
                                "total": sum(t["total_tokens"] for t in tokens)}

    by_id = {d["trace_id"]: d for d in docs}
    spans = pd.DataFrame([{"type": s["span_type"],
                           "d": (s["end_time_ns"] - s["start_time_ns"]) / 1e9}
                          for tid in df["trace_id"] for s in by_id[tid]["spans"]])
    assert set(report["span_types"]) == set(spans["type"])
    for t, g in spans.groupby("type"):
        got = report["span_types"][t]
        assert got["count"] == len(g)
        assert got["total_time_s"] == pytest.approx(g["d"].sum(), abs=len(g) * 1e-6)
        assert got["avg_time_s"] == pytest.approx(g["d"].mean(), rel=1e-6)
        assert got["max_time_s"] == pytest.approx(g["d"].max(), rel=0.01)
        assert got["p95_time_s"] == pytest.approx(
            np.quantile(g["d"], 0.95, method="lower"), rel=0.01)

    fb = pd.DataFrame([{"name": a["assessment_name"], "value": a["feedback"]["value"]}
                       for row in df["assessments"] for a in row])
    assert set(report["assessments"]) == set(fb["name"])
    for name, g in fb.groupby("name"):
        got = report["assessments"][name]
        assert got["count"] == len(g)
        numeric = g["value"].map(lambda v: {"yes": 1.0, "no": 0.0}.get(v, v)).astype(float)
        assert got["mean"] == pytest.approx(numeric.mean(), abs=1e-6)
        if name in ("is_correct", "helpful"):
            assert got["pass_rate"] == pytest.approx(
                g["value"].isin([True, "yes"]).mean(), abs=1e-12)
        else:
            assert got["pass_rate"] is None

    with engine.connect() as conn:
        t, tt = Trace.__table__, TraceTag.__table__
        rows = conn.execute(
            select(tt.c.tag_value, func.count()).join(t, t.c.trace_id == tt.c.trace_id)
            .where(t.c.timestamp_ms >= w["since_ms"], t.c.timestamp_ms < w["until_ms"],
                   tt.c.tag_value.is_not(None)).group_by(tt.c.tag_value)).all()
    assert report["candidates"] == dict(rows)
    assert report["candidates"].get("error_case") == report["error_count"]


def test_report_by_dimension_and_experiment_filter(store_url: str, capsys: Any,
                                                   monkeypatch: Any) -> None:
    docs = M.traffic(1200, BASE_MS, 6 * HOUR, seed=3)
    engine = make_engine(store_url)
    _write(engine, [_trace(d) for d in docs], [])
    args = ("--since", _iso(BASE_MS - HOUR), "--until", _iso(BASE_MS + 7 * HOUR))
    df = pd.DataFrame(docs)
    df["environment"] = df["tags"].map(lambda t: t["environment"])
    for by, column in (("trace_name", "name"), ("environment", "environment"),
                       ("experiment", "experiment_id")):
        report = _report_json(capsys, monkeypatch, store_url, *args, "--by", by)
        counts = df.groupby(column).size().to_dict()
        assert {g: v["total_traces"] for g, v in report["groups"].items()} == counts
        errors = df[df["status"] == "ERROR"].groupby(column).size().to_dict()
        assert {g: v["error_count"] for g, v in report["groups"].items() if v["error_count"]} \
            == errors
    only = _report_json(capsys, monkeypatch, store_url, *args, "--experiment", "2")
    assert only["total_traces"] == int((df["experiment_id"] == "2").sum())
    assert only["experiment_id"] == "2"


def test_empty_window_gives_zeros_and_a_note(store_url: str, capsys: Any,
                                             monkeypatch: Any) -> None:
    report = _report_json(capsys, monkeypatch, store_url, "--since", "24h")
    assert report["total_traces"] == 0
    assert report["success_rate"] == 0.0 and report["p95_latency_ms"] == 0.0
    assert report["notes"] == ["no traces in this window"]
    assert set(report["hourly_volume"].values()) == {0}
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    for fmt in ("table", "csv"):
        assert main(["report", "--since", "24h", "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert "nan" not in out.lower()
    assert main(["report", "--since", "24h"]) == 0
    assert "Note: no traces in this window" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------


def _chaotic_events(seed: int = 5) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """(ordered traces, ordered assessments, chaotic traces, chaotic assessments)."""
    docs = M.traffic(800, BASE_MS, 5 * HOUR, seed=seed)
    feedback = M.feedback_for(docs, seed=seed)
    rng = random.Random(seed)
    # An override pair, and an assessment arriving before its trace is known.
    old = P.assessment_doc("override_old", trace_id=docs[0]["trace_id"])
    new = P.assessment_doc("override_new", trace_id=docs[0]["trace_id"],
                           overrides=old["assessment_id"])
    feedback += [old, new]
    early = [M.in_progress_version(d) for d in docs if rng.random() < 0.3]
    # Renamed and re-tagged on completion: the bucket key itself moves.
    early += [dict(M.in_progress_version(d), name="warming_up",
                   tags={"environment": "unknown"}) for d in docs[::50]]
    ordered_t = [_trace(d) for d in docs]
    ordered_a = [_assessment(a) for a in feedback]
    chaotic_t = [_trace(d) for d in docs + early + rng.sample(docs, 200)]
    chaotic_a = [_assessment(a) for a in feedback + rng.sample(feedback, 100)]
    rng.shuffle(chaotic_t)
    rng.shuffle(chaotic_a)
    # IN_PROGRESS versions first for some traces, after the finished one for others.
    return ordered_t, ordered_a, chaotic_t, chaotic_a


def test_buckets_are_identical_whatever_the_delivery(store_url: str, tmp_path: Any,
                                                     request: Any) -> None:
    ordered_t, ordered_a, chaotic_t, chaotic_a = _chaotic_events()
    chaotic = make_engine(store_url)
    w = _writer(chaotic)
    rng = random.Random(1)
    events: list[Any] = chaotic_t + chaotic_a
    rng.shuffle(events)
    i = 0
    while i < len(events):  # uneven batches, mixing traces and assessments
        n = rng.randint(1, 300)
        chunk = events[i:i + n]
        w.write(Batch(traces=[e for e in chunk if hasattr(e, "spans")],
                      assessments=[e for e in chunk if not hasattr(e, "spans")]), BASE_MS)
        i += n
    # Everything delivered a second time, in another order.
    rng.shuffle(events)
    for j in range(0, len(events), 400):
        chunk = events[j:j + 400]
        w.write(Batch(traces=[e for e in chunk if hasattr(e, "spans")],
                      assessments=[e for e in chunk if not hasattr(e, "spans")]), BASE_MS)

    with second_store(store_url, tmp_path,
                      lambda: request.getfixturevalue("pg_available")) as url:
        clean = _migrated(url)
        try:
            _write(clean, ordered_t, ordered_a)
            got, want = bucket_snapshot(chaotic), bucket_snapshot(clean)
            assert got["minute"] and got["hour"]
            assert got == want
        finally:
            clean.dispose()

    with chaotic.begin() as conn:
        rebuild(conn, MetricsConfig("environment", None, None), BASE_MS)
    assert bucket_snapshot(chaotic) == got  # the buckets equal a recomputation from raw rows

    s = summary(chaotic, BASE_MS - HOUR, BASE_MS + 6 * HOUR)
    assert s.overall.total_traces == 800 and s.overall.in_progress_count == 0
    assert "warming_up" not in {k for k in summary(
        chaotic, BASE_MS - HOUR, BASE_MS + 6 * HOUR, by="trace_name").groups}
    assert s.overall.assessments["quality"].count == 1  # the override replaced the old one
    assert s.overall.assessments["quality"].mean == pytest.approx(0.9)


def test_late_feedback_and_tag_changes_move_the_buckets(store_url: str) -> None:
    engine = make_engine(store_url)
    doc = M.traffic(1, BASE_MS, 1000)[0]
    doc["status"] = "OK"
    _write(engine, [_trace(doc)], [])
    window = (BASE_MS - HOUR, BASE_MS + HOUR)
    assert summary(engine, *window).overall.assessments == {}
    bad = P.assessment_doc("feedback_no", trace_id=doc["trace_id"], value="no",
                           updated_ms=BASE_MS)
    _write(engine, [], [_assessment(bad)])
    s = summary(engine, *window).overall
    assert s.assessments["helpful"].pass_rate == 0.0
    assert s.candidates == {"low_score": 1}
    fixed = P.assessment_doc("feedback_no", trace_id=doc["trace_id"],
                             assessment_id=bad["assessment_id"], value="yes",
                             updated_ms=BASE_MS + 10 * HOUR)
    _write(engine, [], [_assessment(fixed)])
    s = summary(engine, *window).overall
    assert s.assessments["helpful"].count == 1 and s.assessments["helpful"].pass_rate == 1.0
    assert s.candidates == {}


def test_retention_prunes_raw_rows_but_reports_keep_them(store_url: str) -> None:
    engine = make_engine(store_url)
    docs = M.traffic(300, BASE_MS, 3 * HOUR, seed=9)
    _write(engine, [_trace(d) for d in docs], [_assessment(a) for a in M.feedback_for(docs)])
    window = (BASE_MS - HOUR, BASE_MS + 4 * HOUR)
    before = summary(engine, *window).to_dict()
    now = BASE_MS + 3 * HOUR + 31 * 86_400_000  # 31 days later: raw rows past 30 days
    retention = Retention(raw_days=30, minute_days=31.05, hour_days=400, max_rows_per_cycle=120)
    pruned = []
    with engine.begin() as conn:
        pruned.append(prune(conn, now, retention))
    assert pruned[0].traces == 120  # bounded per cycle
    while pruned[-1]:
        with engine.begin() as conn:
            pruned.append(prune(conn, now, retention))
    assert sum(p.traces for p in pruned) == 300
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Trace.__table__)).scalar() == 0
    after = summary(engine, *window).to_dict()
    for key in ("total_traces", "ok_count", "p95_latency_ms", "span_types", "assessments",
                "hourly_volume", "candidates"):
        assert after[key] == before[key]
    # Minute buckets older than 31.05 days went too; whole hours still report.
    assert sum(p.minute_buckets for p in pruned) > 0


def test_sql_views_add_up_to_the_report(store_url: str) -> None:
    """The documented views: their sums equal the report's exact figures, on both backends."""
    engine = make_engine(store_url)
    docs = M.traffic(600, BASE_MS, 4 * HOUR, seed=21)
    _write(engine, [_trace(d) for d in docs], [_assessment(a) for a in M.feedback_for(docs)])
    s = summary(engine, BASE_MS - HOUR, BASE_MS + 5 * HOUR).overall
    with engine.connect() as conn:
        def one(sql: str) -> Any:
            return conn.exec_driver_sql(sql).one()

        assert one("SELECT SUM(traces), SUM(ok), SUM(errors) FROM tc_metrics_hour") == (
            s.total_traces, s.ok_count, s.error_count)
        assert one("SELECT SUM(traces) FROM tc_metrics_minute")[0] == s.total_traces
        lat = one("SELECT SUM(avg_latency_ms * traces) / SUM(traces) FROM tc_metrics_hour")[0]
        assert lat == pytest.approx(s.avg_latency_ms, rel=1e-9)  # all finished: weights agree
        rows = conn.exec_driver_sql(
            "SELECT span_type, SUM(spans), SUM(total_time_s) FROM tc_span_types_hour "
            "GROUP BY span_type").all()
        assert {t: n for t, n, _ in rows} == {t: v.count for t, v in s.span_types.items()}
        for t, _, total in rows:
            assert total == pytest.approx(s.span_types[t].total_time_s, rel=1e-9)
        rows = conn.exec_driver_sql(
            "SELECT assessment_name, SUM(feedback_count), SUM(passed), SUM(failed) "
            "FROM tc_feedback_hour GROUP BY assessment_name").all()
        assert {r[0]: r[1] for r in rows} == {n: a.count for n, a in s.assessments.items()}
        assert {r[0]: (r[2], r[3]) for r in rows} == {
            n: (a.passed, a.failed) for n, a in s.assessments.items()}
        rows = conn.exec_driver_sql(
            "SELECT tag_value, SUM(candidates) FROM tc_candidates_hour GROUP BY tag_value").all()
        assert dict(rows) == s.candidates
        hour_p95 = conn.exec_driver_sql(
            "SELECT p95_ms FROM tc_metrics_hour WHERE traces > 5").scalars().all()
        assert hour_p95 and all(p > 0 for p in hour_p95)


def test_report_cli_rejects_a_bad_window(store_url: str, capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    assert main(["report", "--since", "1h", "--until", "2h"]) == 2
    assert "--until (2h) must be after --since (1h)" in capsys.readouterr().err
    assert main(["report", "--since", "yesterday"]) == 2
    assert "neither a duration" in capsys.readouterr().err
