"""The quality dashboard on the worker's HTTP server: ``/`` (HTML) and ``/api/report`` (JSON).

Both read the store on the request's thread and write nothing. ``/`` renders
``worker.report.page`` for ``?since=1h|24h|7d|<duration>|<ISO>`` (default 24h), an optional
``until`` and ``experiment``; ``/api/report`` takes the same parameters plus ``by``, and its body
is exactly what ``trace-curator report --format json`` prints for that window. A bad parameter
is a 400 that names it (also one given twice, too long, holding a control character, or a
window longer than ``worker.timeparse.MAX_WINDOW_DAYS``); an unreachable store is a 503. Only
metrics, ids and short previews are served (``store.dashboard``), and the page escapes every
string from the data.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping

import orjson
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from consumers.errors import ConfigError
from store.dashboard import gather
from store.report import GROUP_BY, summary
from worker.report.page import LiveControls, error_page, render
from worker.report.text import to_json
from worker.serve.server import TEXT, Response, Route
from worker.timeparse import parse_window

logger = logging.getLogger(__name__)

HTML = "text/html; charset=utf-8"
JSON = "application/json"
DEFAULT_SINCE = "24h"
_MAX_PARAM_CHARS = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class BadRequestError(ValueError):
    """A query parameter the dashboard cannot use (the message names it)."""


def _param(q: Mapping[str, list[str]], name: str) -> str | None:
    """The one value of ``name``, stripped, or None. A repeated parameter, one longer than
    ``_MAX_PARAM_CHARS`` or one holding a control character (a NUL would reach the store) is a
    BadRequestError."""
    values = q.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequestError(f"{name} is given {len(values)} times; give it once")
    if len(values[0]) > _MAX_PARAM_CHARS:
        raise BadRequestError(f"{name} is longer than {_MAX_PARAM_CHARS} characters")
    if _CONTROL.search(values[0]):
        raise BadRequestError(f"{name} holds a control character")
    return values[0].strip() or None


def query_window(q: Mapping[str, list[str]], now_ms: int) -> tuple[str, int, int]:
    """(since as asked, since_ms, until_ms) of a query string; the window is at most
    ``MAX_WINDOW_DAYS`` long (``worker.timeparse``). Raises BadRequestError."""
    since = _param(q, "since") or DEFAULT_SINCE
    until = _param(q, "until")
    try:
        since_ms, until_ms = parse_window(since, until, now_ms)
    except ConfigError as exc:
        raise BadRequestError(str(exc)) from None
    return since, since_ms, until_ms


def dashboard_routes(engine: Engine, *, minute_retention_days: float | None = None,
                     refresh_s: int = 30, clock: Callable[[], float] = time.time
                     ) -> dict[str, Route]:
    """``/`` and ``/api/report`` over ``engine``. ``minute_retention_days`` as the worker's
    settings say, so the notes equal those of ``report``."""

    def page(q: Mapping[str, list[str]]) -> Response:
        now_ms = int(clock() * 1000)
        try:
            since, since_ms, until_ms = query_window(q, now_ms)
            experiment = _param(q, "experiment")
            board = gather(engine, since_ms, until_ms, experiment_id=experiment, now_ms=now_ms,
                           minute_retention_days=minute_retention_days)
        except BadRequestError as exc:
            return 400, HTML, error_page(str(exc)).encode()
        except sa_exc.OperationalError as exc:
            return _unavailable(exc)
        live = LiveControls(since=since, experiment=experiment, refresh_s=refresh_s)
        return 200, HTML, render(board, live).encode()

    def api_report(q: Mapping[str, list[str]]) -> Response:
        now_ms = int(clock() * 1000)
        try:
            _, since_ms, until_ms = query_window(q, now_ms)
            by = _param(q, "by")
            if by is not None and by not in GROUP_BY:
                raise BadRequestError(f"by must be one of {', '.join(GROUP_BY)}, got {by!r}")
            result = summary(engine, since_ms, until_ms, experiment_id=_param(q, "experiment"),
                             by=by, now_ms=now_ms, minute_retention_days=minute_retention_days)
        except BadRequestError as exc:
            return 400, JSON, orjson.dumps({"error": str(exc)})
        except sa_exc.OperationalError as exc:
            return _unavailable(exc)
        return 200, JSON, to_json(result).encode()

    return {"/": page, "/api/report": api_report}


def _unavailable(exc: sa_exc.OperationalError) -> Response:
    logger.warning("dashboard: the store is unreachable: %s", str(exc.orig).strip()[:300])
    return 503, TEXT, b"the store is unreachable\n"
