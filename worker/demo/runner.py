"""``trace-curator demo``: the whole path on one machine, live, with no infrastructure.

The command and its orchestration: the embedded broker (``--source kafka``; ``--source mlflow``
has none and the worker polls MLflow), the stores and settings, then the real worker in the main
thread beside the traffic generator (``traffic``, publishing through ``outlet``) and the
progress ``Monitor``, one line a second, in threads; then the summary (``summary``).
``--source otlp``: MLflow's OTLP dual export sends every span to an in-process OTLP/HTTP receiver
that writes them to the broker's OTLP topic as the OpenTelemetry Collector's Kafka exporter does;
the worker (source kafka) assembles the traces from those spans and rescans MLflow for the
feedback (``mlflow_assessments=on``); nothing is published by the demo itself.
Invariants: the broker (and the receiver) are in memory, new on every run, and stopped on every
exit, Ctrl+C too; MLflow's exporter settings (environment variables) are restored afterwards; the
worker is stopped once the traffic is done, the store holds all of it and every rule tag is written
back (or after a bound); re-runs over one folder are safe: upserts by id, and the malformed records
always land at partition 0, offsets 0-2, so they stay 3 dead-letter rows.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from consumers.embedded_broker import EmbeddedBroker
from consumers.errors import ConfigError
from store import schema
from store.engine import make_engine
from worker.demo.outlet import KafkaOutlet, NoOutlet, OtlpOutlet, Outlet
from worker.demo.summary import (
    CURATE_INTERVAL_S,
    Outcome,
    StoreCounts,
    assembling,
    missing_ids,
    produced_arrivals,
    produced_missing,
    summarize,
)
from worker.demo.traffic import EXPERIMENT_NAME as EXPERIMENT_NAME  # re-exported: tests use it
from worker.demo.traffic import TrafficGenerator, prepare_mlflow
from worker.exit_codes import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
)
from worker.logs import setup_logging
from worker.loop import RunStats, Worker
from worker.settings import Settings
from worker.signals import StopSignals

# mlflow (seconds) and kafka (~0.1 s) are imported where used: `trace-curator --help` stays fast.

logger = logging.getLogger(__name__)

GROUP_ID = "trace-curator-demo"
TOPIC_PARTITIONS = 3
OTLP_TOPIC = "otlp_spans"  # --source otlp: the receiver writes MLflow's spans here
OTLP_QUIET_S = 0.5  # a trace is assembled this long after its last span (default: 2 s)
OTLP_BATCH_DELAY_MS = 500  # MLflow's OTLP batch processor exports this often (default: 5 s)
RESCAN_INTERVAL_S = 1.0  # --source otlp: how often the worker rescans MLflow for feedback
DRAIN_TIMEOUT_S = 60.0  # after the traffic, how long the worker may take to catch up
JOIN_TIMEOUT_S = 30.0  # for the demo's own threads at the end (an MLflow write can wait on SQLite)

# ---------------------------------------------------------------------------------------------
# The command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             _parent: argparse.ArgumentParser) -> None:
    """The ``demo`` command of ``trace-curator``. It reads no settings file: the parent parser
    (``--config``) is not used."""
    p = sub.add_parser(
        "demo", help="run the whole path on embedded defaults, with demo traffic",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the whole product live with no infrastructure: a backdated history of "
                    "real MLflow traces of a small support bot in a local MLflow store, then "
                    "live traffic (feedback on about half, some of it late) while the real "
                    "worker ingests it into a SQLite store, from an embedded Kafka-protocol "
                    "broker (with 3 malformed records), with --source mlflow by polling "
                    "MLflow, or with --source otlp from MLflow's OpenTelemetry spans on the "
                    "broker and its feedback rescanned in MLflow. Progress once a second; at "
                    "the end the report, the rule tags, the "
                    "dataset versions and how to open the MLflow UI. Needs the demo extra: "
                    "pip install 'trace-curator[demo]'.")
    configure_parser(p)
    p.set_defaults(func=cmd_demo)


def configure_parser(p: argparse.ArgumentParser) -> None:
    if p.description is None:
        p.description = (
            "Run the whole pipeline live with no infrastructure: write a backdated history of "
            "real MLflow traces of a support bot to a local MLflow store, then live traffic "
            "(feedback on about half, some of it late) while the real worker ingests it, from "
            "an embedded Kafka-protocol broker (with 3 malformed records), by polling MLflow, "
            "or from MLflow's OpenTelemetry spans on the broker. Prints progress once a second "
            "and what the store holds at the end. Files live in --dir; the broker is in memory "
            "and always stopped.")
    p.add_argument("--duration", type=_positive_float, default=20.0, metavar="SECONDS",
                   help="how long live traffic is generated (default: 20)")
    p.add_argument("--rate", type=_positive_float, default=8.0, metavar="N",
                   help="live traces per second (default: 8; if MLflow's SQLite store cannot "
                        "take that many, the demo says so and goes as fast as it can)")
    p.add_argument("--history", type=_non_negative_int, default=150, metavar="N",
                   help="backdated traces over the past 23 hours, written before the worker "
                        "starts (default: 150)")
    p.add_argument("--source", choices=("kafka", "mlflow", "otlp"), default="kafka",
                   help="kafka: publish to an embedded broker that the worker consumes; mlflow: "
                        "the worker polls the MLflow store; otlp: MLflow's OTLP export sends the "
                        "spans to the broker (as the OpenTelemetry Collector does), the worker "
                        "assembles the traces and rescans MLflow for the feedback "
                        "(default: kafka)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the traffic (default: 7)")
    p.add_argument("--dir", default="./demo-data", metavar="DIR",
                   help="folder of the MLflow store and the trace-curator store "
                        "(default: ./demo-data; re-using it is safe)")


def cmd_demo(args: argparse.Namespace) -> int:
    started_s = time.monotonic()
    folder = Path(args.dir).resolve()
    setup_logging("INFO")
    folder.mkdir(parents=True, exist_ok=True)
    # The first Ctrl+C drains; a second raises KeyboardInterrupt (the broker is still stopped).
    switch = StopSignals(on_repeat="raise", hint=" (again to stop at once)").install()
    broker = EmbeddedBroker() if args.source in ("kafka", "otlp") else None
    try:
        if broker is not None:
            try:
                broker.start()
            except RuntimeError as exc:  # tansu did not start
                print(f"trace-curator demo: error: {exc}", file=sys.stderr)
                return EXIT_UNAVAILABLE
        return _demo(args, broker.bootstrap_servers if broker else None, folder, switch,
                     started_s)
    except ConfigError as exc:  # no tansu binary; an invalid rules or datasets file
        print(f"trace-curator demo: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("trace-curator demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        switch.restore()
        if broker is not None:
            broker.stop()


def _demo(args: argparse.Namespace, bootstrap_servers: str | None, folder: Path,
          switch: StopSignals, started_s: float) -> int:
    if bootstrap_servers is not None:
        create_topics(bootstrap_servers)
    store_url = prepare_store(folder)
    mlflow_uri = f"sqlite:///{folder / 'mlflow.db'}"
    outlet = make_outlet(args.source, bootstrap_servers)
    try:  # the outlet (the OTLP receiver) outlives MLflow's exporter, which flushes into it
        with mlflow_export(outlet):
            experiment_id = prepare_mlflow(folder, mlflow_uri)
            settings = demo_settings(store_url, bootstrap_servers, mlflow_uri,
                                     source=args.source, experiment_id=experiment_id)
            gen = TrafficGenerator(random.Random(args.seed),  # noqa: S311 - demo traffic
                                   experiment_id, outlet, rate_per_s=args.rate,
                                   duration_s=args.duration)
            switch.link(gen.stop)
            gen.write_history(args.history)
            if (gen.stats.history_requested and not gen.stats.history
                    and not switch.interrupted.is_set()):
                logger.error("no trace reached the MLflow store; see MLflow's warnings above")
                return EXIT_FAILURE
            stats = None if switch.interrupted.is_set() else run_live(settings, gen, switch,
                                                                      store_url)
    finally:
        outlet.close()
    interrupted = switch.interrupted.is_set()
    curation = [] if interrupted or stats is None else curate_once(settings)
    missing = produced_missing(store_url, gen)
    print(summarize(Outcome(
        store_url, folder, args.source, experiment_id, gen.stats, outlet.published, stats,
        time.monotonic() - started_s, interrupted, curation, missing, args.rate,
        spans=outlet.spans if isinstance(outlet, OtlpOutlet) else 0,
        arrivals=produced_arrivals(store_url, gen))))
    return _exit_code(interrupted, gen, missing)


def _exit_code(interrupted: bool, gen: TrafficGenerator, missing: tuple[int, int]) -> int:
    if interrupted:
        return EXIT_INTERRUPTED
    if gen.error is not None:
        logger.error("the traffic generator failed: %s", gen.error)
        return EXIT_FAILURE
    if gen.stats.live_requested and not gen.stats.live:  # MLflow turns failures into no-ops
        logger.error("no live trace reached the MLflow store; see MLflow's warnings above")
        return EXIT_FAILURE
    if missing != (0, 0):
        logger.error("the store lacks traces=%d assessments=%d of this run's traffic", *missing)
        return EXIT_FAILURE
    return EXIT_OK


def _positive_float(value: str) -> float:
    x = float(value)
    if not x > 0 or math.isinf(x):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return x


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {n}")
    return n


# ---------------------------------------------------------------------------------------------
# Infrastructure: topics, stores, settings


def create_topics(bootstrap_servers: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    from consumers.producer import DEFAULT_ASSESSMENT_TOPIC, DEFAULT_TRACE_TOPIC

    topics = (DEFAULT_TRACE_TOPIC, DEFAULT_ASSESSMENT_TOPIC, OTLP_TOPIC)  # the worker reads all 3
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:  # the dead-letter topics too: tansu would auto-create them with 4 partitions
        admin.create_topics([NewTopic(t, TOPIC_PARTITIONS, 1) for t in topics]
                            + [NewTopic(t + ".dlq", 1, 1) for t in topics])
    finally:
        admin.close()
    logger.info("broker ready bootstrap_servers=%s", bootstrap_servers)


def make_outlet(source: str, bootstrap_servers: str | None) -> Outlet:
    """kafka: publish traces and assessments; otlp: receive MLflow's spans; mlflow: nothing.
    Raises ConfigError if MLflow's OTLP/HTTP exporter is not installed (otlp)."""
    if bootstrap_servers is None:
        return NoOutlet()
    if source == "otlp":
        try:  # without it MLflow would trace nothing at all, and say so only in a warning
            import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        except ImportError:
            raise ConfigError("--source otlp needs the OTLP/HTTP exporter: pip install "
                              "'trace-curator[demo]'") from None
        return OtlpOutlet(bootstrap_servers, OTLP_TOPIC)
    return KafkaOutlet(bootstrap_servers)


