"""The worker's small HTTP server: ``/metrics``, ``/healthz``, ``/readyz``
(``worker.serve.telemetry``) and the live report, ``/`` and ``/api/report``
(``worker.serve.dashboard``).

Bound to ``TRACE_CURATOR_HTTP_HOST`` (127.0.0.1 by default) and ``TRACE_CURATOR_HTTP_PORT``
(0 turns it off). GET only; a route is a function of the query string that returns (status,
content type, body), so handlers stay pure of sockets. Requests only read: they never block
the worker loop.

Bounded under load and abuse. One acceptor thread reads each request head without blocking
(at most ``MAX_HEAD_BYTES``, within ``read_timeout_s`` of the accept, else 431 or closed), so
an idle or half-sent connection holds no thread. Complete requests go to ``HANDLER_THREADS``
threads through a queue of at most ``QUEUED_REQUESTS``; past ``MAX_OPEN_CONNECTIONS`` the
acceptor stops accepting and new connections wait in the listen backlog (``LISTEN_BACKLOG``).
One request per connection (HTTP/1.0). ``stop()`` returns when every thread has ended.
"""

from __future__ import annotations

import contextlib
import io
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from consumers.errors import ConfigError

logger = logging.getLogger(__name__)

Response = tuple[int, str, bytes]
Route = Callable[[Mapping[str, list[str]]], Response]
TEXT = "text/plain; charset=utf-8"

LISTEN_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
HANDLER_THREADS = 8
QUEUED_REQUESTS = 64  # complete requests waiting for a handler thread
MAX_OPEN_CONNECTIONS = 512  # held by the acceptor (head being read, or queued)
READ_TIMEOUT_S = 5.0  # to send the whole request head; also each socket write of the answer
MAX_HEAD_BYTES = 16 * 1024  # request line and headers
MAX_DRAIN_BYTES = 1 << 20  # of an oversized head, read to answer 431 cleanly, then cut
MAX_QUERY_FIELDS = 64
_RECV_BYTES = 8192


@dataclass
class _Conn:
    sock: socket.socket
    address: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    oversized: int = 0  # bytes read past MAX_HEAD_BYTES (their head is refused with a 431)


