"""``python -m worker demo`` as a user runs it: a real process, its real outcome.

The demo runs in its own session with its defaults (history, live traffic, Kafka via its embedded
tansu broker; once MLflow's OTLP export through the same broker, ``--source otlp``) into
``tmp_path``; the tests read what it left behind: the SQLite store, the report command's JSON,
the dataset versions, and the process table (no broker or other process outlives the demo, after
a normal exit or a Ctrl+C).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from consumers.embedded_broker import tansu_binary
from consumers.errors import ConfigError
from store.engine import make_engine
from tests.conftest import service_missing
from worker.exit_codes import EXIT_INTERRUPTED, EXIT_OK

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 240


@pytest.fixture(autouse=True)
def _tansu() -> None:
    try:
        tansu_binary()
    except ConfigError as exc:
        service_missing(f"tansu broker unavailable: {exc}")
    if not Path("/proc/self/task").exists():
        pytest.skip("the process checks read Linux /proc")


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without trace-curator or MLflow settings that could leak in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TRACE_CURATOR_") and k != "MLFLOW_TRACKING_URI"}
    env.update(extra)
    return env


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def _tansu_children(pid: int) -> set[str]:
    """Live tansu children of ``pid`` (any of its threads may have started them)."""
    out = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        out.update(p for p in pids if b"tansu" in _cmdline(p))
    return out


def _alive_with(pids: set[str], needle: bytes) -> list[str]:
    """Those of ``pids`` still alive whose command line contains ``needle``."""
    return [p for p in pids if needle in _cmdline(p)]


def _processes_mentioning(needle: bytes) -> list[str]:
    return [p.name for p in Path("/proc").iterdir()
            if p.name.isdigit() and p.name != str(os.getpid()) and needle in _cmdline(p.name)]


class Demo:
    """The demo process, with the tansu broker(s) it was seen to start."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tmp_path = tmp_path
        self.log = (tmp_path / "demo.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "demo", *args, "--dir", str(tmp_path)],
            cwd=ROOT, env=_env(), stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.brokers: set[str] = set()

    def watch(self, seconds: float) -> int | None:
        """Note the demo's brokers for up to ``seconds``; its exit code if it exited."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.brokers |= _tansu_children(self.proc.pid)
            code = self.proc.poll()
            if code is not None:
                return code
            time.sleep(0.1)
        return None

    def output(self) -> str:
        return (self.tmp_path / "demo.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()

    def assert_nothing_left(self) -> None:
        assert self.brokers, "the demo was never seen running its tansu broker"
        assert _alive_with(self.brokers, b"tansu") == [], "the demo's broker outlived it"
        # The folder is in the command line of every process the demo starts (and of nothing
        # else), so this also catches anything besides the broker.
        assert _processes_mentioning(str(self.tmp_path).encode()) == []


def test_demo_runs_live_and_leaves_a_consistent_store(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--duration", "20")
    try:
        code = demo.watch(DEMO_TIMEOUT_S)
        assert code == EXIT_OK, demo.output()[-4000:]
    finally:
        demo.kill()
    demo.assert_nothing_left()
    out = demo.output()
    assert "live traffic done and ingested" in out
    assert "holds every trace and assessment of this run" in out

    store_url = f"sqlite:///{tmp_path}/trace_curator.db"
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            traces = conn.execute(text("SELECT COUNT(*) FROM traces")).scalar_one()
            tagged = conn.execute(text(
                "SELECT COUNT(*) FROM trace_tags WHERE tag_value IS NOT NULL")).scalar_one()
            versions = conn.execute(text("SELECT COUNT(*) FROM dataset_versions")).scalar_one()
            dead_letters = conn.execute(text("SELECT COUNT(*) FROM dead_letters")).scalar_one()
    finally:
        engine.dispose()
    assert traces > 150  # the history (150) and the live traffic
    assert tagged > 0
    assert versions >= 1
    assert dead_letters == 3

    report = subprocess.run(
        [sys.executable, "-m", "worker", "report", "--since", "24h", "--format", "json"],
        cwd=ROOT, env=_env(TRACE_CURATOR_STORE_URL=store_url), capture_output=True, text=True,
        timeout=120, check=False)
    assert report.returncode == EXIT_OK, report.stderr
    result = json.loads(report.stdout)
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            in_window = conn.execute(text(
                "SELECT COUNT(*) FROM traces WHERE timestamp_ms >= :since AND timestamp_ms < "
                ":until"), {"since": result["window"]["since_ms"],
                            "until": result["window"]["until_ms"]}).scalar_one()
    finally:
        engine.dispose()
    assert result["total_traces"] > 0
    assert result["total_traces"] == in_window == traces  # all of this run is within 24 h


@pytest.mark.parametrize("phase", ["history", "live", "live-otlp"])
def test_demo_stops_on_ctrl_c_and_leaves_nothing_behind(tmp_path: Path, phase: str) -> None:
    """SIGINT after ~8 s (by default the demo is still writing its history then), or once live
    traffic runs beside the worker, its tag writer and curator (live-otlp: with MLflow's OTLP
    export to the demo's receiver): the demo drains, stops, prints its summary and exits 130
    within 30 s, and its broker is gone."""
    live = phase.startswith("live")
    demo = Demo(tmp_path, "--duration", "20", *(["--history", "10"] if live else []),
                *(["--source", "otlp"] if phase == "live-otlp" else []))
    try:
        if live:
            deadline = time.monotonic() + 60
            while "level=INFO logger=worker.demo.runner progress" not in demo.output():
                assert demo.watch(0.2) is None, demo.output()[-4000:]
                assert time.monotonic() < deadline, "no live progress within 60 s"
        assert demo.watch(2 if live else 8) is None, demo.output()[-4000:]
        os.kill(demo.proc.pid, signal.SIGINT)
        sent = time.monotonic()
        code = demo.watch(30)
        assert code is not None, "the demo did not stop within 30 s of SIGINT"
        assert time.monotonic() - sent < 30
        assert code == EXIT_INTERRUPTED, demo.output()[-4000:]
    finally:
        demo.kill()
    demo.assert_nothing_left()
    out = demo.output()
    assert "draining and stopping" in out
    assert "trace-curator demo: interrupted after" in out  # the summary, not a traceback
    assert "Traceback" not in out
