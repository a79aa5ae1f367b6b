"""``trace-curator demo``: the whole ingestion path on one machine, with no infrastructure.

It writes real MLflow traces of a small support bot, and assessments on them, to a local MLflow
store; publishes them and 3 malformed records to an embedded broker (tansu); runs the real worker
until it has consumed them; and prints what the store holds. Everything lives in ``--dir``.
Invariants: the broker is in memory, new on every run, and stopped on every exit, Ctrl+C too.
Only traces fetched back from MLflow are published (bursts can drop traces silently). Re-runs over
one folder are safe: traces and assessments are upserts by id, and the malformed records always
land at the same origin (partition 0, offsets 0-2), so they stay 3 dead-letter rows.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import SecretStr
from sqlalchemy import text

from consumers.embedded_broker import EmbeddedBroker
from consumers.errors import ConfigError
from store import schema
from store.engine import make_engine
from store.report import summary
from worker.exit_codes import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
)
from worker.logs import setup_logging
from worker.loop import RunStats, Worker
from worker.report_format import to_table
from worker.settings import Settings

# mlflow (seconds) and kafka (~0.1 s) are imported where used: `trace-curator --help` stays fast.
if TYPE_CHECKING:
    from mlflow.entities import Assessment, LiveSpan, Trace

logger = logging.getLogger(__name__)

# The same values as worker.cli (importing it here would be circular once cli imports demo).

EXPERIMENT_NAME = "trace-curator-demo"
GROUP_ID = "trace-curator-demo"
TOPIC_PARTITIONS = 3
IDLE_EXIT_S = 3.0
WINDOW_S = 3600  # the traffic is spread over the hour before the demo runs
MS = 1_000_000  # nanoseconds per millisecond
Handler = Callable[[int, FrameType | None], Any] | int | None  # what signal.getsignal returns

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


@dataclass(frozen=True)
class Call:
    """One support-bot request, drawn from the seeded generator before any span is written."""

    question: str
    topic: str
    fails: str | None  # "llm" or "tool": the span that fails; None for a success
    slow: bool
    environment: str
    user: str


@dataclass
class Traffic:
    experiment_id: str
    requested: int
    traces: list[Trace]  # fetched back from the MLflow store: the ones that landed
    assessments: list[Assessment]
    elapsed_s: float


# ---------------------------------------------------------------------------------------------
# The command


def configure_parser(p: argparse.ArgumentParser) -> None:
    if p.description is None:
        p.description = (
            "Run the whole pipeline with no infrastructure: write N real MLflow traces of a "
            "support bot (feedback on about half) to a local MLflow store, publish them and 3 "
            "malformed records to an embedded Kafka-protocol broker, ingest them with the real "
            "worker and print what the store holds. Files live in --dir; the broker is in "
            "memory and always stopped.")
    p.add_argument("--traces", type=_positive_int, default=200, metavar="N",
                   help="how many traces to generate (default: 200)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the traffic (default: 7)")
    p.add_argument("--dir", default="./demo-data", metavar="DIR",
                   help="folder of the MLflow store and the trace-curator store "
                        "(default: ./demo-data; re-using it is safe)")


def cmd_demo(args: argparse.Namespace) -> int:
    started_s = time.monotonic()
    folder = Path(args.dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    setup_logging("INFO")
    broker = EmbeddedBroker()
    try:
        broker.start()
    except (ConfigError, RuntimeError) as exc:  # no tansu binary; tansu did not start
        print(f"trace-curator demo: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_UNAVAILABLE
    try:
        return _demo(broker.bootstrap_servers, folder, args.traces, args.seed, started_s)
    except KeyboardInterrupt:
        print("trace-curator demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        broker.stop()


def _demo(bootstrap_servers: str, folder: Path, n_traces: int, seed: int,
          started_s: float) -> int:
    create_topics(bootstrap_servers)
    store_url = prepare_store(folder)
    traffic = make_traffic(folder, n_traces, seed)
    if not traffic.traces:  # MLflow turns a failure to start a span into a silent no-op span
        logger.error("no trace reached the MLflow store; see MLflow's warnings above")
        return EXIT_FAILURE
    published = publish(bootstrap_servers, traffic)
    settings = demo_settings(store_url, bootstrap_servers, f"sqlite:///{folder / 'mlflow.db'}")
    stats, interrupted = run_worker(settings, published)
    curation = [] if interrupted else curate_once(settings)
    print(summarize(store_url, folder, traffic, published, stats, time.monotonic() - started_s,
                    interrupted, curation))
    if interrupted:
        return EXIT_INTERRUPTED
    if stats.records < published:
        logger.error("the worker consumed records=%d of published=%d", stats.records, published)
        return EXIT_FAILURE
    return EXIT_OK


def _positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


# ---------------------------------------------------------------------------------------------
# Infrastructure: topics, store, settings


def create_topics(bootstrap_servers: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    from consumers.producer import DEFAULT_ASSESSMENT_TOPIC, DEFAULT_TRACE_TOPIC

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:  # the dead-letter topics too: tansu would auto-create them with 4 partitions
        admin.create_topics(
            [NewTopic(t, TOPIC_PARTITIONS, 1) for t in (DEFAULT_TRACE_TOPIC,
                                                        DEFAULT_ASSESSMENT_TOPIC)]
            + [NewTopic(t + ".dlq", 1, 1) for t in (DEFAULT_TRACE_TOPIC,
                                                    DEFAULT_ASSESSMENT_TOPIC)])
    finally:
        admin.close()
    logger.info("broker ready bootstrap_servers=%s", bootstrap_servers)


def prepare_store(folder: Path) -> str:
    url = f"sqlite:///{folder / 'trace_curator.db'}"
    engine = make_engine(url)
    try:
        schema.upgrade(engine)
    finally:
        engine.dispose()
    return url


def demo_settings(store_url: str, bootstrap_servers: str,
                  mlflow_uri: str | None = None) -> Settings:
    from consumers.producer import DEFAULT_ASSESSMENT_TOPIC, DEFAULT_TRACE_TOPIC

    # Every field is passed: Settings() would still fill the others from TRACE_CURATOR_* variables.
    values: dict[str, Any] = {name: f.default for name, f in Settings.model_fields.items()}
    values.update(
        store_url=SecretStr(store_url), kafka_bootstrap_servers=bootstrap_servers,
        trace_topic=DEFAULT_TRACE_TOPIC, assessment_topic=DEFAULT_ASSESSMENT_TOPIC,
        group_id=GROUP_ID, kafka_session_timeout_ms=2000, kafka_heartbeat_interval_ms=500,
        kafka_reconnect_backoff_max_ms=1000, poll_timeout_ms=200,
        # The rule tags go back onto the traces in the demo's own MLflow store.
        mlflow_tracking_uri=mlflow_uri, tag_writeback="on" if mlflow_uri else "off",
        tag_writer_interval_s=0.2,
        # One curation cycle runs at the end, once every record is in (see _demo).
        curation="off")
    return Settings(**values)


# ---------------------------------------------------------------------------------------------
# Traffic: real MLflow traces and assessments


def make_traffic(folder: Path, n: int, seed: int) -> Traffic:
    import mlflow

    started_s = time.monotonic()
    rng = random.Random(seed)  # noqa: S311 - demo traffic, not cryptography
    # Synchronous export: the async queue silently drops traces in bursts (FACTS.md). The
    # exporter reads this variable when the first span after set_tracking_uri creates it.
    with _env("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false"):
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
        experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
        experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
            EXPERIMENT_NAME, artifact_location=(folder / "mlflow-artifacts").as_uri())
        end_ns = time.time_ns() - 10_000 * MS
        step_ns = WINDOW_S * 1000 * MS // n
        trace_ids = [write_trace(rng, draw_call(rng), experiment_id,
                                 end_ns - (n - i) * step_ns + rng.randrange(step_ns // 2))
                     for i in range(n)]
        mlflow.flush_trace_async_logging()  # a no-op when synchronous; cheap insurance
    fetched = [mlflow.get_trace(tid, silent=True) for tid in trace_ids]
    traces = [t for t in fetched if t is not None]
    if len(traces) < n:
        logger.warning("only landed=%d of requested=%d traces reached the MLflow store",
                       len(traces), n)
    assessments = log_assessments(rng, traces)
    elapsed_s = time.monotonic() - started_s
    logger.info("mlflow traces=%d assessments=%d elapsed_s=%.1f", len(traces), len(assessments),
                elapsed_s)
    return Traffic(experiment_id, n, traces, assessments, elapsed_s)


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


def log_assessments(rng: random.Random, traces: list[Trace]) -> list[Assessment]:
    """Judge and human feedback on about half of the traces; an expectation on a few."""
    import mlflow
    from mlflow.entities import AssessmentSource

    judge = AssessmentSource(source_type="LLM_JUDGE", source_id="quality-judge-v1")
    reviewer = AssessmentSource(source_type="HUMAN", source_id="support-reviewer")
    end_user = AssessmentSource(source_type="HUMAN", source_id="end-user")
    out: list[Assessment] = []
    for t in traces:
        tid, failed = t.info.trace_id, t.info.state.value == "ERROR"
        if rng.random() < 0.5:
            quality = round(rng.uniform(0.0, 0.4) if failed else rng.uniform(0.45, 1.0), 2)
            out.append(mlflow.log_feedback(
                trace_id=tid, name="quality", value=quality, source=judge,
                rationale="The answer is grounded in the retrieved article." if quality >= 0.7
                else "The answer misses part of the question."))
            if rng.random() < 0.6:
                out.append(mlflow.log_feedback(trace_id=tid, name="is_correct",
                                               value=not failed and quality >= 0.7,
                                               source=reviewer))
            if rng.random() < 0.7:
                out.append(mlflow.log_feedback(trace_id=tid, name="helpful",
                                               value="yes" if quality >= 0.6 else "no",
                                               source=end_user))
        if rng.random() < 0.06:
            out.append(mlflow.log_expectation(
                trace_id=tid, name="expected_response", source=reviewer,
                value="Point the customer to the help-center article and offer a follow-up."))
    return out


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for MLflow, restoring the old value afterwards.

    MLflow's tracing exporter is configured only through its environment; this is the demo's
    one touch of ``os.environ`` (settings.py reads trace-curator's own variables).
    """
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# ---------------------------------------------------------------------------------------------
# Publish, ingest


