"""The demo's traffic: real MLflow traces and assessments of a small support bot.

The pure core draws what happens from one seeded generator before anything is written:
``draw_call``, ``draw_judgements``, ``history_starts``. ``write_trace`` writes one trace with exact,
drawn span durations; ``TrafficGenerator`` writes the backdated history (in the caller's thread)
and the live traffic at a paced rate (a thread), with late feedback from a heap.
Invariants: only traces fetched back from MLflow count as produced, and only those reach the
outlet (bursts can drop traces silently; with ``--source otlp`` MLflow's own exporter sends the
spans, so such a trace may still reach the store, uncounted); a live trace ends about "now";
history lies 5 min to 23 h ago, inside any ``--since 24h`` window; ``prepare_mlflow`` leaves the
store in WAL mode.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.demo.outlet import Outlet

# mlflow takes seconds to import: it is imported where used, so `trace-curator --help` stays fast.
if TYPE_CHECKING:
    from mlflow.entities import Assessment, LiveSpan, Trace

logger = logging.getLogger(__name__)

EXPERIMENT_NAME = "trace-curator-demo"
HISTORY_HOURS = 23  # history traces start 5 min to 23 h ago: inside any `--since 24h` window
BEHIND_S = 1.0  # the generator this far behind its schedule: the rate cannot be met
LATE_SHARE = 0.3  # of the traces with feedback, this share gets it late ...
LATE_DELAY_S = (2.0, 4.0)  # ... this many seconds after the trace
MS = 1_000_000  # nanoseconds per millisecond


QUESTIONS = [  # (question, topic); "orders" questions go to the agent, which calls a tool
    ("How do I reset my password?", "account"),
    ("How can I change the email address on my account?", "account"),
    ("Where is my order #{n}?", "orders"),
    ("My order #{n} arrived damaged. What now?", "orders"),
    ("Can I get a refund for order #{n}?", "orders"),
    ("Do you ship to Canada?", "shipping"),
    ("How long does express shipping take?", "shipping"),
    ("What is your return policy for sale items?", "returns"),
]
ERRORS = {"llm": ("RateLimitError", "429 Too Many Requests from the model provider"),
          "tool": ("TimeoutError", "order service did not answer within 5 s")}
SOURCES = {"judge": ("LLM_JUDGE", "quality-judge-v1"), "reviewer": ("HUMAN", "support-reviewer"),
           "end_user": ("HUMAN", "end-user")}


@dataclass(frozen=True)
class Call:
    """One support-bot request, drawn from the seeded generator before any span is written."""

    question: str
    topic: str
    fails: str | None  # "llm" or "tool": the span that fails; None for a success
    slow: bool
    environment: str
    user: str

    @property
    def budget_ms(self) -> int:
        """An upper bound of the trace's duration: a live trace starts this long before now,
        so it ends about now (MLflow receives a trace when it ends)."""
        if self.slow:
            return 9_500
        return 5_500 if self.fails == "tool" else 3_300


@dataclass(frozen=True)
class Judgement:
    """One assessment to log: feedback (the default) or an expectation."""

    trace_id: str
    name: str
    value: Any
    source: str  # a key of SOURCES
    rationale: str | None = None
    expectation: bool = False


@dataclass
class TrafficStats:
    """What the generator produced. Written by the generator only; read by the others."""

    history_requested: int = 0
    history: int = 0  # history traces that landed in MLflow
    live_requested: int = 0
    live: int = 0  # live traces that landed in MLflow
    assessments: int = 0
    late: int = 0  # feedback logged seconds after its trace, after later traces
    expectations: int = 0
    write_s: float = 0.0  # time spent writing (and fetching, publishing) live traces
    live_started_s: float | None = None  # monotonic
    live_ended_s: float | None = None  # monotonic: the last live trace's slot (late feedback aside)
    behind: bool = False  # the requested rate could not be met

    @property
    def traces(self) -> int:
        return self.history + self.live

    def achieved_per_s(self) -> float:
        if self.live_started_s is None or self.live_ended_s is None:
            return 0.0
        return self.live / max(self.live_ended_s - self.live_started_s, 1e-9)

    def capacity_per_s(self) -> float:
        """Live traces per second of generator work: what it could do at full speed."""
        return self.live / self.write_s if self.write_s > 0 else 0.0


def prepare_mlflow(folder: Path, mlflow_uri: str) -> str:
    """Point MLflow at the demo's store, get or create the experiment; returns its id.

    The store is switched to WAL mode (a persistent property of the file): the generator, the
    tag writer, the curator and, with ``--source mlflow``, the poller use it from several
    threads, and in WAL mode readers never wait for the writer.
    """
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
        EXPERIMENT_NAME, artifact_location=(folder / "mlflow-artifacts").as_uri())
    with contextlib.closing(sqlite3.connect(folder / "mlflow.db", timeout=20)) as conn:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    logger.info("mlflow store=%s experiment_id=%s journal_mode=%s", mlflow_uri, experiment_id,
                mode)
    return str(experiment_id)


class TrafficGenerator:
    """Writes the history (``write_history``, in the caller's thread) and the live traffic
    (``run_live``, a thread target) to MLflow, passing each trace and assessment to the outlet
    as it is produced. ``stop`` ends it early; ``finished`` is set once it has ended and the
    outlet has been flushed."""

    def __init__(self, rng: random.Random, experiment_id: str, outlet: Outlet, *,
                 rate_per_s: float, duration_s: float) -> None:
        self.rng = rng
        self.experiment_id = experiment_id
        self.outlet = outlet
        self.rate_per_s = rate_per_s
        self.duration_s = duration_s
        self.stats = TrafficStats()
        self._trace_ids: set[str] = set()  # what landed in MLflow: see produced()
        self._assessment_ids: set[str] = set()
        self._ids_lock = threading.Lock()
        self._seq = itertools.count()  # ties in the late-feedback heap
        self.error: str | None = None
        self.stop = threading.Event()
        self.finished = threading.Event()

    def produced(self) -> tuple[set[str], set[str]]:
        """(trace ids, assessment ids) written to MLflow so far: copies, safe in any thread."""
        with self._ids_lock:
            return set(self._trace_ids), set(self._assessment_ids)

    def write_history(self, n: int) -> None:
        started_s, next_log_s = time.monotonic(), time.monotonic() + 2.0
        for t0_ns in history_starts(self.rng, n, time.time_ns()):
            if self.stop.is_set():
                break
            self.stats.history_requested += 1
            trace = self._trace(draw_call(self.rng), t0_ns)
            if trace is None:
                continue
            self.stats.history += 1
            feedback, expectations = draw_judgements(self.rng, trace)
            for j in feedback + expectations:
                self._log(j)
            if time.monotonic() >= next_log_s:
                next_log_s += 2.0
                logger.info("history written=%d/%d assessments=%d", self.stats.history, n,
                            self.stats.assessments)
        if self.stats.history < self.stats.history_requested:
            logger.warning("only landed=%d of requested=%d history traces reached the MLflow "
                           "store", self.stats.history, self.stats.history_requested)
        logger.info("history traces=%d assessments=%d elapsed_s=%.1f", self.stats.history,
                    self.stats.assessments, time.monotonic() - started_s)

    def run_live(self) -> None:
        try:
            self._live()
            self.outlet.flush()  # the traffic has ended once the outlet handed everything on
        except Exception as exc:  # the demo reports it and fails; the worker is stopped
            logger.exception("the traffic generator failed")
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self.stats.live_ended_s is None:
                self.stats.live_ended_s = time.monotonic()
            self.finished.set()

    def _live(self) -> None:
        """One trace per 1/rate s until the duration is over; late feedback when it is due."""
        s = self.stats
        s.live_started_s = next_due = time.monotonic()
        end = s.live_started_s + self.duration_s
        late: list[tuple[float, int, Judgement]] = []  # (due, seq, judgement): a heap
        while not self.stop.is_set():
            now = time.monotonic()
            while late and late[0][0] <= now:
                self._log(heapq.heappop(late)[2], late=True)
            if now >= end or s.live_ended_s is not None:
                if s.live_ended_s is None:
                    s.live_ended_s = min(now, end)
                if not late:
                    break
                self.stop.wait(late[0][0] - now)
                continue
            if now < next_due:
                self.stop.wait(min(next_due, late[0][0] if late else next_due) - now)
                continue
            if now - next_due > BEHIND_S:
                self._fall_behind()
                next_due = now  # no burst to catch up: carry on at the pace MLflow allows
            next_due += 1.0 / self.rate_per_s
            self._live_trace(late)

    def _live_trace(self, late: list[tuple[float, int, Judgement]]) -> None:
        s = self.stats
        started = time.monotonic()
        s.live_requested += 1
        call = draw_call(self.rng)
        trace = self._trace(call, time.time_ns() - call.budget_ms * MS)
        s.write_s += time.monotonic() - started
        if trace is None:
            return
        s.live += 1
        feedback, expectations = draw_judgements(self.rng, trace)
        if feedback and self.rng.random() < LATE_SHARE:
            due = time.monotonic() + self.rng.uniform(*LATE_DELAY_S)
            for j in feedback:
                heapq.heappush(late, (due, next(self._seq), j))
            feedback = []
        for j in feedback + expectations:
            self._log(j)

    def _fall_behind(self) -> None:
        if not self.stats.behind:
            self.stats.behind = True
            capacity = self.stats.capacity_per_s()
            logger.warning("rate not met requested_per_s=%g capacity_per_s=%.1f: a trace takes "
                           "about %.0f ms to write to MLflow's SQLite store here (sharing the "
                           "CPU with the worker); carrying on at that pace", self.rate_per_s,
                           capacity, 1000 / capacity if capacity else 0.0)

    def _trace(self, call: Call, t0_ns: int) -> Trace | None:
        """Write one trace, fetch it back (only traces that landed are passed on), publish it."""
        import mlflow

        trace_id = write_trace(self.rng, call, self.experiment_id, t0_ns)
        trace: Trace | None = mlflow.get_trace(trace_id, silent=True)
        if trace is None:
            return None
        with self._ids_lock:
            self._trace_ids.add(trace_id)
        self.outlet.trace(trace)
        return trace

    def _log(self, j: Judgement, late: bool = False) -> None:
        assessment = log_judgement(j)
        with self._ids_lock:
            self._assessment_ids.add(assessment.assessment_id or "")
        self.outlet.assessment(assessment)
        self.stats.assessments += 1
        self.stats.late += int(late)
        self.stats.expectations += int(j.expectation)


def history_starts(rng: random.Random, n: int, now_ns: int) -> list[int]:
    """``n`` start times (ns) from 23 h to 5 min ago, oldest first, busier in the afternoon
    (UTC), so that the hourly report shows a curve."""
    hour_ns = 3600 * 1000 * MS
    now_hour = time.gmtime(now_ns // 1_000_000_000).tm_hour
    weights = [1 + 0.8 * math.cos(2 * math.pi * (((now_hour - h) % 24) - 15) / 24)
               for h in range(HISTORY_HOURS)]
    hours_ago = rng.choices(range(HISTORY_HOURS), weights, k=n)
    min_ns = 5 * 60 * 1000 * MS
    return sorted(now_ns - h * hour_ns - min_ns - rng.randrange(hour_ns - min_ns)
                  for h in hours_ago)


def draw_call(rng: random.Random) -> Call:
    question, topic = rng.choice(QUESTIONS)
    fails = None
    if rng.random() < 0.10:
        fails = "tool" if topic == "orders" and rng.random() < 0.5 else "llm"
    return Call(question=question.format(n=rng.randint(10_000, 99_999)), topic=topic,
                fails=fails, slow=rng.random() < 0.10,
                environment="production" if rng.random() < 0.8 else "staging",
                user=f"user-{rng.randint(1, 40):03d}")


def write_trace(rng: random.Random, call: Call, experiment_id: str, t0_ns: int) -> str:
    """One trace with exact, drawn durations: root, RETRIEVER, maybe TOOL, CHAT_MODEL."""
    import mlflow

    agent = call.topic == "orders"
    root = mlflow.start_span_no_context(
        name="support_agent" if agent else "faq_chain", span_type="AGENT" if agent else "CHAIN",
        inputs={"question": call.question}, start_time_ns=t0_ns, experiment_id=experiment_id,
        tags={"environment": call.environment, "app_version": "1.4.2"},
        metadata={"mlflow.trace.user": call.user})
    now_ns = _child(root, "search_kb", "RETRIEVER", {"query": call.question}, t0_ns + MS,
                    rng.uniform(30, 250),
                    [{"page_content": f"Help-center article about {call.topic}.",
                      "metadata": {"doc_uri": f"kb/{call.topic}/{rng.randint(1, 9)}.md"}}])
    if agent:
        failed = call.fails == "tool"
        now_ns = _child(root, "lookup_order", "TOOL", {"question": call.question}, now_ns,
                        5000.0 if failed else rng.uniform(80, 600),
                        None if failed else {"status": rng.choice(["shipped", "delivered"])},
                        error=ERRORS["tool"] if failed else None)
        if failed:
            return _end_root(root, now_ns, failed=True)
    # A slow trace spends its 5-9 s in the model call; the root ends 5 ms after the model.
    llm_ms = (rng.uniform(5000, 9000) - (now_ns - t0_ns) / MS - 5 if call.slow
              else rng.uniform(400, 2200))
    failed = call.fails == "llm"
    usage = {"input_tokens": rng.randint(300, 1500), "output_tokens": rng.randint(40, 400)}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    answer = {"role": "assistant", "content": f"Here is how I can help with your {call.topic}."}
    now_ns = _child(root, "chat_completion", "CHAT_MODEL",
                    {"model": "gpt-4o-mini", "messages": [{"role": "user",
                                                           "content": call.question}]},
                    now_ns, llm_ms, None if failed else {"choices": [{"message": answer}]},
                    error=ERRORS["llm"] if failed else None,
                    attributes=None if failed else {"mlflow.chat.tokenUsage": usage})
    return _end_root(root, now_ns, failed=failed, answer=answer["content"])


def _child(root: LiveSpan, name: str, span_type: str, inputs: Any, start_ns: int,
           duration_ms: float, outputs: Any, *, error: tuple[str, str] | None = None,
           attributes: dict[str, Any] | None = None) -> int:
    """Start and end one child span of ``root``; returns its end time (ns)."""
    import mlflow
    from mlflow.entities import SpanEvent, SpanStatus, SpanStatusCode

    span = mlflow.start_span_no_context(name=name, span_type=span_type, parent_span=root,
                                        inputs=inputs, start_time_ns=start_ns)
    end_ns = start_ns + int(duration_ms * MS)
    status = SpanStatus(SpanStatusCode.OK)
    if error is not None:
        etype, message = error
        # Timed at the span's end (record_exception() would stamp it "now"). SpanEvent is a
        # concrete dataclass; mypy only sees the abstract from_proto of its base class.
        event = SpanEvent("exception", end_ns,  # type: ignore[abstract]
                          {"exception.type": etype, "exception.message": message})
        span.add_event(event)
        status = SpanStatus(SpanStatusCode.ERROR, f"{etype}: {message}")
    span.end(outputs=outputs, attributes=attributes, status=status, end_time_ns=end_ns)
    return end_ns


def _end_root(root: LiveSpan, now_ns: int, *, failed: bool, answer: str | None = None) -> str:
    from mlflow.entities import SpanStatus, SpanStatusCode

    status = (SpanStatus(SpanStatusCode.ERROR, "a step of the support bot failed") if failed
              else SpanStatus(SpanStatusCode.OK))
    root.end(outputs=None if failed else {"answer": answer}, status=status,
             end_time_ns=now_ns + 5 * MS)
    trace_id: str = root.trace_id
    return trace_id


def draw_judgements(rng: random.Random, trace: Trace
                    ) -> tuple[list[Judgement], list[Judgement]]:
    """(feedback, expectations) for one trace: judge and human feedback on about half of the
    traces (a number, a bool, a yes/no), an expectation on a few."""
    tid, failed = trace.info.trace_id, trace.info.state.value == "ERROR"
    feedback: list[Judgement] = []
    if rng.random() < 0.5:
        quality = round(rng.uniform(0.0, 0.4) if failed else rng.uniform(0.45, 1.0), 2)
        feedback.append(Judgement(
            tid, "quality", quality, "judge",
            rationale="The answer is grounded in the retrieved article." if quality >= 0.7
            else "The answer misses part of the question."))
        if rng.random() < 0.6:
            feedback.append(Judgement(tid, "is_correct", not failed and quality >= 0.7,
                                      "reviewer"))
        if rng.random() < 0.7:
            feedback.append(Judgement(tid, "helpful", "yes" if quality >= 0.6 else "no",
                                      "end_user"))
    expectations = [Judgement(
        tid, "expected_response",
        "Point the customer to the help-center article and offer a follow-up.", "reviewer",
        expectation=True)] if rng.random() < 0.06 else []
    return feedback, expectations


def log_judgement(j: Judgement) -> Assessment:
    import mlflow
    from mlflow.entities import AssessmentSource

    source_type, source_id = SOURCES[j.source]
    source = AssessmentSource(source_type=source_type, source_id=source_id)
    if j.expectation:
        return mlflow.log_expectation(trace_id=j.trace_id, name=j.name, value=j.value,
                                      source=source)
    return mlflow.log_feedback(trace_id=j.trace_id, name=j.name, value=j.value, source=source,
                               rationale=j.rationale)
