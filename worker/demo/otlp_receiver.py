"""An in-process OTLP/HTTP trace receiver that writes what the OpenTelemetry Collector's Kafka
exporter writes, for the demo: MLflow's OTLP dual export (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
set to ``url``, protocol ``http/protobuf``) -> ``POST /v1/traces`` -> one Kafka topic.

Invariants: the records are the Collector's (exporter/kafkaexporter): with ``otlp_proto`` one
record per request whose value is the ``ExportTraceServiceRequest``, key nil; with
``partition_traces_by_id`` one record per trace of each scope (batchpersignal.SplitTraces), keyed
by the lowercase hex trace id; ``otlp_json`` is the same as OTLP JSON (camelCase, hex ids,
integer enums). A request is answered 200 only once the broker acknowledged every record of it
(as strongly as the producer's ``acks``); a failed or timed-out send is a 503, which exporters
retry (so a record may be written twice, as with the Collector); a request without spans is a
200 that produces nothing, as the Collector's. Bodies are bounded (``max_body_bytes``) before and
after decompression, inflated a step at a time, so a gzip bomb costs at most the bound and one
step. Bad input (not OTLP, ids of a wrong length, another path, method or content type) is a 4xx
with a short plain message and produces nothing; no input ends the server's thread.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

# kafka (~0.1 s) is imported where used: `trace-curator --help` stays fast.

logger = logging.getLogger(__name__)

OTLP_TRACES_PATH = "/v1/traces"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
# Below the OTLP exporters' 10 s default timeout: a slow broker is a 503 the exporter retries,
# not a client timeout.
DEFAULT_SEND_TIMEOUT_S = 8.0
READ_TIMEOUT_S = 10.0  # each socket read or write of a connection
INFLATE_STEP_BYTES = 1 << 20  # output of one inflate step
# After a refusal, what the client still sends (an unread body) is read and dropped, within
# bounds, before closing: closing with unread data resets the connection, and the client could
# lose the answer.
LINGER_S = 1.0
MAX_DRAIN_BYTES = 1 << 20
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8

Encoding = Literal["otlp_proto", "otlp_json"]
ENCODINGS: tuple[Encoding, ...] = ("otlp_proto", "otlp_json")
Record = tuple[bytes | None, bytes]  # (key, value)
Response = tuple[int, str, bytes]  # (status, content type, body)

# OTLP JSON writes these ids as hex; protobuf's JSON mapping wants base64 (json_format).
# Spans hold all three, their links the first two. Parse also accepts the proto names.
_ID_FIELDS = (("traceId", "trace_id"), ("spanId", "span_id"), ("parentSpanId", "parent_span_id"))


class Producer(Protocol):
    """What the receiver needs of a kafka-python ``KafkaProducer``."""

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any: ...


class RequestError(ValueError):
    """A request the receiver refuses: the HTTP status and a short plain message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyTooLarge(RequestError):
    def __init__(self, max_bytes: int, what: str = "body") -> None:
        super().__init__(413, f"{what} larger than {max_bytes} bytes")


@dataclass(frozen=True)
class ReceiverCounts:
    """requests: answered 200; records and spans: acknowledged by the broker; rejected: answered
    4xx (nothing produced, but for the records of a partitioned request sent before one the
    producer refused as too large); failed: answered 5xx (a send failed or timed out, or a
    bug)."""

    requests: int = 0
    records: int = 0
    spans: int = 0
    rejected: int = 0
    failed: int = 0


# ---------------------------------------------------------------------------------------------
# Pure helpers: bodies, ids, records


def bounded_decompress(data: bytes, max_bytes: int, *, gzip: bool = True,
                       step_bytes: int = INFLATE_STEP_BYTES) -> bytes:
    """Inflate a gzip body (members one after another, as gzip readers do), or a zlib one
    (``gzip=False``, HTTP's ``deflate``), ``step_bytes`` of output at a time: a body inflating
    past ``max_bytes`` is refused (``BodyTooLarge``) having held at most ``max_bytes`` +
    ``step_bytes``; ``RequestError`` (400) if corrupt or truncated."""
    wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS
    chunks: list[bytes] = []
    size = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits)
        pending = rest
        while not inflater.eof:
            want = min(step_bytes, max_bytes - size + 1)
            try:
                chunk = inflater.decompress(pending, want)
            except zlib.error as exc:
                raise RequestError(400, f"corrupt compressed body: {exc}") from None
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(max_bytes, "decompressed body")
            chunks.append(chunk)
            if len(chunk) < want and not inflater.eof:  # all the input read, and no end
                raise RequestError(400, "truncated compressed body")
            pending = inflater.unconsumed_tail
        rest = inflater.unused_data
        if not rest:
            return b"".join(chunks)
        if not gzip:
            raise RequestError(400, "data after the end of the compressed body")


