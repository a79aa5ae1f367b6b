"""The quality dashboard on both stores: ``report --format html`` and the live routes agree with
``report --format json`` for the same window, show the dead letters, dataset versions and outbox,
escape what the data holds, handle an empty window and bad parameters; and (PostgreSQL) every
SQL target of the Grafana dashboard runs over the real views.

``seed`` (data written through the real write path: decode, rules, metrics, store) is shared
with tests/integration/test_browser.py.
"""

from __future__ import annotations

import json
import random
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text

from consumers.events import DeadLetter, Provenance
from consumers.formats import decode_assessment, decode_trace
from store.engine import make_engine
from store.metrics import MetricsConfig
from store.report import iso
from store.upserts import Batch
from store.writer import SqlWriter
from tests import metrics_data as M
from tests import payloads as P
from worker.cli.main import main
from worker.curation.curator import Curator
from worker.curation.sinks import FileDatasetSink
from worker.curation.specs import DatasetSpec, SinkSpec
from worker.rules.engine import parse_rules
from worker.serve.dashboard import dashboard_routes
from worker.serve.server import HttpServer
from worker.settings import Settings

pytestmark = pytest.mark.integration
HOUR = 3_600_000
BASE_MS = 1_795_000_000_000 + 17 * 60_000 + 23_456  # not hour- or minute-aligned
PROV = Provenance("t", 0, 0)
MINUTE_RETENTION_DAYS = Settings.model_fields["retention_minute_days"].default

# Strings that would run if they reached the page unescaped; each sets window.__pwned.
EVIL_REQUEST = "<script>window.__pwned='request'</script>"
EVIL_TAG = "<script>window.__pwned='tag'</script>"
EVIL_TRACE_ID = "tr-<img src=x onerror=\"window.__pwned='id'\">"
EVIL_ERROR = "payload: got keys [<script>window.__pwned='error'</script>]"
EVIL_LATENCY_MS = 4321
# The evil trace (and only it) gets the evil tag value, so it is that value's one example.
EVIL_RULES = f"""
rules:
  - name: evil
    filter: "attributes.execution_time_ms = {EVIL_LATENCY_MS}"
    tag: {{key: eval_candidate, value: "{EVIL_TAG}"}}
  - name: error_case
    filter: "attributes.status = 'ERROR'"
    tag: {{key: eval_candidate, value: error_case}}
  - name: slow_response
    filter: "attributes.execution_time_ms > 3000"
    tag: {{key: eval_candidate, value: slow_response}}
"""


@dataclass(frozen=True)
class Seeded:
    traces: int
    dead_letters: int
    evil_trace_id: str


