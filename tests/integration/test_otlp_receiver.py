"""The demo's OTLP/HTTP -> Kafka receiver against the real broker: what MLflow's OTLP dual export
sends lands as the Collector's Kafka exporter records (``otlp_proto``, nil key; by trace id, keyed
by hex trace id; ``otlp_json`` with hex ids), 200 only once the broker has the records, and
hostile input is a 4xx that produces nothing and leaves the server serving.

Every wait is bounded: HTTP calls, the MLflow subprocess and the topic reads have timeouts.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from consumers.assembly import ROOT_MISSING_KEY, assemble
from consumers.events import Provenance
from consumers.otlp import decode_otlp
from consumers.producer import make_producer
from worker.demo.otlp_receiver import (
    JSON,
    PROTOBUF,
    BodyTooLarge,
    OtlpKafkaReceiver,
    RequestError,
    base64_id_to_hex,
    bounded_decompress,
    convert_ids,
    hex_id_to_base64,
    kafka_records,
    split_by_trace,
)

pytestmark = pytest.mark.integration

CLIENT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 20.0
MLFLOW_TIMEOUT_S = 120.0
MiB = 1024 * 1024
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy

TRACE_A = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
TRACE_B = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")


# ---------------------------------------------------------------------------------------------
# Helpers


def post(url: str, body: bytes | None, content_type: str | None = PROTOBUF,
         method: str = "POST", **headers: str) -> tuple[int, Any, bytes]:
    if content_type is not None:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=CLIENT_TIMEOUT_S) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def raw_request(port: int, head: bytes) -> bytes:
    """Send a request head (no body) on a bare socket; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S) as s:
        s.sendall(head)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of the topic (as many as its end offsets say), in partition order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=1000, fetch_max_bytes=64 * MiB,
                             max_partition_fetch_bytes=32 * MiB)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        expected = sum(consumer.end_offsets(tps).values())
        records: list[Any] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while len(records) < expected:
            assert time.monotonic() < deadline, f"read {len(records)} of {expected} records"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def topic_size(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def make_span(trace_id: bytes, span_id: int, parent_id: int | None = None,
              name: str = "step") -> Span:
    span = Span(trace_id=trace_id, span_id=span_id.to_bytes(8, "big"), name=name,
                kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=1_700_000_000_000_000_000,
                end_time_unix_nano=1_700_000_000_500_000_000)
    if parent_id is not None:
        span.parent_span_id = parent_id.to_bytes(8, "big")
    span.attributes.add(key="step", value=AnyValue(int_value=span_id))
    return span


def make_request(*scopes: list[Span]) -> ExportTraceServiceRequest:
    """One resource (service.name=demo-app) holding one scope per list of spans."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add(
        resource=Resource(attributes=[KeyValue(key="service.name",
                                               value=AnyValue(string_value="demo-app"))]),
        schema_url="https://opentelemetry.io/schemas/1.24.0")
    for i, spans in enumerate(scopes):
        resource_spans.scope_spans.add(scope=InstrumentationScope(name=f"scope-{i}"),
                                       spans=spans)
    return request


def spans_of(request: ExportTraceServiceRequest) -> list[Span]:
    return [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


@pytest.fixture
def receiver_factory(producer: Any, topic_factory: Callable[..., str],
                     ) -> Iterator[Callable[..., OtlpKafkaReceiver]]:
    started: list[OtlpKafkaReceiver] = []

    def make(**kwargs: Any) -> OtlpKafkaReceiver:
        receiver = OtlpKafkaReceiver(producer, topic_factory("otlp"), **kwargs).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.stop()


# ---------------------------------------------------------------------------------------------
# MLflow's real dual export

MLFLOW_APP = textwrap.dedent("""
    import json, os, sys
    import mlflow

    @mlflow.trace(span_type="CHAT_MODEL")
    def chat(question):
        return question.upper()

    @mlflow.trace
    def agent(question, calls):
        return [chat(f"{question}-{i}") for i in range(calls)]

    traces, calls = int(sys.argv[1]), int(sys.argv[2])
    mlflow.set_experiment("otlp-receiver-test")
    trace_ids = []
    for t in range(traces):
        agent(f"q{t}", calls)
        trace_ids.append(mlflow.get_last_active_trace_id())
    # The MLflow store's async queue, then the OTLP exporter's BatchSpanProcessor:
    # flush_trace_async_logging() alone does not export the OTLP batch.
    mlflow.flush_trace_async_logging()
    assert mlflow.tracing.get_bridged_tracer_provider().force_flush(30_000)
    print(json.dumps(trace_ids), flush=True)
    os._exit(0)  # no atexit shutdown: only the explicit flush above may deliver the spans
""")


def run_mlflow_app(tmp_path: Path, endpoint: str, traces: int, calls: int) -> list[str]:
    script = tmp_path / "app.py"
    script.write_text(MLFLOW_APP)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRACE_CURATOR_", "MLFLOW_", "OTEL_"))}
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "MLFLOW_TRACE_ENABLE_OTLP_DUAL_EXPORT": "true",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    proc = subprocess.run([sys.executable, str(script), str(traces), str(calls)], env=env,
                          cwd=tmp_path, capture_output=True, text=True,
                          timeout=MLFLOW_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return ids


def test_mlflow_dual_export_lands_as_collector_records(
        broker: Any, receiver_factory: Callable[..., OtlpKafkaReceiver], tmp_path: Path) -> None:
    traces, calls = 3, 2
    receiver = receiver_factory()

    mlflow_ids = run_mlflow_app(tmp_path, receiver.url, traces, calls)

    records = read_topic(broker.bootstrap_servers, receiver.topic)
    assert records, "MLflow's OTLP export produced nothing"
    counts = receiver.counts
    assert len(records) == counts.records == counts.requests  # one record per request
    assert counts.rejected == counts.failed == 0
    by_trace: dict[bytes, list[Span]] = defaultdict(list)
    for record in records:
        assert record.key is None
        request = ExportTraceServiceRequest.FromString(record.value)
        for rs in request.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
            assert resource["telemetry.sdk.name"] == "mlflow"  # no service.name: MLflow sets none
            for ss in rs.scope_spans:
                for span in ss.spans:
                    by_trace[span.trace_id].append(span)
    assert counts.spans == sum(len(spans) for spans in by_trace.values()) == traces * (1 + calls)
    # The OTLP trace ids are MLflow's: "tr-" + the hex OpenTelemetry trace id.
    assert sorted("tr-" + t.hex() for t in by_trace) == sorted(mlflow_ids)
    for spans in by_trace.values():
        assert len(spans) == 1 + calls
        roots = [s for s in spans if not s.parent_span_id]
        assert [r.name for r in roots] == ["agent"]
        children = [s for s in spans if s.parent_span_id]
        assert {c.parent_span_id for c in children} == {roots[0].span_id}
        for child in children:
            attributes = {kv.key: kv.value.string_value for kv in child.attributes}
            assert child.name == "chat"
            assert json.loads(attributes["mlflow.spanType"]) == "CHAT_MODEL"
    # The worker's decoder and assembler read the records as they are.
    decoded = [s for r in records for s in decode_otlp(r.value, "otlp_proto", 1 << 20).spans]
    events = [assemble([s for s in decoded if s.trace_id == t], Provenance(receiver.topic, 0, 0))
              for t in sorted({s.trace_id for s in decoded})]
    assert [e.trace_id for e in events] == sorted(mlflow_ids)
    for e in events:
        assert (e.name, e.status, ROOT_MISSING_KEY in e.metadata) == ("agent", "OK", False)
        assert sorted(s.span_type for s in e.spans) == ["CHAT_MODEL"] * calls + ["UNKNOWN"]
        assert e.request is not None and json.loads(e.request)["calls"] == calls
        # MLflow's export carries no experiment id: its own /v1/traces takes it from a header.
        assert e.experiment_id is None


# ---------------------------------------------------------------------------------------------
# Partitioning by trace id, OTLP JSON


def test_partition_traces_by_id_keys_one_trace_per_record(
        broker: Any, receiver_factory: Callable[..., OtlpKafkaReceiver]) -> None:
    receiver = receiver_factory(partition_traces_by_id=True)
    interleaved = [make_span(TRACE_A, 1, name="root-a"), make_span(TRACE_B, 11, name="root-b"),
                   make_span(TRACE_A, 2, 1), make_span(TRACE_B, 12, 11), make_span(TRACE_A, 3, 1)]
    other_scope = [make_span(TRACE_A, 4, 2)]
    sent = make_request(interleaved, other_scope)
    body = gzip.compress(sent.SerializeToString())

    status, headers, answer = post(receiver.url, body, **{"Content-Encoding": "gzip"})

    assert (status, headers["Content-Type"], answer) == (200, PROTOBUF, b"")
    records = read_topic(broker.bootstrap_servers, receiver.topic)
    # As batchpersignal.SplitTraces: per scope, per trace; trace A's span in the second scope is
    # a record of its own, with the same key.
    assert sorted(r.key for r in records) == sorted(
        [TRACE_A.hex().encode(), TRACE_B.hex().encode(), TRACE_A.hex().encode()])
    seen: dict[bytes, list[int]] = defaultdict(list)
    for record in records:
        assert len(record.key) == 32 and record.key == record.key.lower()
        request = ExportTraceServiceRequest.FromString(record.value)
        [rs] = request.resource_spans
        assert rs.resource == sent.resource_spans[0].resource
        assert rs.schema_url == sent.resource_spans[0].schema_url
        [ss] = rs.scope_spans
        assert ss.scope.name in ("scope-0", "scope-1")
        assert {span.trace_id.hex().encode() for span in ss.spans} == {record.key}
        seen[record.key].extend(int.from_bytes(s.span_id, "big") for s in ss.spans)
    # Every span once, in its original order within its trace; one trace, one partition.
    assert sorted(seen[TRACE_A.hex().encode()]) == [1, 2, 3, 4]
    assert seen[TRACE_B.hex().encode()] == [11, 12]
    for key in seen:
        assert len({r.partition for r in records if r.key == key}) == 1
    assert receiver.counts.records == 3 and receiver.counts.spans == 6


def test_otlp_json_in_and_out_with_hex_ids(
        broker: Any, receiver_factory: Callable[..., OtlpKafkaReceiver]) -> None:
    receiver = receiver_factory(encoding="otlp_json")
    root, child = make_span(TRACE_A, 1, name="root"), make_span(TRACE_A, 2, 1, name="child")
    link = child.links.add(trace_id=TRACE_B, span_id=(11).to_bytes(8, "big"))
    link.attributes.add(key="why", value=AnyValue(string_value="follows"))
    sent = make_request([root, child])
    from google.protobuf import json_format
    body_doc = convert_ids(json_format.MessageToDict(sent), base64_id_to_hex)
    assert body_doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["parentSpanId"] == \
        "0000000000000001"

    status, headers, answer = post(receiver.url, json.dumps(body_doc).encode(), JSON)

    assert (status, headers["Content-Type"], answer) == (200, JSON, b"{}")
    [record] = read_topic(broker.bootstrap_servers, receiver.topic)
    assert record.key is None
    doc = json.loads(record.value)
    [out_root, out_child] = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert out_root["traceId"] == out_child["traceId"] == TRACE_A.hex()
    assert (out_root["spanId"], out_child["spanId"]) == ("0000000000000001", "0000000000000002")
    assert out_child["parentSpanId"] == "0000000000000001" and "parentSpanId" not in out_root
    assert out_child["links"][0] == {"traceId": TRACE_B.hex(), "spanId": "000000000000000b",
                                     "attributes": [{"key": "why",
                                                     "value": {"stringValue": "follows"}}]}
    assert out_root["kind"] == Span.SPAN_KIND_INTERNAL  # OTLP JSON: enums as integers
    assert out_root["startTimeUnixNano"] == "1700000000000000000"  # 64-bit ints as strings
    back = json_format.ParseDict(convert_ids(doc, hex_id_to_base64), ExportTraceServiceRequest())
    assert back == sent


# ---------------------------------------------------------------------------------------------
# Hostile input


def gzip_bomb(zeros: int) -> bytes:
    """``zeros`` zero bytes, gzip-compressed, without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MiB)
    parts = [compressor.compress(block) for _ in range(zeros // MiB)]
    return b"".join([*parts, compressor.flush()])


def test_hostile_input_is_refused_and_the_server_keeps_serving(
        broker: Any, receiver_factory: Callable[..., OtlpKafkaReceiver]) -> None:
    receiver = receiver_factory()
    url = receiver.url
    bad_length = make_request([make_span(TRACE_A, 1)])
    bad_length.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x01" * 15
    bomb = gzip_bomb(64 * MiB)
    assert len(bomb) < MiB

    cases: list[tuple[str, int, tuple[int, ...]]] = []

    def check(name: str, answer: tuple[int, Any, bytes], *expected: int) -> None:
        status, _headers, body = answer
        cases.append((name, status, expected))
        assert status in expected, (name, status, body)
        assert body and len(body) < 200, (name, body)  # a short plain message

    check("garbage", post(url, b"this is not a protobuf message"), 400)
    check("garbage json", post(url, b"{not json", JSON), 400)
    check("json not an object", post(url, b"[1, 2]", JSON), 400)
    check("bad hex id", post(url, json.dumps({"resourceSpans": [{"scopeSpans": [
        {"spans": [{"traceId": "zz", "spanId": "0000000000000001"}]}]}]}).encode(), JSON), 400)
    check("15-byte trace id", post(url, bad_length.SerializeToString()), 400)
    check("corrupt gzip", post(url, b"\x1f\x8b\x08\x00garbage", **{"Content-Encoding": "gzip"}),
          400)
    check("truncated gzip", post(url, gzip.compress(b"x" * 1000)[:-20],
                                 **{"Content-Encoding": "gzip"}), 400)
    check("unknown encoding", post(url, b"x", **{"Content-Encoding": "br"}), 415)
    tracemalloc.start()
    try:
        check("gzip bomb", post(url, bomb, **{"Content-Encoding": "gzip"}), 413)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The bound (16 MiB) and one inflate step (1 MiB), not 64 MiB.
    assert peak < 24 * MiB, f"inflating the bomb peaked at {peak / MiB:.1f} MiB"
    check("text/plain", post(url, b"hello", "text/plain"), 415)
    check("no content type", post(url, b"hello", None), 415)
    answer = post(url, None, None, method="GET")
    check("GET", answer, 405)
    assert answer[1]["Allow"] == "POST"
    check("wrong path", post(url.replace("/v1/traces", "/v1/metrics"),
                             make_request([make_span(TRACE_A, 1)]).SerializeToString()), 404)
    check("GET wrong path", post(url.replace("/v1/traces", "/"), None, None, method="GET"), 404)

    # A declared length past the bound is refused before any byte of the body is read.
    huge = raw_request(receiver.port, b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Type: application/x-protobuf\r\n"
                       b"Content-Length: 10000000000\r\n\r\n")
    assert huge.startswith(b"HTTP/1.0 413 "), huge[:200]
    chunked = raw_request(receiver.port, b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/x-protobuf\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.0 411 "), chunked[:200]

    assert topic_size(broker.bootstrap_servers, receiver.topic) == 0
    assert receiver.counts.rejected == len(cases) + 2
    assert receiver.counts.requests == receiver.counts.failed == 0

    # Still serving.
    good = make_request([make_span(TRACE_A, 1), make_span(TRACE_A, 2, 1)])
    assert post(url, good.SerializeToString())[0] == 200
    [record] = read_topic(broker.bootstrap_servers, receiver.topic)
    assert ExportTraceServiceRequest.FromString(record.value) == good


def test_max_body_bytes_bounds_compressed_and_decompressed(
        broker: Any, receiver_factory: Callable[..., OtlpKafkaReceiver]) -> None:
    receiver = receiver_factory(max_body_bytes=4096)
    small = make_request([make_span(TRACE_A, 1)]).SerializeToString()
    big = make_request([make_span(TRACE_A, i) for i in range(1, 200)]).SerializeToString()
    assert len(small) < 4096 < len(big) and len(gzip.compress(big)) < 4096

    assert post(receiver.url, big)[0] == 413
    assert post(receiver.url, gzip.compress(big), **{"Content-Encoding": "gzip"})[0] == 413
    assert post(receiver.url, gzip.compress(small), **{"Content-Encoding": "gzip"})[0] == 200
    assert topic_size(broker.bootstrap_servers, receiver.topic) == 1


# ---------------------------------------------------------------------------------------------
# The answer waits for the broker


class _HeldFuture:
    def __init__(self, release: threading.Event, error: Exception | None) -> None:
        self.release, self.error = release, error

    def get(self, timeout: float | None = None) -> None:
        if not self.release.wait(timeout):
            raise TimeoutError("not acknowledged")
        if self.error is not None:
            raise self.error


class _HeldProducer:
    """A producer whose acknowledgements arrive when the test says, or fail."""

    def __init__(self, error: Exception | None = None) -> None:
        self.release = threading.Event()
        self.error = error
        self.sent: list[tuple[bytes | None, bytes]] = []

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any:
        assert value is not None
        self.sent.append((key, value))
        return _HeldFuture(self.release, self.error)


@pytest.mark.parametrize("error", [None, RuntimeError("broker gone")])
def test_answer_only_after_every_record_is_acknowledged(error: Exception | None) -> None:
    producer = _HeldProducer(error)
    request = make_request([make_span(TRACE_A, 1), make_span(TRACE_B, 2)])
    answers: list[tuple[int, Any, bytes]] = []
    with OtlpKafkaReceiver(producer, "t", partition_traces_by_id=True) as receiver:
        client = threading.Thread(
            target=lambda: answers.append(post(receiver.url, request.SerializeToString())))
        client.start()
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(producer.sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(producer.sent) == 2
        time.sleep(0.3)
        assert not answers, "answered before the broker acknowledged"
        producer.release.set()
        client.join(CLIENT_TIMEOUT_S)
    assert [a[0] for a in answers] == [200 if error is None else 503]
    assert receiver.counts.failed == (0 if error is None else 1)
    assert receiver.counts.records == (2 if error is None else 0)


def test_send_timeout_is_a_503() -> None:
    producer = _HeldProducer()
    with OtlpKafkaReceiver(producer, "t", send_timeout_s=0.2) as receiver:
        status, _, body = post(receiver.url, make_request([make_span(TRACE_A, 1)])
                               .SerializeToString())
    assert status == 503 and b"retry" in body


# ---------------------------------------------------------------------------------------------
# The pure helpers


def test_bounded_decompress() -> None:
    data = b"spans " * 1000
    assert bounded_decompress(gzip.compress(data), len(data)) == data
    two_members = gzip.compress(data) + gzip.compress(b"more")
    assert bounded_decompress(two_members, len(data) + 4) == data + b"more"
    with pytest.raises(BodyTooLarge):
        bounded_decompress(two_members, len(data) + 3)
    with pytest.raises(BodyTooLarge):
        bounded_decompress(gzip.compress(data), len(data) - 1)
    assert bounded_decompress(zlib.compress(data), len(data), gzip=False) == data
    assert bounded_decompress(gzip.compress(data), len(data), step_bytes=7) == data
    with pytest.raises(BodyTooLarge):
        bounded_decompress(gzip.compress(data), len(data) - 1, step_bytes=7)
    for corrupt in (b"", gzip.compress(data)[:-4], b"\x1f\x8bnope", gzip.compress(data) + b"x"):
        for step in (7, 1 << 20):
            with pytest.raises(RequestError) as info:
                bounded_decompress(corrupt, 10 * len(data), step_bytes=step)
            assert info.value.status == 400


def test_id_conversions_round_trip() -> None:
    assert hex_id_to_base64(TRACE_A.hex()) == "CvdlGRbNQ92ESOshHIAxnA=="
    assert base64_id_to_hex("CvdlGRbNQ92ESOshHIAxnA==") == TRACE_A.hex()
    with pytest.raises(ValueError):
        hex_id_to_base64("not hex")
    with pytest.raises(ValueError):
        base64_id_to_hex("not base64!")


def test_split_by_trace_and_records() -> None:
    request = make_request([make_span(TRACE_A, 1), make_span(TRACE_B, 2),
                            make_span(TRACE_A, 3, 1), make_span(b"", 4)])
    parts = split_by_trace(request)
    assert [key for key, _ in parts] == [TRACE_A.hex().encode(), TRACE_B.hex().encode(), b""]
    assert [[int.from_bytes(s.span_id, "big") for s in spans_of(p)] for _, p in parts] == \
        [[1, 3], [2], [4]]
    assert kafka_records(request) == [(None, request.SerializeToString())]
    keyed = kafka_records(request, partition_traces_by_id=True)
    assert [k for k, _ in keyed] == [k for k, _ in parts]
    assert all(ExportTraceServiceRequest.FromString(v) == p for (_, v), (_, p)
               in zip(keyed, parts, strict=True))


# ---------------------------------------------------------------------------------------------
# Kafka refusing or missing: real producers


def test_record_too_large_for_the_producer_is_a_413(
        broker: Any, topic_factory: Callable[..., str]) -> None:
    small = make_producer(broker.bootstrap_servers, max_request_size=2048)
    topic = topic_factory("otlp")
    request = make_request([make_span(TRACE_A, i) for i in range(1, 100)])
    try:
        with OtlpKafkaReceiver(small, topic) as receiver:
            status, _, body = post(receiver.url, request.SerializeToString())
            assert (status, body) == (413, b"record too large for Kafka\n")
            assert post(receiver.url, make_request([make_span(TRACE_A, 1)])
                        .SerializeToString())[0] == 200
    finally:
        small.close()
    assert topic_size(broker.bootstrap_servers, topic) == 1
    assert (receiver.counts.rejected, receiver.counts.requests) == (1, 1)


def test_unreachable_broker_is_a_503() -> None:
    from consumers.embedded_broker import free_port

    dead = make_producer(f"127.0.0.1:{free_port()}", max_block_ms=500, api_version=(2, 5))
    try:
        with OtlpKafkaReceiver(dead, "nowhere") as receiver:
            started = time.monotonic()
            status, _, _ = post(receiver.url, make_request([make_span(TRACE_A, 1)])
                                .SerializeToString())
            assert status == 503
            assert time.monotonic() - started < 5
    finally:
        dead.close(timeout=1)
    assert receiver.counts.failed == 1
