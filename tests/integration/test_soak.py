"""Randomized soak (issue 12): hostile input and operator mistakes cause no crash loop, leak no
secret and lose or double nothing.

For ``SOAK_SECONDS`` (default 90; ``SOAK_SECONDS=600`` for the long run) a publisher thread sends
random bursts of valid events (three trace forms, IN_PROGRESS versions before and after the
finished one, duplicates, assessment versions out of order, a few real MLflow traces) and hostile
records (``tests.soak.HOSTILE``) to the real broker, while the real worker runs as a subprocess
and is killed with SIGKILL at random moments and restarted; PostgreSQL drops away (a TCP proxy
between the worker and the server is cut for a few seconds) and the MLflow server used for tag
write-back is stopped and restarted on the same port and backend store. The worker's MLflow URI
and its PostgreSQL password carry a secret token (the server ignores basic auth; PostgreSQL
trusts local connections). Then the chaos stops, the worker drains with ``--exit-when-idle``, and
the store is compared with the ledger of everything published. ``SOAK_SEED`` replays a run (as
far as thread timing allows); ``SOAK_SKIP_KINDS=a,b`` leaves hostile kinds out while debugging.
The PostgreSQL variant has database outages; the SQLite variant (a third of the time, at least
30 s) has kills and MLflow outages only.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
import orjson
import pytest
from kafka.admin import KafkaAdminClient
from sqlalchemy import Engine, select

from store.engine import make_engine
from store.metrics import MetricsConfig, rebuild
from store.models import Assessment, DeadLetter, TagOutbox, Trace, TraceTag
from store.report import summary
from tests import mlflow_traffic as T
from tests import soak as S
from tests.conftest import settings_env
from tests.helpers import bucket_snapshot
from tests.mlflow_server import MlflowServer
from tests.proxy import CuttableProxy

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "90"))
SEED = int(os.environ.get("SOAK_SEED", str(random.SystemRandom().randrange(10**9))))
SKIP_KINDS = {k for k in os.environ.get("SOAK_SKIP_KINDS", "").split(",") if k}
KINDS = [k for k in S.HOSTILE if k not in SKIP_KINDS]
MAX_WORKER_RSS_KB = 2 * 1024 * 1024  # far above a healthy worker; catches unbounded growth
CRASH_LOOP_LIMIT = 15  # this many unexplained exits end the chaos early (the test fails anyway)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(int(SOAK_SECONDS * 1.5) + 900),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]

EXPECTED_TAG = {"error": "error_case", "slow": "slow_response", "ok": None}


def _real_traces(eid: str, rng: random.Random, ledger: S.Ledger
                 ) -> tuple[list[S.Event], dict[str, str | None]]:
    """A few traces that exist in MLflow, so that their tag write-back can be checked there:
    their events (slipped into the traffic at random) and the tag each must end with."""
    kinds = [rng.choice(list(EXPECTED_TAG)) for _ in range(9)]
    ids = [T.log_trace(eid, k) for k in kinds]
    events, expected = [], {}
    for kind, trace in zip(kinds, T.fetch(ids), strict=True):
        tid, value = trace.info.trace_id, trace.to_json()
        ledger.traces[tid] = S.final_of_trace_json(orjson.loads(value))
        expected[tid] = EXPECTED_TAG[kind]
        events.append(S.Event("trace", tid.encode(), value.encode(), "trace"))
    return events, expected


@pytest.mark.parametrize("store_url", ["postgresql", "sqlite"], indirect=True)
def test_soak(store_url: str, settings_factory: Any, producer: Any, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pg = store_url.startswith("postgresql")
    seconds = SOAK_SECONDS if pg else max(30.0, SOAK_SECONDS / 3)
    rng = random.Random(SEED)
    token = f"SOAKTOKEN-{uuid.UUID(int=rng.getrandbits(128)).hex}"
    run_id = f"soak-{uuid.uuid4().hex}"
    monkeypatch.setenv("SOAK_RUN_ID", run_id)  # every child inherits it: the orphan check
    with capsys.disabled():
        print(f"\nsoak: store={'postgresql' if pg else 'sqlite'} seconds={seconds:g} "
              f"seed={SEED} kinds={len(KINDS)}/{len(S.HOSTILE)}", flush=True)

    proxy = None
    worker_url = store_url
    if pg:
        host_port, dbname = store_url.split("@", 1)[1].split("/", 1)
        host, port = host_port.split(":")
        proxy = CuttableProxy(host, int(port))
        worker_url = f"postgresql://postgres:{token}@127.0.0.1:{proxy.port}/{dbname}"
    server = MlflowServer(tmp_path / "mlflow")
    supervisor: S.Supervisor | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    engine = make_engine(store_url)
    try:
        server.start()
        mlflow.set_tracking_uri(server.uri)
        eid = mlflow.create_experiment(f"soak-{uuid.uuid4().hex[:8]}")
        ledger = S.Ledger()
        real_events, real_tags = _real_traces(eid, rng, ledger)

        settings = settings_factory(
            store_url=worker_url, batch_max_records=200, max_event_bytes=S.MAX_EVENT_BYTES,
            db_retry_max_wait_s=1.0, db_connect_timeout_s=2,
            mlflow_tracking_uri=f"http://soakuser:{token}@127.0.0.1:{server.port}",
            tag_writer_interval_s=0.2, mlflow_request_timeout_s=3,
            curation="on", curate_interval_s=10)
        env = settings_env(settings)
        base_ms = int(time.time() * 1000) - 2 * S.HOUR_MS
        traffic = S.Traffic(random.Random(rng.getrandbits(64)), ledger, base_ms)
        publisher = S.Publisher(producer, {"trace": settings.trace_topic,
                                           "assessment": settings.assessment_topic},
                                ledger, traffic, KINDS, random.Random(rng.getrandbits(64)), stop,
                                extra=real_events)
        outages = S.Outages()
        supervisor = S.Supervisor(env, tmp_path, random.Random(rng.getrandbits(64)), outages)
        threads = [publisher, threading.Thread(
            target=S.chaos_mlflow, args=(server, random.Random(rng.getrandbits(64)), stop,
                                         outages), daemon=True)]
        if proxy is not None:
            threads.append(threading.Thread(
                target=S.chaos_db, args=(proxy, random.Random(rng.getrandbits(64)), stop,
                                         outages, S.pg_cluster()), daemon=True))

        # The chaos.
        supervisor.start()
        for t in threads:
            t.start()
        deadline = time.monotonic() + seconds
        while (time.monotonic() < deadline and len(supervisor.crashes) < CRASH_LOOP_LIMIT
               and publisher.is_alive()):
            supervisor.tick()
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(timeout=180)
            assert not t.is_alive(), f"{t.name} did not stop"
        assert publisher.error is None, repr(publisher.error)
        publisher.finish()

        # Everything back; the last worker is killed too, and a fresh one drains the topics.
        if proxy is not None:
            proxy.restore()
            assert S.pg_wait_ready(), "PostgreSQL is not back after the chaos"
        if server.proc is None:
            server.start()
        supervisor.kill9()
        final = supervisor.start(["--exit-when-idle", "5"])
        try:
            final_code: int | str = final.wait(timeout=600)
        except subprocess.TimeoutExpired:
            supervisor.kill9()
            final_code = "timeout (600 s)"

        mismatches = _compare(engine, settings, ledger, real_tags,
                              server.uri, eid)
        if final_code != 0:
            mismatches.append(f"final drain exited {final_code}: "
                              f"{S._tail(supervisor.logs[-1])}")
        for ex in supervisor.crashes:
            mismatches.append(f"worker exited by itself: code {ex.code} ({ex.log.name}) "
                              f"{ex.tail}")
        mismatches += _log_leaks(supervisor.logs, token, pg)
        if supervisor.max_rss_kb > MAX_WORKER_RSS_KB:
            mismatches.append(f"worker RSS too high: {supervisor.max_rss_kb} kB")
        mismatches += [f"outage machinery: {e}" for e in outages.errors]
        dead = _count_dead(engine)
        valid = ledger.count(lambda s: s.kind in ("trace", "assessment"))
        with capsys.disabled():
            print(f"soak: seconds={seconds:g} seed={SEED} records={len(ledger.sent)} "
                  f"valid={valid} hostile={len(ledger.sent) - valid} kills={supervisor.kills} "
                  f"db_outages={len(outages.db)} pg_restarts={outages.pg_restarts} "
                  f"mlflow_outages={len(outages.mlflow)} "
                  f"dead_letters={dead} traces={len(ledger.traces)} "
                  f"assessments={len(ledger.assessments)} "
                  f"unavailable_exits={len(supervisor.unavailable_exits)} "
                  f"crashes={len(supervisor.crashes)} max_rss_mb={supervisor.max_rss_kb // 1024} "
                  f"mismatches={len(mismatches)}", flush=True)
            for line in _digest(mismatches):
                print("soak mismatch:", line, flush=True)
    finally:
        stop.set()
        version = S.pg_cluster()
        if pg and version is not None and not S.pg_wait_ready(60):  # never leave it stopped
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                S.pg_ctl(version, "start")
        if supervisor is not None:
            supervisor.close()
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets
        server.stop()
        if proxy is not None:
            proxy.close()
        engine.dispose()
    # Threads may still be joining a stopped server: give them a moment, then look for orphans.
    for t in threads:
        t.join(timeout=30)
    assert S.orphans(run_id) == [], "processes left behind"
    assert mismatches == [], f"{len(mismatches)} mismatches (seed {SEED}); see the output above"


def _digest(mismatches: list[str], examples: int = 2) -> list[str]:
    """Mismatches grouped by kind (the text before the first colon), with counts and examples."""
    groups: dict[str, list[str]] = {}
    for m in mismatches:
        groups.setdefault(m.split(":", 1)[0], []).append(m)
    return [f"[{len(ms)}x] {m[:3000]}" for ms in groups.values() for m in ms[:examples]]


def _count_dead(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(DeadLetter.id)).all())


def _compare(engine: Engine, settings: Any, ledger: S.Ledger, real_tags: dict[str, str | None],
             mlflow_uri: str, eid: str) -> list[str]:
    """Every difference between the store (and MLflow) and the ledger, as readable lines."""
    out: list[str] = []
    with engine.connect() as conn:
        rows = {r.trace_id: r for r in conn.execute(select(
            Trace.trace_id, Trace.status, Trace.execution_time_ms, Trace.span_count))}
        arows = {r.assessment_id: r for r in conn.execute(select(
            Assessment.assessment_id, Assessment.value, Assessment.last_update_time_ms))}
        letters = {(r.topic, r.partition, r.offset): r for r in conn.execute(select(
            DeadLetter.topic, DeadLetter.partition, DeadLetter.offset, DeadLetter.error))}
        tags = {(r.trace_id, r.tag_key): r.tag_value for r in conn.execute(select(
            TraceTag.trace_id, TraceTag.tag_key, TraceTag.tag_value))}
        outbox = {(r.trace_id, r.tag_key): r for r in conn.execute(select(
            TagOutbox.trace_id, TagOutbox.tag_key, TagOutbox.tag_value,
            TagOutbox.waiting_for_trace, TagOutbox.last_error))}

    # 1. Every valid trace once, in its most complete version; nothing else.
    for tid, fin in ledger.traces.items():
        row = rows.get(tid)
        if row is None:
            out.append(f"trace lost: {tid}")
        elif (have := (row.status, row.execution_time_ms, row.span_count)) != (
                want := (fin.status, fin.execution_time_ms, fin.span_count)):
            out.append(f"trace differs: {tid} stored {have} expected {want}")
    out += [f"trace stored that was never valid: {tid!r}" for tid in set(rows) - set(ledger.traces)]

    # 2. Every assessment in its newest version.
    for aid, (updated_ms, value) in ledger.assessments.items():
        arow = arows.get(aid)
        if arow is None:
            out.append(f"assessment lost: {aid}")
        elif (got_a := (arow.last_update_time_ms, arow.value)) != (updated_ms, value):
            out.append(f"assessment differs: {aid} stored {got_a!r} "
                       f"expected {(updated_ms, value)!r}")
    out += [f"assessment stored that was never valid: {aid!r}"
            for aid in set(arows) - set(ledger.assessments)]

    # 3. Every hostile record dead-lettered at its origin; no valid one.
    with ledger.lock:
        sent = list(ledger.sent)
    for s in sent:
        where = (s.topic, s.partition, s.offset)
        if s.expect == "dead" and where not in letters:
            out.append(f"hostile {s.kind} not dead-lettered: {where}")
        if s.expect == "store" and where in letters:
            out.append(f"valid {s.kind} dead-lettered: {where} {letters[where].error[:300]}")

    # 4. The committed offsets cover every record.
    expected_offsets: dict[tuple[str, int], int] = {}
    for s in sent:
        key = (s.topic, s.partition)
        expected_offsets[key] = max(expected_offsets.get(key, 0), s.offset + 1)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        committed = admin.list_group_offsets(settings.group_id).get(settings.group_id, {})
    finally:
        admin.close()
    got = {(tp.topic, tp.partition): o.offset for tp, o in committed.items() if o.offset >= 0}
    for key, off in sorted(expected_offsets.items()):
        if got.get(key) != off:
            out.append(f"committed offset short: {key} {got.get(key)} expected {off}")

    # 5. Buckets: each distinct trace counted once, and equal to a rebuild from the raw rows.
    stamps = [f.timestamp_ms for f in ledger.traces.values()]
    s = summary(engine, min(stamps) - S.HOUR_MS, max(stamps) + S.HOUR_MS)
    if s.overall.total_traces != len(ledger.traces):
        out.append(f"bucket total: {s.overall.total_traces} traces, expected "
                   f"{len(ledger.traces)}")
    live = bucket_snapshot(engine)
    with engine.begin() as conn:
        rebuild(conn, MetricsConfig(settings.metrics_dimension_tag, None, None), 0)
    rebuilt = bucket_snapshot(engine)
    for res in live:
        if live[res] != rebuilt[res]:
            diff = set(live[res]) ^ set(rebuilt[res])
            out.append(f"buckets differ from a rebuild: {res}, {len(diff)} rows, e.g. "
                       f"{sorted(diff, key=repr)[:2]!r}"[:1500])

    # 6. Tags: those of traces MLflow knows are written back, the rest wait in the outbox.
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    for tid, want in real_tags.items():
        have = client.get_trace(tid).info.tags.get("eval_candidate")
        if have != want:
            out.append(f"MLflow tag wrong: {tid} {have!r} expected {want!r}")
        if (tid, "eval_candidate") in outbox:
            out.append(f"outbox holds a tag of a trace MLflow has: {tid}")
    for (tid, key), value in tags.items():
        if tid in real_tags or value is None:
            continue
        row = outbox.get((tid, key))
        if row is None or row.tag_value != value:
            out.append(f"tag lost: {key}={value} of {tid} neither written nor in the outbox "
                       f"({row!r})")
        elif not row.waiting_for_trace:
            out.append(f"outbox row not waiting for its trace: {tid} {row.last_error!r}")
    for tid in {t for t, _ in outbox} - {t for (t, _), v in tags.items()}:
        out.append(f"outbox row for an undecided trace: {tid}")
    return out


def _log_leaks(logs: list[Path], token: str, pg: bool) -> list[str]:
    """The token is in no log line; the masked forms show the check looked at the right text."""
    out = []
    text = ""
    for log in logs:
        body = log.read_text(errors="replace")
        text += body
        if token in body:
            line = next(ln for ln in body.splitlines() if token in ln)
            out.append(f"secret in a log: {log.name}: {line[:300]}")
    if "soakuser:***@" not in text:
        out.append("no masked MLflow URI in any log (start-up settings line missing?)")
    if pg and "postgres:***@" not in text:
        out.append("no masked store URL in any log (start-up settings line missing?)")
    return out
