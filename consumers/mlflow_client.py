"""MLflow's tracking client as the worker uses it: the trace server the polling source reads
(``MlflowTraceServer``) and the one rule that sorts MLflow failures (``is_transient``).

``is_transient`` decides retry or crash for every MLflow call the worker makes: MLflow or the
store unreachable, or MLflow answering 5xx or 429, is retried; a 4xx is a real error.
Importing this module does not import mlflow (it is imported inside the calls), so the CLI and
the loop start without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def is_transient(exc: BaseException) -> bool:
    """Retry, do not crash: MLflow unreachable (connection errors derive from OSError), a
    server-side MLflow error (HTTP 5xx or 429, by the exception's own status), or the store
    away. A 4xx from MLflow (a bad filter, an unknown experiment) is a real error."""
    if isinstance(exc, OSError):
        return True
    http_status = getattr(exc, "get_http_status_code", None)
    if callable(http_status):  # MlflowException
        code = int(http_status())
        return code >= 500 or code == 429
    return type(exc).__name__ in {"OperationalError", "InterfaceError", "TimeoutError"}  # SQL


class MlflowTraceServer:
    """``consumers.mlflow_plan.TraceServer`` over MLflow's tracing client (REST server or a
    local store URI)."""

    def __init__(self, tracking_uri: str | None) -> None:
        from mlflow.tracing.client import TracingClient
        from mlflow.tracking import MlflowClient

        self._tracing = TracingClient(tracking_uri)
        self._client = MlflowClient(tracking_uri)

    def experiments(self) -> list[tuple[str, int]]:
        from mlflow.entities import ViewType

        out: list[tuple[str, int]] = []
        token: str | None = None
        while True:
            page = self._client.search_experiments(view_type=ViewType.ACTIVE_ONLY,
                                                   max_results=1000, page_token=token)
            out.extend((e.experiment_id, int(e.creation_time or 0)) for e in page)
            token = page.token
            if not token:
                return out

    def page(self, experiment_id: str, since_ms: int, until_ms: int | None,
             page_token: str | None, max_results: int) -> tuple[list[Any], str | None]:
        page = self._search(experiment_id, since_ms, until_ms, page_token, max_results,
                            spans=False)
        return [t.info for t in page], page.token or None

    def _search(self, experiment_id: str, since_ms: int, until_ms: int | None,
                page_token: str | None, max_results: int, *, spans: bool) -> Any:
        where = f"attributes.timestamp_ms >= {max(since_ms, 0)}"
        if until_ms is not None:
            where += f" AND attributes.timestamp_ms <= {until_ms}"
        return self._tracing.search_traces(
            locations=[experiment_id], filter_string=where, max_results=max_results,
            order_by=["timestamp_ms ASC"], page_token=page_token, include_spans=spans)

    def fetch(self, trace_ids: Sequence[str]) -> list[Any]:
        return list(self._tracing.batch_get_traces(list(trace_ids)))

    def page_traces(self, experiment_id: str, since_ms: int, until_ms: int | None,
                    page_token: str | None, max_results: int) -> list[Any]:
        return list(self._search(experiment_id, since_ms, until_ms, page_token, max_results,
                                 spans=True))
