"""``upload_messages.read_upload_request`` reads what the protobuf runtime reads, and refuses what it refuses."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError
from strongroom.agent.v1 import gateway_pb2
from strongroom_gateway.upload_messages import MalformedMessage, UploadedFields, read_upload_request


def _as_runtime(fields: UploadedFields) -> tuple[bytes, int, int, bytes]:
    return fields.chunk_id, fields.compression, fields.raw_length, bytes(fields.payload)


def _runtime(chunk: gateway_pb2.UploadedChunk | gateway_pb2.UploadChunkRequest) -> tuple[bytes, int, int, bytes]:
    return chunk.chunk_id, chunk.compression, chunk.raw_length, chunk.payload


def _agree(data: bytes) -> None:
    """``data`` reads the same both ways: equal fields, or refused by both."""
    try:
        expected = gateway_pb2.UploadChunkRequest.FromString(data)
    except DecodeError:
        with pytest.raises(MalformedMessage):
            read_upload_request(data)
        return
    read = read_upload_request(data)
    assert read.job_id == expected.job_id
    assert _as_runtime(read.single) == _runtime(expected)
    assert [_as_runtime(c) for c in read.chunks] == [_runtime(c) for c in expected.chunks]


def _random_request(rng: random.Random) -> gateway_pb2.UploadChunkRequest:
    def chunk() -> gateway_pb2.UploadedChunk:
        return gateway_pb2.UploadedChunk(
            chunk_id=rng.randbytes(rng.choice([0, 1, 32, 33])),
            compression=rng.choice([0, 1, 2, 3, 127, 128, 1 << 20, -1, -(1 << 31)]),
            raw_length=rng.choice([0, 1, 127, 128, 300_000, 4 << 20, (1 << 32) - 1]),
            payload=rng.randbytes(rng.choice([0, 1, 127, 128, 20_000])),
        )

    request = gateway_pb2.UploadChunkRequest(job_id=rng.choice(["", "job-1", "j" * 200, "jöb ✓"]))
    if rng.random() < 0.5:
        request.chunks.extend(chunk() for _ in range(rng.randrange(0, 6)))
    if rng.random() < 0.5:
        single = chunk()
        request.chunk_id, request.compression = single.chunk_id, single.compression
        request.raw_length, request.payload = single.raw_length, single.payload
    return request


# Unknown fields of every wire type the runtime skips: varint, 64-bit, length-delimited, 32-bit; and known
# field numbers with another wire type (the runtime keeps them as unknown fields).
_UNKNOWN = [
    b"\x38\x96\x01",  # field 7, varint
    b"\x41" + bytes(8),  # field 8, 64-bit
    b"\x4a\x03abc",  # field 9, length-delimited
    b"\x55" + bytes(4),  # field 10, 32-bit
    b"\xf8\xff\xff\xff\x0f\x01",  # field 2^29 - 1 (the highest), varint
    b"\x08\x05",  # job_id (1) as a varint
    b"\x1a\x02ab",  # compression (3) as length-delimited
    b"\x30\x01",  # chunks (6) as a varint
    b"\x25" + bytes(4),  # raw_length (4) as 32-bit
]


def test_random_requests_read_as_the_runtime_reads_them() -> None:
    rng = random.Random(74)
    for _ in range(300):
        data = _random_request(rng).SerializeToString()
        _agree(data)
        # A second serialization appended: scalars take the later value, chunks add up.
        _agree(data + _random_request(rng).SerializeToString())
        # Unknown fields anywhere between fields.
        parts = [data[:0]]
        other = _random_request(rng)
        for chunk in other.chunks:
            parts.append(gateway_pb2.UploadChunkRequest(chunks=[chunk]).SerializeToString())
            parts.append(rng.choice(_UNKNOWN))
        _agree(data + b"".join(parts) + rng.choice(_UNKNOWN))


def test_unknown_fields_inside_a_chunk_are_skipped() -> None:
    chunk = gateway_pb2.UploadedChunk(chunk_id=b"\x01" * 32, compression=2, raw_length=5, payload=b"12345")
    for unknown in _UNKNOWN:
        body = unknown + chunk.SerializeToString() + unknown
        data = b"\x32" + bytes([len(body)]) + body
        _agree(data)
        assert _as_runtime(read_upload_request(data).chunks[0]) == (b"\x01" * 32, 2, 5, b"12345")


def test_values_past_32_bits_are_cut_as_the_runtime_cuts_them() -> None:
    ten_byte = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # 2^64 - 1
    for data in (
        b"\x20" + ten_byte,  # raw_length
        b"\x18" + ten_byte,  # compression: -1
        b"\x18\x80\x80\x80\x80\x08",  # compression: 2^31 -> -2^31
        b"\x20\x85\x80\x80\x80\x10",  # raw_length: 2^32 + 5 -> 5
    ):
        _agree(data)
    assert read_upload_request(b"\x20\x85\x80\x80\x80\x10").single.raw_length == 5
    assert read_upload_request(b"\x18" + ten_byte).single.compression == -1


def test_truncated_and_corrupted_messages_are_refused_as_the_runtime_refuses_them() -> None:
    rng = random.Random(13)
    for _ in range(40):
        request = _random_request(rng)
        request.chunks.append(gateway_pb2.UploadedChunk(chunk_id=b"\x07" * 32, compression=2, payload=b"xyz"))
        data = request.SerializeToString()
        for cut in range(len(data)):  # every prefix: refused when it ends inside a field, else fewer fields
            if cut < 64 or cut % 97 == 0 or len(data) - cut < 64:
                _agree(data[:cut])
        for _ in range(30):  # one byte changed
            at = rng.randrange(len(data))
            corrupted = data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
            try:
                _agree(corrupted)
            except MalformedMessage as exc:
                # The one refusal the runtime does not share: groups (wire types 3 and 4), which no
                # Strongroom message has, are refused rather than skipped.
                assert "wire type 3" in str(exc) or "wire type 4" in str(exc)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x0a\x05abc", "past the end"),  # a length past the end
        (b"\x32\x03\x0a\x05a", "past the chunk's end"),  # a chunk's field past the chunk
        (b"\x20\x80", "ends inside"),  # a varint cut short
        (b"\x20" + b"\x80" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x00\x01", "field number 0"),
        (b"\x0f", "wire type 7"),
        (b"\x0a\x02\xff\xfe", "UTF-8"),  # job_id
        (b"\x41\x00\x00", "past the end"),  # 64-bit field cut short
    ],
)
def test_malformed_bytes_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(DecodeError):
        gateway_pb2.UploadChunkRequest.FromString(data)
    with pytest.raises(MalformedMessage, match=problem):
        read_upload_request(data)


def test_payloads_are_views_into_the_message() -> None:
    payload = bytes(range(256)) * 64
    data = gateway_pb2.UploadChunkRequest(
        job_id="job-1", chunks=[gateway_pb2.UploadedChunk(chunk_id=b"\x01" * 32, payload=payload)]
    ).SerializeToString()
    view = read_upload_request(data).chunks[0].payload
    assert view.obj is data and view == payload


def test_groups_are_refused() -> None:
    """The one refusal the runtime does not share: it skips an unknown group; no Strongroom message has one."""
    with pytest.raises(MalformedMessage, match="wire type 3"):
        read_upload_request(b"\x0b\x0c")
