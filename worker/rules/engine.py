"""The rules engine: which traces become eval candidates, and why. Pure: no I/O, no MLflow calls.

A rule set is parsed and validated once (``load_rules``); ``RuleSet.evaluate`` then does no parsing.
Filters are MLflow search_traces filters (``worker.rules.filters``: MLflow's own parser, all filters
of a document in one request, and each clause compiled into a predicate that answers as MLflow's
local matcher); what that matcher cannot evaluate locally is rejected at load, never at run time.
Only valid (non-overridden) feedback counts; expectations never do. Per tag key, the matched and
sampled-in rule with the lowest precedence wins. A feedback rule with no valid feedback to judge is
``not_applicable`` rather than ``no_match``: the decision may change when feedback arrives.
Sampling is deterministic (blake2b-64 of rule name and trace_id). Equal inputs give equal digests.
The file format is documented by ``DEFAULT_RULES_YAML``, which is also the built-in rule set.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from consumers.errors import ConfigError
from consumers.events import AssessmentView, Evaluation, Outcome, RuleOutcome, TraceView
from worker.rules.defaults import DEFAULT_RULES_YAML
from worker.rules.filters import Filter, TraceInfoView, parse_filter, prepare
from worker.yaml_files import Yaml12Loader, brief, load_yaml_file, load_yaml_text

__all__ = [
    "DEFAULT_RULES_YAML",
    "AssessmentView",
    "Evaluation",
    "Outcome",
    "Rule",
    "RuleOutcome",
    "RuleSet",
    "TraceView",
    "load_rules",
    "parse_rules",
]

DEFAULT_TAG_KEY = "eval_candidate"
TRACE_NAME_TAG = "mlflow.traceName"


_NUMERIC_TESTS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "below": ("<", operator.lt),
    "at_most": ("<=", operator.le),
    "above": (">", operator.gt),
    "at_least": (">=", operator.ge),
}
_TESTS = frozenset({*_NUMERIC_TESTS, "equals", "in"})
_Scalar = str | bool | int | float


@dataclass(frozen=True, slots=True)
class FeedbackCondition:
    """Feedback named ``name`` (None: any name) whose value passes every test."""

    name: str | None
    tests: tuple[tuple[str, Any], ...]  # (test, operand); operand is a tuple for "in"
    text: str  # the tests as text, e.g. "< 0.5" or "in [False, 'no']"

    def passes(self, value: Any) -> bool:
        return all(_passes(test, operand, value) for test, operand in self.tests)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(value: Any, wanted: _Scalar) -> bool:
    if isinstance(wanted, bool) or isinstance(value, bool):
        return value is wanted
    if isinstance(wanted, str):  # casefolded at load
        return isinstance(value, str) and value.casefold() == wanted
    return _is_number(value) and bool(value == wanted)


def _passes(test: str, operand: Any, value: Any) -> bool:
    if test in _NUMERIC_TESTS:
        return _is_number(value) and _NUMERIC_TESTS[test][1](value, operand)
    candidates = operand if test == "in" else (operand,)
    return any(_same(value, wanted) for wanted in candidates)


def _sample_point(name: str, trace_id: str) -> int:
    digest = hashlib.blake2b(f"{name}\0{trace_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule, validated and pre-parsed. Matching code reads only the precomputed fields."""

    name: str
    filters: tuple[Filter, ...]  # OR-ed; empty: no filter
    feedback: tuple[FeedbackCondition, ...]  # OR-ed; empty: no feedback condition
    tag_key: str
    tag_value: str
    precedence: int
    sample_rate: float
    position: int  # 1-based, in the file; breaks precedence ties
    no_match_reason: str = field(init=False, repr=False, compare=False)
    no_feedback_reason: str = field(init=False, repr=False, compare=False)  # none at all
    sample_threshold: int = field(init=False, repr=False, compare=False)  # of 2**64

    def __post_init__(self) -> None:
        no_match = f"none of {len(self.filters)} filters matched"
        if len(self.filters) == 1:
            no_match = f"{self.filters[0].text} did not match"
        object.__setattr__(self, "no_match_reason", no_match)
        object.__setattr__(self, "no_feedback_reason", _no_valid_feedback(self, ""))
        object.__setattr__(self, "sample_threshold", int(self.sample_rate * 2**64))

    def match_filters(self, info: TraceInfoView) -> str | None:
        """The reason of the first filter whose clauses all match ``info``, else None."""
        for flt in self.filters:
            if flt.test(info):
                return flt.reason
        return None

    def sampled_in(self, trace_id: str) -> bool:
        return self.sample_rate >= 1.0 or _sample_point(self.name, trace_id) < self.sample_threshold

    def definition(self) -> dict[str, Any]:
        """The rule as plain data, for the rule-set digest."""
        feedback = [{"name": c.name, "tests": [[t, o] for t, o in c.tests]} for c in self.feedback]
        return {
            "name": self.name,
            "filters": [f.text for f in self.filters],
            "feedback": feedback,
            "tag": [self.tag_key, self.tag_value],
            "precedence": self.precedence,
            "sample_rate": self.sample_rate,
        }


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_valid_feedback(rule: Rule, ignored_text: str) -> str:
    names = {c.name for c in rule.feedback}
    wanted = "" if None in names else " " + " or ".join(sorted(repr(n) for n in names))
    return f"no valid feedback{wanted}{ignored_text}"


