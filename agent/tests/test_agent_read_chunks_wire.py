"""ReadChunks messages parsed by hand into views (``parse_read_chunks``) read exactly as protobuf reads them."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError
from strongroom.agent.v1 import gateway_pb2
from strongroom_agent.wire import SentChunk, parse_read_chunks

Chunk = tuple[bytes, bytes, int, int, str]


def by_protobuf(message: bytes) -> list[Chunk]:
    """What protobuf's own parser reads: the ``chunks``, or, when there are none, the response's own fields."""
    response = gateway_pb2.ReadChunksResponse.FromString(message)
    if response.chunks:
        return [(c.chunk_id, c.data, c.compression, c.raw_length, c.damage) for c in response.chunks]
    return [(response.chunk_id, response.data, response.compression, response.raw_length, "")]


def by_hand(message: bytes) -> list[Chunk]:
    return [(c.chunk_id, bytes(c.data), c.compression, c.raw_length, c.damage) for c in parse_read_chunks(message)]


def varint(value: int, rng: random.Random | None = None) -> bytes:
    """``value`` as a varint (negative: 64-bit two's complement), sometimes padded to more bytes than it needs."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value or (rng is not None and len(out) < 4 and rng.random() < 0.1):
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, wire: int, value: int | bytes, rng: random.Random) -> bytes:
    key = varint(number << 3 | wire, rng)
    if wire == 0:
        assert isinstance(value, int)
        return key + varint(value, rng)
    if wire == 1:
        assert isinstance(value, bytes) and len(value) == 8
        return key + value
    if wire == 5:
        assert isinstance(value, bytes) and len(value) == 4
        return key + value
    assert isinstance(value, bytes)
    return key + varint(len(value), rng) + value


def unknown_field(rng: random.Random) -> bytes:
    wire = rng.choice([0, 1, 2, 5])
    number = rng.choice([6, 7, 15, 16, 1000, (1 << 29) - 1])
    value: int | bytes = {
        0: rng.getrandbits(64),
        1: rng.randbytes(8),
        2: rng.randbytes(rng.randrange(0, 20)),
        5: rng.randbytes(4),
    }[wire]
    return field(number, wire, value, rng)


def random_fields(rng: random.Random, *, served: bool) -> bytes:
    """Fields 1-4 (and a ServedChunk's 5) in any order, some repeated, some of another wire type, unknown ones
    between."""
    fields = [
        field(1, 2, rng.randbytes(rng.choice([0, 32, 32, 5])), rng),
        field(2, 2, rng.randbytes(rng.choice([0, 1, 127, 128, 300, 20_000])), rng),
        field(3, 0, rng.choice([0, 1, 2, 7, -1, -(1 << 31), (1 << 31) + 5, 1 << 40]), rng),
        field(4, 0, rng.choice([0, 1, 127, 128, 1 << 20, (1 << 32) - 1, (1 << 32) + 9, 1 << 63]), rng),
    ]
    if served and rng.random() < 0.3:
        fields.append(field(5, 2, rng.choice(["authentication failed", "ümlaut ☃", ""]).encode(), rng))
    fields += [rng.choice(fields) for _ in range(rng.randrange(0, 3))]  # repeated: the last one wins
    fields += [unknown_field(rng) for _ in range(rng.randrange(0, 3))]
    if rng.random() < 0.2:  # a known number with another wire type: skipped as unknown
        wire = rng.choice([1, 5])
        fields.append(field(rng.choice([1, 2, 3, 4]), wire, rng.randbytes(8 if wire == 1 else 4), rng))
    rng.shuffle(fields)
    return b"".join(fields)


def random_message(rng: random.Random) -> bytes:
    if rng.random() < 0.2:  # a gateway that predates max_message_bytes: the response's own fields
        return random_fields(rng, served=False)
    parts = [field(5, 2, random_fields(rng, served=True), rng) for _ in range(rng.randrange(1, 12))]
    if rng.random() < 0.3:
        parts.insert(rng.randrange(len(parts) + 1), random_fields(rng, served=False))
    return b"".join(parts)


def test_messages_as_the_gateway_writes_them() -> None:
    chunks = [
        gateway_pb2.ServedChunk(
            chunk_id=bytes([n]) * 32, data=bytes([n]) * (n * 997), compression=1 + n % 2, raw_length=n
        )
        for n in range(1, 30)
    ]
    chunks.append(gateway_pb2.ServedChunk(chunk_id=b"\xdd" * 32, damage="authentication failed"))
    message = gateway_pb2.ReadChunksResponse(chunks=chunks).SerializeToString()
    parsed = parse_read_chunks(message)
    assert by_hand(message) == by_protobuf(message)
    assert all(isinstance(c, SentChunk) for c in parsed)
    # The data is the message's own bytes, not a copy.
    assert all(isinstance(c.data, memoryview) and c.data.obj is message for c in parsed if c.data)
    legacy = gateway_pb2.ReadChunksResponse(chunk_id=b"\x01" * 32, data=b"content", compression=1, raw_length=7)
    assert parse_read_chunks(legacy.SerializeToString()) == [SentChunk(b"\x01" * 32, b"content", 1, 7)]
    assert parse_read_chunks(b"") == [SentChunk(b"", b"", 0, 0)]


def test_any_valid_encoding_reads_as_protobuf_reads_it() -> None:
    rng = random.Random(13)
    for _ in range(600):
        message = random_message(rng)
        assert by_hand(message) == by_protobuf(message)


def test_a_malformed_message_is_refused_where_protobuf_refuses_it() -> None:
    rng = random.Random(14)
    messages = [random_message(rng) for _ in range(40)]
    messages.append(field(5, 2, field(5, 2, b"\xff\xfe", rng), rng))  # damage that is not UTF-8
    for message in messages:
        cuts = range(len(message) + 1) if len(message) < 3000 else sorted(rng.sample(range(len(message) + 1), 400))
        for cut in cuts:
            prefix = message[:cut]
            try:
                expected = by_protobuf(prefix)
            except DecodeError:
                with pytest.raises(ValueError):
                    parse_read_chunks(prefix)
            else:
                assert by_hand(prefix) == expected, (message, cut)
    for bad in (b"\x2a\x05\x0a", b"\x0f", b"\x2a\x02\x08", b"\x08" + b"\xff" * 11, b"\x00\x01"):
        with pytest.raises(ValueError):
            parse_read_chunks(bad)
