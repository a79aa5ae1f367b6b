"""MLflow search_traces filters, parsed once and matched locally: used by rules and dataset specs.

``parse_filter`` parses a filter text with MLflow's own parser and then checks that MLflow's own
local matcher can evaluate every clause correctly; what it cannot (span, feedback or expectation
filters, unsupported operators, unknown attributes) is a ``ConfigError`` at load, never a
surprise at run time. A ``Filter``'s clauses are AND-ed. ``match_clause`` is MLflow's matcher,
fed a ``TraceInfoView``: exactly the TraceInfo attributes that matcher reads. The matcher is
private upstream, so mlflow is pinned and tests/unit/test_rules.py covers it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.utils.search_utils import SearchTraceUtils

from consumers.errors import ConfigError
from consumers.events import TraceView
from worker.yaml_files import brief, cut

__all__ = ["Filter", "TraceInfoView", "match_clause", "parse_filter"]

# MLflow's parser and matcher, typed once (they are untyped upstream).
_mlflow_parse: Callable[[str], list[dict[str, Any]]] = (
    SearchTraceUtils.parse_search_filter_for_search_traces
)
_mlflow_match: Callable[[object, Mapping[str, Any]], bool] = (
    SearchTraceUtils._does_trace_match_clause
)

_STATUSES = frozenset({"OK", "ERROR", "IN_PROGRESS", "STATE_UNSPECIFIED"})
_STRING_OPS = frozenset({"=", "!=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL"})
_ATTRIBUTE_OPS = {
    "status": frozenset({"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"}),
    "request_id": frozenset({"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"}),
    "timestamp_ms": frozenset({"=", "!=", ">", ">=", "<", "<="}),
    "execution_time_ms": frozenset({"=", "!=", ">", ">=", "<", "<="}),
}
_NOT_LOCAL = {
    "span": "span.* and trace.text filters need span data, which rules do not see",
    "feedback": "feedback.* filters need the server; use the rule's feedback: condition",
    "expectation": "expectation.* filters need the server; rules look at feedback only",
    "issue": "issue.* filters need the server",
}


class TraceInfoView:
    """Exactly the attributes MLflow's local matcher reads from an MLflow TraceInfo, taken from a
    ``TraceView``; ``tags`` is given apart, so a caller can add derived tags."""

    __slots__ = (
        "execution_time_ms",
        "request_id",
        "request_metadata",
        "status",
        "tags",
        "timestamp_ms",
    )

    def __init__(self, trace: TraceView, tags: Mapping[str, str]) -> None:
        self.tags = tags
        self.request_metadata = trace.metadata
        self.request_id = trace.trace_id
        self.timestamp_ms = trace.timestamp_ms
        self.execution_time_ms = trace.execution_time_ms
        self.status = trace.status


def match_clause(info: TraceInfoView, clause: Mapping[str, Any]) -> bool:
    """Whether ``info`` passes one parsed clause, as MLflow's own matcher decides."""
    return _mlflow_match(info, clause)


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter string as written, and MLflow's parsed clauses (AND-ed)."""

    text: str
    clauses: tuple[Mapping[str, Any], ...]
    reason: str  # logged when it matches

    def matches(self, info: TraceInfoView) -> bool:
        """Whether every clause matches ``info``."""
        return all(_mlflow_match(info, clause) for clause in self.clauses)


def parse_filter(text: Any, where: str) -> Filter:
    """``text`` parsed and checked; a ``ConfigError`` starting with ``where`` names the problem."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: a filter must be a non-empty string, got {brief(text)}")
    text = text.strip()
    try:
        clauses = _mlflow_parse(text)
    except Exception as exc:  # MlflowException, or whatever sqlparse raises
        hint = ""
        if re.search(r"'OR'|'\(", str(exc)):
            hint = " (filters are AND-only, without parentheses; list alternatives in 'filters')"
        raise ConfigError(f"{where}: filter {brief(text)}: {cut(str(exc))}{hint}") from exc
    for clause in clauses:
        if problem := _clause_problem(clause):
            raise ConfigError(f"{where}: filter {brief(text)}: {cut(problem)}")
    return Filter(text, tuple(clauses), f"{text} matched")


def _clause_problem(clause: Mapping[str, Any]) -> str | None:
    """Why MLflow's local matcher cannot evaluate ``clause`` correctly, or None."""
    kind, key, value = clause["type"], clause["key"], clause["value"]
    op = str(clause["comparator"]).upper()
    if kind in _NOT_LOCAL:
        return _NOT_LOCAL[kind]
    if kind in ("tag", "request_metadata"):
        if op not in _STRING_OPS:
            where = "tags" if kind == "tag" else "metadata"
            return f"operator {op} is not supported on {where}; use one of {sorted(_STRING_OPS)}"
        if isinstance(value, str) and "''" in value:
            return "MLflow does not unescape '' in a quoted value; put it in double quotes"
    elif kind == "attribute":
        problem = _attribute_problem(key, op, value)
        if problem:
            return problem
    # What the checks above missed, MLflow's matcher must not raise on a typical trace.
    probe = TraceView("tr-probe", None, None, "OK", 0, 0, {key: "x"}, {key: "x"})
    try:
        _mlflow_match(TraceInfoView(probe, probe.tags), clause)
    except Exception as exc:
        return f"MLflow cannot evaluate it locally: {exc!r}"
    return None


def _attribute_problem(key: str, op: str, value: Any) -> str | None:
    if key == "end_time_ms":
        return "end_time_ms is not known locally; use timestamp_ms and execution_time_ms"
    if key not in _ATTRIBUTE_OPS:
        return f"attributes.{key} is not available to rules; use {sorted(_ATTRIBUTE_OPS)}"
    if op not in _ATTRIBUTE_OPS[key]:
        return f"operator {op} is not supported on attributes.{key}"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key.endswith("_ms") and not number:
        return f"attributes.{key} compares with a number; write {value} without quotes"
    values = value if isinstance(value, tuple) else (value,)
    if key == "status" and op in ("=", "!=", "IN", "NOT IN") and set(values) - _STATUSES:
        return f"status is one of {sorted(_STATUSES)} (case-sensitive), got {value!r}"
    return None