def _judge_feedback(
    rule: Rule, valid: Sequence[AssessmentView], every: Sequence[AssessmentView]
) -> tuple[bool | None, str]:
    """(True, why) on a match, (False, why) when valid feedback fails, (None, why) when none."""
    hits: list[tuple[AssessmentView, FeedbackCondition]] = []
    seen: list[AssessmentView] = []
    for fb in valid:
        conditions = [c for c in rule.feedback if c.name is None or c.name == fb.name]
        if conditions:
            seen.append(fb)
            hit = next((c for c in conditions if c.passes(fb.value)), None)
            if hit is not None:
                hits.append((fb, hit))
    if hits:
        fb, cond = max(hits, key=lambda hit: (hit[0].last_update_time_ms, hit[0].assessment_id))
        more = f"; {len(hits) - 1} more matched" if len(hits) > 1 else ""
        value = _short(fb.value)
        return True, f"feedback {fb.name}={value} {cond.text} (assessment {fb.assessment_id}{more})"
    names = {c.name for c in rule.feedback}
    ignored = sum(
        1
        for a in every
        if a.kind == "feedback" and not a.valid and (None in names or a.name in names)
    )
    ignored_text = f"; {ignored} invalid (overridden) ignored" if ignored else ""
    if not seen:
        return None, _no_valid_feedback(rule, ignored_text)
    last = max(seen, key=lambda a: (a.last_update_time_ms, a.assessment_id))
    wanted = " or ".join(f"{c.name or 'value'} {c.text}" for c in rule.feedback)
    return False, (
        f"valid feedback did not match: {wanted} (latest {last.name}={_short(last.value)}, "
        f"assessment {last.assessment_id}){ignored_text}"
    )


_Verdict = tuple[Outcome, str]
# What a tuple of verdicts resolves to: outcomes, tags, and the digest's text after the trace id.
_Resolved = tuple[tuple[RuleOutcome, ...], Mapping[str, tuple[str, str]], bytes]
_RESOLVED_KEPT = 1024  # verdict tuples remembered by a RuleSet; cleared when full


