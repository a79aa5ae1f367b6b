"""Differential: the compiled filter predicates answer exactly what MLflow's own matcher answers.

Hypothesis writes filter texts in the grammar rules accept (attributes status / request_id /
timestamp_ms / execution_time_ms and their aliases with their operators; tags and metadata with
=, !=, LIKE, ILIKE, IS NULL, IS NOT NULL; backticked keys; single- and double-quoted values with %,
_, regular-expression metacharacters, backslashes, newlines and unicode; operators in upper and
lower case; several clauses AND-ed), then traces shaped after the filter (its tags and metadata
present, absent or None; values equal to the filter's, re-cased, with a trailing newline, or a
LIKE pattern filled in; latencies None). For every clause MLflow parses, the compiled predicate
(``worker.rules.predicates``) and ``SearchTraceUtils._does_trace_match_clause`` must give the same
result, or both raise the same exception type; ``Filter.matches`` must equal ``all`` of MLflow's
matcher; a text MLflow cannot parse, or that has a clause that does not compile, must be a
``ConfigError`` from ``parse_filter``. This test imports MLflow, so filters parse in-process here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mlflow.utils.search_utils import SearchTraceUtils

from consumers.errors import ConfigError
from consumers.events import TraceView
from worker.rules.filters import TraceInfoView, match_clause, parse_filter
from worker.rules.predicates import ClauseError, compile_clause

mlflow_parse: Callable[[str], list[dict[str, Any]]] = (
    SearchTraceUtils.parse_search_filter_for_search_traces
)
mlflow_match: Callable[[object, Mapping[str, Any]], bool] = (
    SearchTraceUtils._does_trace_match_clause
)

STATUSES = ["OK", "ERROR", "IN_PROGRESS", "STATE_UNSPECIFIED"]
STRING_OPS = ["=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"]
NUMERIC_OPS = ["=", "!=", ">", ">=", "<", "<="]
TAG_OPS = ["=", "!=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL"]
KEYS = ["env", "mlflow.traceName", "mlflow.trace.user", "k-1", "x y", "ключ", "a_b", "A"]
# %, _ and regex metacharacters; letters whose case folding is special (ſ, K, ß, İ); a newline.
ALPHABET = list("aAbBsSkK%_.*+?^$()[]{}|\\ -/é\u017f\u212a\u00df\u0130\n")
TEXT = st.text(alphabet=st.sampled_from(ALPHABET), max_size=8)


def quoted(value: str, draw: Any) -> str:
    """``value`` in single or double quotes (MLflow strips either, and never unescapes)."""
    if "'" not in value and ("\"" in value or draw(st.booleans())):
        return f"'{value}'"
    return f'"{value}"'


def spelled(op: str, draw: Any) -> str:
    return op.lower() if draw(st.booleans()) else op


@st.composite
def clause_text(draw: Any) -> str:
    kind = draw(st.sampled_from(["status", "request_id", "number", "tag", "metadata", "alias"]))
    if kind == "status":
        lhs = draw(st.sampled_from(["attributes.status", "attribute.status", "trace.status",
                                    "status"]))
        op = draw(st.sampled_from(STRING_OPS))
        values = draw(st.lists(st.sampled_from(STATUSES), min_size=1, max_size=3))
        if op in ("LIKE", "ILIKE"):
            values = [draw(st.sampled_from(["%", "O%", "%R", "_K", "e%", "%o%", "IN_%", "ok"]))]
    elif kind == "request_id":
        lhs = draw(st.sampled_from(["attributes.request_id", "request_id"]))
        op = draw(st.sampled_from(STRING_OPS))
        values = draw(st.lists(TEXT.filter(lambda v: "'" not in v and '"' not in v),
                               min_size=1, max_size=3))
    elif kind == "number":
        lhs = draw(st.sampled_from(["attributes.timestamp_ms", "attributes.execution_time_ms",
                                    "timestamp", "execution_time", "trace.timestamp_ms"]))
        op = draw(st.sampled_from(NUMERIC_OPS))
        number = draw(st.one_of(st.integers(-10, 10**13).map(str),
                                st.sampled_from(["1.5", "0.0", "1e3", "2.5e1", "-3"])))
        return f"{lhs} {op} {number}"
    else:
        if kind == "alias":
            lhs = draw(st.sampled_from(["name", "run_id", "attributes.name"]))
        else:
            prefix = {"tag": ["tags", "tag"], "metadata": ["metadata", "request_metadata"]}[kind]
            key = draw(st.sampled_from(KEYS))
            plain = re.fullmatch(r"[A-Za-z_][\w.]*", key) and draw(st.booleans())
            lhs = f"{draw(st.sampled_from(prefix))}.{key if plain else f'`{key}`'}"
        op = draw(st.sampled_from(TAG_OPS))
        if op in ("IS NULL", "IS NOT NULL"):
            return f"{lhs} {spelled(op, draw)}"
        values = [draw(TEXT)]
    if op in ("IN", "NOT IN"):
        rhs = "(" + ", ".join(quoted(v, draw) for v in values) + ")"
    else:
        rhs = quoted(values[0], draw)
    return f"{lhs} {spelled(op, draw)} {rhs}"


filter_text = st.lists(clause_text(), min_size=1, max_size=4).map(" AND ".join)


def filled(pattern: str, draw: Any) -> str:
    """A string that a LIKE ``pattern`` may match: % and _ replaced by drawn text."""
    out = []
    for ch in pattern:
        if ch == "%":
            out.append(draw(TEXT))
        elif ch == "_":
            out.append(draw(st.sampled_from(ALPHABET)))
        else:
            out.append(ch)
    return "".join(out)


def candidate(value: Any, draw: Any) -> Any:
    """A value near ``value``: equal, re-cased, with a newline, a LIKE filling, or unrelated."""
    if isinstance(value, tuple):
        value = draw(st.sampled_from(value))
    if not isinstance(value, str):
        return draw(TEXT)
    return draw(st.sampled_from([
        value, value.upper(), value.lower(), value.swapcase(), value + "\n", "\n" + value,
        filled(value, draw), draw(TEXT),
    ]))


@st.composite
def trace_for(draw: Any, clauses: list[dict[str, Any]]) -> TraceInfoView:
    tags: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    numbers: list[int] = [0]
    strings: dict[str, list[Any]] = {"status": list(STATUSES), "request_id": [draw(TEXT)]}
    for clause in clauses:
        key, value = clause.get("key"), clause.get("value")
        if clause.get("type") in ("tag", "request_metadata"):
            into = tags if clause["type"] == "tag" else metadata
            presence = draw(st.sampled_from(["absent", "none", "value", "value", "value"]))
            if presence == "none":
                into[key] = None  # not a TraceView's type, but MLflow's matcher has a rule for it
            elif presence == "value":
                into[key] = candidate(value, draw)
        elif isinstance(value, int | float):
            numbers += [int(value) - 1, int(value), int(value) + 1]
        elif clause.get("key") in strings:
            strings[clause["key"]].append(candidate(value, draw))
    extra = st.dictionaries(st.sampled_from(KEYS), TEXT, max_size=2)
    tags = {**draw(extra), **tags}
    metadata = {**draw(extra), **metadata}
    view = TraceView(
        trace_id=draw(st.sampled_from(strings["request_id"])),
        experiment_id=draw(st.sampled_from([None, "1"])),
        name=draw(st.sampled_from([None, "app"])),
        status=draw(st.sampled_from(strings["status"])),
        timestamp_ms=draw(st.sampled_from(numbers)),
        execution_time_ms=draw(st.sampled_from([None, *numbers])),
        tags=tags,
        metadata=metadata,
    )
    return TraceInfoView(view, view.tags)


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """What ``fn(*args)`` returns, or the name of the exception type it raises."""
    try:
        return ("value", fn(*args))
    except Exception as exc:
        return ("raises", type(exc).__name__)


def check(text: str, data: Any) -> None:
    try:
        clauses = mlflow_parse(text)
    except Exception:
        event("MLflow cannot parse the text")
        with pytest.raises(ConfigError):
            parse_filter(text, "t")
        return
    compilable = True
    for clause in clauses:
        try:
            compile_clause(clause)
        except ClauseError:
            compilable = False
    try:
        flt = parse_filter(text, "t")
    except ConfigError:
        event("rejected at load")
        flt = None
    if not compilable:
        assert flt is None, f"{text!r} has a clause that does not compile yet loaded"
    infos = [data.draw(trace_for(clauses)) for _ in range(4)]
    for info in infos:
        for clause in clauses:
            try:
                predicate = compile_clause(clause)
            except ClauseError:
                continue
            theirs = outcome(mlflow_match, info, clause)
            assert outcome(predicate, info) == theirs, (text, clause, info_dict(info))
            assert outcome(match_clause, info, clause) == theirs
            event(f"clause result {theirs}")
        if flt is not None:
            expected = all(mlflow_match(info, c) for c in clauses)
            assert flt.matches(info) == expected, (text, info_dict(info))
            event(f"filter matches {expected}")


def info_dict(info: TraceInfoView) -> dict[str, Any]:
    return {name: getattr(info, name) for name in TraceInfoView.__slots__}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=filter_text, data=st.data())
def test_compiled_filters_match_exactly_as_mlflows_matcher(text: str, data: Any) -> None:
    check(text, data)


def view(tags: dict[str, Any] | None = None, **fields: Any) -> TraceInfoView:
    base: dict[str, Any] = {"trace_id": "tr-1", "experiment_id": None, "name": None,
                            "status": "OK", "timestamp_ms": 0, "execution_time_ms": None,
                            "tags": tags or {}, "metadata": {}}
    base.update(fields)
    trace = TraceView(**base)
    return TraceInfoView(trace, trace.tags)


@pytest.mark.parametrize(("text", "info"), [
    ("tags.a LIKE 'abc'", view({"a": "abc\n"})),  # $ before a final newline: True
    ("tags.a LIKE '%x%'", view({"a": "a\nx"})),  # . does not cross a newline: False
    ("tags.a LIKE 'a_c'", view({"a": "a\nc"})),  # _ is ., which does not match a newline
    ("tags.a ILIKE 'ſ%'", view({"a": "S"})),  # IGNORECASE folds the long s
    ("tags.a LIKE 'a\\%'", view({"a": "a\\xyz"})),  # no escape character: \\ is a backslash
    ("tags.a != 'x'", view({})),  # a missing tag is False, even for !=
    ("tags.a IS NULL", view({"a": None})),  # present with None: not null
    ("tags.a != 'x'", view({"a": None})),  # None: False
    ("attributes.execution_time_ms != 5", view()),  # a None attribute: False, even for !=
    ("attributes.status NOT IN ('ERROR')", view(status="OK")),
    ("attributes.timestamp_ms = 0.0", view(timestamp_ms=0)),  # int == float
    ("status like 'o%'", view(status="OK")),  # the comparator is upper-cased; LIKE is cased
])
def test_mlflows_quirks_are_kept(text: str, info: TraceInfoView) -> None:
    clauses = mlflow_parse(text)
    expected = [mlflow_match(info, c) for c in clauses]
    assert [compile_clause(c)(info) for c in clauses] == expected
    assert parse_filter(text, "t").matches(info) == all(expected)