@contextlib.contextmanager
def mlflow_export(outlet: Outlet) -> Iterator[None]:
    """MLflow's trace export for the run, restored afterwards. Synchronous: the async queue
    silently drops traces in bursts (docs/platform-notes.md). With the OTLP outlet, also MLflow's
    OTLP dual export to its receiver. MLflow reads these variables when it sets up its tracer
    provider, so the provider is reset on the way in (set_tracking_uri would too) and on the way
    out, which exports what the OTLP batch processor still holds while the receiver listens."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_env("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false"))
        if isinstance(outlet, OtlpOutlet):
            for name, value in otlp_export_env(outlet.url).items():
                stack.enter_context(_env(name, value))
            _reset_tracing()
            stack.callback(_reset_tracing)  # first, while the variables are still set
        yield


def _reset_tracing() -> None:
    """MLflow's tracer provider is shut down (its OTLP batch processor flushed) and set up
    again, from the environment, at the next span."""
    import mlflow

    mlflow.tracing.reset()  # type: ignore[no-untyped-call]


def otlp_export_env(endpoint: str) -> dict[str, str]:
    """The variables of MLflow's OTLP dual export to ``endpoint`` (OTLP/HTTP protobuf), and the
    receiver's host added to NO_PROXY: a proxy of the environment must not carry local spans."""
    hosts = [os.environ.get("no_proxy"), os.environ.get("NO_PROXY"), urlsplit(endpoint).hostname]
    no_proxy = ",".join(h for h in hosts if h)
    return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "MLFLOW_TRACE_ENABLE_OTLP_DUAL_EXPORT": "true",
            "OTEL_BSP_SCHEDULE_DELAY": str(OTLP_BATCH_DELAY_MS),
            "NO_PROXY": no_proxy, "no_proxy": no_proxy}