class RuleSet:
    """Validated rules plus what ``evaluate`` needs precomputed. Build with ``parse_rules``."""

    __slots__ = ("_by_precedence", "_digest_head", "_name_tag", "_needs_fb", "_resolved",
                 "_uses_filters", "digest", "rules")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        canonical = json.dumps([r.definition() for r in self.rules], sort_keys=True)
        self.digest = hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
        # An evaluation's digest: blake2b-128 of the rule-set digest, the trace id and each
        # rule's outcome and reason, joined by \x1f (fields by \x1e). The head is hashed once.
        self._digest_head = hashlib.blake2b(f"{self.digest}\x1f".encode(), digest_size=16)
        self._resolved: dict[tuple[_Verdict, ...], _Resolved] = {}
        # Indices into rules, best first: precedence, then position in the file breaks ties.
        self._by_precedence = sorted(
            range(len(self.rules)), key=lambda i: (self.rules[i].precedence, self.rules[i].position)
        )
        self._uses_filters = any(r.filters for r in self.rules)
        self._needs_fb = any(r.feedback for r in self.rules)
        self._name_tag = any(
            c.get("type") == "tag" and c.get("key") == TRACE_NAME_TAG
            for r in self.rules
            for f in r.filters
            for c in f.clauses
        )

    def tag_keys(self) -> frozenset[str]:
        return frozenset(r.tag_key for r in self.rules)

    def needs_assessments(self) -> bool:
        return self._needs_fb

    def evaluate(self, trace: TraceView, assessments: Sequence[AssessmentView] = ()) -> Evaluation:
        trace_id = trace.trace_id
        info = self._adapt(trace) if self._uses_filters else None
        valid = [a for a in assessments if a.valid and a.kind == "feedback"] if assessments else []
        verdicts = tuple([self._verdict(r, trace_id, info, valid, assessments) for r in self.rules])
        resolved = self._resolved.get(verdicts)
        if resolved is None:
            resolved = self._resolve(verdicts)
        outcomes, tags, tail = resolved
        hasher = self._digest_head.copy()
        hasher.update(trace_id.encode())
        hasher.update(tail)
        return Evaluation(trace_id, outcomes, tags, hasher.hexdigest())

    def _resolve(self, verdicts: tuple[_Verdict, ...]) -> _Resolved:
        """Outcomes, tags and the digest's tail of the rules' ``verdicts``: a function of the
        verdicts alone, so it is kept for the next trace with the same ones (most traces share
        a few; a reason naming an assessment is unique, hence the bound)."""
        winners: dict[str, Rule] = {}
        for i in self._by_precedence:
            if verdicts[i][0] == "tagged":
                winners.setdefault(self.rules[i].tag_key, self.rules[i])
        outcomes = []
        for rule, (outcome, reason) in zip(self.rules, verdicts, strict=True):
            winner = winners.get(rule.tag_key)
            if outcome == "tagged" and winner is not rule:
                assert winner is not None
                outcome = "superseded"
                reason = f"superseded by {winner.name} (precedence {winner.precedence}); {reason}"
            outcomes.append(RuleOutcome(rule.name, outcome, reason))
        tags = MappingProxyType({key: (rule.tag_value, rule.name) for key, rule in winners.items()})
        tail = "".join(f"\x1f{o.rule}\x1e{o.outcome}\x1e{o.reason}" for o in outcomes).encode()
        resolved = (tuple(outcomes), tags, tail)
        if len(self._resolved) >= _RESOLVED_KEPT:
            self._resolved.clear()
        self._resolved[verdicts] = resolved
        return resolved

    def _adapt(self, trace: TraceView) -> TraceInfoView:
        tags = trace.tags
        if self._name_tag and trace.name is not None and TRACE_NAME_TAG not in tags:
            tags = {**tags, TRACE_NAME_TAG: trace.name}
        return TraceInfoView(trace, tags)

    @staticmethod
    def _verdict(
        rule: Rule,
        trace_id: str,
        info: TraceInfoView | None,
        valid: Sequence[AssessmentView],
        every: Sequence[AssessmentView],
    ) -> _Verdict:
        """The rule alone: tagged (unless outranked), sampled_out, no_match or not_applicable."""
        reason = None
        if rule.filters:
            assert info is not None  # evaluate adapts the trace when any rule has filters
            reason = rule.match_filters(info)
            if reason is None:
                return "no_match", rule.no_match_reason
        if rule.feedback:
            if not every:  # no assessment at all (most traces): what _judge_feedback says
                return "not_applicable", rule.no_feedback_reason
            matched, why = _judge_feedback(rule, valid, every)
            if matched is None:
                return "not_applicable", why
            if not matched:
                return "no_match", why
            reason = why if reason is None else f"{reason}; {why}"
        assert reason is not None
        if not rule.sampled_in(trace_id):
            return "sampled_out", f"sampled out (rate {rule.sample_rate:g}); {reason}"
        return "tagged", reason


# --- Loading: everything below runs once, at start-up. ---

_RULE_KEYS = frozenset(
    {"name", "filter", "filters", "feedback", "tag", "precedence", "sample_rate"}
)


