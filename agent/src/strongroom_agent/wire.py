"""The protobuf wire format where the agent writes or reads gateway messages by hand.

Two messages carry the bulk of the data and skip the protobuf runtime, whose
objects copied every payload (ADRs 0071 and 0073): the ``UploadChunkRequest``
messages are encoded in ``backup/messages.py`` with ``uvarint``, and the
``ReadChunksResponse`` messages are parsed here (``parse_read_chunks``), each
chunk's data a view into its message. Both are held to the runtime byte for
byte by tests (``test_agent_messages.py``, ``test_agent_read_chunks_wire.py``).
"""

from __future__ import annotations

from typing import NamedTuple

_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]


def uvarint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class SentChunk(NamedTuple):
    """A chunk as the gateway sent it: ``data`` encoded as ``compression``, ``raw_length`` bytes decoded.

    ``damage`` set: the gateway cannot serve this chunk (damaged or missing in
    storage; no data), and why (ADR 0030). ``data`` is a view into the
    received message when the chunk was parsed out of one (``parse_read_chunks``).
    """

    chunk_id: bytes
    data: bytes | memoryview
    compression: int
    raw_length: int
    damage: str = ""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` of ``buf`` and the position after it; ValueError past ``end`` or beyond 10 bytes."""
    result = shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            break
    raise ValueError("malformed varint")


_FIXED_WIDTH = {1: 8, 5: 4}  # wire types 1 (64-bit) and 5 (32-bit): their bytes


def _small_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """``_varint``, one byte without a loop (lengths of ids, compression codes)."""
    if pos < end and buf[pos] < 0x80:
        return buf[pos], pos + 1
    return _varint(buf, pos, end)


def _int32(value: int) -> int:
    """A varint as protobuf reads an int32 (an enum): its low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _chunk_fields(buf: bytes, view: memoryview, pos: int, end: int, chunks: list[SentChunk] | None) -> SentChunk:
    """The fields of a ``ServedChunk`` in ``buf[pos:end]``, or with ``chunks`` those of a ``ReadChunksResponse``.

    Both have fields 1-4 alike; field 5 is the chunk's ``damage``, or the
    response's ``chunks``, each parsed and appended to ``chunks``. Read as
    protobuf reads them: any order, the last occurrence of a field wins,
    unknown fields (and known numbers with another wire type) are skipped;
    ``compression`` is an int32 and ``raw_length`` a uint32 (a varint is cut
    to its low bits), ``damage`` UTF-8. ``data`` is a view into ``buf``.
    ValueError for anything malformed.
    """
    chunk_id = b""
    data: bytes | memoryview = b""
    compression = raw_length = 0
    damage = ""
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 2:  # length-delimited
            length, pos = _small_varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise ValueError("a field runs past its message")
            if field == 2:
                data = view[pos:stop]  # the message's bytes, not a copy
            elif field == 1:
                chunk_id = buf[pos:stop]
            elif field == 5:
                if chunks is None:
                    damage = str(buf[pos:stop], "utf-8")  # UnicodeDecodeError is a ValueError
                else:
                    chunks.append(_chunk_fields(buf, view, pos, stop, None))
            pos = stop
        elif wire == 0:
            value, pos = _small_varint(buf, pos, end)
            if field == 3:
                compression = _int32(value)
            elif field == 4:
                raw_length = value & 0xFFFFFFFF
        elif wire in _FIXED_WIDTH:
            pos += _FIXED_WIDTH[wire]
        else:
            raise ValueError(f"wire type {wire}")
    if pos != end:
        raise ValueError("a field runs past its message")
    return SentChunk(chunk_id, data, compression, raw_length, damage)


def parse_read_chunks(message: bytes) -> list[SentChunk]:
    """The chunks of one serialized ``ReadChunksResponse``: its ``chunks``, or, when it has none, the message itself.

    A gateway that predates ``max_message_bytes`` sends one chunk per message
    in the response's own fields (1-4); a chunk id is never empty, so a
    message without ``chunks`` cannot be a batched one.

    Each chunk's ``data`` is a view into ``message`` (which it keeps alive), so
    its content is not copied again: parsing the message into protobuf
    objects copied every chunk once, and reading ``data`` out of one copied
    it once more (ADR 0073). ValueError when the message is malformed
    (protobuf's groups, which no gateway sends, are refused too).
    """
    chunks: list[SentChunk] = []
    own = _chunk_fields(message, memoryview(message), 0, len(message), chunks)
    return chunks or [own]
