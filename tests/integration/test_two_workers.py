"""Two worker processes in one consumer group on the real broker and PostgreSQL (invariant 6
of docs/design.md): the second joins mid-run (a rebalance), either one is killed with SIGKILL,
and the store is still exact; the tag writer and the curator have one leader, and when that
worker is killed the other takes both jobs over (seen on its ``/metrics``) and nothing is lost
or doubled.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from consumers.embedded_broker import free_port
from consumers.producer import publish_trace
from store.engine import make_engine
from tests import mlflow_traffic as T
from tests.conftest import publish, settings_env
from tests.helpers import wait_until
from tests.integration.test_crash import _build, assert_exact

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.parametrize("store_url", ["postgresql"], indirect=True),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]


class Proc:
    """``trace-curator run`` as a subprocess with its own HTTP port and log file."""

    def __init__(self, env: dict[str, str], log: Path, idle_s: float | None = None) -> None:
        self.port = free_port()
        self.log = log
        cmd = [sys.executable, "-m", "worker", "run"]
        if idle_s is not None:
            cmd += ["--exit-when-idle", str(idle_s)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env={**env, "TRACE_CURATOR_HTTP_PORT":
                                                   str(self.port)},
                                         stdout=out, stderr=subprocess.STDOUT)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",  # noqa: S310
                                        timeout=5) as resp:
                body = resp.read().decode()
        except OSError:
            return {}
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(body) for s in f.samples}

    def leads(self, job: str) -> bool:
        return self.metrics().get(("trace_curator_leader", (("task", job),))) == 1.0

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.mark.parametrize("victim", ["first", "second"])
def test_a_second_worker_joins_either_is_killed_and_the_store_is_exact(
        settings_factory: Any, producer: Any, store_url: str, tmp_path: Path,
        victim: str) -> None:
    rng = random.Random(11)
    settings = settings_factory(batch_max_records=50)
    traces, assessments, finals, expected_a = _build(rng)
    waves = [(traces[i * len(traces) // 3:(i + 1) * len(traces) // 3],
              assessments[i * len(assessments) // 3:(i + 1) * len(assessments) // 3])
             for i in range(3)]

    def send(wave: tuple[list[Any], list[Any]], chunk: int = 10**9, pause_s: float = 0) -> int:
        ts, asm = wave
        for k in range(0, max(len(ts), len(asm)), chunk):
            publish(producer, settings.trace_topic, ts[k:k + chunk],
                    key=lambda d: d["info"]["trace_id"].encode())
            publish(producer, settings.assessment_topic, asm[k:k + chunk],
                    key=lambda d: d["trace_id"].encode())
            time.sleep(pause_s)
        return len(ts) + len(asm)

    def consumed(p: Proc) -> float:
        return p.metrics().get(("trace_curator_records_consumed_total", ()), -1.0)

    env = settings_env(settings)
    engine = make_engine(settings.store_url_plain)
    # Only the survivor exits on idle (after draining everything); generous, so that it never
    # exits while the test sets up the next step on a loaded machine.
    a = Proc(env, tmp_path / "a.log", idle_s=15 if victim == "second" else None)
    b = None
    try:
        first = send(waves[0])
        wait_until(lambda: consumed(a) == first, 90, "the first worker to take wave 1")
        # b joins: a rebalance splits the partitions.
        b = Proc(env, tmp_path / "b.log", idle_s=15 if victim == "first" else None)
        wait_until(lambda: b.metrics().get(("trace_curator_ready", ())) == 1.0
                   and a.metrics().get(("trace_curator_ready", ())) == 1.0, 90,
                   "both workers to hold partitions")
        second = send(waves[1])
        wait_until(lambda: consumed(a) + consumed(b) == first + second, 90, "wave 2")
        assert consumed(b) > 0 and consumed(a) > first  # both took a share
        # Wave 3 trickles in; one worker is killed while its records flow: its uncommitted
        # batch and its partitions go to the other, which drains everything and exits on idle.
        killed, survivor = (a, b) if victim == "first" else (b, a)
        before = consumed(killed)
        sender = threading.Thread(target=send, args=(waves[2], 100, 0.05))
        sender.start()
        wait_until(lambda: consumed(killed) >= before + 100, 60, "the victim to take wave 3")
        killed.kill9()
        sender.join(120)
        assert survivor.proc.wait(timeout=240) == 0, survivor.output()[-3000:]
    finally:
        a.stop()
        if b is not None:
            b.stop()
    assert_exact(engine, settings, traces, assessments, finals, expected_a)
    engine.dispose()


def test_tag_writer_and_curator_fail_over_to_the_other_worker(
        settings_factory: Any, producer: Any, store_url: str, mlflow_server: Any,
        tmp_path: Path) -> None:
    mlflow.set_tracking_uri(mlflow_server.uri)
    experiment = mlflow.create_experiment(f"failover-{tmp_path.name}")
    datasets = tmp_path / "datasets.yaml"
    datasets.write_text(yaml.safe_dump({"datasets": [
        {"name": "regressions", "sink": {"kind": "files", "path": str(tmp_path / "out")}}]}))
    settings = settings_factory(mlflow_tracking_uri=mlflow_server.uri, tag_writeback="on",
                                tag_writer_interval_s=0.2, curation="on", curate_interval_s=1,
                                datasets_file=str(datasets))
    env = settings_env(settings)
    engine = make_engine(settings.store_url_plain)

    def round_of(n: int, tag: str) -> list[Any]:
        ids = [T.log_trace(experiment, "error", question=f"{tag} failing {i}") for i in range(n)]
        ids += [T.log_trace(experiment, "ok", question=f"{tag} fine {i}") for i in range(n)]
        fetched = T.fetch(ids)
        for t in fetched:
            publish_trace(producer, t, topic=settings.trace_topic)
        producer.flush()
        return [t.info.trace_id for t in fetched[:n]]

    def tagged_in_mlflow() -> set[str]:
        return T.search_ids(experiment, "tags.eval_candidate = 'error_case'")

    def curated() -> list[tuple[str, int]]:
        """(trace id, version) of every record in a version the sink confirmed."""
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT r.trace_id, r.version FROM dataset_records r JOIN dataset_versions v "
                "ON v.dataset = r.dataset AND v.version = r.version "
                "WHERE r.dataset = 'regressions' AND v.state = 'done'"))]

    a = Proc(env, tmp_path / "a.log")
    b = None
    try:
        wait_until(lambda: a.leads("tag-writer") and a.leads("curator"), 60, "a to lead")
        b = Proc(env, tmp_path / "b.log")
        wait_until(lambda: bool(b.metrics()), 60, "b's HTTP server")
        assert not b.leads("tag-writer") and not b.leads("curator")  # one leader per job
        first = round_of(4, "r1")
        wait_until(lambda: tagged_in_mlflow() == set(first), 90, "round 1 tags in MLflow")
        wait_until(lambda: {t for t, _ in curated()} == set(first), 60, "round 1 curated")
        by_a = max(v for _, v in curated())

        a.kill9()  # the leader dies: its PostgreSQL session, and its locks, go with it
        wait_until(lambda: b.leads("tag-writer") and b.leads("curator"), 60, "b to take over")
        second = round_of(3, "r2")
        wait_until(lambda: tagged_in_mlflow() == set(first) | set(second), 90,
                   "round 2 tags in MLflow, written by b")
        wait_until(lambda: {t for t, _ in curated()} == set(first) | set(second), 60,
                   "round 2 curated, by b")
        m = b.metrics()
        assert m[("trace_curator_tags_written_total", ())] >= len(second)
    finally:
        a.stop()
        if b is not None:
            b.stop()
    with engine.connect() as conn:
        outbox = conn.execute(text("SELECT COUNT(*) FROM tag_outbox")).scalar()
    assert outbox == 0
    members = curated()
    assert sorted(t for t, _ in members) == sorted(first + second)  # each record once
    assert {t for t, v in members if v > by_a} == set(second)  # versions b made
    engine.dispose()
