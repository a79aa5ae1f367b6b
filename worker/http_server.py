"""The worker's small HTTP server: ``/metrics``, ``/healthz``, ``/readyz`` (``worker.telemetry``)
and the live report, ``/`` and ``/api/report`` (``worker.dashboard_routes``).

Bound to ``TRACE_CURATOR_HTTP_HOST`` (127.0.0.1 by default) and ``TRACE_CURATOR_HTTP_PORT``
(0 turns it off). GET only; a route is a function of the query string that returns (status,
content type, body), so handlers stay pure of sockets. Requests are served on their own threads
and only read: they never block the worker loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from consumers.errors import ConfigError

logger = logging.getLogger(__name__)

Response = tuple[int, str, bytes]
Route = Callable[[Mapping[str, list[str]]], Response]
TEXT = "text/plain; charset=utf-8"


class HttpServer:
    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        self.host = host
        self.requested_port = port
        self.routes = dict(routes)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> HttpServer:
        """Bind and serve in a daemon thread. ConfigError if the address cannot be bound."""
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            server_version = "trace-curator"
            sys_version = ""

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                url = urlsplit(self.path)
                route = routes.get(url.path)
                if route is None:
                    status, ctype, body = 404, TEXT, b"not found\n"
                else:
                    try:
                        status, ctype, body = route(parse_qs(url.query))
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

        try:
            self._server = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"the HTTP server cannot listen on {self.host}:{self.requested_port} ({exc}); "
                "set TRACE_CURATOR_HTTP_PORT to a free port, or 0 to turn it off") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http",
                                        daemon=True)
        self._thread.start()
        logger.info("http server listening on http://%s:%d (%s)", self.host, self.port,
                    " ".join(sorted(self.routes)))
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
