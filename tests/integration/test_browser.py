"""The dashboard in a real browser (headless Debian Chromium driven by Playwright).

The ``report --format html`` file (file://) and the live page of a real worker run (the Kafka
worker ingesting traces, feedback and poison records into a real store, with ``/metrics`` and
the dashboard served side by side) are loaded and checked: the SVG charts render with one bar
and one point per hour, the figures equal ``report --format json``, the window links and the
experiment filter change the page and the URL, the page reloads itself keeping its query, the
page fits a phone's width, and markup injected in a trace id, a request, a tag value or a
dead letter's error shows as text and never runs (``window.__pwned`` stays undefined).

Chromium missing is a skip on a laptop and a failure in CI (``service_missing``). A screenshot
of each page goes to the test's tmp dir (its path is printed; run with ``-s`` to see it).
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from store.engine import make_engine
from store.report import iso
from tests import metrics_data as M
from tests.conftest import publish, service_missing
from tests.helpers import wait_until
from tests.integration.test_dashboard import (
    BASE_MS,
    EVIL_LATENCY_MS,
    EVIL_REQUEST,
    EVIL_RULES,
    EVIL_TAG,
    EVIL_TRACE_ID,
    HOUR,
    MINUTE_RETENTION_DAYS,
    seed,
)
from worker.app import create_kafka_worker
from worker.cli.main import main
from worker.serve.dashboard import dashboard_routes
from worker.serve.server import HttpServer
from worker.serve.telemetry import routes
from worker.settings import Settings

pytestmark = pytest.mark.integration
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        service_missing("chromium is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        # The Debian binary: `playwright install` cannot download a browser here
        # (docs/platform-notes.md).
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page_factory(browser: Any) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []
    errors: list[str] = []

    def make(**context_args: Any) -> Any:
        context = browser.new_context(**context_args)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(f"console: {msg.text}")
                if msg.type == "error" and not msg.location.get("url", "").endswith(
                    "/favicon.ico") else None)
        page.on("request", lambda r: None if r.url.startswith(("file:", "http://127.0.0.1"))
                else errors.append(f"external request {r.url}"))
        return page

    yield make
    for c in contexts:
        c.close()
    # No script error, no CSP refusal, no fetch outside the page's own origin.
    assert errors == []


def cli_json(capsys: Any, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["report", "--format", "json", *args]) == 0
    return orjson.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def figure(page: Any, metric: str) -> float:
    return float(page.get_attribute(f'[data-metric="{metric}"]', "data-value"))


def assert_figures(page: Any, report: dict[str, Any]) -> None:
    for key in ("total_traces", "error_count", "success_rate", "p50_latency_ms",
                "p95_latency_ms", "p99_latency_ms"):
        assert figure(page, key) == report[key], key
    shown = page.inner_text('[data-metric="total_traces"]')
    assert shown.replace(",", "") == str(report["total_traces"])
    assert page.inner_text('[data-metric="success_rate"]') == \
        f"{report['success_rate'] * 100:.1f}%"


def assert_charts(page: Any, report: dict[str, Any]) -> None:
    """One bar per hour with its count, one point per hour with traces, all drawn."""
    hours = list(report["hourly_volume"].values())
    bars = page.eval_on_selector_all(
        'svg[data-chart="volume"] rect.bar',
        "els => els.map(e => [Number(e.dataset.value), e.getBBox().height])")
    assert [int(v) for v, _ in bars] == hours
    assert all((h > 0) == (v > 0) for v, h in bars)  # drawn to scale, zero bars flat
    with_traces = sum(1 for n in hours if n)
    for series in ("rate", "p50", "p95", "p99"):
        assert page.locator(f'g[data-series="{series}"] circle').count() == with_traces, series
    box = page.locator('svg[data-chart="latency"]').bounding_box()
    assert box["width"] > 200 and box["height"] > 50


def assert_injection_is_text(page: Any) -> None:
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("img").count() == 0
    candidates = page.inner_text("#candidates")
    assert EVIL_TAG in candidates and EVIL_REQUEST in candidates
    assert EVIL_TRACE_ID in candidates
    assert "window.__pwned='error'" in page.inner_text("#dead-letters")


def assert_fits_a_phone(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page scrolls sideways on a phone"
    box = page.locator('svg[data-chart="volume"]').bounding_box()
    assert 250 < box["width"] <= PHONE["width"]


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_report_file_in_a_browser(store_url: str, tmp_path: Path, capsys: Any,
                                      monkeypatch: Any, page_factory: Callable[..., Any]
                                      ) -> None:
    seed(make_engine(store_url), BASE_MS, 30 * HOUR, dataset_dir=tmp_path / "datasets")
    monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
    window = ["--since", iso(BASE_MS + 2 * HOUR + 25 * 60_000),
              "--until", iso(BASE_MS + 27 * HOUR + 41 * 60_000)]
    report = cli_json(capsys, *window)
    out = tmp_path / "report.html"
    assert main(["report", "--format", "html", *window, "--output", str(out)]) == 0

    page = page_factory(viewport={"width": 1280, "height": 900})
    page.goto(out.as_uri())
    assert_figures(page, report)
    assert_charts(page, report)
    assert_injection_is_text(page)
    assert "regressions" in page.inner_text("#datasets")
    shot = tmp_path / "report-file.png"
    page.screenshot(path=str(shot), full_page=True)
    with capsys.disabled():
        print(f"\nscreenshot: {shot}")

    phone = page_factory(viewport=PHONE, device_scale_factor=2, is_mobile=True)
    phone.goto(out.as_uri())
    assert_fits_a_phone(phone)
    phone.screenshot(path=str(tmp_path / "report-file-phone.png"), full_page=True)


def _traffic(now_ms: int) -> list[dict[str, Any]]:
    """Traces in the last hour, the last day and three days ago, and the evil one (5 h ago)."""
    groups = ((60, now_ms - 20 * HOUR, 18 * HOUR, "d"), (12, now_ms - 40 * 60_000,
              30 * 60_000, "h"), (25, now_ms - 3 * 24 * HOUR, HOUR, "w"))
    docs = []
    for n, start, span, tag in groups:
        for d in M.traffic(n, start, span, seed=len(docs) + 1):
            if d["execution_time_ms"] != EVIL_LATENCY_MS:
                docs.append(dict(d, trace_id=f"{d['trace_id']}-{tag}"))
    evil = dict(docs[-1], trace_id=EVIL_TRACE_ID, status="ERROR", request={"q": EVIL_REQUEST},
                execution_time_ms=EVIL_LATENCY_MS, timestamp_ms=now_ms - 5 * HOUR)
    return [*docs, evil]


def test_the_live_page_of_a_running_worker(settings_factory: Callable[..., Settings],
                                           producer: Any, store_url: str, tmp_path: Path,
                                           capsys: Any, monkeypatch: Any,
                                           page_factory: Callable[..., Any]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(EVIL_RULES)
    settings = settings_factory(rules_file=str(rules), batch_max_records=100)
    now = int(time.time() * 1000)
    docs = _traffic(now)
    publish(producer, settings.trace_topic, docs)
    publish(producer, settings.assessment_topic, M.feedback_for(docs))
    poison = [orjson.dumps({"<script>window.__pwned='error'</script>": 1}), b"not json"]
    publish(producer, settings.trace_topic, poison)

    worker = create_kafka_worker(settings)
    engine = worker.writer.engine  # type: ignore[attr-defined]
    served = {**routes(worker, engine),
              **dashboard_routes(engine, minute_retention_days=MINUTE_RETENTION_DAYS)}
    server = HttpServer("127.0.0.1", 0, served).start()
    base = f"http://127.0.0.1:{server.port}"
    runner = threading.Thread(target=worker.run, kwargs={"exit_when_idle_s": 600}, daemon=True)
    runner.start()
    try:
        wait_until(lambda: worker.stats.traces == len(docs)
                   and worker.stats.dead_letters == len(poison), 90, "the worker's ingest")
        monkeypatch.setenv("TRACE_CURATOR_STORE_URL", store_url)
        page = page_factory(viewport={"width": 1280, "height": 900})

        page.goto(base + "/")
        day = cli_json(capsys, "--since", "24h")
        assert day["total_traces"] == sum(d["timestamp_ms"] > now - 24 * HOUR for d in docs)
        assert_figures(page, day)
        assert_charts(page, day)
        assert_injection_is_text(page)
        assert page.get_attribute('meta[http-equiv="refresh"]', "content") == "30"
        shot = tmp_path / "live-page.png"
        page.screenshot(path=str(shot), full_page=True)
        with capsys.disabled():
            print(f"\nscreenshot: {shot}")

        for since, age_ms in (("7d", 7 * 24 * HOUR), ("1h", HOUR)):
            page.click(f'a[data-window="{since}"]')
            page.wait_for_url(re.compile(rf"since={since}"))
            report = cli_json(capsys, "--since", since)
            assert report["total_traces"] == sum(d["timestamp_ms"] > now - age_ms for d in docs)
            assert report["total_traces"] != day["total_traces"]
            assert_figures(page, report)
            assert page.locator(f'a[data-window="{since}"][aria-current]').count() == 1

        # The experiment filter submits itself (the page's one script, allowed by its hash).
        page.select_option('select[name="experiment"]', "2")
        page.wait_for_url(re.compile(r"since=1h&experiment=2"))
        assert_figures(page, cli_json(capsys, "--since", "1h", "--experiment", "2"))
        assert "experiment 2" in page.inner_text("#scope")
        page.click('a[data-window="24h"]')  # the links keep the filter
        page.wait_for_url(re.compile(r"since=24h&experiment=2"))
        assert_figures(page, cli_json(capsys, "--since", "24h", "--experiment", "2"))
        assert page.evaluate("typeof window.__pwned") == "undefined"

        api = page.request.get(f"{base}/api/report?since=24h&experiment=2").json()
        assert api["total_traces"] == figure(page, "total_traces")
        metrics = page.request.get(f"{base}/metrics").text()
        assert f'trace_curator_events_consumed_total{{kind="trace"}} {len(docs)}.0' in metrics

        phone = page_factory(viewport=PHONE, device_scale_factor=2, is_mobile=True)
        phone.goto(base + "/?since=7d")
        assert_fits_a_phone(phone)
    finally:
        worker.stop.set()
        runner.join(30)
        server.stop()
        worker.close()


def test_the_live_page_reloads_itself_keeping_its_query(
        store_url: str, page_factory: Callable[..., Any]) -> None:
    server = HttpServer("127.0.0.1", 0, dashboard_routes(make_engine(store_url),
                                                         refresh_s=1)).start()
    try:
        page = page_factory()
        url = f"http://127.0.0.1:{server.port}/?since=7d&experiment=2"
        page.goto(url)
        with page.expect_navigation(timeout=10_000):
            pass  # the refresh reloads the page by itself
        assert page.url == url
        assert page.locator('a[data-window="7d"][aria-current]').count() == 1
        assert "experiment 2" in page.inner_text("#scope")
    finally:
        server.stop()