def _head_end(data: bytes | bytearray) -> int:
    """The index just past the blank line that ends a request head, or -1."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0]
    return min(ends) if ends else -1


class HttpServer:
    def __init__(self, host: str, port: int, routes: Mapping[str, Route], *,
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.host = host
        self.requested_port = port
        self.routes = dict(routes)
        self.read_timeout_s = read_timeout_s
        self._sock: socket.socket | None = None
        self._port = 0
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(HANDLER_THREADS + QUEUED_REQUESTS)
        self._stopping = threading.Event()
        self._wake_r: socket.socket | None = None  # a socket pair that wakes the acceptor
        self._wake_w: socket.socket | None = None
        self._handler: type[BaseHTTPRequestHandler] | None = None

    @property
    def port(self) -> int:
        assert self._port, "the server is not started"
        return self._port

    def start(self) -> HttpServer:
        """Bind and serve on daemon threads. ConfigError if the address cannot be bound."""
        try:
            self._sock = socket.create_server((self.host, self.requested_port),
                                              backlog=LISTEN_BACKLOG)
        except OSError as exc:
            raise ConfigError(
                f"the HTTP server cannot listen on {self.host}:{self.requested_port} ({exc}); "
                "set TRACE_CURATOR_HTTP_PORT to a free port, or 0 to turn it off") from None
        self._sock.setblocking(False)
        self._port = int(self._sock.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._handler = self._handler_class()
        self._pool = ThreadPoolExecutor(HANDLER_THREADS, thread_name_prefix="http-handler")
        self._thread = threading.Thread(target=self._accept_loop, name="http", daemon=True)
        self._thread.start()
        logger.info("http server listening on http://%s:%d (%s)", self.host, self.port,
                    " ".join(sorted(self.routes)))
        return self

    def stop(self) -> None:
        """Stop accepting, close the connections not yet handled, finish those being handled,
        and return when every thread of the server has ended."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for sock in (self._sock, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._sock = self._wake_r = self._wake_w = None

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already awake) or closed
            if self._wake_w is not None:
                self._wake_w.send(b"\0")

    # -- the acceptor: accepts, reads heads, queues complete requests ---------------------------

    def _accept_loop(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        reading: dict[socket.socket, _Conn] = {}
        queued: deque[tuple[_Conn, bytes]] = deque()
        listening = False
        try:
            while not self._stopping.is_set():
                while queued and self._slots.acquire(blocking=False):
                    conn, head = queued.popleft()
                    assert self._pool is not None
                    self._pool.submit(self._serve, conn, head)
                room = len(reading) + len(queued) < MAX_OPEN_CONNECTIONS
                if room != listening:  # when full, new connections wait in the backlog
                    (sel.register(self._sock, selectors.EVENT_READ) if room
                     else sel.unregister(self._sock))
                    listening = room
                now = time.monotonic()
                timeout = min((c.deadline for c in reading.values()), default=now + 1.0) - now
                for key, _ in sel.select(max(0.0, min(timeout, 1.0))):
                    if key.fileobj is self._wake_r:
                        self._wake_r.recv(4096)
                    elif key.fileobj is self._sock:
                        self._accept(sel, reading, queued)
                    else:
                        self._read(sel, reading, queued, reading[key.fileobj])  # type: ignore[index]
                now = time.monotonic()
                for conn in [c for c in reading.values() if c.deadline <= now]:
                    logger.debug("http: closing a connection idle past %.1fs peer=%s",
                                 self.read_timeout_s, conn.address)
                    self._drop(sel, reading, conn)
        except Exception:  # a bug here must not leave the port half-served silently
            logger.exception("http acceptor failed")
        finally:
            for conn in [*reading.values(), *(c for c, _ in queued)]:
                conn.sock.close()
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, reading: dict[socket.socket, _Conn],
                queued: deque[tuple[_Conn, bytes]]) -> None:
        assert self._sock is not None
        while len(reading) + len(queued) < MAX_OPEN_CONNECTIONS:
            try:
                sock, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: retry on the next turn
                logger.warning("http: accept failed: %s", exc)
                return
            sock.setblocking(False)
            conn = _Conn(sock, address, time.monotonic() + self.read_timeout_s)
            reading[sock] = conn
            sel.register(sock, selectors.EVENT_READ)

    def _read(self, sel: selectors.BaseSelector, reading: dict[socket.socket, _Conn],
              queued: deque[tuple[_Conn, bytes]], conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(sel, reading, conn)
            return
        if conn.oversized:  # keep only a tail, to see where the head ends
            conn.oversized += len(data)
            conn.head = conn.head[-3:] + data
        else:
            conn.head += data
        end = _head_end(conn.head)
        if not conn.oversized and end < 0 and len(conn.head) > MAX_HEAD_BYTES:
            conn.oversized, conn.head = len(conn.head), conn.head[-3:]
        elif not conn.oversized and end > MAX_HEAD_BYTES:
            conn.oversized, end = end, -1
            self._refuse(sel, reading, conn)
            return
        if conn.oversized:
            if end >= 0:
                self._refuse(sel, reading, conn)
            elif conn.oversized > MAX_DRAIN_BYTES:
                self._drop(sel, reading, conn)
            return
        if end >= 0:
            sel.unregister(conn.sock)
            del reading[conn.sock]
            queued.append((conn, bytes(conn.head[:end])))

    def _refuse(self, sel: selectors.BaseSelector, reading: dict[socket.socket, _Conn],
                conn: _Conn) -> None:
        body = f"the request head is longer than {MAX_HEAD_BYTES} bytes\n".encode()
        with contextlib.suppress(OSError):  # the client may be gone
            conn.sock.send(b"HTTP/1.0 431 Request Header Fields Too Large\r\n"
                           b"Content-Type: text/plain; charset=utf-8\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                           % (len(body), body))
        self._drop(sel, reading, conn)

    @staticmethod
    def _drop(sel: selectors.BaseSelector, reading: dict[socket.socket, _Conn],
              conn: _Conn) -> None:
        sel.unregister(conn.sock)
        del reading[conn.sock]
        conn.sock.close()

    # -- the handler threads: one complete request each ------------------------------------------

    def _serve(self, conn: _Conn, head: bytes) -> None:
        try:
            conn.sock.setblocking(True)
            assert self._handler is not None
            self._handler((conn.sock, head), conn.address, self)  # type: ignore[arg-type]
        except Exception:  # a broken connection must not take a handler thread down
            logger.debug("http: connection failed peer=%s", conn.address, exc_info=True)
        finally:
            conn.sock.close()
            self._slots.release()
            self._wake()  # a slot is free: the acceptor may hand over a queued request

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        routes = self.routes
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "trace-curator"
            sys_version = ""
            timeout = server.read_timeout_s  # each socket write of the answer

            def setup(self) -> None:
                # The head was read by the acceptor; GET has no body to read.
                self.connection, head = self.request
                self.connection.settimeout(self.timeout)
                self.rfile = io.BytesIO(head)
                self.wfile = self.connection.makefile("wb")

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                url = urlsplit(self.path)
                route = routes.get(url.path)
                if route is None:
                    status, ctype, body = 404, TEXT, b"not found\n"
                else:
                    try:
                        query = parse_qs(url.query, max_num_fields=MAX_QUERY_FIELDS)
                    except ValueError:
                        query = None
                        status, ctype, body = (400, TEXT, b"more than %d query parameters\n"
                                               % MAX_QUERY_FIELDS)
                    if query is not None:
                        try:
                            status, ctype, body = route(query)
                        except Exception:  # a failing page must not take the server down
                            logger.exception("http route %s failed", url.path)
                            status, ctype, body = 500, TEXT, b"internal error\n"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                logger.debug("http " + format, *args)

        return Handler