def prepare_store(folder: Path) -> str:
    url = f"sqlite:///{folder / 'trace_curator.db'}"
    engine = make_engine(url)
    try:
        schema.upgrade(engine)
    finally:
        engine.dispose()
    return url


def demo_settings(store_url: str, bootstrap_servers: str | None, mlflow_uri: str | None = None,
                  *, source: str = "kafka", experiment_id: str = "") -> Settings:
    """The worker's settings for the demo's ``source``: kafka and otlp consume the broker (otlp
    also rescans MLflow for feedback); mlflow polls it."""
    from consumers.producer import DEFAULT_ASSESSMENT_TOPIC, DEFAULT_TRACE_TOPIC

    # Every field is passed: Settings() would still fill the others from TRACE_CURATOR_* variables.
    values: dict[str, Any] = {name: f.default for name, f in Settings.model_fields.items()}
    values.update(
        store_url=SecretStr(store_url),
        kafka_bootstrap_servers=bootstrap_servers or values["kafka_bootstrap_servers"],
        trace_topic=DEFAULT_TRACE_TOPIC, assessment_topic=DEFAULT_ASSESSMENT_TOPIC,
        otlp_topic=OTLP_TOPIC, group_id=GROUP_ID, kafka_session_timeout_ms=2000,
        kafka_heartbeat_interval_ms=500, kafka_reconnect_backoff_max_ms=1000, poll_timeout_ms=200,
        # The rule tags go back onto the traces in the demo's own MLflow store.
        mlflow_tracking_uri=mlflow_uri, tag_writeback="on" if mlflow_uri else "off",
        tag_writer_interval_s=0.2,
        # Dataset versions appear during the run; one more cycle runs at the end (see _demo).
        curation="on" if mlflow_uri else "off", curate_interval_s=CURATE_INTERVAL_S)
    if source == "mlflow":
        values.update(
            source="mlflow", mlflow_experiment_ids=experiment_id, mlflow_poll_interval_s=1.0,
            # The first start reads back past the history; assessments are rescanned often.
            mlflow_start_lookback_s=26 * 3600.0, mlflow_assessment_rescan_interval_s=2.0,
            mlflow_assessment_window_s=26 * 3600.0)
    elif source == "otlp":
        values.update(
            # Traces from the OTLP topic, briskly assembled; the feedback from MLflow, rescanned
            # often over the history's window too.
            otlp_quiet_s=OTLP_QUIET_S, mlflow_assessments="on",
            mlflow_experiment_ids=experiment_id,
            mlflow_assessment_rescan_interval_s=RESCAN_INTERVAL_S,
            mlflow_assessment_window_s=26 * 3600.0)
    return Settings(**values)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for MLflow, restoring the old value afterwards.

    MLflow's tracing exporters are configured only through their environment; this is the demo's
    one write to ``os.environ`` (settings.py reads trace-curator's own variables).
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
# The live run: worker (main thread), generator and progress monitor (threads)


def run_live(settings: Settings, gen: TrafficGenerator, switch: StopSignals,
             store_url: str) -> RunStats:
    """Run the real worker while the generator writes live traffic. The monitor stops the
    worker once the traffic is done and ingested; the idle exit is only a safety net."""
    from worker.app import create_worker  # dispatches on settings.source: kafka or mlflow

    worker = create_worker(settings)
    switch.link(worker.stop)
    monitor = Monitor(worker, gen, store_url)
    threads = [threading.Thread(target=gen.run_live, name="demo-traffic", daemon=True),
               threading.Thread(target=monitor.run, name="demo-progress", daemon=True)]
    for t in threads:
        t.start()
    try:
        return worker.run(exit_when_idle_s=gen.duration_s + DRAIN_TIMEOUT_S)
    finally:
        gen.stop.set()
        monitor.done.set()
        for t in threads:
            t.join(JOIN_TIMEOUT_S)
            if t.is_alive():
                logger.warning("thread=%s still running at exit", t.name)
        worker.close()


class Monitor:
    """Once a second, one progress line. Once the generator has finished: stops the worker when
    the store holds every produced trace (finished) and assessment, the worker has consumed
    every published record (with the OTLP outlet: read every span the receiver wrote, and no
    trace waits for assembly) and every rule tag is written back; or after DRAIN_TIMEOUT_S."""

    def __init__(self, worker: Worker, gen: TrafficGenerator, store_url: str) -> None:
        self.worker = worker
        self.gen = gen
        self.kafka = worker.settings.source == "kafka"
        self.otlp = gen.outlet if isinstance(gen.outlet, OtlpOutlet) else None
        self.done = threading.Event()
        self._engine = make_engine(store_url)  # its own engine: the worker's stays the worker's
        self._base = StoreCounts.read(self._engine)  # before the worker starts
        self._records = 0
        self._live = 0

    def run(self) -> None:
        try:
            while not self.done.wait(1.0):
                try:
                    self.report(StoreCounts.read(self._engine))
                    if self.gen.finished.is_set() and self.finish():
                        return
                except Exception:  # a busy store must not end the monitor: the next tick retries
                    logger.exception("progress: reading the store failed")
        finally:
            self._engine.dispose()

    def report(self, now: StoreCounts) -> None:
        s, g = self.worker.stats, self.gen.stats
        if self.otlp is not None:  # spans written to the topic not yet read
            lag = self.otlp.spans - s.otlp_spans
        elif self.kafka:  # published records not yet consumed
            lag = self.gen.outlet.published - s.records
        else:  # traces written to MLflow and not yet stored
            lag = g.traces - (now.traces - self._base.traces)
        waiting = f" assembling={now.assembling}" if self.otlp is not None else ""
        logger.info(
            "progress generated_per_s=%d events_per_s=%d traces=%d assessments=%d tagged=%s "
            "dead_letters=%d lag=%d%s", g.live - self._live, s.records - self._records,
            now.traces, now.assessments,
            ",".join(f"{v}:{n}" for v, n in now.tags.items()) or "-", now.dead_letters, lag,
            waiting)
        self._records, self._live = s.records, g.live

    def consumed(self) -> bool:
        """The worker has read all the outlet handed on; with the OTLP outlet, every span the
        receiver wrote, and then (so that no span read meanwhile is missed) no trace waits for
        assembly: a trace is assembled ``otlp_quiet_s`` after its last span."""
        if self.otlp is not None:
            return (self.worker.stats.otlp_spans >= self.otlp.spans
                    and assembling(self._engine) == 0)
        return self.worker.stats.records >= self.gen.outlet.published

    def finish(self) -> bool:
        """True (and the worker stopped) once the run is complete, or the drain took too long."""
        if self.worker.stop.is_set():
            return True  # interrupted
        tag_writer = self.worker.tag_writer
        complete = (self.consumed()
                    and missing_ids(self._engine, self.gen) == (0, 0)
                    and (tag_writer is None or tag_writer.drained()))
        ended = self.gen.stats.live_ended_s or time.monotonic()
        if complete:
            logger.info("live traffic done and ingested, every tag written back: stopping")
        elif time.monotonic() - ended > DRAIN_TIMEOUT_S:
            logger.warning("the worker has not caught up %.0f s after the traffic: stopping",
                           DRAIN_TIMEOUT_S)
        else:
            return False
        self.worker.stop.set()
        return True


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
