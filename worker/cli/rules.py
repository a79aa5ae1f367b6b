"""``rules explain`` (why a stored trace has, or lost, its tags) and ``rules test`` (a rules file
dry-run over the stored traces of a window).

Both read an existing store with a current schema and write nothing. ``explain`` shows what the
configured rules say now when no evaluation of the trace was logged; ``test`` evaluates each
stored trace with its valid feedback, as the worker would. Text comes from ``worker.rules.explain``.
"""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli import common
from worker.exit_codes import EXIT_FAILURE, EXIT_OK
from worker.rules import explain as rules_view
from worker.settings import Settings
from worker.timeparse import parse_time_ms

# --help descriptions: common.prose puts each paragraph on one line.
EXPLAIN = """
Print the stored trace, its current rule tags, their write-back state, and every logged evaluation:
each rule's outcome (tagged, superseded, sampled_out, no_match, not_applicable) and reason, newest
first.
"""
TEST = """
Evaluate RULES_FILE over the stored traces of a window (with their valid feedback) and print, per
rule, how many would be tagged, superseded or sampled out, with example trace ids. Writes nothing.

The built-in rules, used when TRACE_CURATOR_RULES_FILE is unset:
"""


def register(sub: common.Subcommands[argparse.ArgumentParser],
             parent: argparse.ArgumentParser) -> None:
    rsub = common.group(sub, "rules", "rule decisions: explain a trace, dry-run a rules file")
    ex = common.command(rsub, "explain", cmd_rules_explain, parent,
                        help="why a trace has (or lost) its tags",
                        description=common.prose(EXPLAIN))
    ex.add_argument("trace_id")
    rt = common.command(rsub, "test", cmd_rules_test, parent, formatter_class=common.HELP_FORMAT,
                        help="dry-run a rules file over stored traces",
                        description=common.prose(TEST) + "\n\n" + rules_view.default_rules_text())
    rt.add_argument("rules_file", metavar="RULES_FILE")
    rt.add_argument("--since", default="7d", help="window start: 24h, 7d, or ISO (default 7d)")
    rt.add_argument("--until", default=None, help="window end (default now)")
    rt.add_argument("--examples", type=int, default=3, help="example ids per rule (default 3)")


def cmd_rules_explain(args: argparse.Namespace) -> int:
    from store.decisions import explain

    settings, engine = common.current_store(args)
    with engine.connect() as conn:
        info = explain(conn, args.trace_id)
        if info["trace"] is None and not info["log"]:
            raise common.CliError(f"trace {args.trace_id} is not in the store", EXIT_FAILURE)
        if not info["log"] and info["trace"] is not None:
            info["now"] = _evaluate_now(settings, conn, info["trace"])
    print(rules_view.explain_text(args.trace_id, info))
    return EXIT_OK


def _evaluate_now(settings: Settings, conn: Any, view: Any) -> Any:
    """Evaluations where nothing matched are not logged: show what the rules say now."""
    from store.decisions import valid_feedback
    from worker.rules.engine import load_rules

    rules = load_rules(settings.rules_file)
    feedback = valid_feedback(conn, [view.trace_id]).get(view.trace_id, [])
    return rules.evaluate(view, feedback)


def cmd_rules_test(args: argparse.Namespace) -> int:
    from store.decisions import stored_traces, valid_feedback
    from worker.rules.engine import load_rules

    rules = load_rules(args.rules_file)
    at_ms = common.now_ms()
    since_ms = parse_time_ms(args.since, at_ms)
    until_ms = parse_time_ms(args.until, at_ms) if args.until else at_ms + 1
    _, engine = common.current_store(args)
    tally = rules_view.DryRun(rules, examples=args.examples)
    with engine.connect() as conn:
        for chunk in stored_traces(conn, since_ms, until_ms):
            feedback = valid_feedback(conn, [t.trace_id for t in chunk]) \
                if rules.needs_assessments() else {}
            for view in chunk:
                tally.add(rules.evaluate(view, feedback.get(view.trace_id, ())))
    print(tally.text(args.since, args.until))
    return EXIT_OK
