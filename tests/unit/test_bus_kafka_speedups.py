"""kafka-python 3.0.12 with the bus's copy-saving replacements reads and writes the same bytes as without them."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from typing import Any

import pytest

from fleetloop.platform.bus import _kafka_speedups as speedups

kafka = pytest.importorskip("kafka")

pytestmark = pytest.mark.skipif(
    kafka.__version__ != speedups.KAFKA_PYTHON_VERSION, reason="the replacements target one kafka-python version"
)


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    if not speedups.install():
        pytest.skip(f"{speedups.DISABLE_ENV} turned the replacements off")


def _records(seed: int, n: int) -> list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        key = None if i % 3 == 0 else rnd.randbytes(rnd.randrange(0, 40))
        value = None if i % 7 == 0 else rnd.randbytes(rnd.choice([0, 1, 100, 5000, 70_000]))
        headers: list[tuple[str, bytes | None]] = [] if i % 2 else [(f"h{i}", rnd.randbytes(5)), ("none", None)]
        out.append((i, 1_700_000_000_000 + 3 * i, key, value, headers))
    return out


def _build(append: Any, batch_size: int, seed: int, compression: int = 0) -> tuple[bytes, list[Any]]:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=7,
        producer_epoch=1,
        base_sequence=11,
        batch_size=batch_size,
    )
    meta = []
    for offset, ts, key, value, headers in _records(seed, 60):
        m = append(builder, offset, ts, key, value, headers)
        meta.append(None if m is None else (m.offset, m.size, m.timestamp))
        if m is None:
            break
    return bytes(builder.build()), meta


@pytest.mark.parametrize("batch_size", [1 << 20, 50_000, 16])
def test_append_writes_the_same_batch_as_kafka_python(batch_size: int) -> None:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    ours = _build(DefaultRecordBatchBuilder.append, batch_size, seed=batch_size)
    theirs = _build(speedups.ORIGINALS["DefaultRecordBatchBuilder.append"], batch_size, seed=batch_size)
    assert ours == theirs
    assert ours[1][0] is not None  # the first record always fits


def test_append_checks_types_like_kafka_python() -> None:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1024)
    with pytest.raises(TypeError):
        b.append(0, None, None, "a str", [])
    with pytest.raises(TypeError):
        b.append(0, 1.5, None, b"x", [])
    assert b.append(0, None, None, memoryview(b"abc"), []) is not None


@pytest.mark.parametrize("compression", [0, 1])  # none, gzip (decompression replaces the buffer)
def test_batches_read_back_with_keys_values_and_headers(compression: int) -> None:
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

    raw, _ = _build(DefaultRecordBatchBuilder.append, 1 << 22, seed=5, compression=compression)
    for view in (raw, memoryview(raw), memoryview(bytearray(raw))):
        batch = DefaultRecordBatch(view)
        assert batch.validate_crc()
        got = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in batch]
        want = [(o, ts, k, v, h) for o, ts, k, v, h in _records(5, 60)]
        assert got == want
        assert all(type(r[3]) is bytes for r in got if r[3] is not None)


def test_kafka_bytes_read_returns_the_same_bytes() -> None:
    from kafka.protocol.frame import KafkaBytes

    original = speedups.ORIGINALS["KafkaBytes.read"]
    a, b = KafkaBytes(10), KafkaBytes(10)
    a.write(b"0123456789")
    b.write(b"0123456789")
    a.seek(0)
    b.seek(0)
    for n in (3, 0, 4, 10, None):
        got, want = a.read(n), original(b, n)
        assert got == want and type(got) is bytes
        assert a.tell() == b.tell()


def _framed_api_versions_response(correlation_id: int) -> bytes:
    from kafka.protocol.metadata import ApiVersionsResponse

    resp = ApiVersionsResponse[0](error_code=0, api_keys=[(0, 0, 9), (1, 0, 12)])
    body = struct.pack(">i", correlation_id) + resp.encode()
    return struct.pack(">i", len(body)) + body


def _protocol() -> Any:
    from kafka.protocol.metadata import ApiVersionsRequest
    from kafka.protocol.parser import KafkaProtocol

    proto = KafkaProtocol(client_id="t")
    proto.send_request(ApiVersionsRequest[0](), correlation_id=1)
    proto.send_request(ApiVersionsRequest[0](), correlation_id=2)
    return proto


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 17, 10_000])
def test_receive_bytes_decodes_responses_split_anywhere(cut: int) -> None:
    data = _framed_api_versions_response(1) + _framed_api_versions_response(2)
    proto = _protocol()
    got = []
    for i in range(0, len(data), cut):
        got += proto.receive_bytes(data[i : i + cut])
    assert [cid for cid, _ in got] == [1, 2]
    assert [sorted(k.api_key for k in r.api_keys) for _, r in got] == [[0, 1], [0, 1]]
    assert not proto.in_flight_requests


def test_a_mismatched_correlation_id_is_refused() -> None:
    from kafka.errors import CorrelationIdError

    proto = _protocol()
    with pytest.raises(CorrelationIdError):
        proto.receive_bytes(_framed_api_versions_response(2))


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock


def test_sock_recv_reads_large_chunks_and_reports_a_closed_peer() -> None:
    from kafka.errors import KafkaConnectionError
    from kafka.net.transport import KafkaTCPTransport

    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        payload = random.Random(0).randbytes(3 * speedups.RECV_CHUNK_BYTES + 123)
        b.setblocking(False)
        got = bytearray()
        sent = 0
        while len(got) < len(payload):
            if sent < len(payload):
                with contextlib.suppress(BlockingIOError):
                    sent += b.send(payload[sent : sent + 256 * 1024])
            data, err = KafkaTCPTransport._sock_recv(_Transport(a))
            assert err is None
            got += data
        assert bytes(got) == payload
        b.close()
        data, err = KafkaTCPTransport._sock_recv(_Transport(a))
        assert data == b"" and isinstance(err, KafkaConnectionError)
    finally:
        a.close()
        b.close()


def test_install_is_idempotent() -> None:
    assert speedups.install() and speedups.installed()
    from kafka.record.default_records import DefaultRecordBatchBuilder

    before = DefaultRecordBatchBuilder.append
    assert speedups.install()
    assert DefaultRecordBatchBuilder.append is before
