"""Test traffic for the docker-compose stack: real MLflow traces, published to Kafka.

Each trace is written to the stack's MLflow server (so the worker's tag write-back finds it),
read back, and published to the trace topic as an application would (``publish_trace``). A share
fails (rule ``error_case``), a share runs 6-9 s (``slow_response``), and a share gets a low
``quality`` feedback, logged in MLflow and published to the assessment topic (``low_score``).
Connection settings are the worker's own ``TRACE_CURATOR_*`` variables, so inside the stack:

    docker compose run --rm send-test-traces --count 100

From the host, with the project installed: point the variables at the published ports
(TRACE_CURATOR_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9094, MLFLOW_TRACKING_URI=http://localhost:5000).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter

# Synchronous export: the asynchronous queue silently drops traces in bursts, and a test tool
# must send exactly what it reports. Set before mlflow is imported.
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")

import mlflow  # noqa: E402
from mlflow.entities import AssessmentSource, SpanStatus, SpanStatusCode  # noqa: E402

from consumers.producer import make_producer, publish_assessment, publish_trace  # noqa: E402
from worker.settings import load_settings  # noqa: E402

MS = 1_000_000  # nanoseconds per millisecond
QUESTIONS = ("Where is my order?", "How do I reset my password?", "Can I change my plan?",
             "Why was I charged twice?", "How do I export my data?")


def write_trace(rng: random.Random, experiment_id: str, *, failed: bool, slow: bool) -> str:
    """A CHAIN root with one CHAT_MODEL child, ending now, with an exact duration."""
    duration_ms = rng.uniform(6000, 9000) if slow else rng.uniform(300, 2000)
    end_ns = time.time_ns()
    start_ns = end_ns - int(duration_ms * MS)
    question = rng.choice(QUESTIONS)
    root = mlflow.start_span_no_context(
        name="support_bot", span_type="CHAIN", inputs={"question": question},
        start_time_ns=start_ns, experiment_id=experiment_id,
        tags={"environment": "compose-test"})
    llm = mlflow.start_span_no_context(
        name="chat_completion", span_type="CHAT_MODEL", parent_span=root,
        inputs={"messages": [{"role": "user", "content": question}]},
        start_time_ns=start_ns + MS)
    status = (SpanStatus(SpanStatusCode.ERROR, "TimeoutError: the model did not answer")
              if failed else SpanStatus(SpanStatusCode.OK))
    answer = None if failed else {"answer": f"Here is how I can help: {question.lower()}"}
    llm.end(outputs=answer, status=status, end_time_ns=end_ns - MS)
    root.end(outputs=answer, status=status, end_time_ns=end_ns)
    trace_id: str = root.trace_id
    return trace_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=50, help="traces to send (default: 50)")
    p.add_argument("--error-share", type=float, default=0.1, help="share that fails (0.1)")
    p.add_argument("--slow-share", type=float, default=0.1, help="share that takes 6-9 s (0.1)")
    p.add_argument("--low-score-share", type=float, default=0.2,
                   help="share that gets quality feedback below 0.5 (0.2)")
    p.add_argument("--experiment", default="trace-curator-compose-test",
                   help="MLflow experiment (created if missing)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    args = p.parse_args(argv)

    settings = load_settings()
    if not settings.mlflow_tracking_uri:
        print("set TRACE_CURATOR_MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_URI)", file=sys.stderr)
        return 2
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment_id = mlflow.set_experiment(args.experiment).experiment_id
    producer = make_producer(settings.kafka_bootstrap_servers)
    rng = random.Random(args.seed)  # noqa: S311 (test traffic, not cryptography)
    sent: Counter[str] = Counter()
    for _ in range(args.count):
        failed = rng.random() < args.error_share
        slow = not failed and rng.random() < args.slow_share
        trace_id = write_trace(rng, experiment_id, failed=failed, slow=slow)
        trace = mlflow.get_trace(trace_id)
        if trace is None:  # not stored by MLflow: never publish what MLflow does not have
            sent["missing"] += 1
            continue
        publish_trace(producer, trace, topic=settings.trace_topic)
        sent["traces"] += 1
        sent["errors"] += failed
        sent["slow"] += slow
        if not failed and rng.random() < args.low_score_share:
            feedback = mlflow.log_feedback(
                trace_id=trace_id, name="quality", value=round(rng.uniform(0.0, 0.45), 2),
                source=AssessmentSource(source_type="LLM_JUDGE", source_id="send_test_traces"))
            publish_assessment(producer, feedback, topic=settings.assessment_topic)
            sent["low_scores"] += 1
    producer.flush(timeout=30)
    producer.close()
    print(f"sent traces={sent['traces']} errors={sent['errors']} slow={sent['slow']} "
          f"low_scores={sent['low_scores']} missing={sent['missing']} "
          f"experiment={args.experiment} id={experiment_id} "
          f"topics={settings.trace_topic},{settings.assessment_topic} "
          f"bootstrap={settings.kafka_bootstrap_servers}")
    return 0 if sent["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
