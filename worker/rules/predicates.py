"""Parsed MLflow filter clauses compiled, once at load, into plain Python predicates.

A predicate takes a ``TraceInfoView`` (``tags``, ``request_metadata``, ``status``, ``request_id``,
``timestamp_ms``, ``execution_time_ms``) and answers what MLflow's local matcher
(``SearchTraceUtils._does_trace_match_clause``, mlflow is pinned) answers for the same clause,
quirks included:

- the comparator is upper-cased; the value is used as parsed (str, int, float or a tuple of str);
- tags and metadata: IS NULL means the key is absent (a key present with a None value is not
  null); for every other comparator a missing key or a None value is False, != included;
- attributes are read by name; a None value (a running trace's latency) is False for every
  comparator, != and NOT IN included;
- = != < <= > >= are Python's operators, left side the trace's value (strings case-sensitive);
  IN and NOT IN are Python's ``in`` on the parsed tuple;
- LIKE and ILIKE use MLflow's translation to a regular expression: ``re.escape`` of the pattern,
  then % becomes .* and _ becomes . (there is no escape character), ^ in front unless the
  pattern starts with %, $ at the end unless it ends with %, applied with ``re.match``. So . does
  not match a newline and $ also matches before a final newline; ILIKE adds ``re.IGNORECASE``.

A clause that matcher would refuse or fail on (another type, a comparator the type does not
take, a LIKE pattern that is not a string) raises ``ClauseError`` here, at load. Nothing here
imports MLflow; tests/unit/test_filters_differential.py holds both side by side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ATTRIBUTE_OPS", "TAG_OPS", "ClauseError", "Predicate", "compile_clause", "like_regex"]

Predicate = Callable[[Any], bool]

# The comparators evaluated locally: on tags and metadata, and per attribute.
TAG_OPS = frozenset({"=", "!=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL"})
_STRING_OPS = frozenset({"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"})
_NUMBER_OPS = frozenset({"=", "!=", ">", ">=", "<", "<="})
ATTRIBUTE_OPS: Mapping[str, frozenset[str]] = {
    "status": _STRING_OPS, "request_id": _STRING_OPS,
    "timestamp_ms": _NUMBER_OPS, "execution_time_ms": _NUMBER_OPS,
}


class ClauseError(ValueError):
    """A clause that MLflow's local matcher would not evaluate."""


def like_regex(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """MLflow's LIKE / ILIKE pattern as the regular expression its matcher applies."""
    regex = re.escape(pattern).replace("%", ".*").replace("_", ".")
    if not pattern.startswith("%"):
        regex = "^" + regex
    if not pattern.endswith("%"):
        regex = regex + "$"
    return re.compile(regex, re.IGNORECASE if ignore_case else 0)


def compile_clause(clause: Mapping[str, Any]) -> Predicate:
    """The predicate of one parsed clause (a dict with type, key, comparator, value)."""
    kind, key, value = clause.get("type"), clause.get("key"), clause.get("value")
    op = str(clause.get("comparator")).upper()
    if kind in ("tag", "request_metadata"):
        if op not in TAG_OPS:
            raise ClauseError(f"comparator {op} is not evaluated locally on {kind} values")
        if op in ("IS NULL", "IS NOT NULL"):
            return _presence(kind, key, op == "IS NULL")
        return _from_mapping(kind, key, _test(op, value))
    if kind == "attribute":
        allowed = ATTRIBUTE_OPS.get(key) if isinstance(key, str) else None
        if allowed is None or not isinstance(key, str):
            raise ClauseError(f"attribute {key!r} is not known locally")
        if op not in allowed:
            raise ClauseError(f"comparator {op} is not evaluated locally on attribute {key}")
        return _from_attribute(key, _test(op, value))
    raise ClauseError(f"{kind} clauses are not evaluated locally")


def _test(op: str, value: Any) -> Callable[[Any], Any]:
    """The comparison of a present (not None) left-hand side with ``value``."""
    if op in ("LIKE", "ILIKE"):
        if not isinstance(value, str):
            raise ClauseError(f"{op} needs a quoted pattern, got {value!r}")
        match = like_regex(value, op == "ILIKE").match
        return lambda lhs: match(lhs) is not None
    tests: dict[str, Callable[[Any], Any]] = {
        "=": lambda lhs: lhs == value,
        "!=": lambda lhs: lhs != value,
        ">": lambda lhs: lhs > value,
        ">=": lambda lhs: lhs >= value,
        "<": lambda lhs: lhs < value,
        "<=": lambda lhs: lhs <= value,
        "IN": lambda lhs: lhs in value,
        "NOT IN": lambda lhs: lhs not in value,
    }
    return tests[op]


def _presence(kind: str, key: Any, absent: bool) -> Predicate:
    if kind == "tag":
        if absent:
            return lambda info: key not in info.tags
        return lambda info: key in info.tags
    if absent:
        return lambda info: key not in info.request_metadata
    return lambda info: key in info.request_metadata


def _from_mapping(kind: str, key: Any, test: Callable[[Any], Any]) -> Predicate:
    if kind == "tag":

        def tag_predicate(info: Any) -> bool:
            lhs = info.tags.get(key)
            return lhs is not None and test(lhs)

        return tag_predicate

    def metadata_predicate(info: Any) -> bool:
        lhs = info.request_metadata.get(key)
        return lhs is not None and test(lhs)

    return metadata_predicate


def _from_attribute(key: str, test: Callable[[Any], Any]) -> Predicate:
    def attribute_predicate(info: Any) -> bool:
        lhs = getattr(info, key)
        return lhs is not None and test(lhs)

    return attribute_predicate
