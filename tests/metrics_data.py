"""Synthetic LLM-app traffic for metric tests and benchmarks, in the wire formats we accept.

Traces are flat rows (the README's event formats), with a lognormal latency, ~8% errors,
spans of four types, token usage in ``mlflow.trace.tokenUsage``, and an ``environment`` tag.
Feedback comes as real
``Assessment.to_dictionary()`` documents (numeric, bool, yes/no). Deterministic per seed.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from tests import payloads as P

EXPERIMENTS = ("1", "2", "3")
NAMES = ("answer_question", "summarize")
ENVIRONMENTS = ("production", "staging")
SPAN_TYPES = ("RETRIEVER", "CHAT_MODEL", "TOOL", "PARSER")


def flat_trace(rng: random.Random, i: int, timestamp_ms: int, *,
               in_progress: bool = False, seed_tag: str = "") -> dict[str, Any]:
    latency = max(1, int(rng.lognormvariate(6.6, 0.7)))  # median ~735 ms, long tail
    status = "ERROR" if rng.random() < 0.08 else "OK"
    start_ns = timestamp_ms * 1_000_000
    spans = []
    cursor = start_ns
    for t in SPAN_TYPES[: 2 + i % 3]:
        d_ns = int(rng.uniform(0.05, 0.45) * latency * 1_000_000)
        spans.append({"name": t.lower(), "span_type": t, "start_time_ns": cursor,
                      "end_time_ns": cursor + d_ns, "status": "OK"})
        cursor += d_ns // 2
    inp, out = rng.randint(50, 2000), rng.randint(10, 800)
    doc: dict[str, Any] = {
        "trace_id": f"tr-{seed_tag}{i:08d}",
        "experiment_id": EXPERIMENTS[i % len(EXPERIMENTS)],
        "name": NAMES[(i // 3) % len(NAMES)],
        "timestamp_ms": timestamp_ms,
        "execution_time_ms": None if in_progress else latency,
        "status": "IN_PROGRESS" if in_progress else status,
        "request": {"question": f"question {i}"},
        "response": None if in_progress else {"answer": f"answer {i}"},
        "tags": {"environment": ENVIRONMENTS[(i // 7) % len(ENVIRONMENTS)]},
        "metadata": {"mlflow.trace.tokenUsage": orjson.dumps(
            {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}).decode()},
        "spans": spans[:1] if in_progress else spans,
    }
    return doc


def traffic(n: int, start_ms: int, span_ms: int, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` finished traces spread uniformly at random over ``[start_ms, start_ms + span_ms)``."""
    rng = random.Random(seed)
    stamps = sorted(start_ms + rng.randrange(span_ms) for _ in range(n))
    return [flat_trace(rng, i, ts) for i, ts in enumerate(stamps)]


def in_progress_version(doc: dict[str, Any]) -> dict[str, Any]:
    """The IN_PROGRESS version of a finished flat trace: no latency, one span."""
    early = dict(doc, status="IN_PROGRESS", execution_time_ms=None, response=None,
                 spans=doc["spans"][:1])
    return early


def feedback_for(docs: list[dict[str, Any]], seed: int = 11) -> list[dict[str, Any]]:
    """Feedback on about half of the traces: numeric ``relevance``, bool ``is_correct``, yes/no
    ``helpful``; some traces get two of them."""
    rng = random.Random(seed)
    out = []
    for d in docs:
        r = rng.random()
        tid = d["trace_id"]
        if r < 0.25:
            out.append(P.assessment_doc("feedback_numeric", trace_id=tid,
                                        value=round(rng.random(), 3)))
        if 0.2 < r < 0.4:
            out.append(P.assessment_doc("feedback_bool", trace_id=tid,
                                        value=rng.random() < 0.7))
        if 0.35 < r < 0.5:
            out.append(P.assessment_doc("feedback_no", trace_id=tid,
                                        value="yes" if rng.random() < 0.6 else "no"))
    return out
