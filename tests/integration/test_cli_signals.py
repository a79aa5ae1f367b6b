"""Stop signals as a process gets them (``worker.signals``): the first SIGTERM/SIGINT only sets
the stop event, a second SIGINT ends the process at once with EXIT_INTERRUPTED, the watchdog
ends a drain that overruns, the demo's variant raises KeyboardInterrupt and restores the handlers
it replaced; and a worker polling an MLflow server that is not there retries, never names Kafka,
and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consumers.embedded_broker import free_port
from worker.exit_codes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# A process that installs the helper for the worker commands, then drains for ``DRAIN_S``.
WORKER = """
import sys, threading, time
from worker.logs import setup_logging
from worker.signals import StopSignals

setup_logging("INFO")
stop = threading.Event()
StopSignals(stop, shutdown_timeout_s=float(sys.argv[1])).install()
print("ready", flush=True)
stop.wait(60)
print("draining", flush=True)
time.sleep(float(sys.argv[2]))
print("stopped", flush=True)
"""

# The demo's variant: a second signal raises KeyboardInterrupt; restore() puts handlers back.
DEMO = """
import signal, sys, threading
from worker.exit_codes import EXIT_INTERRUPTED
from worker.logs import setup_logging
from worker.signals import StopSignals

setup_logging("INFO")
before = signal.getsignal(signal.SIGINT)
switch = StopSignals(on_repeat="raise", hint=" (again to stop at once)").install()
linked = threading.Event()
switch.link(linked)
print("ready", flush=True)
try:
    switch.interrupted.wait(60)
    print("linked set:", linked.is_set(), flush=True)
    threading.Event().wait(60)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(EXIT_INTERRUPTED)
finally:
    switch.restore()
    print("restored:", signal.getsignal(signal.SIGINT) is before, flush=True)
"""


class Child:
    """A Python child process whose output is read line by line as it comes."""

    def __init__(self, code: str, *args: str, env: dict[str, str] | None = None) -> None:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("TRACE_CURATOR_") and k != "MLFLOW_TRACKING_URI"}
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT,
                                     env={**base, **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            assert self.proc.poll() is None or text in self.output(), self.output()
            assert time.monotonic() < deadline, f"no {text!r} in {self.output()!r}"
            time.sleep(0.02)

    def wait(self, timeout_s: float = 30) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start() -> Iterator[Callable[..., Child]]:
    """Start a child (killed at the end of the test) and wait for its first line ``ready``."""
    started: list[Child] = []

    def run(code: str, *args: str, env: dict[str, str] | None = None,
            ready: str | None = "ready") -> Child:
        child = Child(code, *args, env=env)
        started.append(child)
        if ready is not None:
            child.wait_for(ready)
        return child

    yield run
    for child in started:
        child.kill()


def signal_twice(child: Child, first: signal.Signals, second: signal.Signals,
                 between: str) -> float:
    """Send ``first``, wait for ``between`` in the output, send ``second``; when it was sent."""
    child.proc.send_signal(first)
    child.wait_for(between)
    sent = time.monotonic()
    child.proc.send_signal(second)
    return sent


def test_sigterm_sets_the_stop_event_and_the_command_finishes(
        start: Callable[..., Child]) -> None:
    child = start(WORKER, "30", "0")
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait() == EXIT_OK, child.output()
    assert "signal=SIGTERM received, draining and stopping" in child.output()
    assert "stopped" in child.output()


def test_a_second_sigint_exits_at_once_with_exit_interrupted(
        start: Callable[..., Child]) -> None:
    child = start(WORKER, "30", "60")
    sent = signal_twice(child, signal.SIGINT, signal.SIGINT, "draining")
    assert child.wait() == EXIT_INTERRUPTED, child.output()
    assert time.monotonic() - sent < 10
    assert "stopped" not in child.output()


def test_a_second_sigterm_leaves_the_drain_to_the_watchdog(start: Callable[..., Child]) -> None:
    child = start(WORKER, "2", "60")
    signal_twice(child, signal.SIGTERM, signal.SIGTERM, "draining")
    time.sleep(0.5)
    assert child.proc.poll() is None, child.output()
    assert child.wait() == EXIT_FAILURE, child.output()
    assert "shutdown took longer than shutdown_timeout_s=2" in child.output()


def test_a_drain_longer_than_the_timeout_exits_with_exit_failure(
        start: Callable[..., Child]) -> None:
    child = start(WORKER, "0.5", "60")
    sent = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait() == EXIT_FAILURE, child.output()
    assert time.monotonic() - sent < 10
    assert "shutdown took longer than shutdown_timeout_s=0" in child.output()


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_the_demo_variant_raises_on_a_second_signal_and_restores(
        start: Callable[..., Child], second: signal.Signals) -> None:
    child = start(DEMO)
    signal_twice(child, signal.SIGINT, second, "linked set: True")
    assert "signal=SIGINT received, draining and stopping (again to stop at once)" \
        in child.output()
    assert child.wait() == EXIT_INTERRUPTED, child.output()
    assert "KeyboardInterrupt" in child.output()
    assert "restored: True" in child.output()


def test_outside_the_main_thread_install_changes_nothing() -> None:
    from worker.signals import StopSignals

    before = signal.getsignal(signal.SIGTERM)
    errors: list[BaseException] = []

    def install() -> None:
        try:
            StopSignals(threading.Event(), shutdown_timeout_s=1).install()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert errors == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_against_an_mlflow_server_that_is_not_there(tmp_path: Path,
                                                        start: Callable[..., Child]) -> None:
    """The MLflow source connects on its first poll: ``run`` starts, retries the poll (no idle
    exit while it fails), names no Kafka, and drains on SIGTERM."""
    env = {"TRACE_CURATOR_STORE_URL": f"sqlite:///{tmp_path}/store.db",
           "TRACE_CURATOR_SOURCE": "mlflow", "TRACE_CURATOR_HTTP_PORT": "0",
           "TRACE_CURATOR_MLFLOW_TRACKING_URI": f"http://user:s3cret@127.0.0.1:{free_port()}"}
    main = "import sys; from worker.cli import main; sys.exit(main(sys.argv[1:]))"
    upgrade = start(main, "db", "upgrade", env=env, ready=None)
    assert upgrade.wait(120) == EXIT_OK, upgrade.output()
    child = start(main, "run", "--exit-when-idle", "1", env=env, ready=None)
    child.wait_for("poll failed, retrying attempt=2", timeout_s=120)
    assert child.proc.poll() is None
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait(60) == EXIT_OK, child.output()
    out = child.output()
    assert "Kafka" not in out and "kafka_source" not in out
    assert "s3cret" not in out