def hex_id_to_base64(value: str) -> str:
    """An OTLP JSON id (hex) as protobuf's JSON mapping of bytes (base64). ValueError if not
    hex."""
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def base64_id_to_hex(value: str) -> str:
    """A bytes field as protobuf's JSON mapping writes it (base64) as an OTLP JSON id: lowercase
    hex. ValueError if not base64."""
    return base64.b64decode(value, validate=True).hex()


def _objects(parent: Any, *names: str) -> Iterator[dict[str, Any]]:
    if isinstance(parent, dict):
        for name in names:
            items = parent.get(name)
            if isinstance(items, list):
                yield from (item for item in items if isinstance(item, dict))


def _id_holders(doc: Any) -> Iterator[dict[str, Any]]:
    """The objects of an OTLP JSON trace document that hold ids: its spans and their links."""
    for resource_spans in _objects(doc, "resourceSpans", "resource_spans"):
        for scope_spans in _objects(resource_spans, "scopeSpans", "scope_spans"):
            for span in _objects(scope_spans, "spans"):
                yield span
                yield from _objects(span, "links")


def convert_ids(doc: Any, convert: Any) -> Any:
    """Apply ``convert`` (``hex_id_to_base64`` or ``base64_id_to_hex``) to every non-empty string
    id of an OTLP JSON trace document, in place; returns the document. Other values are left for
    the protobuf parser to refuse."""
    for holder in _id_holders(doc):
        for names in _ID_FIELDS:
            for name in names:
                value = holder.get(name)
                if isinstance(value, str) and value:
                    holder[name] = convert(value)
    return doc


def check_ids(request: ExportTraceServiceRequest) -> None:
    """Refuse ids of a wrong length, as the Collector's OTLP receiver does (empty is allowed)."""
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                ids = [(span.trace_id, TRACE_ID_BYTES, "traceId"),
                       (span.span_id, SPAN_ID_BYTES, "spanId"),
                       (span.parent_span_id, SPAN_ID_BYTES, "parentSpanId")]
                for link in span.links:
                    ids += [(link.trace_id, TRACE_ID_BYTES, "links.traceId"),
                            (link.span_id, SPAN_ID_BYTES, "links.spanId")]
                for value, size, name in ids:
                    if len(value) not in (0, size):
                        raise RequestError(400, f"{name} of {len(value)} bytes, not {size}")


def parse_request(body: bytes, media_type: str) -> ExportTraceServiceRequest:
    """An OTLP/HTTP body (``application/x-protobuf``, or OTLP JSON with hex ids) as a request;
    ``RequestError`` (400) if it is not one."""
    request = ExportTraceServiceRequest()
    try:
        if media_type == JSON:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise RequestError(400, "OTLP JSON body is not an object")
            convert_ids(doc, hex_id_to_base64)
            json_format.ParseDict(doc, request, ignore_unknown_fields=True)
        else:
            request.ParseFromString(body)
    except RequestError:
        raise
    except (DecodeError, json_format.Error, ValueError, TypeError, RecursionError) as exc:
        kind = "OTLP JSON" if media_type == JSON else "OTLP protobuf"
        raise RequestError(400, f"not an {kind} ExportTraceServiceRequest: "
                                f"{type(exc).__name__}") from None
    check_ids(request)
    request.DiscardUnknownFields()  # the Collector re-encodes what it understood
    return request


def span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(scope_spans.spans) for resource_spans in request.resource_spans
               for scope_spans in resource_spans.scope_spans)


def trace_key(trace_id: bytes) -> bytes:
    """The Collector's partition key: the trace id as lowercase hex, empty for the zero id."""
    return trace_id.hex().encode("ascii") if trace_id.strip(b"\0") else b""


def split_by_trace(request: ExportTraceServiceRequest,
                   ) -> list[tuple[bytes, ExportTraceServiceRequest]]:
    """The Collector's batchpersignal.SplitTraces, with each part's key: one request per trace id
    of each scope spans (a trace in two scopes is two parts, same key), in the order first seen,
    each holding that trace's spans under a copy of their resource and scope."""
    parts: list[tuple[bytes, ExportTraceServiceRequest]] = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            batches: dict[bytes, ScopeSpans] = {}
            for span in scope_spans.spans:
                key = trace_key(span.trace_id)
                target = batches.get(key)
                if target is None:
                    part = ExportTraceServiceRequest()
                    new_resource_spans = part.resource_spans.add()
                    if resource_spans.HasField("resource"):
                        new_resource_spans.resource.CopyFrom(resource_spans.resource)
                    new_resource_spans.schema_url = resource_spans.schema_url
                    target = new_resource_spans.scope_spans.add()
                    if scope_spans.HasField("scope"):
                        target.scope.CopyFrom(scope_spans.scope)
                    target.schema_url = scope_spans.schema_url
                    batches[key] = target
                    parts.append((key, part))
                target.spans.add().CopyFrom(span)
    return parts


