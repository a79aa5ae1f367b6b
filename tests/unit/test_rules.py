"""The rules engine: MLflow filter operators matched locally, feedback rules, precedence, sampling,
digests, the defaults, and rules files that must fail at load with the rule and the problem named.

It also pins the private ``SearchTraceUtils._does_trace_match_clause`` whose answers
``worker.rules.predicates`` reproduces (tests/unit/test_filters_differential.py compares the two).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from mlflow.utils.search_utils import SearchTraceUtils

from consumers.errors import ConfigError
from worker.rules.engine import (
    DEFAULT_RULES_YAML,
    AssessmentView,
    Evaluation,
    RuleOutcome,
    RuleSet,
    TraceView,
    load_rules,
    parse_rules,
)

T0_MS = 1_700_000_000_000


def trace(**fields: Any) -> TraceView:
    base: dict[str, Any] = {
        "trace_id": "tr-1",
        "experiment_id": "1",
        "name": "my_app",
        "status": "OK",
        "timestamp_ms": T0_MS,
        "execution_time_ms": 100,
        "tags": {},
        "metadata": {},
    }
    base.update(fields)
    return TraceView(**base)


def feedback(
    value: Any,
    name: str = "quality",
    *,
    aid: str = "a-1",
    valid: bool = True,
    at_ms: int = 1,
    kind: str = "feedback",
) -> AssessmentView:
    return AssessmentView(aid, name, kind, value, valid, at_ms)


def rules(*specs: dict[str, Any]) -> RuleSet:
    """A rule set from plain dicts (JSON is valid YAML)."""
    return parse_rules(json.dumps({"rules": list(specs)}))


def one_filter(text: str) -> RuleSet:
    return rules({"name": "r", "filter": text})


def fires(text: str, view: TraceView) -> bool:
    return one_filter(text).evaluate(view).outcomes[0].outcome == "tagged"


def outcome(ev: Evaluation, rule: str) -> RuleOutcome:
    return next(o for o in ev.outcomes if o.rule == rule)


# --- Filters: every operator MLflow evaluates locally ------------------------------------------

SLOW = trace(execution_time_ms=6000)


@pytest.mark.parametrize(
    ("text", "view", "expected"),
    [
        ("attributes.status = 'ERROR'", trace(status="ERROR"), True),
        ("attributes.status = 'ERROR'", trace(status="OK"), False),
        ("attributes.status != 'OK'", trace(status="ERROR"), True),
        ("attributes.status != 'OK'", trace(status="OK"), False),
        ("attributes.execution_time_ms > 5000", SLOW, True),
        ("attributes.execution_time_ms > 6000", SLOW, False),
        ("attributes.execution_time_ms >= 6000", SLOW, True),
        ("attributes.execution_time_ms < 6000", SLOW, False),
        ("attributes.execution_time_ms <= 6000", SLOW, True),
        ("attributes.execution_time_ms = 6000", SLOW, True),
        ("attributes.execution_time_ms != 6000", SLOW, False),
        ("attributes.execution_time_ms > 5999.5", SLOW, True),
        ("execution_time_ms > 5000", SLOW, True),  # no prefix: an attribute
        ("attributes.execution_time > 5000", SLOW, True),  # MLflow's alias
        (f"attributes.timestamp_ms >= {T0_MS}", trace(), True),
        (f"timestamp_ms < {T0_MS}", trace(), False),
        (f"attributes.timestamp > {T0_MS - 1}", trace(), True),
        ("tags.environment = 'production'", trace(tags={"environment": "production"}), True),
        ("tags.environment = 'production'", trace(tags={"environment": "Production"}), False),
        ("tags.environment != 'production'", trace(tags={"environment": "staging"}), True),
        ("tags.environment LIKE 'prod%'", trace(tags={"environment": "production"}), True),
        ("tags.environment LIKE 'PROD%'", trace(tags={"environment": "production"}), False),
        ("tags.environment like 'pro_uction'", trace(tags={"environment": "production"}), True),
        ("tags.environment ILIKE 'PROD%'", trace(tags={"environment": "production"}), True),
        ("tags.environment ILIKE '%STAGE'", trace(tags={"environment": "production"}), False),
        ("tags.environment IS NULL", trace(tags={}), True),
        ("tags.environment IS NULL", trace(tags={"environment": ""}), False),
        ("tags.environment IS NOT NULL", trace(tags={"environment": ""}), True),
        ("tags.environment is not null", trace(tags={}), False),
        ("metadata.user IS NULL", trace(metadata={"user": "x"}), False),
        ("metadata.user IS NOT NULL", trace(metadata={"user": "x"}), True),
        ("metadata.user LIKE 'vip-%'", trace(metadata={"user": "vip-ann"}), True),
        ("metadata.user ILIKE 'VIP-%'", trace(metadata={"user": "vip-ann"}), True),
        ("metadata.user != 'bob'", trace(metadata={"user": "ann"}), True),
        ("attributes.status IN ('ERROR', 'IN_PROGRESS')", trace(status="ERROR"), True),
        ("attributes.status IN ('ERROR', 'IN_PROGRESS')", trace(status="OK"), False),
        ("attributes.status NOT IN ('OK')", trace(status="ERROR"), True),
        ("attributes.status LIKE 'ERR%'", trace(status="ERROR"), True),
        ("attributes.request_id = 'tr-1'", trace(), True),
        ("attributes.request_id LIKE 'tr-%'", trace(trace_id="tr-abc"), True),
        ("attributes.request_id ILIKE 'TR-%'", trace(trace_id="tr-abc"), True),
    ],
)
def test_each_operator_matches_like_mlflow(text: str, view: TraceView, expected: bool) -> None:
    assert fires(text, view) is expected


def test_clauses_of_one_filter_are_and_ed() -> None:
    text = "attributes.status = 'ERROR' AND tags.environment = 'production'"
    assert fires(text, trace(status="ERROR", tags={"environment": "production"}))
    assert not fires(text, trace(status="ERROR", tags={"environment": "staging"}))
    assert not fires(text, trace(status="OK", tags={"environment": "production"}))
    assert fires(
        text.replace("AND", "and"), trace(status="ERROR", tags={"environment": "production"})
    )


def test_several_filters_are_or_ed_and_the_reason_names_the_one_that_matched() -> None:
    rs = rules(
        {
            "name": "either",
            "filters": ["attributes.status = 'ERROR'", "tags.environment = 'production'"],
        }
    )
    ev = rs.evaluate(trace(tags={"environment": "production"}))
    assert ev.outcomes[0] == RuleOutcome(
        "either", "tagged", "tags.environment = 'production' matched"
    )
    assert rs.evaluate(trace(status="ERROR")).outcomes[0].outcome == "tagged"
    missed = rs.evaluate(trace()).outcomes[0]
    assert (missed.outcome, missed.reason) == ("no_match", "none of 2 filters matched")


# --- Missing tags, quoted values, backticked keys, the trace name -----------------------------


@pytest.mark.parametrize(
    "text",
    [
        "tags.environment = 'production'",
        "tags.environment != 'production'",  # SQL semantics: a missing tag is not "!="
        "tags.environment LIKE '%'",
        "metadata.`mlflow.trace.user` = 'alice'",
        "metadata.`mlflow.trace.user` != 'alice'",
    ],
)
def test_a_missing_tag_or_metadata_key_never_matches_a_comparison(text: str) -> None:
    assert not fires(text, trace(tags={}, metadata={}))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("tags.note = 'a b c'", "a b c"),
        ('tags.note = "double quoted"', "double quoted"),
        ('tags.note = "it\'s"', "it's"),
        ("tags.note = 'say \"hi\"'", 'say "hi"'),
        ("tags.note = '100%'", "100%"),  # = is literal, only LIKE treats % as a wildcard
        ("tags.note = ''", ""),
        ("tags.note = 'AND'", "AND"),
    ],
)
def test_quoted_values(text: str, value: str) -> None:
    assert fires(text, trace(tags={"note": value}))
    assert not fires(text, trace(tags={"note": value + "x"}))


def test_percent_in_an_equality_is_not_a_wildcard() -> None:
    assert not fires("tags.note = '100%'", trace(tags={"note": "1000"}))


@pytest.mark.parametrize(
    ("text", "view"),
    [
        ("metadata.`mlflow.trace.user` = 'alice'", trace(metadata={"mlflow.trace.user": "alice"})),
        ("tags.`mlflow.traceName` = 'my_app'", trace(tags={"mlflow.traceName": "my_app"})),
        ("tags.mlflow.traceName = 'my_app'", trace(tags={"mlflow.traceName": "my_app"})),
        ("tags.`my key` = 'v'", trace(tags={"my key": "v"})),
        ("tags.\"a.b\" = 'v'", trace(tags={"a.b": "v"})),
        ("`tags`.`team` = 'x'", trace(tags={"team": "x"})),
    ],
)
def test_backticked_and_dotted_keys(text: str, view: TraceView) -> None:
    assert fires(text, view)
    assert not fires(text, view._replace(tags={}, metadata={}, name=None))


@pytest.mark.parametrize(
    "text",
    ["tags.`mlflow.traceName` = 'my_app'", "name = 'my_app'", "tags.name = 'my_app'"],
)
def test_the_trace_name_is_the_mlflow_trace_name_tag(text: str) -> None:
    # TraceView.name counts when the tag itself is absent; MLflow maps name / tags.name to it.
    assert fires(text, trace(name="my_app", tags={}))
    assert not fires(text, trace(name="other", tags={}))
    assert not fires(text, trace(name=None, tags={}))


# --- IN_PROGRESS traces ------------------------------------------------------------------------

RUNNING = trace(status="IN_PROGRESS", execution_time_ms=None)


@pytest.mark.parametrize(
    "text",
    [
        "attributes.execution_time_ms > 5000",
        "attributes.execution_time_ms < 5000",
        "attributes.execution_time_ms = 0",
        "attributes.execution_time_ms != 0",
        "attributes.status = 'ERROR'",
    ],
)
def test_an_in_progress_trace_matches_no_latency_filter_and_never_raises(text: str) -> None:
    assert not fires(text, RUNNING)


def test_an_in_progress_trace_can_be_matched_by_status() -> None:
    assert fires("attributes.status = 'IN_PROGRESS'", RUNNING)
    assert dict(load_rules(None).evaluate(RUNNING).tags) == {}


# --- Precedence --------------------------------------------------------------------------------


def test_the_lowest_precedence_number_wins_and_the_others_are_superseded() -> None:
    ev = load_rules(None).evaluate(
        trace(status="ERROR", execution_time_ms=9000), [feedback(0.1, aid="a-9")]
    )
    assert dict(ev.tags) == {"eval_candidate": ("error_case", "error_case")}
    assert [o.outcome for o in ev.outcomes] == ["tagged", "superseded", "superseded"]
    assert outcome(ev, "slow_response").reason == (
        "superseded by error_case (precedence 1); attributes.execution_time_ms > 5000 matched"
    )
    assert outcome(ev, "low_score").reason.startswith("superseded by error_case (precedence 1); ")


def test_precedence_not_file_order_decides_and_ties_go_to_the_earlier_rule() -> None:
    slow = {"name": "slow", "filter": "attributes.execution_time_ms > 5000", "precedence": 1}
    err = {"name": "err", "filter": "attributes.status = 'ERROR'", "precedence": 5}
    view = trace(status="ERROR", execution_time_ms=9000)
    assert dict(rules(err, slow).evaluate(view).tags) == {"eval_candidate": ("slow", "slow")}
    tie_a, tie_b = dict(err, precedence=2), dict(slow, precedence=2)
    assert rules(tie_a, tie_b).evaluate(view).tags["eval_candidate"] == ("err", "err")
    assert rules(tie_b, tie_a).evaluate(view).tags["eval_candidate"] == ("slow", "slow")


def test_precedence_is_per_tag_key() -> None:
    rs = rules(
        {"name": "err", "filter": "attributes.status = 'ERROR'"},
        {"name": "prod", "filter": "tags.env = 'prod'", "tag": {"key": "queue", "value": "p"}},
    )
    ev = rs.evaluate(trace(status="ERROR", tags={"env": "prod"}))
    assert dict(ev.tags) == {"eval_candidate": ("err", "err"), "queue": ("p", "prod")}
    assert [o.outcome for o in ev.outcomes] == ["tagged", "tagged"]
    assert rs.tag_keys() == frozenset({"eval_candidate", "queue"})


def test_a_sampled_out_rule_does_not_win_so_the_next_one_does() -> None:
    rs = rules(
        {"name": "err", "filter": "attributes.status = 'ERROR'", "sample_rate": 1e-9},
        {"name": "slow", "filter": "attributes.execution_time_ms > 5000"},
    )
    ev = rs.evaluate(trace(status="ERROR", execution_time_ms=9000))
    assert [o.outcome for o in ev.outcomes] == ["sampled_out", "tagged"]
    assert (
        outcome(ev, "err").reason == "sampled out (rate 1e-09); attributes.status = 'ERROR' matched"
    )
    assert dict(ev.tags) == {"eval_candidate": ("slow", "slow")}


def test_outcomes_come_one_per_rule_in_rule_set_order_and_tags_are_read_only() -> None:
    ev = load_rules(None).evaluate(trace())
    assert [o.rule for o in ev.outcomes] == ["error_case", "slow_response", "low_score"]
    with pytest.raises(TypeError):
        ev.tags["eval_candidate"] = ("x", "y")  # type: ignore[index]


# --- Sampling ----------------------------------------------------------------------------------


def test_sampling_is_deterministic_by_rule_name_and_trace_id() -> None:
    rs = rules({"name": "s", "filter": "attributes.status = 'OK'", "sample_rate": 0.5})
    ids = [f"tr-{i}" for i in range(200)]
    first = [rs.evaluate(trace(trace_id=i)).outcomes[0].outcome for i in ids]
    same = rules({"name": "s", "filter": "attributes.status = 'OK'", "sample_rate": 0.5})
    again = [same.evaluate(trace(trace_id=i)).outcomes[0].outcome for i in ids]
    assert first == again
    for i, got in zip(ids, first, strict=True):
        point = hashlib.blake2b(f"s\0{i}".encode(), digest_size=8).digest()
        expected = int.from_bytes(point, "big") / 2**64 < 0.5
        assert got == ("tagged" if expected else "sampled_out")


def test_the_sampled_fraction_is_close_to_the_rate_over_10k_ids() -> None:
    rs = rules(
        {"name": "a", "filter": "attributes.status = 'OK'", "sample_rate": 0.1},
        {
            "name": "b",
            "filter": "attributes.status = 'OK'",
            "sample_rate": 0.1,
            "tag": {"key": "k"},
        },
    )
    evs = [rs.evaluate(trace(trace_id=f"tr-{i:032x}")) for i in range(10_000)]
    kept_a = {e.trace_id for e in evs if e.outcomes[0].outcome == "tagged"}
    kept_b = {e.trace_id for e in evs if e.outcomes[1].outcome == "tagged"}
    assert 850 <= len(kept_a) <= 1150  # 10% +- 5 standard deviations
    assert 850 <= len(kept_b) <= 1150
    assert len(kept_a & kept_b) < 200  # the rule name is in the hash: independent samples


# --- Feedback rules ----------------------------------------------------------------------------


def low(**cond: Any) -> RuleSet:
    return rules({"name": "low", "feedback": {"name": "quality", **cond}})


@pytest.mark.parametrize(
    ("cond", "value", "expected"),
    [
        ({"below": 0.5}, 0.2, True),
        ({"below": 0.5}, 0.5, False),
        ({"below": 0.5}, 0, True),
        ({"below": 0.5}, False, False),  # a bool is not a number
        ({"below": 0.5}, "0.2", False),  # nor is a numeric string
        ({"below": 0.5}, None, False),
        ({"below": 0.5}, {"score": 0.1}, False),
        ({"below": 0.5}, float("nan"), False),
        ({"at_most": 0.5}, 0.5, True),
        ({"above": 0.5}, 0.5, False),
        ({"above": 0.5}, 0.9, True),
        ({"at_least": 3}, 3, True),
        ({"above": 0.2, "below": 0.5}, 0.3, True),  # tests of one condition are AND-ed
        ({"above": 0.2, "below": 0.5}, 0.1, False),
        ({"equals": "no"}, "no", True),
        ({"equals": "no"}, "NO", True),  # strings compare case-insensitively
        ({"equals": "no"}, "nope", False),
        ({"equals": False}, False, True),
        ({"equals": False}, 0, False),  # and False is not 0
        ({"equals": 1}, True, False),
        ({"in": ["no", False]}, False, True),
        ({"in": ["no", False]}, "No", True),
        ({"in": ["no", False]}, True, False),
        ({"in": ["no", False]}, "yes", False),
        ({"in": [1, 2]}, 2.0, True),
        ({"in": ["NO"]}, "no", True),
    ],
)
def test_feedback_tests(cond: dict[str, Any], value: Any, expected: bool) -> None:
    got = low(**cond).evaluate(trace(), [feedback(value)]).outcomes[0].outcome
    assert got == ("tagged" if expected else "no_match")


def test_a_match_names_the_assessment_and_the_value() -> None:
    ev = low(below=0.5).evaluate(trace(), [feedback(0.2, aid="a-123")])
    assert ev.outcomes[0].reason == "feedback quality=0.2 < 0.5 (assessment a-123)"
    assert dict(ev.tags) == {"eval_candidate": ("low", "low")}


def test_of_several_feedbacks_any_valid_match_fires_and_the_latest_match_is_named() -> None:
    fbs = [
        feedback(0.9, aid="a-1", at_ms=1),
        feedback(0.1, aid="a-2", at_ms=2),
        feedback(0.3, aid="a-3", at_ms=3),
    ]
    for order in (fbs, fbs[::-1]):
        got = low(below=0.5).evaluate(trace(), order).outcomes[0]
        assert got == RuleOutcome(
            "low", "tagged", "feedback quality=0.3 < 0.5 (assessment a-3; 1 more matched)"
        )


def test_an_assessment_matching_two_conditions_counts_once() -> None:
    rs = rules(
        {"name": "r", "feedback": [{"any_name": True, "below": 1}, {"any_name": True, "above": 0}]}
    )
    assert rs.evaluate(trace(), [feedback(0.5)]).outcomes[0].reason == (
        "feedback quality=0.5 < 1 (assessment a-1)"
    )


def test_invalid_feedback_and_expectations_never_count() -> None:
    rs = low(below=0.5)
    ignored = [feedback(0.1, valid=False), feedback(0.1, kind="expectation", aid="e-1")]
    got = rs.evaluate(trace(), ignored).outcomes[0]
    assert got == RuleOutcome(
        "low", "not_applicable", "no valid feedback 'quality'; 1 invalid (overridden) ignored"
    )
    assert rs.evaluate(trace()).outcomes[0].reason == "no valid feedback 'quality'"


def test_feedback_of_another_name_is_not_applicable() -> None:
    got = low(below=0.5).evaluate(trace(), [feedback(0.1, name="helpful")]).outcomes[0]
    assert got.outcome == "not_applicable"


def test_a_passing_override_revisits_the_decision_and_says_why() -> None:
    rs = load_rules(None)
    first = feedback(0.2, aid="a-1", at_ms=10)
    before = rs.evaluate(trace(), [first])
    assert dict(before.tags) == {"eval_candidate": ("low_score", "low_score")}
    # MLflow marks the overridden assessment invalid and logs the new one.
    after = rs.evaluate(trace(), [first._replace(valid=False), feedback(0.9, aid="a-2", at_ms=20)])
    assert dict(after.tags) == {}
    assert outcome(after, "low_score") == RuleOutcome(
        "low_score",
        "no_match",
        "valid feedback did not match: value in [False, 'no'] or value < 0.5 "
        "(latest quality=0.9, assessment a-2); 1 invalid (overridden) ignored",
    )
    assert after.digest != before.digest


def test_the_default_low_score_rule_takes_any_feedback_name() -> None:
    rs = load_rules(None)
    for value in (False, "no", "No", 0.49, 0):
        ev = rs.evaluate(trace(), [feedback(value, name="helpful")])
        assert outcome(ev, "low_score").outcome == "tagged", value
    for passing in (True, "yes", 0.5, 1, "0.1", None, [0.1]):
        ev = rs.evaluate(trace(), [feedback(passing, name="helpful")])
        assert outcome(ev, "low_score").outcome == "no_match", passing


def test_a_rule_with_a_filter_and_feedback_fires_when_both_hold() -> None:
    rs = rules(
        {
            "name": "prod_low",
            "filter": "tags.env = 'prod'",
            "feedback": [{"name": "quality", "below": 0.5}, {"name": "helpful", "in": ["no"]}],
        }
    )
    prod = trace(tags={"env": "prod"})
    assert rs.evaluate(prod, [feedback("no", name="helpful")]).outcomes[0] == RuleOutcome(
        "prod_low",
        "tagged",
        "tags.env = 'prod' matched; feedback helpful='no' in ['no'] (assessment a-1)",
    )
    assert rs.evaluate(prod, [feedback(0.9)]).outcomes[0].outcome == "no_match"
    assert rs.evaluate(prod).outcomes[0].outcome == "not_applicable"
    staging = rs.evaluate(trace(tags={"env": "dev"}), [feedback(0.1)]).outcomes[0]
    assert (staging.outcome, staging.reason) == ("no_match", "tags.env = 'prod' did not match")


def test_unquoted_no_in_yaml_stays_the_string_no() -> None:
    rs = parse_rules("rules:\n  - name: n\n    feedback: {name: helpful, equals: no}\n")
    assert rs.evaluate(trace(), [feedback("no", name="helpful")]).outcomes[0].outcome == "tagged"
    assert rs.evaluate(trace(), [feedback(False, name="helpful")]).outcomes[0].outcome == "no_match"


def test_needs_assessments_only_when_a_rule_looks_at_feedback() -> None:
    assert load_rules(None).needs_assessments()
    assert not one_filter("attributes.status = 'ERROR'").needs_assessments()


# --- Digests -----------------------------------------------------------------------------------


def test_the_rule_set_digest_is_stable_and_tracks_definitions_only() -> None:
    assert load_rules(None).digest == parse_rules(DEFAULT_RULES_YAML).digest
    assert load_rules(None).digest == "7e93d7121455668ac63883bb502fc6e4"  # stable across runs
    commented = "# a comment\n" + DEFAULT_RULES_YAML.replace("precedence: 1", "precedence:   1")
    assert parse_rules(commented).digest == load_rules(None).digest
    changed = DEFAULT_RULES_YAML.replace("> 5000", "> 4000")
    assert parse_rules(changed).digest != load_rules(None).digest


def test_equal_inputs_give_equal_evaluation_digests() -> None:
    rs = load_rules(None)
    fbs = [feedback(0.2, aid="a-1", at_ms=1), feedback(0.9, aid="a-2", at_ms=2, name="x")]
    one = rs.evaluate(trace(), fbs)
    assert rs.evaluate(trace(), fbs[::-1]).digest == one.digest
    assert load_rules(None).evaluate(trace(), list(fbs)) == one
    assert rs.evaluate(trace(trace_id="tr-2"), fbs).digest != one.digest
    assert rs.evaluate(trace(), [fbs[1]]).digest != one.digest


def test_an_evaluation_digest_is_the_documented_hash_and_remembered_verdicts_change_nothing(
) -> None:
    """The digest is blake2b-128 of the rule-set digest, the trace id and each outcome joined by
    \\x1f (fields by \\x1e), as stored in decision logs written before outcomes were remembered;
    a rule set that has seen thousands of traces (its remembered verdicts cleared on the way)
    answers as a fresh one, feedback reasons naming unique assessments included."""
    rs = load_rules(None)
    views = [trace(trace_id=f"tr-{i}", status="ERROR" if i % 3 == 0 else "OK",
                   execution_time_ms=9000 if i % 5 == 0 else 10) for i in range(2400)]
    fbs = [[feedback(i % 7 / 10, aid=f"a-{i}")] if i % 2 else [] for i in range(2400)]
    for view, fb in zip(views, fbs, strict=True):
        ev = rs.evaluate(view, fb)
        parts = [rs.digest, view.trace_id, *(f"{o.rule}\x1e{o.outcome}\x1e{o.reason}"
                                              for o in ev.outcomes)]
        assert ev.digest == hashlib.blake2b("\x1f".join(parts).encode(),
                                            digest_size=16).hexdigest()
        assert ev == load_rules(None).evaluate(view, fb)


# --- The defaults ------------------------------------------------------------------------------


def test_the_documented_defaults() -> None:
    rs = load_rules(None)
    shape = [(r.name, r.precedence, r.tag_key, r.tag_value, r.sample_rate) for r in rs.rules]
    assert shape == [
        ("error_case", 1, "eval_candidate", "error_case", 1.0),
        ("slow_response", 2, "eval_candidate", "slow_response", 1.0),
        ("low_score", 3, "eval_candidate", "low_score", 1.0),
    ]
    assert rs.evaluate(trace(status="ERROR")).tags["eval_candidate"][0] == "error_case"
    assert rs.evaluate(trace(execution_time_ms=5001)).tags["eval_candidate"][0] == "slow_response"
    assert dict(rs.evaluate(trace(execution_time_ms=5000)).tags) == {}
    assert rs.evaluate(trace(), [feedback(False)]).tags["eval_candidate"][0] == "low_score"


def test_a_rules_file_is_read_from_its_path(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: prod\n    filter: \"tags.env = 'prod'\"\n")
    assert [r.name for r in load_rules(path).rules] == ["prod"]
    with pytest.raises(ConfigError, match=r"rules file .*missing\.yaml: cannot read it"):
        load_rules(tmp_path / "missing.yaml")


def test_defaults_apply_when_the_rule_omits_tag_and_precedence() -> None:
    rs = rules(
        {"name": "a", "filter": "attributes.status = 'OK'"},
        {"name": "b", "feedback": {"any_name": True, "below": 1}},
    )
    assert [(r.tag_key, r.tag_value, r.precedence) for r in rs.rules] == [
        ("eval_candidate", "a", 1),
        ("eval_candidate", "b", 2),
    ]


# --- Invalid rules files -----------------------------------------------------------------------


def bad_filter(text: str) -> str:
    return json.dumps(
        {"rules": [{"name": "ok", "filter": "tags.a = 'b'"}, {"name": "bad", "filter": text}]}
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("attributes.status = 'ERROR' OR tags.a = 'b'", "'OR' (filters are AND-only"),
        ("(attributes.status = 'ERROR')", "without parentheses"),
        ("tags.a RLIKE 'x.*'", "operator RLIKE is not supported on tags"),
        ("metadata.a RLIKE 'x'", "operator RLIKE is not supported on metadata"),
        ("span.name = 'llm'", "span.* and trace.text filters need span data"),
        ("trace.text LIKE '%refund%'", "span.* and trace.text filters need span data"),
        ("feedback.quality < 0.5", "use the rule's feedback: condition"),
        ("expectation.answer = 'x'", "expectation.* filters need the server"),
        ("attributes.end_time_ms > 5", "end_time_ms is not known locally"),
        ("attributes.execution_time_ms > '5000'", "write 5000 without quotes"),
        ("attributes.timestamp_ms = '1'", "compares with a number"),
        ("tags.a > '5'", "operator > is not supported on tags"),
        ("tags.a IN ('x', 'y')", "operator IN is not supported on tags"),
        ("attributes.status == 'OK'", "operator == is not supported on attributes.status"),
        ("attributes.status IS NULL", "operator IS NULL is not supported on attributes.status"),
        ("attributes.status = 'error'", "(case-sensitive), got 'error'"),
        ("attributes.status IN ('OK', 'FAILED')", "got ('OK', 'FAILED')"),
        ("attributes.client_request_id = 'x'", "attributes.client_request_id is not available"),
        ("attributes.foo > 1", "Invalid attribute key 'foo'"),
        ("attributes.status = ERROR", "not quoted"),
        ("tags.a = 'it''s'", "does not unescape ''"),
        ("tags.a = 'x'; tags.b = 'y'", "multiple expression"),
        ("issue.id = 'x'", "issue.* filters need the server"),
        ("tags.`text` = 'x'", "span.* and trace.text"),  # MLflow maps the key 'text' to spans
    ],
)
def test_an_unusable_filter_fails_at_load_naming_rule_filter_and_problem(
    text: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(bad_filter(text), "rules.yaml")
    message = str(info.value)
    assert message.startswith(f"rules file rules.yaml, rule #2 'bad': filter {text!r}: "), message
    assert problem in message


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"name": "x"}, "rule #1 'x': needs 'filter', 'filters' or 'feedback'"),
        ({"filter": "tags.a = 'b'"}, "rule #1: 'name' must be a non-empty string"),
        ({"name": "x", "filtr": "tags.a = 'b'"}, "rule #1 'x': unknown key(s) ['filtr']"),
        ({"name": "x", "filter": ""}, "rule #1 'x': a filter must be a non-empty string"),
        ({"name": "x", "filter": 5}, "rule #1 'x': a filter must be a non-empty string, got 5"),
        ({"name": "x", "filters": []}, "rule #1 'x': 'filters' must be a non-empty list"),
        ({"name": "x", "filter": "tags.a = 'b'", "filters": ["tags.a = 'b'"]}, "not both"),
        ({"name": "x", "filter": "tags.a = 'b'", "sample_rate": 0}, "'sample_rate' must be"),
        ({"name": "x", "filter": "tags.a = 'b'", "sample_rate": 1.5}, "in (0, 1], got 1.5"),
        ({"name": "x", "filter": "tags.a = 'b'", "sample_rate": True}, "got True"),
        ({"name": "x", "filter": "tags.a = 'b'", "precedence": "high"}, "'precedence' must be"),
        ({"name": "x", "filter": "tags.a = 'b'", "tag": "low"}, "'tag' must be a mapping"),
        ({"name": "x", "filter": "tags.a = 'b'", "tag": {"key": ""}}, "tag key must be"),
        (
            {"name": "x", "feedback": {"name": "q", "belw": 0.5}},
            "feedback: unknown key(s) ['belw']",
        ),
        ({"name": "x", "feedback": {"below": 0.5}}, "needs 'name' (a string) or 'any_name: true'"),
        ({"name": "x", "feedback": {"name": "q", "any_name": True, "below": 1}}, "not both"),
        ({"name": "x", "feedback": {"name": "q"}}, "feedback: needs a test"),
        ({"name": "x", "feedback": {"name": "q", "below": "0.5"}}, "'below' needs a number"),
        ({"name": "x", "feedback": {"name": "q", "below": True}}, "'below' needs a number"),
        ({"name": "x", "feedback": {"name": "q", "in": []}}, "'in' needs a non-empty list"),
        ({"name": "x", "feedback": {"name": "q", "in": "no"}}, "'in' needs a non-empty list"),
        ({"name": "x", "feedback": {"name": "q", "equals": [1]}}, "takes strings, numbers"),
        ({"name": "x", "feedback": []}, "'feedback' must be a mapping or a non-empty list"),
        ({"name": "x", "feedback": ["q"]}, "feedback: expected a mapping"),
    ],
)
def test_an_invalid_rule_fails_at_load_naming_the_rule_and_the_problem(
    rule: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        rules(rule)
    assert "rules file <rules>, " in str(info.value)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules: [\n", "rules file r.yaml: line 2: invalid YAML"),
        ("", "expected a mapping with a 'rules:' list"),
        ("rules: {name: x}", "expected a mapping with a 'rules:' list"),
        ("rules: []\nrule: []\n", "unknown top-level key(s) ['rule']"),
        ("rules: [42]", "rule #1: expected a mapping, got int"),
        (
            "rules:\n  - {name: a, filter: \"tags.a = 'b'\"}\n"
            "  - {name: a, filter: \"tags.a = 'c'\"}",
            "rule #2 'a': duplicate name (rule #1 has it too)",
        ),
    ],
)
def test_an_invalid_rules_document_fails_at_load(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, "r.yaml")
    assert problem in str(info.value)


def test_an_empty_rule_list_is_allowed_and_tags_nothing() -> None:
    rs = parse_rules("rules: []\n")
    ev = rs.evaluate(trace(status="ERROR"))
    assert (ev.outcomes, dict(ev.tags), rs.tag_keys(), rs.needs_assessments()) == (
        (),
        {},
        frozenset(),
        False,
    )


# --- The private MLflow matcher the engine relies on (mlflow is pinned) ------------------------


def test_mlflow_parses_the_issue_examples_into_the_clauses_the_engine_expects() -> None:
    parse: Callable[[str], list[dict[str, Any]]] = (
        SearchTraceUtils.parse_search_filter_for_search_traces
    )
    match: Callable[[object, dict[str, Any]], bool] = SearchTraceUtils._does_trace_match_clause
    assert parse("attributes.execution_time_ms > 5000") == [
        {"type": "attribute", "key": "execution_time_ms", "comparator": ">", "value": 5000}
    ]
    assert parse("metadata.`mlflow.trace.user` = 'alice'") == [
        {
            "type": "request_metadata",
            "key": "mlflow.trace.user",
            "comparator": "=",
            "value": "alice",
        }
    ]
    assert parse("tags.`mlflow.traceName` = 'my_app'")[0]["key"] == "mlflow.traceName"
    # The local matcher reads tags, request_metadata and attributes by name, and treats a
    # missing value (a missing tag, an IN_PROGRESS latency) as "no match", without raising.
    info = SimpleNamespace(tags={}, request_metadata={"u": "a"}, execution_time_ms=None)
    assert match(info, parse("attributes.execution_time_ms > 5")[0]) is False
    assert match(info, parse("tags.environment != 'x'")[0]) is False
    assert match(info, parse("metadata.u = 'a'")[0]) is True


def test_rules_files_use_yaml_1_2_scalars_without_changing_pyyaml_for_others() -> None:
    rs = parse_rules("rules:\n  - {name: s, filter: \"tags.a = 'b'\", sample_rate: 1e-3}\n")
    assert rs.rules[0].sample_rate == 0.001
    assert yaml.safe_load("a: no\nb: 1e-3\n") == {"a": False, "b": "1e-3"}
