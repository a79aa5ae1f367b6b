"""The soak test's machinery (tests/integration/test_soak.py): traffic, a ledger, chaos, checks.

- ``Traffic`` makes valid trace and assessment events in the three trace forms (``Trace.to_json``,
  ``TraceInfo.to_dict``, flat rows), with IN_PROGRESS versions before or after the finished one,
  duplicates, and newer assessment versions published before older ones. It knows, per trace and
  per assessment, the version the store must end with.
- ``HOSTILE`` names every hostile kind, the topic it goes to, and what must become of it: ``dead``
  (a dead letter at its exact topic/partition/offset) or ``store`` (valid but hostile in size or
  shape: stored like any trace, counted once, no crash, bounded memory).
- ``Publisher`` sends random bursts from a thread and writes every record's topic, partition and
  offset (from the send futures) into the ledger.
- ``Supervisor`` runs ``trace-curator run`` as a subprocess, kills it with SIGKILL at random
  moments and restarts it, as a container runtime would; any exit it did not cause is recorded.
- ``chaos_db`` cuts and restores the TCP proxy in front of PostgreSQL and, where the test runs
  as root beside the machine's own cluster (CI does), also stops and restarts PostgreSQL itself
  (``pg_ctlcluster``); ``chaos_mlflow`` stops (SIGTERM) and restarts the MLflow server on its
  port and backend store.
Everything random draws from one seed (``SOAK_SEED``), one ``random.Random`` per thread.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests import metrics_data as M
from tests import payloads as P

HOUR_MS = 3_600_000
MAX_EVENT_BYTES = 1024 * 1024  # the worker's max_event_bytes in the soak


# ---------------------------------------------------------------------------------------------
# The ledger: every record published, and what the store must end with.


@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    offset: int
    kind: str  # "trace", "assessment", or a hostile kind
    expect: str  # "store" or "dead"


@dataclass(frozen=True)
class FinalTrace:
    status: str
    execution_time_ms: int | None
    span_count: int
    timestamp_ms: int


@dataclass
class Ledger:
    sent: list[Sent] = field(default_factory=list)
    traces: dict[str, FinalTrace] = field(default_factory=dict)
    # assessment_id -> (last_update_time_ms, value) of the newest version
    assessments: dict[str, tuple[int, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, s: Sent) -> None:
        with self.lock:
            self.sent.append(s)

    def count(self, pred: Callable[[Sent], bool]) -> int:
        with self.lock:
            return sum(1 for s in self.sent if pred(s))


# ---------------------------------------------------------------------------------------------
# Valid traffic.


@dataclass
class Event:
    topic: str  # "trace" or "assessment"
    key: bytes | None
    value: bytes | None
    kind: str
    expect: str = "store"


def final_of_trace_json(doc: dict[str, Any]) -> FinalTrace:
    info = doc["info"]
    return FinalTrace(info["state"], info.get("execution_duration_ms"),
                      len(doc["data"]["spans"]),
                      min(s["start_time_unix_nano"] for s in doc["data"]["spans"]) // 1_000_000)


class Traffic:
    """Valid events. ``batch()`` returns a random burst; ``flush()`` the versions held back."""

    def __init__(self, rng: random.Random, ledger: Ledger, base_ms: int) -> None:
        self.rng = rng
        self.ledger = ledger
        self.base_ms = base_ms
        self.held: list[Event] = []  # finished versions published in a later burst
        self.finals: list[Event] = []  # for duplicates
        self.trace_ids: list[str] = []
        self.n = 0

    def _ts(self) -> int:
        return self.base_ms + self.rng.randrange(2 * HOUR_MS)

    def _trace_event(self, tid: str, value: bytes, kind: str = "trace") -> Event:
        return Event("trace", tid.encode(), value, kind)

    def new_trace(self) -> list[Event]:
        """One trace's events in publication order (the finished version may be held back)."""
        rng, self.n = self.rng, self.n + 1
        form = rng.choice(["trace_json", "trace_json", "flat", "flat", "trace_info"])
        start_ms = self._ts()
        if form == "trace_json":
            doc = P.trace_doc(rng.choice(["ok", "ok", "error", "slow"]), start_ms=start_ms)
            tid = doc["info"]["trace_id"]
            final = final_of_trace_json(doc)
            early = None
            if rng.random() < 0.3:
                early = P.trace_doc("ok", trace_id=tid, start_ms=start_ms, in_progress=True,
                                    keep_spans=rng.randint(0, 2))
        elif form == "flat":
            doc = M.flat_trace(rng, self.n, start_ms, seed_tag=uuid.uuid4().hex[:12] + "-")
            tid = doc["trace_id"]
            final = FinalTrace(doc["status"], doc["execution_time_ms"], len(doc["spans"]),
                               start_ms)
            early = M.in_progress_version(doc) if rng.random() < 0.3 else None
        else:
            doc = dict(P.fixture("trace_info_ok"))
            tid = P.new_trace_id()
            doc.update(trace_id=tid, request_time=P.iso(start_ms),
                       execution_duration_ms=rng.randint(5, 9000),
                       state=rng.choice(["OK", "OK", "ERROR"]))
            final = FinalTrace(doc["state"], doc["execution_duration_ms"], 0, start_ms)
            early = None
        self.ledger.traces[tid] = final
        self.trace_ids.append(tid)
        fin = self._trace_event(tid, orjson.dumps(doc))
        self.finals.append(fin)
        if early is None:
            return [fin]
        e = self._trace_event(tid, orjson.dumps(early))
        choice = rng.random()
        if choice < 0.4:
            return [e, fin]
        if choice < 0.7:
            return [fin, e]  # a stale IN_PROGRESS version after the finished one
        self.held.append(fin)  # finished version in a later burst
        return [e]

    def new_assessment(self) -> list[Event]:
        rng = self.rng
        if not self.trace_ids:
            return []
        tid = rng.choice(self.trace_ids)
        kind = rng.choice(["feedback_numeric", "feedback_bool", "feedback_no", "expectation"])
        value: Any = {"feedback_numeric": round(rng.random(), 3),
                      "feedback_bool": rng.random() < 0.6,
                      "feedback_no": rng.choice(["yes", "no"]),
                      "expectation": f"expected {rng.randrange(10**6)}"}[kind]
        t0 = self.base_ms + rng.randrange(HOUR_MS)
        doc = P.assessment_doc(kind, trace_id=tid, updated_ms=t0, value=value)
        aid = doc["assessment_id"]
        docs = [(t0, value, doc)]
        if rng.random() < 0.3:  # a newer version, published before or after the older one
            t1 = t0 + rng.randint(1, 60_000)
            newer_value: Any = (not value) if isinstance(value, bool) else (
                round(rng.random(), 3) if kind == "feedback_numeric" else f"newer {t1}")
            newer = P.assessment_doc(kind, trace_id=tid, assessment_id=aid, updated_ms=t1,
                                     value=newer_value)
            newer["create_time"] = doc["create_time"]
            docs.append((t1, newer_value, newer))
            rng.shuffle(docs)
        newest = max(docs, key=lambda d: d[0])
        self.ledger.assessments[aid] = (newest[0], newest[1])
        return [Event("assessment", tid.encode(), orjson.dumps(d), "assessment")
                for _, _, d in docs]

    def duplicate(self) -> list[Event]:
        return [self.rng.choice(self.finals)] if self.finals else []

    def release_held(self) -> list[Event]:
        out, keep = [], []
        for e in self.held:
            (out if self.rng.random() < 0.5 else keep).append(e)
        self.held = keep
        return out

    def flush(self) -> list[Event]:
        out, self.held = self.held, []
        return out