MALFORMED: list[bytes] = [
    b"not json",
    orjson.dumps({"trace_id": "tr-demo-negative-duration", "status": "OK",
                  "timestamp_ms": 1_800_000_000_000, "execution_time_ms": -40}),
    orjson.dumps({"event": "page_view", "user": "user-007", "path": "/help"}),
]


def publish(bootstrap_servers: str, traffic: Traffic) -> int:
    """Publish the malformed records, every trace and every assessment; returns the count."""
    from consumers.producer import (
        DEFAULT_TRACE_TOPIC,
        make_producer,
        publish_assessment,
        publish_trace,
    )

    producer = make_producer(bootstrap_servers)
    try:
        # The malformed records go first, to partition 0: offsets 0-2 on every (new) broker.
        for value in MALFORMED:
            producer.send(DEFAULT_TRACE_TOPIC, value=value, partition=0).get(timeout=30)
        futures = [publish_trace(producer, t) for t in traffic.traces]
        futures += [publish_assessment(producer, a) for a in traffic.assessments]
        producer.flush()
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close()
    count = len(MALFORMED) + len(futures)
    logger.info("published records=%d traces=%d assessments=%d malformed=%d", count,
                len(traffic.traces), len(traffic.assessments), len(MALFORMED))
    return count


def run_worker(settings: Settings, expected_records: int) -> tuple[RunStats, bool]:
    """Run the real worker until it has the records (or is idle); True if stopped by a signal."""
    from worker.app import create_kafka_worker

    worker = create_kafka_worker(settings)
    done = threading.Event()
    progress = threading.Thread(target=_report_progress, args=(worker, expected_records, done),
                                name="demo-progress", daemon=True)
    previous = _install_stop_handlers(worker.stop)
    progress.start()
    try:
        # Idle means every record is stored and every rule tag written back to MLflow.
        stats = worker.run(exit_when_idle_s=IDLE_EXIT_S)
    finally:
        done.set()
        progress.join()
        _restore_handlers(previous)
        worker.close()
    return stats, worker.stop.is_set()


