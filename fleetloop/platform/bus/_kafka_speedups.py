"""Fewer copies of every telemetry byte inside kafka-python 3.0.12 (docs/adr/0021-producer-consumer-settings.md).

With ~560 KB frame-batch messages the bus's client CPU goes to moving bytes, not to per-record work, and
kafka-python 3.0.12 moves each byte many times:

- receiving, it reads sockets 4 KiB at a time (``sock_chunk_bytes`` is gone in 3.x and ``receive_buffer_bytes``
  is not applied) and copies each fetched byte about eight times on its way to ``ConsumerRecord.value``: the
  chunk join, a slice per frame piece, the frame buffer, ``read()`` of the whole response (``bytes`` of a
  ``bytearray`` slice: two copies), ``bytearray(batch)``, and ``bytes(bytearray[a:b])`` per value (two more);
- sending, each value is copied into a per-record buffer and that buffer again into the batch.

:func:`install` replaces six small functions with equivalents that read the socket in 1 MiB chunks, slice
through ``memoryview`` and size a record from its parts, leaving four copies on the way in (socket chunk,
frame buffer, records field, batch, value: the response body is decoded from a view) and one fewer on the
way out. The bytes on the wire, framing, CRC and error handling are those of the originals (the unit tests
compare them byte for byte).

The replacements are installed only on the exact version they were written against
(:data:`KAFKA_PYTHON_VERSION`); on any other version, or with ``FLEETLOOP_KAFKA_SPEEDUPS=0``, :func:`install`
leaves kafka-python alone and returns False (the bus works the same, only slower). They apply to every
kafka-python client of the process once a :class:`BusProducer` or :class:`BusConsumer` has been created.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from typing import Any

__all__ = ["DISABLE_ENV", "KAFKA_PYTHON_VERSION", "RECV_CHUNK_BYTES", "install", "installed"]

KAFKA_PYTHON_VERSION = "3.0.12"
DISABLE_ENV = "FLEETLOOP_KAFKA_SPEEDUPS"  # "0" / "off": leave kafka-python as it is (for comparisons)
RECV_CHUNK_BYTES = 1 << 20  # [B] one recv() call reads at most this much (kafka-python: 4096)

ORIGINALS: dict[str, Any] = {}  # "Class.method" -> kafka-python's own function (tests compare against them)
_lock = threading.Lock()
_installed: bool | None = None
log = logging.getLogger(__name__)


def installed() -> bool:
    """Whether the replacements are active in this process."""
    return bool(_installed)


def install() -> bool:
    """Install the replacements once (idempotent, thread-safe); False if kafka-python is not 3.0.12."""
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        import kafka

        if os.environ.get(DISABLE_ENV, "").strip().lower() in ("0", "off", "false", "no"):
            log.info("%s=%s: kafka-python receive-path speed-ups not installed", DISABLE_ENV, os.environ[DISABLE_ENV])
            _installed = False
            return False
        if kafka.__version__ != KAFKA_PYTHON_VERSION:
            log.info(
                "kafka-python %s is not %s: receive-path speed-ups not installed",
                kafka.__version__,
                KAFKA_PYTHON_VERSION,
            )
            _installed = False
            return False
        _patch()
        _installed = True
        return True


def _patch() -> None:
    import kafka.errors as errors
    from kafka.net.transport import KafkaTCPTransport
    from kafka.protocol.api_message import ApiMessage
    from kafka.protocol.frame import KafkaBytes
    from kafka.protocol.parser import KafkaProtocol
    from kafka.protocol.schemas.fields.codecs import Int32
    from kafka.record.default_records import DefaultRecordBatch

    transport_log = logging.getLogger("kafka.net.transport")
    chunk = RECV_CHUNK_BYTES

    def _sock_recv(self: Any) -> tuple[bytes, BaseException | None]:
        # As the original, but up to 1 MiB per recv() instead of 4 KiB, and it stops at a short read (the
        # socket buffer is drained; the selector is level-triggered, so later bytes wake it again).
        recvd: list[bytes] = []
        err: BaseException | None = None
        while True:
            try:
                data = self._sock.recv(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except BaseException as e:
                transport_log.exception("%s: Error receiving network data closing socket", self)
                err = errors.KafkaConnectionError(e)
                break
            if not data:
                transport_log.error("%s: socket disconnected", self)
                err = errors.KafkaConnectionError("socket disconnected")
                break
            recvd.append(data)
            if len(data) < chunk:
                break
        return (recvd[0] if len(recvd) == 1 else b"".join(recvd)), err

    def receive_bytes(self: Any, data: bytes) -> list[Any]:
        # As the original, but the pieces of ``data`` are memoryview slices, not copies.
        i = 0
        n = len(data)
        view = memoryview(data)
        responses = []
        while i < n:
            if not self._receiving:
                bytes_to_read = min(4 - self._header.tell(), n - i)
                self._header.write(view[i : i + bytes_to_read])
                i += bytes_to_read
                if self._header.tell() == 4:
                    self._header.seek(0)
                    nbytes = Int32.decode(self._header)
                    self._validate_frame_size(nbytes)
                    self._rbuffer = KafkaBytes(nbytes)
                    self._receiving = True
                elif self._header.tell() > 4:
                    raise errors.KafkaError("this should not happen - are you threading?")
            if self._receiving:
                total_bytes = len(self._rbuffer)
                staged_bytes = self._rbuffer.tell()
                bytes_to_read = min(total_bytes - staged_bytes, n - i)
                self._rbuffer.write(view[i : i + bytes_to_read])
                i += bytes_to_read
                staged_bytes = self._rbuffer.tell()
                if staged_bytes > total_bytes:
                    raise errors.KafkaError("Receive buffer has more bytes than expected?")
                if staged_bytes != total_bytes:
                    break
                self._receiving = False
                self._rbuffer.seek(0)
                responses.append(self._process_response(self._rbuffer))
                self._reset_buffer()
        return responses

    def read(self: Any, nbytes: int | None = None) -> bytes:
        # As the original, one copy instead of two (bytearray slice, then bytes of it).
        if nbytes is None:
            nbytes = len(self) - self._idx
        start = self._idx
        self._idx = min(self._idx + nbytes, len(self))
        return bytes(memoryview(self)[start : self._idx])

    def batch_init(self: Any, buffer: Any) -> None:
        # The original copies the batch into a bytearray, out of which each key and value is copied twice
        # (``bytes(bytearray[a:b])``); from a ``bytes`` copy the same slices cost one copy each (``bytes`` of
        # a ``bytes`` is the object itself). The reader never writes into its buffer: decompression replaces
        # it with a new bytearray.
        self._buffer = bytes(buffer)
        self._header_data = self.HEADER_STRUCT.unpack_from(self._buffer)
        self._pos = self.HEADER_STRUCT.size
        self._num_records = self._header_data[12]
        self._next_record_index = 0
        self._decompressed = False

    parser_log = logging.getLogger("kafka.protocol.parser")

    def _process_response(self: Any, read_buffer: Any) -> tuple[int, Any]:
        # As the original, but the body is decoded from a view of the frame buffer instead of a copy of it
        # (``ApiMessage.decode`` copies ``read_buffer.read()`` otherwise); the Kafka 0.8.2 quirk is dropped
        # (brokers older than 0.10 are not supported by kafka-python 3).
        if not self.in_flight_requests:
            raise errors.CorrelationIdError("No in-flight-request found for server response")
        header = self.in_flight_requests.popleft()
        correlation_id = header.correlation_id
        response_type = header.get_response_class()
        if response_type is None:
            parser_log.error("Unable to find ResponseType for api=%d version=%d", header.api_key, header.api_version)
            raise errors.KafkaProtocolError(
                f"Unable to find response type for api {header.api_key} v{header.api_version}"
            )
        response_header = response_type.parse_header(read_buffer)
        recv_correlation_id = response_header.correlation_id
        if correlation_id != recv_correlation_id:
            raise errors.CorrelationIdError(
                f"Correlation IDs do not match: sent {correlation_id}, recv {recv_correlation_id}"
            )
        try:
            # Generated ApiMessage classes decode from a view; anything else (the SASL v0 byte responses) gets the
            # stream it was written for.
            from_view = isinstance(response_type, type) and issubclass(response_type, ApiMessage)
            if from_view:
                response = response_type.decode(memoryview(read_buffer)[read_buffer.tell() :])
            else:
                response = response_type.decode(read_buffer)
        except (ValueError, struct.error) as e:
            parser_log.error(
                "Response %d [ResponseType: %s RequestHeader: %s]: Unable to decode %d-byte buffer",
                correlation_id,
                response_type,
                header,
                len(read_buffer),
            )
            raise errors.KafkaProtocolError("Unable to decode response") from e
        return (correlation_id, response)

    from kafka.record.default_records import DefaultRecordBatchBuilder, DefaultRecordMetadata
    from kafka.record.util import encode_varint, size_of_varint

    byte_like = (bytes, bytearray, memoryview)

    def append(self: Any, offset: int, timestamp: int | None, key: Any, value: Any, headers: Any) -> Any:
        # As the original (same bytes, same checks, same return), but the value is copied once, straight into
        # the batch, instead of into a per-record buffer first that is then copied into the batch: the record's
        # length prefix is computed from the sizes of its parts.
        if type(offset) is not int:
            raise TypeError(offset)
        if timestamp is None:
            timestamp = int(time.time() * 1000)
        elif type(timestamp) is not int:
            raise TypeError(timestamp)
        if not (key is None or type(key) in byte_like):
            raise TypeError(f"Not supported type for key: {type(key)}")
        if not (value is None or type(value) in byte_like):
            raise TypeError(f"Not supported type for value: {type(value)}")
        if self._first_timestamp is None:
            self._first_timestamp = timestamp
            self._max_timestamp = timestamp
            timestamp_delta = 0
            first_message = True
        else:
            timestamp_delta = timestamp - self._first_timestamp
            first_message = False

        head = bytearray(b"\x00")  # attributes, timestamp delta, offset delta, key, value length
        encode_varint(timestamp_delta, head.append)
        encode_varint(offset, head.append)
        if key is not None:
            encode_varint(len(key), head.append)
            head.extend(key)
        else:
            head.append(1)  # varint of -1
        if value is not None:
            encode_varint(len(value), head.append)
            value_len = len(value)
        else:
            head.append(1)
            value_len = 0
        tail = bytearray()  # headers
        encode_varint(len(headers), tail.append)
        for h_key, h_value in headers:
            h_key = h_key.encode("utf-8")
            encode_varint(len(h_key), tail.append)
            tail.extend(h_key)
            if h_value is not None:
                encode_varint(len(h_value), tail.append)
                tail.extend(h_value)
            else:
                tail.append(1)

        message_len = len(head) + value_len + len(tail)
        main_buffer = self._buffer
        required_size = message_len + size_of_varint(message_len)
        if required_size + len(main_buffer) > self._batch_size and not first_message:
            return None
        if self._max_timestamp < timestamp:
            self._max_timestamp = timestamp
        self._num_records += 1
        self._last_offset = offset
        encode_varint(message_len, main_buffer.append)
        main_buffer.extend(head)
        if value is not None:
            main_buffer.extend(value)
        main_buffer.extend(tail)
        return DefaultRecordMetadata(offset, required_size, timestamp)

    replacements = (
        (KafkaTCPTransport, "_sock_recv", _sock_recv),
        (KafkaProtocol, "receive_bytes", receive_bytes),
        (KafkaProtocol, "_process_response", _process_response),
        (KafkaBytes, "read", read),
        (DefaultRecordBatch, "__init__", batch_init),
        (DefaultRecordBatchBuilder, "append", append),
    )
    for cls, name, fn in replacements:
        ORIGINALS[f"{cls.__name__}.{name}"] = getattr(cls, name)
        setattr(cls, name, fn)