# ---------------------------------------------------------------------------------------------
# Hostile records. Each builder takes (rng, now_ms) and returns (key, value).


def _flat(tid: str, ts: int, **over: Any) -> dict[str, Any]:
    return {"trace_id": tid, "experiment_id": "1", "name": "hostile", "status": "OK",
            "timestamp_ms": ts, "execution_time_ms": 10, **over}


def _hid() -> str:
    return "tr-hostile-" + uuid.uuid4().hex


def _nested_feedback(depth: int) -> bytes:
    """An assessment whose feedback value nests ``depth`` objects (orjson writes only 255)."""
    doc = P.assessment_doc("feedback_numeric", trace_id=_hid(), value="@DEEP@")
    return orjson.dumps(doc).replace(b'"@DEEP@"', b'{"v":' * depth + b"0.5" + b"}" * depth)


def _assessment(**over: Any) -> bytes:
    doc = P.assessment_doc("feedback_numeric", trace_id=_hid())
    doc.update(over)
    return orjson.dumps(doc)


def _oversized(rng: random.Random, ts: int) -> bytes:
    pad = "x" * (MAX_EVENT_BYTES + rng.randint(1, 4096))
    return orjson.dumps(_flat(_hid(), ts, request=pad))


def _span_types(n: int, tid: str, ts: int) -> dict[str, Any]:
    start_ns = ts * 1_000_000
    spans = [{"name": f"s{i}", "span_type": f"T{i}", "start_time_ns": start_ns,
              "end_time_ns": start_ns + (i % 97 + 1) * 1_000_000, "status": "OK"}
             for i in range(n)]
    return _flat(tid, ts, execution_time_ms=200, spans=spans, status="ERROR")


