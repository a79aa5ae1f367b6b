"""Text for ``rules explain`` and ``rules test``: pure formatting of stored decisions."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

from consumers.events import Evaluation


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def default_rules_text() -> str:
    from worker.rules.defaults import DEFAULT_RULES_YAML

    return "\n".join("    " + line for line in DEFAULT_RULES_YAML.strip().splitlines())


def explain_text(trace_id: str, info: dict[str, Any]) -> str:
    out = [f"trace {trace_id}"]
    t = info["trace"]
    if t is None:
        out.append("  not in the store (only its decision log is)")
    else:
        dur = "running" if t.execution_time_ms is None else f"{t.execution_time_ms} ms"
        out.append(f"  status {t.status}, {dur}, started {_ts(t.timestamp_ms)}, "
                   f"experiment {t.experiment_id}, name {t.name}")
    out.append("current tags:")
    if not info["tags"]:
        out.append("  none")
    for row in info["tags"]:
        value = row["tag_value"] if row["tag_value"] is not None else "(removed)"
        out.append(f"  {row['tag_key']} = {value}  (rule {row['rule'] or '-'}, "
                   f"decided {_ts(row['decided_ms'])})")
    pending = {r["tag_key"]: r for r in info["outbox"]}
    for row in info["tags"]:
        p = pending.get(row["tag_key"])
        state = "written to MLflow" if p is None else (
            f"pending: {p['attempts']} attempt(s)"
            + (", waiting for MLflow to know the trace" if p["waiting_for_trace"] else "")
            + (f", last error: {p['last_error']}" if p["last_error"] else ""))
        out.append(f"  write-back of {row['tag_key']}: {state}")
    out.append("decision log (newest first):")
    for entry in info["log"]:
        out.append(f"  {_ts(entry['decided_ms'])}  trigger={entry['trigger']}  "
                   f"digest={entry['digest'][:12]}  tags={dict(entry['tags']) or '{}'}")
        for rule, outcome, reason in entry["outcomes"]:
            out.append(f"    {rule:<20} {outcome:<14} {reason}")
    if not info["log"]:
        out.append("  empty: no rule has matched this trace (such evaluations are not logged)")
    now = info.get("now")
    if now is not None:
        out.append("evaluated now with the configured rules:")
        for o in now.outcomes:
            out.append(f"    {o.rule:<20} {o.outcome:<14} {o.reason}")
    return "\n".join(out)


class DryRun:
    """Tallies evaluations per rule and outcome, with a few example trace ids."""

    def __init__(self, rules: Any, examples: int = 3) -> None:
        self.rule_names = [r.name for r in rules.rules]
        self.examples = examples
        self.total = 0
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)
        self.samples: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.tags: Counter[tuple[str, str]] = Counter()

    def add(self, ev: Evaluation) -> None:
        self.total += 1
        for o in ev.outcomes:
            self.counts[o.rule][o.outcome] += 1
            ids = self.samples[(o.rule, o.outcome)]
            if len(ids) < self.examples and o.outcome != "no_match":
                ids.append(ev.trace_id)
        for key, (value, _rule) in ev.tags.items():
            self.tags[(key, value)] += 1

    def text(self, since: str, until: str | None) -> str:
        out = [f"dry run over {self.total} stored trace(s) since {since}"
               + (f" until {until}" if until else "") + " (nothing written)"]
        out.append(f"  {'rule':<22}{'tagged':>8}{'superseded':>12}{'sampled_out':>13}"
                   f"{'not_applicable':>16}  examples (tagged)")
        for name in self.rule_names:
            c = self.counts[name]
            ex = ", ".join(self.samples[(name, "tagged")]) or "-"
            out.append(f"  {name:<22}{c['tagged']:>8}{c['superseded']:>12}"
                       f"{c['sampled_out']:>13}{c['not_applicable']:>16}  {ex}")
        out.append("resulting tags:")
        for (key, value), n in sorted(self.tags.items()):
            out.append(f"  {key}={value}: {n}")
        if not self.tags:
            out.append("  none")
        return "\n".join(out)
