"""The Grafana dashboard and provisioning files, checked as data.

Every panel has a title, a known data source and targets; every SQL target reads one documented
view (``tc_*``, created by migration 0003) and names only its columns, with only the template
variables the dashboard declares; every PromQL target names metrics that ``worker.serve.telemetry``
really exposes (scraped from a ``WorkerCollector`` over a stand-in worker) and groups by labels
they carry. The provisioning files define the data sources the dashboard refers to. Each check
returns a list of problems; the tests at the end prove each one can fail. The SQL also runs on
PostgreSQL in tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from store import schema
from store.engine import make_engine
from worker.loop import RunStats
from worker.serve.telemetry import WorkerCollector

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "trace-curator.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PG_UID, PROM_UID = "trace-curator-db", "trace-curator-prometheus"
PG_TYPE, PROM_TYPE = "grafana-postgresql-datasource", "prometheus"

_SQL_WORDS = {
    "select", "from", "where", "and", "or", "not", "in", "is", "null", "group", "order", "by",
    "as", "asc", "desc", "limit", "distinct", "sum", "max", "min", "avg", "count", "nullif",
    "coalesce", "float", "between", "case", "when", "then", "else", "end",
}
_PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile",
    "time", "by", "without",
}
_GRAFANA_MACROS = {"__timeFilter"}


# --- the facts the checks compare against -----------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The tc_* views and their columns, as the migrations create them (SQLite)."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('grafana')}/store.db")
    schema.upgrade(engine)
    try:
        with engine.connect() as conn:
            names = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'view' "
                                      "AND name LIKE 'tc_%'")).scalars().all()
            return {v: {r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info({v})")}
                    for v in names}
    finally:
        engine.dispose()


class _Leader:
    leading = True


class _StandInWorker:
    """What ``WorkerCollector`` reads of a worker, with every optional job present."""

    def __init__(self) -> None:
        self.stats = RunStats(last_checkpoint_unix=time.time(), lag={("mlflow-traces", 0): 3})
        self.stop = threading.Event()
        self.source = self
        self.name = "kafka"
        self.tag_writer = type("TW", (), {"written": 2, "failed_attempts": 1,
                                          "leader": _Leader(), "last_round_unix": time.time()})()
        self.curator = type("Cur", (), {"outcomes": {"done": 1}, "lock": _Leader(),
                                        "last_success_unix": time.time()})()

    def ready(self) -> bool:
        return True


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample name -> label names, from a real scrape of ``WorkerCollector``."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('scrape')}/store.db")
    schema.upgrade(engine)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(_StandInWorker(), engine))  # type: ignore[arg-type]
    body = generate_latest(registry).decode()
    engine.dispose()
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


# --- the checks -------------------------------------------------------------------------------


def panels(dash: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def panel_problems(dash: Mapping[str, Any]) -> list[str]:
    problems = []
    ids = [p.get("id") for p in panels(dash)]
    if len(ids) != len(set(ids)):
        problems.append(f"panel ids repeat: {ids}")
    for p in panels(dash):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if not p.get("title"):
            problems.append(f"{where}: no title")
        pos = p.get("gridPos", {})
        if not (pos.get("x", -1) >= 0 and pos.get("x", 0) + pos.get("w", 99) <= 24):
            problems.append(f"{where}: gridPos {pos} is outside the 24 columns")
        if p["type"] == "row":
            continue
        if not p.get("targets"):
            problems.append(f"{where}: no targets")
        for t in p.get("targets", []):
            uid = (t.get("datasource") or p.get("datasource") or {}).get("uid")
            if uid == PG_UID and not t.get("rawSql"):
                problems.append(f"{where}: a SQL target without rawSql")
            elif uid == PROM_UID and not t.get("expr"):
                problems.append(f"{where}: a Prometheus target without expr")
            elif uid not in (PG_UID, PROM_UID):
                problems.append(f"{where}: unknown data source {uid!r}")
    return problems


def sql_problems(sql: str, views: Mapping[str, set[str]], variables: set[str]) -> list[str]:
    """One view per query, only its columns, only declared variables and known macros."""
    problems = [f"unknown variable or macro ${name}" for name in re.findall(r"\$(\w+)", sql)
                if name not in variables | _GRAFANA_MACROS]
    body = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 IS NOT NULL", sql)
    body = re.sub(r"\$\w+", "''", body)
    body = re.sub(r"'[^']*'", "''", body)  # string literals
    aliases = {a.lower() for a in re.findall(r'\bAS\s+"?(\w+)"?', body, re.IGNORECASE)}
    sources = re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", body, re.IGNORECASE)
    if len(sources) != 1:
        return [*problems, f"expected one view, found {sources}"]
    view = sources[0]
    if view not in views:
        return [*problems, f"{view} is not one of the views {sorted(views)}"]
    for token in re.findall(r"\b[A-Za-z_]\w*\b", body.replace('"', " ")):
        low = token.lower()
        if low in _SQL_WORDS or low in aliases or token == view:
            continue
        if token not in views[view]:
            problems.append(f"{view} has no column {token}")
    return problems


def promql_problems(expr: str, exposed: Mapping[str, set[str]]) -> list[str]:
    names = set(re.findall(r"\btrace_curator_\w+", expr))
    problems = [f"{n} is not exposed by worker.serve.telemetry"
                for n in sorted(names - set(exposed))]
    if not names:
        problems.append("names no trace_curator_* metric")
    body = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    body = re.sub(r'"[^"]*"', "", body)
    for fn in re.findall(r"\b([a-z_]+)\s*\(", body):
        if fn not in _PROMQL_FUNCTIONS and not fn.startswith("trace_curator_"):
            problems.append(f"unknown function {fn}")
    labels = set().union(*(exposed.get(n, set()) for n in names))
    for group in re.findall(r"\bby\s*\(([^)]*)\)", body):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label not in labels:
                problems.append(f"groups by {label!r}, a label none of {sorted(names)} has")
    return problems


def targets(dash: Mapping[str, Any], uid: str) -> Iterator[tuple[str, str]]:
    for p in panels(dash):
        for t in p.get("targets", []):
            if (t.get("datasource") or p.get("datasource") or {}).get("uid") == uid:
                yield p["title"], t.get("rawSql") or t.get("expr") or ""


def variable_names(dash: Mapping[str, Any]) -> set[str]:
    return {v["name"] for v in dash["templating"]["list"]}


# --- the tests --------------------------------------------------------------------------------


def test_panels_have_titles_and_targets(dashboard: dict[str, Any]) -> None:
    assert panel_problems(dashboard) == []
    kinds = {p["type"] for p in panels(dashboard)}
    assert {"timeseries", "stat", "table", "row"} <= kinds
    assert dashboard["uid"] == "trace-curator" and dashboard["title"]


def test_every_view_has_a_panel(dashboard: dict[str, Any], views: dict[str, set[str]]) -> None:
    assert set(views) == {"tc_metrics_minute", "tc_metrics_hour", "tc_span_types_hour",
                          "tc_feedback_hour", "tc_candidates_hour"}
    used = {re.search(r"\bFROM\s+(\w+)", sql, re.IGNORECASE).group(1)  # type: ignore[union-attr]
            for _, sql in targets(dashboard, PG_UID)}
    assert used == set(views)


def test_sql_targets_name_only_view_columns(dashboard: dict[str, Any],
                                            views: dict[str, set[str]]) -> None:
    variables = variable_names(dashboard)
    queries = list(targets(dashboard, PG_UID))
    assert len(queries) >= 15
    problems = {title: p for title, sql in queries if (p := sql_problems(sql, views, variables))}
    assert problems == {}
    for v in dashboard["templating"]["list"]:
        assert v["datasource"]["uid"] == PG_UID
        assert sql_problems(v["query"], views, set()) == [], v["name"]


def test_promql_targets_name_exposed_metrics(dashboard: dict[str, Any],
                                             exposed: dict[str, set[str]]) -> None:
    queries = list(targets(dashboard, PROM_UID))
    assert len(queries) >= 10
    problems = {expr: p for _, expr in queries if (p := promql_problems(expr, exposed))}
    assert problems == {}
    used = {n for _, e in queries for n in re.findall(r"\btrace_curator_\w+", e)}
    for key in ("trace_curator_events_consumed_total", "trace_curator_consumer_lag",
                "trace_curator_outbox_size", "trace_curator_batch_seconds_bucket",
                "trace_curator_dead_letters_total", "trace_curator_ready"):
        assert key in used


def test_provisioning_defines_the_data_sources_the_dashboard_uses(
        dashboard: dict[str, Any]) -> None:
    files = list((GRAFANA / "provisioning" / "datasources").glob("*.yaml"))
    assert files
    sources = {d["uid"]: d for f in files for d in yaml.safe_load(f.read_text())["datasources"]}
    assert sources[PG_UID]["type"] == PG_TYPE and sources[PG_UID]["name"] == PG_UID
    assert sources[PG_UID]["jsonData"]["database"]
    assert "password" in sources[PG_UID]["secureJsonData"]
    assert sources[PROM_UID]["type"] == PROM_TYPE
    used = {(t.get("datasource") or p["datasource"])["uid"] for p in panels(dashboard)
            if p["type"] != "row" for t in p["targets"]}
    assert used == {PG_UID, PROM_UID}
    for p in panels(dashboard):
        if p["type"] != "row":
            assert p["datasource"]["type"] == sources[p["datasource"]["uid"]]["type"]

    (provider,) = [p for f in (GRAFANA / "provisioning" / "dashboards").glob("*.yaml")
                   for p in yaml.safe_load(f.read_text())["providers"]]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def test_prometheus_scrapes_the_workers_metrics() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == 9464


# --- the checks can fail ----------------------------------------------------------------------


def test_the_sql_check_catches_unknown_views_columns_and_variables(
        views: dict[str, set[str]]) -> None:
    ok = ('SELECT bucket_start AS "time", SUM(traces) AS traces FROM tc_metrics_hour '
          "WHERE $__timeFilter(bucket_start) AND experiment_id IN ($experiment) GROUP BY 1")
    assert sql_problems(ok, views, {"experiment"}) == []
    assert sql_problems(ok.replace("SUM(traces)", "SUM(trace_count)"), views, {"experiment"}) \
        == ["tc_metrics_hour has no column trace_count"]
    assert sql_problems(ok.replace("tc_metrics_hour", "metric_hour"), views,
                        {"experiment"})[0].startswith("metric_hour is not one of the views")
    assert sql_problems(ok, views, set()) == ["unknown variable or macro $experiment"]
    assert sql_problems(ok.replace("$__timeFilter", "$__timeFilterz"), views, {"experiment"})


def test_the_promql_check_catches_unknown_metrics_and_labels(
        exposed: dict[str, set[str]]) -> None:
    ok = "sum by (kind) (rate(trace_curator_events_consumed_total[5m]))"
    assert promql_problems(ok, exposed) == []
    assert promql_problems(ok.replace("consumed_total", "consumed"), exposed)
    assert promql_problems(ok.replace("(kind)", "(topic)"), exposed)
    assert promql_problems("sum(rate(up[5m]))", exposed) == [
        "names no trace_curator_* metric"]
    assert promql_problems(ok.replace("rate(", "ratee("), exposed)


def test_the_panel_check_catches_missing_titles_and_sources(dashboard: dict[str, Any]) -> None:
    broken = copy.deepcopy(dashboard)
    target_panel = next(p for p in broken["panels"] if p["type"] != "row")
    target_panel["title"] = ""
    target_panel["targets"][0]["datasource"] = {"uid": "elsewhere"}
    problems = panel_problems(broken)
    assert any("no title" in p for p in problems)
    assert any("unknown data source 'elsewhere'" in p for p in problems)