Builder = Callable[[random.Random, int], bytes | None]
# name -> (topic, expected fate, builder, weight)
HOSTILE: dict[str, tuple[str, str, Builder, float]] = {
    "not_json": ("trace", "dead", lambda r, ts: b"this is {not json", 1.0),
    "not_utf8": ("trace", "dead",
                 lambda r, ts: b'{"trace_id": "tr-\xff\xfe", "status": "OK", "timestamp_ms": 1}',
                 1.0),
    "json_array": ("assessment", "dead", lambda r, ts: b"[1, 2, 3]", 1.0),
    "wrong_type_id": ("trace", "dead",
                      lambda r, ts: orjson.dumps(_flat(_hid(), ts) | {"trace_id": 42}), 1.0),
    "wrong_type_status": ("trace", "dead",
                          lambda r, ts: orjson.dumps(_flat(_hid(), ts, status=["OK"])), 1.0),
    "wrong_type_timestamp": ("trace", "dead",
                             lambda r, ts: orjson.dumps(_flat(_hid(), ts,
                                                              timestamp_ms="yesterday")), 1.0),
    "wrong_type_valid": ("assessment", "dead", lambda r, ts: _assessment(valid="yes"), 1.0),
    "missing_trace_id": ("trace", "dead",
                         lambda r, ts: orjson.dumps({k: v for k, v in _flat(_hid(), ts).items()
                                                     if k != "trace_id"}), 1.0),
    "missing_assessment_id": ("assessment", "dead",
                              lambda r, ts: _assessment(assessment_id=None), 1.0),
    "nul_trace_id": ("trace", "dead",
                     lambda r, ts: orjson.dumps(_flat(_hid() + "\x00x", ts)), 1.0),
    "nul_assessment_id": ("assessment", "dead",
                          lambda r, ts: _assessment(assessment_id="a-\x00" + uuid.uuid4().hex),
                          1.0),
    "nested_feedback_300": ("assessment", "dead",
                            lambda r, ts: _nested_feedback(300), 1.0),
    "tokens_2_62_plus_2_62": ("trace", "dead", lambda r, ts: orjson.dumps(_flat(
        _hid(), ts, metadata={"mlflow.trace.tokenUsage": orjson.dumps(
            {"input_tokens": 2**62, "output_tokens": 2**62}).decode()})), 1.0),
    "create_time_2_62": ("assessment", "dead",
                         lambda r, ts: _assessment(create_time=2**62, last_update_time=2**62),
                         1.0),
    "timestamp_2_62": ("trace", "dead",
                       lambda r, ts: orjson.dumps(_flat(_hid(), 2**62)), 1.0),
    "timestamp_year_10000_ms": ("trace", "dead",
                                lambda r, ts: orjson.dumps(_flat(_hid(), 253_402_300_800_000
                                                                 + r.randrange(10**9))), 1.0),
    "timestamp_year_10000_iso": ("assessment", "dead",
                                 lambda r, ts: _assessment(create_time="10000-01-01T00:00:00Z"),
                                 1.0),
    "negative_duration": ("trace", "dead",
                          lambda r, ts: orjson.dumps(_flat(_hid(), ts, execution_time_ms=-5)),
                          1.0),
    "negative_span": ("trace", "dead", lambda r, ts: orjson.dumps(_flat(_hid(), ts, spans=[
        {"name": "s", "span_type": "LLM", "start_time_ns": ts * 10**6 + 5,
         "end_time_ns": ts * 10**6, "status": "OK"}])), 1.0),
    "oversized": ("trace", "dead", _oversized, 0.2),
    "tombstone_trace": ("trace", "dead", lambda r, ts: None, 0.5),
    "tombstone_assessment": ("assessment", "dead", lambda r, ts: None, 0.5),
    # Valid, but hostile in size or shape: stored, counted once, folded where they are wide.
    "span_types_5000": ("trace", "store",
                        lambda r, ts: orjson.dumps(_span_types(5000, _hid(), ts)), 0.15),
    "deep_request": ("trace", "store", lambda r, ts: orjson.dumps(_flat(
        _hid(), ts, status="ERROR", request="[" * 400 + "]" * 400)), 1.0),
}