def seed(engine: Engine, start_ms: int, span_ms: int, *, n: int = 400,
         dead_letter_ms: int | None = None, dataset_dir: Path | None = None) -> Seeded:
    """``n`` traces of synthetic traffic over ``[start_ms, start_ms + span_ms)`` with feedback,
    an ERROR trace in the middle whose id and request hold markup, tagged with a markup tag
    value, three dead letters whose error holds markup, and (``dataset_dir``) one dataset
    version of the error cases."""
    docs = [d for d in M.traffic(n, start_ms, span_ms)
            if d["execution_time_ms"] != EVIL_LATENCY_MS]
    evil = M.flat_trace(random.Random(3), 10_000, start_ms + span_ms // 2)
    evil.update(trace_id=EVIL_TRACE_ID, status="ERROR", request={"q": EVIL_REQUEST},
                execution_time_ms=EVIL_LATENCY_MS)
    docs.append(evil)
    writer = SqlWriter(engine, parse_rules(EVIL_RULES), MetricsConfig("environment", None, None))
    traces = [decode_trace(P.dumps(d), PROV, 1 << 22) for d in docs]
    feedback = [decode_assessment(P.dumps(a), PROV, 1 << 22) for a in M.feedback_for(docs)]
    at = start_ms + span_ms // 2 if dead_letter_ms is None else dead_letter_ms
    letters = [DeadLetter(Provenance("mlflow-traces", 0, 100 + i), None, b"{}", 2,
                          "DecodeError", EVIL_ERROR, None, at + i) for i in range(3)]
    for i in range(0, len(traces), 200):
        writer.write(Batch(traces=traces[i:i + 200], assessments=feedback[i:i + 200]), at)
    writer.write(Batch(dead_letters=letters), at)
    if dataset_dir is not None:
        spec = DatasetSpec("regressions", tag_values=("error_case",),
                           sink=SinkSpec("files", path=str(dataset_dir)))
        result = Curator(engine, [spec], {"regressions": FileDatasetSink(str(dataset_dir))}
                         ).run_cycle()[0]
        assert result.state == "done", result.line()
    return Seeded(len(docs), len(letters), EVIL_TRACE_ID)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[HttpServer] = []

    def start(engine: Engine) -> str:
        server = HttpServer("127.0.0.1", 0, dashboard_routes(
            engine, minute_retention_days=MINUTE_RETENTION_DAYS)).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for s in servers:
        s.stop()


def cli_json(capsys: Any, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["report", "--format", "json", *args]) == 0
    return orjson.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def without_time(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "generated_at"}


def metric_values(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-metric="(\w+)" data-value="([^"]*)"', page))


def bars(page: str, chart: str = "volume") -> list[int]:
    svg = re.search(rf'<svg class="chart" data-chart="{chart}".*?</svg>', page, re.DOTALL)
    assert svg, chart
    return [int(v) for v in re.findall(r'<rect class="bar [a-z]+" data-start="[^"]+" '
                                       r'data-value="(\d+)"', svg.group(0))]


# ---------------------------------------------------------------------------------------------


def test_html_report_and_api_agree_with_the_json_report(
        store_url: str, tmp_path: Path, capsys: Any, monkeypatch: Any, serve: Any) -> None:
    engine = make_engine(store_url)
    seeded = seed(engine, BASE_MS, 30 * HOUR, dataset_dir=tmp_path / "datasets")
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    window = ["--since", iso(BASE_MS + 2 * HOUR + 25 * 60_000),
              "--until", iso(BASE_MS + 27 * HOUR + 41 * 60_000)]
    report = cli_json(capsys, *window)
    assert 250 < report["total_traces"] < seeded.traces

    out = tmp_path / "report.html"
    assert main(["report", "--format", "html", *window, "--output", str(out)]) == 0
    page = out.read_text()
    values = metric_values(page)
    for key in ("total_traces", "error_count", "success_rate", "avg_latency_ms",
                "p50_latency_ms", "p95_latency_ms", "p99_latency_ms"):
        assert float(values[key]) == report[key], key
    assert int(values["tokens_total"]) == report["tokens"]["total"]
    # The series merges the same buckets: one bar per hour of the JSON, equal counts.
    assert bars(page) == list(report["hourly_volume"].values())
    assert sum(bars(page, "errors")) == report["error_count"]
    assert f'data-since="{report["window"]["since"]}"' in page
    # Candidates, with examples; dead letters, dataset versions and the outbox.
    for value in report["candidates"]:
        assert f'data-tag-value="{_attr(value)}"' in page
    assert "error_case" in page and "regressions" in page
    assert int(values["dead_letters_in_window"]) == seeded.dead_letters
    assert "outbox_total" in values
    # Everything the data holds is escaped.
    assert "<script>window" not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.__pwned=&#x27;tag&#x27;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=" in page
    assert "http://" not in page and "https://" not in page

    base = serve(engine)
    for extra in ([], ["--experiment", "2"], ["--by", "trace_name"]):
        query = "&".join(f"{a[2:]}={b}" for a, b in zip(window[::2] + extra[::2],
                                                       window[1::2] + extra[1::2], strict=True))
        status, ctype, body = get(f"{base}/api/report?{query}")
        assert (status, ctype) == (200, "application/json")
        assert without_time(json.loads(body)) == without_time(cli_json(capsys, *window, *extra))

    status, ctype, live = get(f"{base}/?since={window[1]}&until={window[3]}&experiment=2")
    assert (status, ctype) == (200, "text/html; charset=utf-8")
    only_2 = cli_json(capsys, *window, "--experiment", "2")
    assert float(metric_values(live)["total_traces"]) == only_2["total_traces"]
    assert bars(live) == list(only_2["hourly_volume"].values())
    assert '<meta http-equiv="refresh" content="30">' in live
    assert "<script>window" not in live


