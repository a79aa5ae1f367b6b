"""The fast write path on both backends: what it writes equals the plain way of writing it.

* A whole batch at once (contributions summed per bucket in Python, new traces and their
  decisions inserted with ``dialect.insert_new``) gives the same rows and buckets as one trace
  a batch, a replay changes nothing, and a rebuild from raw rows equals the buckets.
* ``insert_new`` of rows that exist after all (a wrong guess) gives what ``bulk_upsert`` gives,
  and the transaction goes on (PostgreSQL: the savepoint is rolled back, the upsert runs).
* Without write-back (``SqlWriter(outbox=False)``) the same rows are written, except that no
  tag is queued in the outbox.
* A trace pruned by retention keeps its outbox row; when it comes back, its decisions are
  written over that row instead of refusing the batch.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, select, text

from consumers.events import Provenance
from consumers.formats import decode_assessment, decode_trace
from store import dialect, schema
from store.engine import make_engine
from store.metrics import MetricsConfig, rebuild
from store.models import DECISION_LOG, OUTBOX, TRACE_TAGS, TRACES
from store.retention import Retention, prune
from store.upserts import TRACE_COLUMNS, Batch, trace_row
from store.writer import SqlWriter
from tests import metrics_data as M
from tests import payloads as P
from tests.helpers import bucket_snapshot, fresh_pg_database
from worker.rules.engine import load_rules

pytestmark = pytest.mark.integration
HOUR = 3_600_000
DAY = 24 * HOUR
BASE_MS = 1_795_000_000_000 + 17 * 60_000 + 23_456
CONFIG = MetricsConfig("environment", None, None)


def _events(n: int, seed: int = 3) -> tuple[list[Any], list[Any]]:
    """Finished traces, IN_PROGRESS versions of some, and feedback on about half."""
    docs = M.traffic(n, BASE_MS, 3 * HOUR, seed=seed)
    rng = random.Random(seed)
    early = [M.in_progress_version(d) for d in docs if rng.random() < 0.3]
    traces = [decode_trace(P.dumps(d), Provenance("t", 0, i), 1 << 22)
              for i, d in enumerate(docs + early)]
    rng.shuffle(traces)
    feedback = [decode_assessment(P.dumps(a), Provenance("a", 0, i), 1 << 22)
                for i, a in enumerate(M.feedback_for(docs, seed=seed))]
    return traces, feedback


def _writer(engine: Engine) -> SqlWriter:
    return SqlWriter(engine, load_rules(None), CONFIG)


def _rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Traces, tags, decision log and outbox, without surrogate ids: comparable across stores."""
    out = {}
    with engine.connect() as conn:
        for table, key in ((TRACES, ["trace_id"]), (TRACE_TAGS, ["trace_id", "tag_key"]),
                           (DECISION_LOG, ["trace_id", "digest"]),
                           (OUTBOX, ["trace_id", "tag_key"])):
            cols = [c for c in table.c if c.name != "id"]
            rows = conn.execute(select(*cols).order_by(*(table.c[k] for k in key))).all()
            out[table.name] = [tuple(orjson.dumps(v).decode() if isinstance(v, dict | list)
                                     else v for v in r) for r in rows]
    return out


@contextlib.contextmanager
def _second_store(store_url: str, tmp_path: Any, request: Any) -> Iterator[Engine]:
    if store_url.startswith("sqlite"):
        engine = make_engine(f"sqlite:///{tmp_path}/second.db")
        schema.upgrade(engine)
        yield engine
        engine.dispose()
        return
    with fresh_pg_database(request.getfixturevalue("pg_available")) as url:
        engine = make_engine(url)
        schema.upgrade(engine)
        yield engine
        engine.dispose()


