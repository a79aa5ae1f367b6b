"""The worker's HTTP server and the report windows under hostile input, on both stores: every
hostile query parameter is a 400 with a readable body (never a 500, never a hang), the CLI
refuses a window past the cap with exit 2, 200 concurrent reports are all answered, and idle
half-sent connections neither hold a thread each nor stop a normal request.

Every client call has a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from store.engine import make_engine
from tests.integration.test_dashboard import HOUR, seed
from worker.serve import server as http_server
from worker.serve.dashboard import dashboard_routes
from worker.serve.server import TEXT, HttpServer
from worker.timeparse import MAX_WINDOW_DAYS

pytestmark = pytest.mark.integration
CLIENT_TIMEOUT_S = 30.0

HOSTILE_QUERIES = [
    "since=0001-01-01",
    "until=9999-12-31",
    "since=0001-01-01&until=9999-12-31",
    "since=99999999999999999999w",
    "since=" + "9" * 400 + "w",
    "since=10000w",
    f"since={MAX_WINDOW_DAYS + 1}d",
    "since=0001-01-01T00:00:00%2B14:00",
    "since=0001-01-01T00:00:00-14:00",
    "since=9999-12-31T23:59:59-14:00&until=9999-12-31T23:59:59%2B14:00",
    "until=9999-12-31T23:59:59-14:00",
    "since=1e400w", "since=nan", "since=inf", "since=-1h",
    "experiment=%00", "experiment=1%00", "since=1h%00", "since=%00", "by=%00",
    "experiment=%01%02", "until=%0a",
    "experiment=" + "1" * 5000,
    "since=" + "1" * 5000 + "h",
    "experiment=1&experiment=2",
    "since=1h&since=2h",
    "&".join(["experiment=1"] * 300),
    "&".join(f"p{i}=1" for i in range(300)),
]


def request(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",  # noqa: S310 - loopback
                                    timeout=CLIENT_TIMEOUT_S) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def raw(port: int, data: bytes) -> bytes:
    """Send ``data`` and read the answer to the end (the server closes after one request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)  # refused before we were done? the answer is still readable
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


@pytest.fixture
def served(store_url: str) -> Iterator[HttpServer]:
    engine = make_engine(store_url)
    now = int(time.time() * 1000)
    seed(engine, now - 3 * HOUR, 2 * HOUR, n=40)
    routes = dashboard_routes(engine, minute_retention_days=30.0)
    routes["/healthz"] = lambda _q: (200, TEXT, b"ok\n")
    server = HttpServer("127.0.0.1", 0, routes).start()
    try:
        yield server
    finally:
        server.stop()
        engine.dispose()


@pytest.mark.parametrize("path", ["/api/report", "/"])
def test_each_hostile_query_is_a_readable_400(served: HttpServer, path: str) -> None:
    status, body = request(served.port, f"{path}?since=1h")
    assert status == 200  # the server works, with data
    wrong = []
    for query in HOSTILE_QUERIES:
        if path == "/" and query.startswith("by="):
            continue  # the page takes no ``by``
        status, body = request(served.port, f"{path}?{query}")
        if status != 400 or not body.strip() or "internal error" in body:
            wrong.append((query[:80], status, body[:200]))
    assert wrong == []


def test_a_long_window_names_the_cap(served: HttpServer) -> None:
    status, body = request(served.port, "/api/report?since=10000w")
    assert status == 400 and f"{MAX_WINDOW_DAYS} days" in body
    status, body = request(served.port, f"/api/report?since={MAX_WINDOW_DAYS}d")
    assert status == 200 and json.loads(body)["total_traces"] > 0  # the seeded traces


def test_other_routes_ignore_hostile_parameters(served: HttpServer) -> None:
    assert request(served.port, "/healthz?experiment=%00&since=0001-01-01") == (200, "ok\n")
    assert request(served.port, "/nothing?since=%00")[0] == 404


def test_oversized_request_lines_and_headers_are_refused(served: HttpServer) -> None:
    answer = raw(served.port, b"GET /healthz?" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
    assert answer.split(b" ", 2)[1] in (b"414", b"431"), answer[:100]
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))  # 60 KB
    answer = raw(served.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.split(b" ", 2)[1] == b"431", answer[:100]
    assert raw(served.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.0 200")


@pytest.mark.parametrize("since", ["10000w", "0001-01-01"])
def test_the_cli_refuses_a_window_past_the_cap(store_url: str, since: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_CURATOR_")}
    env["TRACE_CURATOR_STORE_URL"] = store_url
    done = subprocess.run([sys.executable, "-m", "worker", "report", "--since", since],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, (done.stdout[-500:], done.stderr[-2000:])
    assert "--since" in done.stderr
    assert f"{MAX_WINDOW_DAYS} days" in done.stderr or "1970" in done.stderr, done.stderr


def test_200_concurrent_reports_are_all_answered(served: HttpServer) -> None:
    def one(i: int) -> int:
        return request(served.port, f"/api/report?since={1 + i % 5}h")[0]

    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses == [200] * 200


def test_idle_half_sent_connections_are_bounded_and_closed(served: HttpServer) -> None:
    before = threading.active_count()
    idle = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", served.port), timeout=CLIENT_TIMEOUT_S)
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            idle.append(s)
        # A normal request is answered while the 50 wait.
        assert request(served.port, "/api/report?since=1h")[0] == 200
        assert request(served.port, "/healthz") == (200, "ok\n")
        # The server holds no thread per idle connection: at most its fixed pool (and the
        # acceptor), whatever the number of connections.
        pool = getattr(http_server, "HANDLER_THREADS", 8)
        assert threading.active_count() - before <= pool + 1
        # Each idle connection is closed by the server after its read timeout (the client's
        # own timeout, much longer, turns a never-closed connection into a failure).
        for s in idle:
            answer = b""
            try:
                while chunk := s.recv(4096):
                    answer += chunk
            except ConnectionResetError:
                pass
            assert b" 200 " not in answer
    finally:
        for s in idle:
            s.close()
    assert request(served.port, "/healthz") == (200, "ok\n")


def test_stop_leaves_no_thread() -> None:
    before = {t.ident for t in threading.enumerate()}
    server = HttpServer("127.0.0.1", 0, {"/healthz": lambda _q: (200, TEXT, b"ok\n")}).start()
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=CLIENT_TIMEOUT_S)
    idle.sendall(b"GET /healthz HTTP/1.1\r\n")
    for _ in range(20):
        assert request(server.port, "/healthz") == (200, "ok\n")
    server.stop()
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    idle.close()
    assert left == []


def quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def test_hostile_query_bytes_in_raw_requests(served: HttpServer) -> None:
    """Bytes a browser would never send: invalid UTF-8, a NUL in the path, a bare newline."""
    for target in (b"/api/report?experiment=%ff%fe%00", b"/api/report?since=%c0%80",
                   b"/api/report?since=" + quoted("\u0663h").encode()):
        answer = raw(served.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.split(b" ", 2)[1] == b"400", (target, answer[:200])