def _attr(value: str) -> str:
    import html

    return html.escape(value, quote=True)


def test_the_default_window_is_the_last_24_hours(store_url: str, serve: Any, capsys: Any,
                                                 monkeypatch: Any) -> None:
    import time

    engine = make_engine(store_url)
    now = int(time.time() * 1000)
    seed(engine, now - 20 * HOUR, 19 * HOUR, n=120)
    seed_old = M.traffic(30, now - 5 * 24 * HOUR, HOUR, seed=5)  # only in the 7-day window
    SqlWriter(engine, None, MetricsConfig("environment", None, None)).write(Batch(traces=[
        decode_trace(P.dumps(dict(d, trace_id="old-" + d["trace_id"])), PROV, 1 << 22)
        for d in seed_old]), now)
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    base = serve(engine)
    for since, query in (("24h", ""), ("7d", "?since=7d")):
        _, _, page = get(f"{base}/{query}")
        want = cli_json(capsys, "--since", since)
        assert float(metric_values(page)["total_traces"]) == want["total_traces"]
        assert 'aria-current=page>' + since.replace("h", " h").replace("d", " d") in page
    assert cli_json(capsys, "--since", "7d")["total_traces"] == \
        cli_json(capsys, "--since", "24h")["total_traces"] + 30


def test_an_empty_window_and_bad_parameters(store_url: str, tmp_path: Path, monkeypatch: Any,
                                            serve: Any) -> None:
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    out = tmp_path / "empty.html"
    assert main(["report", "--format", "html", "--since", "1h", "--output", str(out)]) == 0
    page = out.read_text()
    assert "No traces in this window." in page
    assert not re.search(r"NaN|\bnan\b|Infinity", page)
    assert main(["report", "--format", "html", "--since", "1000d"]) == 2  # too long

    base = serve(make_engine(store_url))
    status, _, page = get(f"{base}/?since=1h")
    assert status == 200 and "No traces in this window." in page
    status, ctype, page = get(f"{base}/?since=%3Cscript%3Ealert(1)%3C/script%3E")
    assert (status, ctype) == (400, "text/html; charset=utf-8")
    assert "&lt;script&gt;alert(1)" in page and "<script>alert" not in page
    assert get(f"{base}/?since=1000d")[0] == 400
    status, ctype, body = get(f"{base}/api/report?by=nope")
    assert (status, ctype) == (400, "application/json") and "by must be one of" in body
    assert get(f"{base}/api/report?since=1h&until=2h")[0] == 400  # until before since


def test_the_worker_serves_the_dashboard_beside_its_metrics(store_url: str) -> None:
    import socket

    from worker.cli.run import _start_http

    with socket.socket() as s:  # a free port for the worker's server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(store_url=store_url, http_port=port)
    server = _start_http(settings, object(), make_engine(store_url))
    try:
        assert {"/", "/api/report", "/metrics", "/healthz", "/readyz"} <= set(server.routes)
        base = f"http://127.0.0.1:{port}"
        assert get(f"{base}/")[:2] == (200, "text/html; charset=utf-8")
        status, ctype, body = get(f"{base}/api/report?since=7d")
        assert (status, ctype) == (200, "application/json")
        assert json.loads(body)["total_traces"] == 0
    finally:
        server.stop()