def hostile_event(name: str, rng: random.Random, ts: int, ledger: Ledger) -> Event:
    topic, expect, build, _ = HOSTILE[name]
    value = build(rng, ts)
    key = b"hostile"  # a tombstone needs a key: the producer refuses a record with neither
    if expect == "store":
        assert value is not None
        doc = orjson.loads(value)
        tid = doc["trace_id"]
        ledger.traces[tid] = FinalTrace(doc["status"], doc.get("execution_time_ms"),
                                        len(doc.get("spans") or []), doc["timestamp_ms"])
        key = tid.encode()
    return Event(topic, key, value, name, expect)


# ---------------------------------------------------------------------------------------------
# The publisher thread.


class Publisher(threading.Thread):
    def __init__(self, producer: Any, topics: dict[str, str], ledger: Ledger, traffic: Traffic,
                 kinds: list[str], rng: random.Random, stop: threading.Event,
                 extra: list[Event] | None = None) -> None:
        super().__init__(name="soak-publisher", daemon=True)
        self.producer, self.topics, self.ledger, self.traffic = producer, topics, ledger, traffic
        self.kinds, self.rng, self.stop_event = kinds, rng, stop
        self.extra = list(extra or [])  # events to slip in at random (real MLflow traces)
        self.error: BaseException | None = None

    def send(self, events: list[Event]) -> None:
        futures = [(e, self.producer.send(self.topics[e.topic], key=e.key, value=e.value))
                   for e in events]
        self.producer.flush()
        for e, f in futures:
            md = f.get(timeout=60)
            self.ledger.add(Sent(md.topic, md.partition, md.offset, e.kind, e.expect))

    def burst(self) -> list[Event]:
        rng, out = self.rng, []
        weights = [HOSTILE[k][3] for k in self.kinds]
        for _ in range(rng.randint(1, 40)):
            r = rng.random()
            if r < 0.55:
                out += self.traffic.new_trace()
            elif r < 0.78:
                out += self.traffic.new_assessment()
            elif r < 0.88:
                out += self.traffic.duplicate()
            elif self.kinds:
                name = rng.choices(self.kinds, weights)[0]
                out.append(hostile_event(name, rng, self.traffic._ts(), self.ledger))
        out += self.traffic.release_held()
        if self.extra and rng.random() < 0.3:
            out.append(self.extra.pop())
        return out

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.send(self.burst())
                self.stop_event.wait(self.rng.uniform(0.05, 1.0))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def finish(self) -> None:
        """After the thread stopped: whatever was held back, and the remaining extras."""
        self.send(self.traffic.flush() + self.extra)
        self.extra = []


# ---------------------------------------------------------------------------------------------
# Outages.


@dataclass
class Outages:
    db: list[tuple[float, float]] = field(default_factory=list)  # monotonic (start, end)
    mlflow: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pg_restarts: int = 0  # outages that stopped the real PostgreSQL, not just the proxy

    def db_down_between(self, t0: float, t1: float) -> bool:
        return any(a <= t1 and (b == 0 or b >= t0) for a, b in list(self.db))


def pg_cluster() -> str | None:
    """The machine's PostgreSQL cluster version, when this process may restart it (root,
    ``pg_ctlcluster`` present, ``SOAK_PG_RESTART`` not ``0``), else None."""
    if os.environ.get("SOAK_PG_RESTART", "1") == "0" or os.geteuid() != 0 \
            or shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    return versions[-1] if versions else None


