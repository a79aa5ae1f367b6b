"""Poison never blocks (invariant 5 in docs/design.md), on the real broker and both stores.

Malformed records are interleaved with valid ones. Every valid record is stored, every malformed
one becomes a ``dead_letters`` row and a record on ``<topic>.dlq`` whose headers carry the
origin and an error that names the field, and the worker goes on to the end of the topic.
"""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select, text

from store.engine import make_engine
from store.models import DeadLetter, Trace
from tests import payloads as P
from tests.conftest import publish

pytestmark = pytest.mark.integration

BIG = b'{"trace_id": "tr-big", "status": "OK", "timestamp_ms": 1, "request": "' + \
    b"x" * (10 * 1024 * 1024) + b'"}'

# (payload, the start of the error the dead letter must carry)
POISON: list[tuple[bytes | None, str]] = [
    (b"this is not json", "payload: not valid UTF-8 JSON"),
    (b'{"trace_id": "tr-\xff\xfe", "status": "OK", "timestamp_ms": 1}',
     "payload: not valid UTF-8 JSON"),
    (b"[1, 2, 3]", "payload: expected a JSON object"),
    (b'{"status": "OK", "timestamp_ms": 1}', "payload: unknown trace format"),
    (b'{"trace_id": "", "status": "OK", "timestamp_ms": 1}', "trace_id: is empty"),
    (b'{"trace_id": 42, "status": "OK", "timestamp_ms": 1}', "trace_id: expected a string"),
    (b'{"trace_id": "tr-x", "status": "MAYBE", "timestamp_ms": 1}', "status: expected one of"),
    (b'{"trace_id": "tr-x", "status": "OK", "timestamp_ms": 1, "execution_time_ms": -5}',
     "execution_time_ms: must be >= 0"),
    (b'{"trace_id": "tr-x", "status": "OK", "timestamp_ms": "yesterday"}',
     "timestamp_ms: expected a number"),
    (b'{"hello": "world"}', "payload: unknown trace format"),
    (None, "payload: empty record"),
    (BIG, "payload: 10485"),
]


def test_poison_is_dead_lettered_and_valid_records_land(settings_factory: Any, producer: Any,
                                                        run_worker: Any) -> None:
    settings = settings_factory(batch_max_records=5)
    valid = [P.trace_doc("ok", start_ms=1_795_000_000_000 + i) for i in range(len(POISON) + 1)]
    wire: list[Any] = []
    for i, (bad, _) in enumerate(POISON):
        wire += [valid[i], bad]
    wire.append(valid[-1])
    broken_doc = P.trace_doc("ok")
    broken_doc["data"]["spans"][1]["end_time_unix_nano"] = 1  # a span that ends before it starts
    wire.append(broken_doc)
    # One partition, so the dead letters' offsets are known exactly.
    topic = settings.trace_topic
    futures = [producer.send(topic, partition=0, key=b"k", value=w if isinstance(w, bytes | None)
                             else P.dumps(w)) for w in wire]
    producer.flush()
    offsets = [f.get(timeout=30).offset for f in futures]

    stats = run_worker(settings)
    assert stats.records == len(wire)
    assert stats.dead_letters == len(POISON) + 1

    engine = make_engine(settings.store_url_plain)
    with engine.connect() as conn:
        stored = set(conn.execute(select(Trace.trace_id)).scalars())
        letters = {r.offset: r for r in conn.execute(select(DeadLetter))}
    assert stored == {d["info"]["trace_id"] for d in valid}
    bad_offsets = [offsets[2 * i + 1] for i in range(len(POISON))] + [offsets[-1]]
    assert sorted(letters) == sorted(bad_offsets)
    for i, (payload, error) in enumerate(POISON):
        row = letters[offsets[2 * i + 1]]
        assert row.error.startswith(error), (row.error, error)
        assert (row.topic, row.partition) == (topic, 0)
        assert row.error_type == "DecodeError"
        assert row.payload_size_bytes == len(payload or b"")
        assert row.payload == (payload or b"")[: settings.dlq_max_payload_bytes]
    assert letters[offsets[-1]].error.startswith("data.spans[1]: end_time_unix_nano is before")

    # The same letters are on <topic>.dlq, with their provenance in headers.
    dlq = topic + ".dlq"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                             enable_auto_commit=False, consumer_timeout_ms=5000,
                             fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=16 * 1024 * 1024)
    partitions = consumer.partitions_for_topic(dlq) or set()
    consumer.assign([TopicPartition(dlq, p) for p in partitions])
    consumer.seek_to_beginning()
    on_dlq = {}
    for rec in consumer:
        headers = dict(rec.headers)
        on_dlq[int(headers["origin_offset"])] = headers
        if len(on_dlq) == len(bad_offsets):
            break
    consumer.close()
    assert sorted(on_dlq) == sorted(bad_offsets)
    big_headers = on_dlq[offsets[2 * (len(POISON) - 1) + 1]]
    assert big_headers["truncated"] == b"true"
    assert big_headers["origin_topic"] == topic.encode()
    assert big_headers["error"].startswith(b"payload: ")

    # Redelivery of the whole topic records each dead letter once.
    run_worker(settings.model_copy(update={"group_id": settings.group_id + "-2"}))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM dead_letters")).scalar() == \
            len(bad_offsets)
    engine.dispose()


def _install_reject_trigger(engine: Any, trace_id: str) -> None:
    """Make the database itself refuse one row, as a value it cannot hold would."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(
                f"CREATE TRIGGER reject_one BEFORE INSERT ON traces "
                f"WHEN NEW.trace_id = '{trace_id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"))
        else:
            conn.execute(text(
                "CREATE FUNCTION reject_one() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.trace_id = '{trace_id}' THEN RAISE EXCEPTION 'refused' "
                "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$ "
                "LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER reject_one BEFORE INSERT ON traces "
                              "FOR EACH ROW EXECUTE FUNCTION reject_one()"))


def test_a_row_the_database_refuses_is_isolated(settings_factory: Any, producer: Any,
                                                run_worker: Any) -> None:
    settings = settings_factory(batch_max_records=500)
    docs = [P.trace_doc("ok", start_ms=1_795_000_000_000 + i) for i in range(300)]
    refused = docs[150]["info"]["trace_id"]
    engine = make_engine(settings.store_url_plain)
    _install_reject_trigger(engine, refused)
    publish(producer, settings.trace_topic, docs, key=lambda d: d["info"]["trace_id"].encode())

    stats = run_worker(settings)
    assert stats.records == 300
    with engine.connect() as conn:
        stored = set(conn.execute(select(Trace.trace_id)).scalars())
        letters = conn.execute(select(DeadLetter)).all()
    assert stored == {d["info"]["trace_id"] for d in docs} - {refused}
    assert len(letters) == 1
    assert letters[0].error_type == "StoreRejectedError"
    assert letters[0].error.startswith("store: the store refused the row")
    assert refused.encode() in letters[0].payload
    engine.dispose()