# --- the Grafana dashboard's SQL, on PostgreSQL ------------------------------------------------

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def grafana_sql(dashboard: dict[str, Any], since_ms: int, until_ms: int, *,
                all_values: bool = False) -> Iterator[tuple[str, str]]:
    """(title, SQL) of every PostgreSQL target and variable, macros expanded as Grafana does:
    chosen values quoted, or "All" as the variable's ``allValue`` (inserted as it is)."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    chosen = {"experiment": "'1','2','3'", "environment": "'production','staging'"}

    def expand(sql: str) -> str:
        sql = re.sub(r"\$__timeFilter\((\w+)\)", lambda m: (
            f"{m.group(1)} BETWEEN '{iso(since_ms)}' AND '{iso(until_ms)}'"), sql)
        for name, values in chosen.items():
            sql = sql.replace(f"${name}", variables[name]["allValue"] if all_values else values)
        return sql

    for p in dashboard["panels"]:
        for t in p.get("targets", []):
            if t.get("rawSql"):
                yield p["title"], expand(t["rawSql"])
    for v in dashboard["templating"]["list"]:
        yield v["name"], expand(v["query"])


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_grafana_sql_runs_on_the_real_views(store_url: str, capsys: Any,
                                            monkeypatch: Any) -> None:
    engine = make_engine(store_url)
    seed(engine, BASE_MS, 30 * HOUR)
    dashboard = json.loads((GRAFANA / "trace-curator.json").read_text())
    since, until = BASE_MS - BASE_MS % HOUR, BASE_MS - BASE_MS % HOUR + 31 * HOUR
    by_mode: dict[bool, dict[str, Any]] = {False: {}, True: {}}
    with engine.connect() as conn:
        for all_values in (False, True):
            for title, sql in grafana_sql(dashboard, since, until, all_values=all_values):
                rows = conn.execute(text(sql)).all()
                assert rows, title  # each one finds the seeded data
                by_mode[all_values][title] = rows
    assert by_mode[False] == by_mode[True]  # the seeded data has only these values
    results = by_mode[True]
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    report = cli_json(capsys, "--since", iso(since), "--until", iso(until))
    assert results["Traces"][0][0] == report["total_traces"]
    assert results["Errors"][0][0] == report["error_count"]
    assert results["Success rate"][0][0] == pytest.approx(report["success_rate"])
    assert results["Candidates"][0][0] == sum(report["candidates"].values())
    assert {r[0] for r in results["experiment"]} == set(M.EXPERIMENTS)


def test_each_point_of_the_series_is_the_report_of_its_hour(store_url: str) -> None:
    """The series reads only the latency histograms of the bucket rows; each hourly point must
    still equal what ``report`` says of that hour alone (counts, success rate, percentiles),
    for all experiments and for one."""
    from store.dashboard import series
    from store.report import summary

    engine = make_engine(store_url)
    seed(engine, BASE_MS, 6 * HOUR, n=300)
    since, until = BASE_MS - BASE_MS % HOUR, BASE_MS - BASE_MS % HOUR + 7 * HOUR
    for experiment in (None, "2"):
        with engine.connect() as conn:
            points = series(conn, since, until, experiment)
        assert [p.start_ms for p in points] == list(range(since, until, HOUR))
        assert sum(p.traces for p in points) > 0
        assert any(p.p95_ms is not None for p in points)
        for p in points:
            hour = summary(engine, p.start_ms, p.start_ms + HOUR, experiment_id=experiment,
                           now_ms=until).overall
            assert (p.traces, p.ok, p.errors) == (hour.total_traces, hour.ok_count,
                                                  hour.error_count)
            if p.p95_ms is not None:
                assert (p.p50_ms, p.p95_ms, p.p99_ms) == (
                    hour.p50_latency_ms, hour.p95_latency_ms, hour.p99_latency_ms)
    engine.dispose()
