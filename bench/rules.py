"""Rules benchmark: rule evaluations/s of ``RuleSet.evaluate`` against the 100k/s target.

Builds N synthetic TraceViews (default 100k: OK / ERROR / IN_PROGRESS, log-normal latency, varied
tags and metadata, about a fifth with one or two feedbacks, some overridden) and a 10-rule set
mixing attribute, tag, metadata and backticked-key filters, OR lists, LIKE / ILIKE / IS NULL, one
sampled rule and one feedback rule. It times ``evaluate`` over all N traces (best of K runs) and
prints traces/s and rule evaluations/s (traces/s x rules). The rule set is parsed once, before the
clock starts; its parse time is printed too. Timings are printed, never asserted.

In the same run it times the old path: the same rules with every filter matched by MLflow's own
local matcher (``SearchTraceUtils._does_trace_match_clause``, clause by clause, per trace) instead
of the compiled predicates, runs of the two interleaved, and prints both rates and their ratio,
then the same for the filters alone (every filter against every trace, nothing else). It first
checks that both paths give the same outcomes on the first 10k traces. ``--no-mlflow`` skips
the comparison; then MLflow is never imported, and the parse time includes the helper process.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from worker.rules.engine import AssessmentView, RuleSet, TraceView, parse_rules
from worker.rules.filters import TraceInfoView

TARGET_RULE_EVALS_PER_S = 100_000

BENCH_RULES_YAML = """\
rules:
  - name: error_case
    filter: "attributes.status = 'ERROR'"
    precedence: 1
  - name: slow_response
    filter: "attributes.execution_time_ms > 5000"
    precedence: 2
  - name: low_score
    feedback:
      - {any_name: true, in: [false, "no"]}
      - {any_name: true, below: 0.5}
    precedence: 3
  - name: prod_incident
    filters:
      - "tags.environment = 'production' AND attributes.status = 'ERROR'"
      - "metadata.`mlflow.trace.user` = 'alice' AND attributes.execution_time_ms > 2000"
    tag: {key: review_queue, value: incident}
  - name: checkout_sample
    filter: "tags.`mlflow.traceName` = 'checkout'"
    tag: {key: review_queue, value: checkout}
    sample_rate: 0.1
  - name: vip_user
    filter: "metadata.`mlflow.trace.user` LIKE 'vip-%'"
    tag: {key: audience, value: vip}
  - name: staging_slow
    filter: "tags.environment = 'staging' AND attributes.execution_time_ms >= 3000"
    tag: {key: audience, value: staging}
  - name: no_environment
    filter: "tags.environment IS NULL"
    tag: {key: hygiene, value: missing_environment}
  - name: search_app
    filter: "tags.`mlflow.traceName` ILIKE '%search%' AND attributes.timestamp_ms >= 1700000000000"
    tag: {key: app, value: search}
  - name: stuck
    filter: "attributes.status = 'IN_PROGRESS' AND attributes.timestamp_ms < 1700000600000"
    tag: {key: hygiene, value: stuck}