def test_one_batch_equals_one_trace_a_batch_a_replay_and_a_rebuild(
        store_url: str, tmp_path: Any, request: Any) -> None:
    traces, feedback = _events(150)
    engine = make_engine(store_url)
    w = _writer(engine)
    # Everything in one batch: feedback with its traces, or before them.
    w.write(Batch(traces=traces, assessments=feedback[: len(feedback) // 2]), BASE_MS)
    w.write(Batch(assessments=feedback[len(feedback) // 2:]), BASE_MS)
    once, buckets = _rows(engine), bucket_snapshot(engine)
    assert buckets["minute"] and once["trace_tags"] and once["decision_log"]
    # A replay of everything, in one batch: nothing changes.
    w.write(Batch(traces=traces, assessments=feedback), BASE_MS + HOUR)
    assert _rows(engine) == once and bucket_snapshot(engine) == buckets

    with _second_store(store_url, tmp_path, request) as slow:
        ws = _writer(slow)
        for e in [*traces, *feedback]:
            if hasattr(e, "spans"):
                ws.write(Batch(traces=[e]), BASE_MS)
            else:
                ws.write(Batch(assessments=[e]), BASE_MS)
        # The order of arrival differs (feedback last here), so the decision log may hold
        # other intermediate evaluations; what is current must agree.
        slow_rows = _rows(slow)
        for table in ("traces", "trace_tags"):
            assert [r[:-1] if table == "traces" else r[:3] for r in slow_rows[table]] == \
                [r[:-1] if table == "traces" else r[:3] for r in once[table]]
        assert bucket_snapshot(slow) == buckets

    with engine.begin() as conn:
        rebuild(conn, CONFIG, BASE_MS)
    assert bucket_snapshot(engine) == buckets
    engine.dispose()


def test_without_write_back_the_store_is_the_same_and_the_outbox_stays_empty(
        store_url: str, tmp_path: Any, request: Any) -> None:
    """Write-back off: nothing would ever drain the outbox, so no row is queued there (it
    grew by a row per changed tag, forever); traces, tags, decision log and buckets are those
    of a writer that queues."""
    traces, feedback = _events(120, seed=5)
    engine = make_engine(store_url)
    w = _writer(engine)
    w.write(Batch(traces=traces, assessments=feedback), BASE_MS)
    queued, buckets = _rows(engine), bucket_snapshot(engine)
    assert queued["tag_outbox"]
    with _second_store(store_url, tmp_path, request) as other:
        SqlWriter(other, load_rules(None), CONFIG, outbox=False).write(
            Batch(traces=traces, assessments=feedback), BASE_MS)
        rows = _rows(other)
        assert rows["tag_outbox"] == []
        assert {k: v for k, v in rows.items() if k != "tag_outbox"} == \
            {k: v for k, v in queued.items() if k != "tag_outbox"}
        assert bucket_snapshot(other) == buckets
    engine.dispose()


def test_insert_new_of_rows_that_exist_after_all_equals_the_upsert(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    upserts: list[str] = []
    plain = dialect.bulk_upsert

    def counted(conn: Any, table: Any, *args: Any, **kwargs: Any) -> None:
        upserts.append(table.name)
        plain(conn, table, *args, **kwargs)

    monkeypatch.setattr(dialect, "bulk_upsert", counted)
    pg = store_url.startswith("postgresql")
    docs = M.traffic(3, BASE_MS, HOUR)
    events = [decode_trace(P.dumps(d), Provenance("t", 0, i), 1 << 22)
              for i, d in enumerate(docs)]
    early = decode_trace(P.dumps(M.in_progress_version(docs[0])), Provenance("t", 0, 9), 1 << 22)
    engine = make_engine(store_url)
    with engine.begin() as conn:  # stored: an IN_PROGRESS version of 0, the final one of 1
        dialect.bulk_upsert(conn, TRACES, ("trace_id",), TRACE_COLUMNS,
                            [trace_row(early, 1), trace_row(events[1], 1)],
                            newer_col="completeness")
    with engine.begin() as conn:  # guessed new, wrongly for 0 and 1
        dialect.insert_new(conn, TRACES, ("trace_id",), TRACE_COLUMNS,
                           [trace_row(e, 2) for e in events], newer_col="completeness")
        assert upserts == ["traces", "traces"]  # the stored versions, then the fallback
        # The transaction goes on after the fallback; a new row is a plain COPY there.
        dialect.insert_new(conn, DECISION_LOG, ("trace_id", "digest"),
                           ("trace_id", "digest", "decided_ms", "trigger", "outcomes", "tags"),
                           [(events[0].trace_id, "d1", 2, "trace", "[]", "{}")],
                           on_conflict="nothing")
    assert upserts == ["traces", "traces"] + ([] if pg else ["decision_log"])
    with engine.begin() as conn:
        dialect.insert_new(conn, DECISION_LOG, ("trace_id", "digest"),
                           ("trace_id", "digest", "decided_ms", "trigger", "outcomes", "tags"),
                           [(events[0].trace_id, "d1", 3, "trace", "[1]", "{}"),
                            (events[1].trace_id, "d1", 3, "trace", "[]", "{}")],
                           on_conflict="nothing")
    with engine.connect() as conn:
        got = {r.trace_id: (r.status, r.ingested_ms) for r in conn.execute(
            select(TRACES.c.trace_id, TRACES.c.status, TRACES.c.ingested_ms))}
        log = sorted(conn.execute(text(
            "SELECT trace_id, decided_ms FROM decision_log")).all())
    # The more complete version won (0), an equal one changed nothing (1), the new one is in.
    assert got == {events[0].trace_id: (events[0].status, 2),
                   events[1].trace_id: (events[1].status, 1),
                   events[2].trace_id: (events[2].status, 2)}
    assert log == sorted([(events[0].trace_id, 2), (events[1].trace_id, 3)])
    engine.dispose()


def test_a_pruned_trace_that_comes_back_replaces_its_outbox_row(store_url: str) -> None:
    doc = P.trace_doc("error", start_ms=BASE_MS)  # the default rules tag an error trace
    event = decode_trace(P.dumps(doc), Provenance("t", 0, 0), 1 << 22)
    engine = make_engine(store_url)
    w = _writer(engine)
    w.write(Batch(traces=[event]), BASE_MS)
    before = _rows(engine)
    assert len(before["tag_outbox"]) == 1 and len(before["trace_tags"]) == 1
    later = BASE_MS + 40 * DAY
    with engine.begin() as conn:
        assert prune(conn, later, Retention(30, 30, 730, 1000)).traces == 1
    assert len(_rows(engine)["tag_outbox"]) == 1  # the outbox keeps its row
    result = w.write(Batch(traces=[event]), later)
    assert result.traces_written == 1 and result.tags_changed == 1
    after = _rows(engine)
    assert [r[:3] for r in after["trace_tags"]] == [r[:3] for r in before["trace_tags"]]
    assert len(after["tag_outbox"]) == 1 and after["tag_outbox"][0][4] == later
    engine.dispose()


def test_an_error_while_the_copy_is_open_propagates_and_nothing_is_written(
        store_url: str) -> None:
    docs = M.traffic(2, BASE_MS, HOUR)
    rows = [trace_row(decode_trace(P.dumps(d), Provenance("t", 0, i), 1 << 22), 1)
            for i, d in enumerate(docs)]
    engine = make_engine(store_url)
    ran = []
    new = dialect.NewRows(TRACES, ("trace_id",), TRACE_COLUMNS, rows, "completeness")
    with pytest.raises(ZeroDivisionError), engine.begin() as conn, dialect.inserting_new(
            conn, new):
        ran.append(True)
        _ = 1 / 0
    assert ran == [True]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM traces")).scalar_one() == 0
    with engine.begin() as conn, dialect.inserting_new(conn, new):
        ran.append(True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM traces")).scalar_one() == 2
    engine.dispose()


def test_select_in_finds_exactly_the_ids_asked_whatever_they_hold(store_url: str) -> None:
    odd = ["tr-plain", 'tr-"quoted"', "tr-o'brien", "tr-a,b", "tr-{x}", "tr-ü-東京",
           "tr-back\\slash", "tr-%s", "tr- space"]
    docs = M.traffic(len(odd), BASE_MS, HOUR)
    events = [decode_trace(P.dumps(dict(d, trace_id=tid)), Provenance("t", 0, i), 1 << 22)
              for i, (d, tid) in enumerate(zip(docs, odd, strict=True))]
    engine = make_engine(store_url)
    with engine.begin() as conn:
        dialect.bulk_upsert(conn, TRACES, ("trace_id",), TRACE_COLUMNS,
                            [trace_row(e, 1) for e in events[1:]], newer_col="completeness")
    many = [f"tr-absent-{i}" for i in range(2500)]  # more than one SQLite chunk
    with engine.connect() as conn:
        found = dialect.select_in(conn, "SELECT trace_id, tags FROM traces WHERE trace_id {ids}",
                                  [*odd, *many], json_columns=(1,))
    assert sorted(r[0] for r in found) == sorted(odd[1:])
    assert all(isinstance(r[1], dict) for r in found)
    engine.dispose()


def test_a_wrong_guess_in_one_part_sends_every_part_through_the_upsert(store_url: str) -> None:
    """Several parts share one savepoint: a key found in the first rolls the others back too,
    and every part is then upserted; the body runs once either way."""
    columns = ("trace_id", "tag_key", "tag_value", "rule", "digest", "decided_ms")
    log_columns = ("trace_id", "digest", "decided_ms", "trigger", "outcomes", "tags")
    engine = make_engine(store_url)
    with engine.begin() as conn:
        dialect.bulk_upsert(conn, TRACE_TAGS, ("trace_id", "tag_key"), columns,
                            [("t1", "k", "old", "r", "d0", 1)])
    ran = []
    with engine.begin() as conn, dialect.inserting_new(
            conn,
            dialect.NewRows(TRACE_TAGS, ("trace_id", "tag_key"), columns,
                            [("t1", "k", "new", "r", "d1", 2), ("t2", "k", "v", "r", "d1", 2)]),
            dialect.NewRows(DECISION_LOG, ("trace_id", "digest"), log_columns,
                            [("t1", "d1", 2, "trace", "[]", "{}")], on_conflict="nothing")):
        ran.append(True)
    assert ran == [True]
    with engine.connect() as conn:
        tags = sorted(conn.execute(text("SELECT trace_id, tag_value FROM trace_tags")).all())
        log = conn.execute(text("SELECT trace_id, digest FROM decision_log")).all()
    assert [tuple(r) for r in tags] == [("t1", "new"), ("t2", "v")]
    assert [tuple(r) for r in log] == [("t1", "d1")]
    engine.dispose()