def pg_ctl(version: str, action: str) -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action,
                    *(["-m", "fast"] if action == "stop" else [])],
                   check=True, capture_output=True, timeout=120)


def pg_wait_ready(timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"],
                              check=False, timeout=30)
        if done.returncode == 0:
            return True
        time.sleep(0.3)
    return False


def chaos_db(proxy: Any, rng: random.Random, stop: threading.Event, outages: Outages,
             pg_version: str | None = None) -> None:
    """Cut the proxy for a few seconds at random; every third outage (with ``pg_version``)
    stops the real PostgreSQL instead, then starts it and waits until it answers."""
    while not stop.wait(rng.uniform(4, 18)):
        start = time.monotonic()
        outages.db.append((start, 0.0))
        if pg_version is not None and len(outages.db) % 3 == 0:
            try:
                pg_ctl(pg_version, "stop")
                outages.pg_restarts += 1
                stop.wait(rng.uniform(0.5, 4))
            except (subprocess.SubprocessError, OSError) as exc:
                outages.errors.append(f"postgresql stop failed: {exc!r}")
            finally:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    pg_ctl(pg_version, "start")
                if not pg_wait_ready():
                    outages.errors.append("postgresql did not come back within 60 s")
        else:
            proxy.cut()
            stop.wait(rng.uniform(0.5, 6))
            proxy.restore()
        outages.db[-1] = (start, time.monotonic())


def chaos_mlflow(server: Any, rng: random.Random, stop: threading.Event,
                 outages: Outages) -> None:
    while not stop.wait(rng.uniform(8, 30)):
        start = time.monotonic()
        server.stop()
        time.sleep(rng.uniform(0, 5))
        try:
            server.start()
        except Exception as exc:  # one retry, then the test reports it
            outages.errors.append(f"mlflow restart failed: {exc!r}")
            server.start()
        outages.mlflow.append((start, time.monotonic()))


# ---------------------------------------------------------------------------------------------
# The worker under kill -9.


@dataclass
class Exit:
    code: int
    log: Path
    tail: str


class Supervisor:
    """Keeps one ``trace-curator run`` alive, kills it with SIGKILL at random moments."""

    def __init__(self, env: dict[str, str], folder: Path, rng: random.Random,
                 outages: Outages) -> None:
        self.env, self.folder, self.rng, self.outages = env, folder, rng, outages
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.kill_at = 0.0
        self.starts = 0
        self.kills = 0
        self.unavailable_exits: list[Exit] = []  # EXIT_UNAVAILABLE during a database outage
        self.crashes: list[Exit] = []  # every other exit the supervisor did not cause
        self.logs: list[Path] = []
        self.max_rss_kb = 0

    def start(self, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
        fmt = "json" if self.starts % 2 else "kv"  # both log formats, alternately
        log = self.folder / f"worker-{self.starts:03d}-{fmt}.log"
        self.logs.append(log)
        self.starts += 1
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run", *(extra_args or [])],
                env={**self.env, "TRACE_CURATOR_LOG_FORMAT": fmt}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = time.monotonic()
        self.kill_at = self.started_at + self.rng.uniform(1.5, 16)
        return self.proc

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def _sample_rss(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.max_rss_kb = max(self.max_rss_kb, int(line.split()[1]))

    def tick(self) -> None:
        """One supervision step: note an exit and restart, or kill when the moment has come."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            ex = Exit(code, self.logs[-1], _tail(self.logs[-1]))
            if code == 3 and self.outages.db_down_between(self.started_at - 1, time.monotonic()):
                self.unavailable_exits.append(ex)
            else:
                self.crashes.append(ex)
            time.sleep(0.5)  # a supervisor's restart delay
            self.start()
            return
        self._sample_rss()
        if time.monotonic() >= self.kill_at:
            self.kill9()
            time.sleep(self.rng.uniform(0, 1.5))
            self.start()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _tail(path: Path, n: int = 2500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def orphans(marker: str) -> list[str]:
    """Processes (other than this one) whose environment carries ``marker``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (d / "environ").read_bytes():
                out.append(f"{d.name}: {(d / 'cmdline').read_bytes()[:200]!r}")
    return out