"""

APPS = ("checkout", "search", "semantic_search", "chat", "summarize")
ENVIRONMENTS = ("production", "production", "staging", "dev", None)
USERS = ("alice", "bob", "carol", "vip-dan", "vip-erin", None)


def make_trace(rng: random.Random, i: int) -> TraceView:
    status = rng.choices(("OK", "ERROR", "IN_PROGRESS"), weights=(85, 10, 5))[0]
    latency = None if status == "IN_PROGRESS" else int(rng.lognormvariate(7.0, 1.0))
    name = rng.choice(APPS)
    tags = {"mlflow.traceName": name, "team": f"team-{i % 7}"}
    if env := rng.choice(ENVIRONMENTS):
        tags["environment"] = env
    metadata = {"mlflow.trace.sizeBytes": str(rng.randint(1_000, 90_000))}
    if user := rng.choice(USERS):
        metadata["mlflow.trace.user"] = user
    return TraceView(
        trace_id=f"tr-{i:032x}",
        experiment_id=str(i % 3),
        name=name,
        status=status,
        timestamp_ms=1_700_000_000_000 + i * 10,
        execution_time_ms=latency,
        tags=tags,
        metadata=metadata,
    )


def make_assessments(rng: random.Random, trace_id: str) -> tuple[AssessmentView, ...]:
    if rng.random() >= 0.2:
        return ()
    quality = AssessmentView(f"a-{trace_id}-q", "quality", "feedback", rng.random(), True, 1)
    helpful = rng.choice(("yes", "no", True, False))
    views = [quality, AssessmentView(f"a-{trace_id}-h", "helpful", "feedback", helpful, True, 2)]
    if rng.random() < 0.25:  # overridden by a later, passing score
        views[0] = quality._replace(valid=False)
        views.append(AssessmentView(f"a-{trace_id}-q2", "quality", "feedback", 0.9, True, 3))
    views.append(AssessmentView(f"a-{trace_id}-e", "expected", "expectation", "x", True, 1))
    return tuple(views[: rng.randint(1, len(views))])


def run_once(rules: RuleSet, work: list[tuple[TraceView, tuple[AssessmentView, ...]]]) -> float:
    evaluate = rules.evaluate
    start = time.perf_counter()
    for trace, assessments in work:
        evaluate(trace, assessments)
    return time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/rules.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--traces", type=int, default=100_000, metavar="N", help="default: 100000")
    p.add_argument("--runs", type=int, default=3, metavar="K", help="keep the best (default: 3)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the synthetic traces")
    p.add_argument("--no-mlflow", action="store_true",
                   help="skip the comparison with MLflow's matcher (and never import MLflow)")
    args = p.parse_args(argv)
    if min(args.traces, args.runs) < 1:
        p.error("--traces and --runs must be positive")
    return args


def with_mlflow_matcher(rules: RuleSet) -> RuleSet:
    """The same rules, every filter matched by MLflow's own matcher: the path before compiling."""
    from mlflow.utils.search_utils import SearchTraceUtils

    match: Callable[[object, Mapping[str, Any]], bool] = SearchTraceUtils._does_trace_match_clause

    def old(flt: Any) -> Any:
        clauses = flt.clauses
        return dataclasses.replace(flt, test=lambda info: all(match(info, c) for c in clauses))

    return RuleSet([dataclasses.replace(r, filters=tuple(old(f) for f in r.filters))
                    for r in rules.rules])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_mlflow:
        import mlflow.utils.search_utils  # noqa: F401 - before parsing, so that it is in-process
    start = time.perf_counter()
    rules = parse_rules(BENCH_RULES_YAML, "<bench>")
    parse_ms = (time.perf_counter() - start) * 1000
    rng = random.Random(args.seed)
    traces = [make_trace(rng, i) for i in range(args.traces)]
    work = [(t, make_assessments(rng, t.trace_id)) for t in traces]
    with_feedback = sum(1 for _, a in work if a)
    where = "in-process" if not args.no_mlflow else "MLflow in a helper process"
    print(f"rules: {len(rules.rules)} (parsed once in {parse_ms:.1f} ms, {where}), "
          f"digest {rules.digest}")
    print(f"traces: {len(work):,} ({with_feedback:,} with assessments)")
    old = None if args.no_mlflow else with_mlflow_matcher(rules)
    if old is not None:
        for t, a in work[:10_000]:
            assert rules.evaluate(t, a) == old.evaluate(t, a), t.trace_id
    timings, old_timings = [], []
    for _ in range(args.runs):  # interleaved, so that both see the same machine
        timings.append(run_once(rules, work))
        if old is not None:
            old_timings.append(run_once(old, work))
    evals_per_s = report("compiled predicates", rules, work, timings)
    verdict = "meets" if evals_per_s >= TARGET_RULE_EVALS_PER_S else "BELOW"
    print(
        f"rule evaluations/s: {evals_per_s:,.0f}  ({verdict} the target of "
        f"{TARGET_RULE_EVALS_PER_S:,}/s)"
    )
    if old is not None:
        old_per_s = report("MLflow's matcher (old path)", old, work, old_timings)
        print(f"rule evaluations/s: {old_per_s:,.0f}")
        print(f"compiled / MLflow's matcher: {evals_per_s / old_per_s:.2f}x rule evaluations/s")
        new_f, old_f = (min(match_all(r, traces) for _ in range(args.runs)) for r in (rules, old))
        print(f"filters alone ({filter_count(rules)} filters per trace): compiled "
              f"{len(traces) * filter_count(rules) / new_f:,.0f} filter matches/s, MLflow's "
              f"matcher {len(traces) * filter_count(rules) / old_f:,.0f}/s, {old_f / new_f:.2f}x")
    counts = Counter(o.outcome for t, a in work[:10_000] for o in rules.evaluate(t, a).outcomes)
    print(
        "outcomes over the first 10k traces: "
        + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"mlflow imported: {'mlflow' in sys.modules}; peak RSS {peak_mb} MB (traces included)")
    return 0


def filter_count(rules: RuleSet) -> int:
    return sum(len(r.filters) for r in rules.rules)


def match_all(rules: RuleSet, traces: list[TraceView]) -> float:
    """Seconds to match every filter of every rule against every trace (no other rule work)."""
    tests = [f.test for r in rules.rules for f in r.filters]
    infos = [TraceInfoView(t, t.tags) for t in traces]
    start = time.perf_counter()
    for info in infos:
        for test in tests:
            test(info)
    return time.perf_counter() - start


def report(label: str, rules: RuleSet, work: list[Any], timings: list[float]) -> float:
    """Prints one path's timings; returns its rule evaluations/s."""
    best = min(timings)
    traces_per_s = len(work) / best
    runs = ", ".join(f"{t:.3f}" for t in timings)
    print(f"{label}: evaluate best {best:.3f} s of {len(timings)} runs ({runs})")
    print(f"  traces/s: {traces_per_s:,.0f}  ({1e6 / traces_per_s:.1f} us per trace)")
    return traces_per_s * len(rules.rules)


if __name__ == "__main__":
    sys.exit(main())