def encode_request(request: ExportTraceServiceRequest, encoding: Encoding) -> bytes:
    """A record value: the serialized request (``otlp_proto``), or its OTLP JSON
    (``otlp_json``: camelCase names, lowercase hex ids, integer enums, 64-bit ints as strings)."""
    if encoding == "otlp_proto":
        value: bytes = request.SerializeToString()
        return value
    doc = json_format.MessageToDict(request, use_integers_for_enums=True)
    convert_ids(doc, base64_id_to_hex)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def kafka_records(request: ExportTraceServiceRequest, encoding: Encoding = "otlp_proto", *,
                  partition_traces_by_id: bool = False) -> list[Record]:
    """The (key, value) records the Collector's Kafka exporter writes for one request."""
    if not partition_traces_by_id:
        return [(None, encode_request(request, encoding))]
    return [(key, encode_request(part, encoding)) for key, part in split_by_trace(request)]


def media_type_of(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def read_body(headers: Any, rfile: io.BufferedIOBase, max_bytes: int) -> bytes:
    """The request body, decompressed; refuses a missing or oversized length before reading."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        raise RequestError(411, "chunked bodies are not supported: send Content-Length")
    length_text = headers.get("Content-Length")
    if length_text is None:
        raise RequestError(411, "Content-Length required")
    try:
        length = int(length_text)
    except ValueError:
        raise RequestError(400, "invalid Content-Length") from None
    if length < 0:
        raise RequestError(400, "invalid Content-Length")
    if length > max_bytes:
        raise BodyTooLarge(max_bytes)
    try:
        body = rfile.read(length)
    except OSError:  # a stalled client (READ_TIMEOUT_S) or a reset
        raise RequestError(408, "body not received in time") from None
    if len(body) != length:
        raise RequestError(400, "body shorter than Content-Length")
    encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return bounded_decompress(body, max_bytes)
    if encoding == "deflate":
        return bounded_decompress(body, max_bytes, gzip=False)
    if encoding != "identity":
        raise RequestError(415, f"unsupported Content-Encoding {encoding[:40]!r}")
    return body


# ---------------------------------------------------------------------------------------------
# The receiver


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OtlpKafkaReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("otlp receiver: connection error peer=%s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT_S  # per socket operation: a stalled client cannot hold a thread
    server_version = "trace-curator-otlp"

    def do_POST(self) -> None:
        try:
            response = self.server.receiver.handle_post(self.path, self.headers, self.rfile)
        except Exception:  # a bug must not end the thread's connection without an answer
            logger.exception("otlp receiver: request failed")
            response = self.server.receiver.count_failure(500, "internal error")
        self._answer(response)

    def _not_allowed(self) -> None:
        self._answer(self.server.receiver.handle_other(self.path))

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    def _answer(self, response: Response) -> None:
        status, content_type, body = response
        self.close_connection = True  # one request a connection (HTTP/1.0)
        with contextlib.suppress(OSError):  # the client went away
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if status == 405:
                self.send_header("Allow", "POST")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            if status >= 400:
                self._linger()

    def _linger(self) -> None:
        """Drop what the client still sends (at most ``MAX_DRAIN_BYTES``, ``LINGER_S``) after
        the answer, so that the close does not reset the connection before it is read."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(LINGER_S)
        drained = 0
        while drained < MAX_DRAIN_BYTES:
            chunk = self.rfile.read1(64 * 1024)
            if not chunk:
                return
            drained += len(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("otlp receiver: %s " + format, self.address_string(), *args)


class OtlpKafkaReceiver:
    """``with OtlpKafkaReceiver(producer, topic).start() as r: ... r.url ... r.counts``.

    Serves ``POST /v1/traces`` on ``host:port`` (0: a free port) from a daemon thread, a thread
    a connection; produces each request's records to ``topic`` and answers once they are
    acknowledged. The producer is the caller's (``consumers.producer.make_producer``): the
    receiver neither flushes nor closes it.
    """

    def __init__(self, producer: Producer, topic: str, *, encoding: Encoding = "otlp_proto",
                 partition_traces_by_id: bool = False,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, host: str = "127.0.0.1",
                 port: int = 0, send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        self.producer = producer
        self.topic = topic
        self.encoding: Encoding = encoding
        self.partition_traces_by_id = partition_traces_by_id
        self.max_body_bytes = max_body_bytes
        self.host = host
        self.requested_port = port
        self.send_timeout_s = send_timeout_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts = ReceiverCounts()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OtlpKafkaReceiver:
        if self._server is not None:
            raise RuntimeError("the receiver is already started")
        server = _Server((self.host, self.requested_port), _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="otlp-receiver", daemon=True)
        self._thread.start()
        logger.info("otlp receiver listening on %s -> topic=%s encoding=%s by_trace_id=%s",
                    self.url, self.topic, self.encoding, self.partition_traces_by_id)
        return self

    def stop(self) -> None:
        """Stop accepting and close the listening socket; requests being handled finish on their
        (daemon) threads. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OtlpKafkaReceiver:
        return self if self._server is not None else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The OTLP traces endpoint, for ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``."""
        return f"http://{self.host}:{self.port}{OTLP_TRACES_PATH}"

    @property
    def counts(self) -> ReceiverCounts:
        with self._lock:
            return self._counts

    # -- requests ----------------------------------------------------------------------------

    def handle_other(self, path: str) -> Response:
        if urlsplit(path).path != OTLP_TRACES_PATH:
            return self._reject(RequestError(404, "not found"))
        return self._reject(RequestError(405, "method not allowed: POST only"))

    def handle_post(self, path: str, headers: Any, rfile: io.BufferedIOBase) -> Response:
        """Read, parse, produce, answer. Never raises for bad input (4xx) or a failed send
        (503)."""
        if urlsplit(path).path != OTLP_TRACES_PATH:
            return self._reject(RequestError(404, "not found"))
        media_type = media_type_of(headers.get("Content-Type"))
        try:
            if media_type not in (PROTOBUF, JSON):
                raise RequestError(415, f"Content-Type must be {PROTOBUF} or {JSON}")
            body = read_body(headers, rfile, self.max_body_bytes)
            request = parse_request(body, media_type)
            del body
            records = kafka_records(request, self.encoding,
                                    partition_traces_by_id=self.partition_traces_by_id)
        except RequestError as exc:
            return self._reject(exc)
        spans = span_count(request)
        if spans == 0:  # the Collector answers an empty request without exporting it
            records = []
        failure = self._produce(records)
        if failure is not None:
            return failure
        with self._lock:
            c = self._counts
            self._counts = ReceiverCounts(c.requests + 1, c.records + len(records),
                                          c.spans + spans, c.rejected, c.failed)
        logger.debug("otlp receiver: produced records=%d spans=%d", len(records), spans)
        if media_type == JSON:
            return 200, JSON, b"{}"
        return 200, PROTOBUF, ExportTraceServiceResponse().SerializeToString()

    def _produce(self, records: list[Record]) -> Response | None:
        """Send every record and wait for each acknowledgement within ``send_timeout_s``; None
        if all are acknowledged, else the error answer (413 for a record the producer or broker
        refuses as too large, which a retry cannot fix; 503 otherwise)."""
        from kafka.errors import MessageSizeTooLargeError

        futures: list[Any] = []
        error: Exception | None = None
        try:
            for key, value in records:
                futures.append(self.producer.send(self.topic, value=value, key=key))
        except Exception as exc:  # raised by send(): too large, closed, metadata timeout
            error = exc
        deadline = time.monotonic() + self.send_timeout_s
        for future in futures:  # wait for what was sent, even after an error
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:
                error = error or exc
        if error is None:
            return None
        if isinstance(error, MessageSizeTooLargeError):  # exporters drop it: say so
            logger.warning("otlp receiver: a record is too large for %s (answered 413): %s",
                           self.topic, error)
            return self._reject(RequestError(413, "record too large for Kafka"))
        logger.warning("otlp receiver: producing to %s failed (answered 503): %r",
                       self.topic, error)
        return self.count_failure(503, "Kafka unavailable, retry later")

    def _reject(self, exc: RequestError) -> Response:
        with self._lock:
            c = self._counts
            self._counts = ReceiverCounts(c.requests, c.records, c.spans, c.rejected + 1,
                                          c.failed)
        logger.debug("otlp receiver: refused status=%d: %s", exc.status, exc.message)
        return exc.status, TEXT, (exc.message + "\n").encode("utf-8")

    def count_failure(self, status: int, message: str) -> Response:
        with self._lock:
            c = self._counts
            self._counts = ReceiverCounts(c.requests, c.records, c.spans, c.rejected,
                                          c.failed + 1)
        return status, TEXT, (message + "\n").encode("utf-8")