def load_rules(path: str | Path | None) -> RuleSet:
    """The rules of the YAML file at ``path``; None gives the documented defaults."""
    if path is None:
        return parse_rules(DEFAULT_RULES_YAML, "<built-in defaults>")
    data = load_yaml_file(path, f"rules file {path}", Yaml12Loader)
    return _parse_document(data, f"rules file {path}")


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse and validate a rules document; raise ConfigError naming the rule and the problem."""
    where = f"rules file {source}"
    return _parse_document(load_yaml_text(text, where, Yaml12Loader), where)


def _parse_document(data: Any, where: str) -> RuleSet:
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"{where}: expected a mapping with a 'rules:' list")
    if extra := sorted(set(data) - {"rules"}, key=str):
        raise ConfigError(f"{where}: unknown top-level key(s) {brief(extra)}; only 'rules' is "
                          "allowed")
    prepare(_filter_texts(data["rules"]), where)  # MLflow parses them all at once
    rules = [_parse_rule(raw, pos, where) for pos, raw in enumerate(data["rules"], start=1)]
    seen: dict[str, int] = {}
    for rule in rules:
        if rule.name in seen:
            raise ConfigError(
                f"{where}, rule #{rule.position} {brief(rule.name)}: duplicate name "
                f"(rule #{seen[rule.name]} has it too)"
            )
        seen[rule.name] = rule.position
    return RuleSet(rules)


def _parse_rule(raw: Any, position: int, where: str) -> Rule:
    where = f"{where}, rule #{position}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    where = f"{where} {brief(name)}"
    if extra := sorted(set(raw) - _RULE_KEYS, key=str):
        raise ConfigError(f"{where}: unknown key(s) {brief(extra)}; allowed: "
                          f"{sorted(_RULE_KEYS)}")
    filters = _parse_filters(raw, where)
    feedback = _parse_feedback(raw.get("feedback"), where)
    if not filters and not feedback:
        raise ConfigError(f"{where}: needs 'filter', 'filters' or 'feedback'")
    tag_key, tag_value = _parse_tag(raw.get("tag"), name, where)
    precedence = raw.get("precedence", position)
    if isinstance(precedence, bool) or not isinstance(precedence, int):
        raise ConfigError(f"{where}: 'precedence' must be an integer, got {brief(precedence)}")
    rate = raw.get("sample_rate", 1.0)
    if not _is_number(rate) or not 0 < rate <= 1:
        raise ConfigError(f"{where}: 'sample_rate' must be a number in (0, 1], got {brief(rate)}")
    return Rule(name, filters, feedback, tag_key, tag_value, precedence, float(rate), position)


def _parse_tag(raw: Any, rule_name: str, where: str) -> tuple[str, str]:
    if raw is None:
        return DEFAULT_TAG_KEY, rule_name
    if not isinstance(raw, dict) or set(raw) - {"key", "value"}:
        raise ConfigError(f"{where}: 'tag' must be a mapping with 'key' and/or 'value'")
    key, value = raw.get("key", DEFAULT_TAG_KEY), raw.get("value", rule_name)
    for label, text in (("key", key), ("value", value)):
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: tag {label} must be a non-empty string, got "
                              f"{brief(text)}")
    return key, value


def _filter_texts(raws: list[Any]) -> Iterator[Any]:
    """Whatever the rules give as filter texts (``prepare`` ignores what is not a string)."""
    for raw in raws:
        if isinstance(raw, dict):
            yield raw.get("filter")
            if isinstance(raw.get("filters"), list):
                yield from raw["filters"]


def _parse_filters(raw: dict[str, Any], where: str) -> tuple[Filter, ...]:
    if "filter" in raw and "filters" in raw:
        raise ConfigError(f"{where}: give 'filter' or 'filters', not both")
    texts = raw.get("filters", [raw["filter"]] if "filter" in raw else [])
    if not isinstance(texts, list) or ("filters" in raw and not texts):
        raise ConfigError(f"{where}: 'filters' must be a non-empty list of filter strings")
    return tuple(parse_filter(text, where) for text in texts)


def _parse_feedback(raw: Any, where: str) -> tuple[FeedbackCondition, ...]:
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ConfigError(f"{where}: 'feedback' must be a mapping or a non-empty list of them")
    return tuple(_parse_condition(item, f"{where}: feedback") for item in items)


def _parse_condition(raw: Any, where: str) -> FeedbackCondition:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping like {{name: quality, below: 0.5}}")
    if extra := sorted(set(raw) - _TESTS - {"name", "any_name"}, key=str):
        raise ConfigError(f"{where}: unknown key(s) {brief(extra)}; tests are {sorted(_TESTS)}")
    name, any_name = raw.get("name"), raw.get("any_name", False)
    if any_name is not True and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{where}: needs 'name' (a string) or 'any_name: true'")
    if any_name is True and name is not None:
        raise ConfigError(f"{where}: give 'name' or 'any_name: true', not both")
    tests = [(test, _test_operand(test, raw[test], where)) for test in sorted(raw.keys() & _TESTS)]
    if not tests:
        raise ConfigError(f"{where}: needs a test, one of {sorted(_TESTS)}")
    text = " and ".join(_test_text(test, operand) for test, operand in tests)
    return FeedbackCondition(None if any_name is True else name, tuple(tests), text)


def _test_operand(test: str, operand: Any, where: str) -> Any:
    if test in _NUMERIC_TESTS:
        if not _is_number(operand):
            raise ConfigError(f"{where}: {test!r} needs a number, got {brief(operand)}")
        return operand
    values = operand if test == "in" else [operand]
    if test == "in" and (not isinstance(operand, list) or not operand):
        raise ConfigError(f"{where}: 'in' needs a non-empty list, got {brief(operand)}")
    for value in values:
        if not isinstance(value, _Scalar):
            raise ConfigError(f"{where}: {test!r} takes strings, numbers or booleans: "
                              f"{brief(value)}")
    folded = tuple(v.casefold() if isinstance(v, str) else v for v in values)
    return folded if test == "in" else folded[0]


def _test_text(test: str, operand: Any) -> str:
    if test in _NUMERIC_TESTS:
        return f"{_NUMERIC_TESTS[test][0]} {operand!r}"
    return f"in {list(operand)!r}" if test == "in" else f"= {operand!r}"