def _report_progress(worker: Worker, expected_records: int, done: threading.Event) -> None:
    last_records, last_s = 0, time.monotonic()
    while not done.wait(1.0):
        s, now_s = worker.stats, time.monotonic()
        rate = (s.records - last_records) / max(now_s - last_s, 1e-9)
        logger.info("progress records=%d/%d traces=%d assessments=%d dead_letters=%d "
                    "rate_per_s=%.0f", s.records, expected_records, s.traces, s.assessments,
                    s.dead_letters, rate)
        last_records, last_s = s.records, now_s


def curate_once(settings: Settings) -> list[str]:
    """One curation cycle into the demo's MLflow store: the default dataset spec."""
    from worker.app import create_curator, create_engine_from

    engine = create_engine_from(settings)
    try:
        curator = create_curator(settings, engine)
        return [r.line() for r in curator.run_cycle()]
    except Exception as exc:  # the demo still prints what it has
        logger.exception("curation failed")
        return [f"curation failed: {exc}"]
    finally:
        engine.dispose()


def _install_stop_handlers(stop: threading.Event) -> dict[int, Handler]:
    """First SIGINT/SIGTERM: drain and stop. A second: KeyboardInterrupt; the broker still stops."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.info("signal=%s received, draining and stopping", signal.Signals(signum).name)
        stop.set()

    previous: dict[int, Handler] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous


def _restore_handlers(previous: dict[int, Handler]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old if old is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# Summary


def summarize(store_url: str, folder: Path, traffic: Traffic, published: int, stats: RunStats,
              elapsed_s: float, interrupted: bool = False,
              curation: Sequence[str] = ()) -> str:
    """What this run did, what the store holds (plain SQL), the report, then where to look."""
    engine = make_engine(store_url)
    now_ms = int(time.time() * 1000)
    try:
        report = to_table(summary(engine, now_ms - 86_400_000, now_ms, now_ms=now_ms))
        with engine.connect() as conn:
            by_status = conn.execute(text(
                "SELECT status, COUNT(*) FROM traces GROUP BY status ORDER BY status")).all()
            by_name = conn.execute(text(
                "SELECT name, kind, COUNT(*), AVG(numeric_value) FROM assessments "
                "GROUP BY name, kind ORDER BY name")).all()
            tags = conn.execute(text(
                "SELECT t.tag_key, t.tag_value, COUNT(*), COUNT(o.trace_id) FROM trace_tags t "
                "LEFT JOIN tag_outbox o ON o.trace_id = t.trace_id AND o.tag_key = t.tag_key "
                "WHERE t.tag_value IS NOT NULL GROUP BY t.tag_key, t.tag_value "
                "ORDER BY t.tag_value")).all()
            letters = conn.execute(text(
                'SELECT topic, "partition", "offset", error_type, error FROM dead_letters '
                'ORDER BY topic, "partition", "offset"')).all()
    finally:
        engine.dispose()
    n_traces, n_assessments = sum(r[1] for r in by_status), sum(r[2] for r in by_name)
    lines = [
        f"trace-curator demo: {'interrupted' if interrupted else 'done'} after {elapsed_s:.1f} s",
        f"  MLflow   {len(traffic.traces)} of {traffic.requested} traces landed, "
        f"{len(traffic.assessments)} assessments logged ({traffic.elapsed_s:.1f} s; "
        f"experiment {EXPERIMENT_NAME!r}, id {traffic.experiment_id})",
        f"  Kafka    {published} records published, {len(MALFORMED)} of them malformed",
        f"  worker   {stats.summary()}",
        f"Store: {n_traces} traces, {n_assessments} assessments, {len(letters)} dead letters "
        "in total (this and earlier runs over the folder)",
        "  assessments by name",
        *(f"    {name:<18} {kind:<11} {count:>5}" + ("" if mean is None else f"  mean {mean:.2f}")
          for name, kind, count, mean in by_name),
        "  rule tags (also on the traces in MLflow once written back)",
        *(f"    {key}={value:<14} {count:>5}" + (f"  ({pending} not yet written back)"
                                                  if pending else "")
          for key, value, count, pending in tags),
        "  dead letters",
        *(f"    {topic}[{part}]@{offset} {etype}: {error[:90]}"
          for topic, part, offset, etype, error in letters),
        "",
        "The last 24 hours, from the rolling metric buckets (`trace-curator report --since 24h`):",
        report,
        "Datasets (`trace-curator curate --once`; the versions: `trace-curator datasets list`)",
        *(f"  {line}" for line in curation),
        "Explore:",
        f"  mlflow ui --backend-store-uri sqlite:///{folder / 'mlflow.db'}",
        "           then search traces with: tags.eval_candidate = 'error_case'",
        f"  trace-curator rules explain <trace id>   (TRACE_CURATOR_STORE_URL={store_url})",
        f"  store     {store_url}",
    ]
    return "\n".join(lines)
