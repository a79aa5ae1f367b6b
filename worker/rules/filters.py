"""MLflow search_traces filters, parsed once by MLflow and matched locally: for rules and datasets.

``parse_filter`` parses a filter text with MLflow's own parser (``worker.rules.mlflow_parser``:
in this process when MLflow is already imported, else in a short-lived helper process, so that
the worker does not keep MLflow in memory) and compiles each clause into a plain predicate
(``worker.rules.predicates``) that answers what MLflow's local matcher would. What that matcher
cannot evaluate correctly (span, feedback or expectation filters, unsupported operators, unknown
attributes) is a ``ConfigError`` at load, never a surprise at run time. A ``Filter``'s clauses
are AND-ed. A ``TraceInfoView`` is exactly the TraceInfo attributes that matcher reads. Parsed
texts are remembered per process: ``prepare`` parses many texts in one request, and a text
parsed again costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from consumers.errors import ConfigError
from consumers.events import TraceView
from worker.rules.mlflow_parser import Parsed, ParserUnavailable, parse_texts
from worker.rules.predicates import ATTRIBUTE_OPS, TAG_OPS, ClauseError, Predicate, compile_clause
from worker.yaml_files import brief, cut

__all__ = ["Filter", "TraceInfoView", "match_clause", "parse_filter", "prepare"]

_STATUSES = frozenset({"OK", "ERROR", "IN_PROGRESS", "STATE_UNSPECIFIED"})
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
    """Whether ``info`` passes one parsed clause, as MLflow's own matcher decides (the clause is
    compiled on each call: a ``Filter`` compiles its clauses once)."""
    return compile_clause(clause)(info)


@dataclass(frozen=True, slots=True)
class Filter:
    """One filter string as written, MLflow's parsed clauses (AND-ed), and their predicate."""

    text: str
    clauses: tuple[Mapping[str, Any], ...]
    reason: str  # logged when it matches
    test: Predicate = field(repr=False, compare=False)  # all clauses, compiled

    def matches(self, info: TraceInfoView) -> bool:
        """Whether every clause matches ``info``."""
        return self.test(info)


_PARSED: dict[str, Parsed] = {}  # text (stripped) -> MLflow's clauses or error, per process
_PARSED_MAX = 4096  # texts come from config files; past this, start over


def prepare(texts: Iterable[Any], where: str) -> None:
    """Have MLflow parse every new filter text among ``texts`` (other values are ignored) in one
    request, so that ``parse_filter`` then finds them parsed. A ConfigError names ``where``."""
    try:
        _parse_new(texts)
    except ParserUnavailable as exc:
        raise ConfigError(f"{where}: cannot parse its filters: {exc}") from None


def _parse_new(texts: Iterable[Any]) -> dict[str, Parsed]:
    """Each distinct filter text among ``texts``, parsed; those not yet known in one request."""
    wanted = dict.fromkeys(t.strip() for t in texts if isinstance(t, str) and t.strip())
    known = {t: parsed for t in wanted if (parsed := _PARSED.get(t)) is not None}
    todo = [t for t in wanted if t not in known]
    if todo:
        known.update(zip(todo, parse_texts(todo), strict=True))
        if len(_PARSED) + len(todo) > _PARSED_MAX:
            _PARSED.clear()
        _PARSED.update((t, known[t]) for t in todo)
    return known


def parse_filter(text: Any, where: str) -> Filter:
    """``text`` parsed and checked; a ``ConfigError`` starting with ``where`` names the problem."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: a filter must be a non-empty string, got {brief(text)}")
    text = text.strip()
    try:
        parsed = _parse_new([text])[text]
    except ParserUnavailable as exc:
        raise ConfigError(f"{where}: filter {brief(text)}: {exc}") from None
    if isinstance(parsed, str):
        hint = ""
        if re.search(r"'OR'|'\(", parsed):
            hint = " (filters are AND-only, without parentheses; list alternatives in 'filters')"
        raise ConfigError(f"{where}: filter {brief(text)}: {cut(parsed)}{hint}")
    tests = []
    for clause in parsed:
        test = _compile(clause)
        if isinstance(test, str):
            raise ConfigError(f"{where}: filter {brief(text)}: {cut(test)}")
        tests.append(test)
    clauses = tuple(MappingProxyType(dict(clause)) for clause in parsed)
    return Filter(text, clauses, f"{text} matched", _all_of(tests))


def _all_of(tests: list[Predicate]) -> Predicate:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda info: bool(first(info) and second(info))
    every = tuple(tests)
    return lambda info: all(test(info) for test in every)


def _compile(clause: Mapping[str, Any]) -> Predicate | str:
    """The clause's predicate, or why MLflow's local matcher cannot evaluate it correctly."""
    if problem := _clause_problem(clause):
        return problem
    try:
        test = compile_clause(clause)
    except ClauseError as exc:
        return f"MLflow cannot evaluate it locally: {exc}"
    # What the checks above missed must not raise on a typical trace.
    key = clause["key"]
    probe = TraceView("tr-probe", None, None, "OK", 0, 0, {key: "x"}, {key: "x"})
    try:
        test(TraceInfoView(probe, probe.tags))
    except Exception as exc:
        return f"MLflow cannot evaluate it locally: {exc!r}"
    return test


def _clause_problem(clause: Mapping[str, Any]) -> str | None:
    """Why MLflow's local matcher cannot evaluate ``clause`` correctly, or None."""
    kind, key, value = clause["type"], clause["key"], clause["value"]
    op = str(clause["comparator"]).upper()
    if kind in _NOT_LOCAL:
        return _NOT_LOCAL[kind]
    if kind in ("tag", "request_metadata"):
        if op not in TAG_OPS:
            where = "tags" if kind == "tag" else "metadata"
            return f"operator {op} is not supported on {where}; use one of {sorted(TAG_OPS)}"
        if isinstance(value, str) and "''" in value:
            return "MLflow does not unescape '' in a quoted value; put it in double quotes"
    elif kind == "attribute":
        return _attribute_problem(key, op, value)
    return None


def _attribute_problem(key: str, op: str, value: Any) -> str | None:
    if key == "end_time_ms":
        return "end_time_ms is not known locally; use timestamp_ms and execution_time_ms"
    if key not in ATTRIBUTE_OPS:
        return f"attributes.{key} is not available to rules; use {sorted(ATTRIBUTE_OPS)}"
    if op not in ATTRIBUTE_OPS[key]:
        return f"operator {op} is not supported on attributes.{key}"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key.endswith("_ms") and not number:
        return f"attributes.{key} compares with a number; write {value} without quotes"
    values = value if isinstance(value, tuple) else (value,)
    if key == "status" and op in ("=", "!=", "IN", "NOT IN") and set(values) - _STATUSES:
        return f"status is one of {sorted(_STATUSES)} (case-sensitive), got {value!r}"
    return None
