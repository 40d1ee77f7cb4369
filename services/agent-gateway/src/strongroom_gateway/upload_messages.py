"""UploadChunkRequest messages read from the bytes gRPC received (agent/v1/gateway.proto; ADR 0074).

The UploadChunks handler is given each stream message as the bytes gRPC read
(``grpc_methods.as_received``) and reads it here, its payloads as views into
those bytes. Parsed by the protobuf runtime, a message was copied into the
runtime's memory and each payload copied again when read out of it: twice the
~1.2 GB a full backup of the benchmark tree uploads, on the event loop.

``read_upload_request`` reads what the protobuf runtime reads: fields in any
order, unknown fields skipped (a known field number with another wire type is
unknown, as there), the last value of a repeated scalar field, every
``chunks`` element; ``uint32`` and enum values cut to 32 bits as the runtime
does. It refuses (``MalformedMessage``) a truncated field or varint, a varint
over 10 bytes, field number 0, the group wire types (no Strongroom message has
groups) and a ``job_id`` that is not UTF-8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Field numbers of UploadChunkRequest and UploadedChunk (agent/v1/gateway.proto).
_JOB_ID, _CHUNK_ID, _COMPRESSION, _RAW_LENGTH, _PAYLOAD, _CHUNKS = 1, 2, 3, 4, 5, 6
_UPLOADED_CHUNK_ID, _UPLOADED_COMPRESSION, _UPLOADED_RAW_LENGTH, _UPLOADED_PAYLOAD = 1, 2, 3, 4
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_U32 = 0xFFFFFFFF
_EMPTY = memoryview(b"")


class MalformedMessage(ValueError):
    """The bytes are not an UploadChunkRequest."""


@dataclass(slots=True)
class UploadedFields:
    """One chunk's fields as sent (an ``UploadedChunk``, or fields 2-5 of the request); ``payload`` a view."""

    chunk_id: bytes = b""
    compression: int = 0
    raw_length: int = 0
    payload: memoryview = _EMPTY


@dataclass(slots=True)
class UploadRequestFields:
    """An ``UploadChunkRequest``: ``single`` is its fields 2-5, ``chunks`` its ``chunks`` elements."""

    job_id: str = ""
    single: UploadedFields = field(default_factory=UploadedFields)
    chunks: list[UploadedFields] = field(default_factory=list)


def read_upload_request(data: bytes) -> UploadRequestFields:
    """The fields of the serialized UploadChunkRequest ``data``; its payloads are views into ``data``.

    Raises MalformedMessage for bytes the protobuf runtime would not parse (see the module).
    """
    view = memoryview(data)
    request = UploadRequestFields()
    try:
        position, end = 0, len(data)
        while position < end:
            tag = data[position]
            if 8 <= tag < 0x80:  # a one-byte tag (every field of the message's), read inline
                position += 1
                number, wire = tag >> 3, tag & 7
            else:
                number, wire, position = _tag(data, position)
            if wire == _LEN:
                length, position = _varint(data, position)
                stop = position + length
                if stop > end:
                    raise MalformedMessage("a field runs past the end of the message")
                if number == _CHUNKS:
                    request.chunks.append(_read_chunk(data, view, position, stop))
                elif number == _JOB_ID:
                    request.job_id = str(data[position:stop], "utf-8")
                elif number == _CHUNK_ID:
                    request.single.chunk_id = data[position:stop]
                elif number == _PAYLOAD:
                    request.single.payload = view[position:stop]
                position = stop
            elif wire == _VARINT:
                value, position = _varint(data, position)
                if number == _COMPRESSION:
                    request.single.compression = _int32(value)
                elif number == _RAW_LENGTH:
                    request.single.raw_length = value & _U32
            else:
                position = _skip_fixed(wire, position, end)
    except UnicodeDecodeError:
        raise MalformedMessage("job_id is not UTF-8") from None
    except IndexError:
        raise MalformedMessage("the message ends inside a field") from None
    return request


def _read_chunk(data: bytes, view: memoryview, position: int, end: int) -> UploadedFields:
    # Run once per chunk (tens of thousands per full backup): one-byte tags and lengths, which
    # are all of the agent's but a payload's length, are read inline.
    chunk = UploadedFields()
    while position < end:
        tag = data[position]
        if 8 <= tag < 0x80:
            position += 1
            number, wire = tag >> 3, tag & 7
        else:
            number, wire, position = _tag(data, position)
        if wire == _LEN:
            length = data[position]
            if length < 0x80:
                position += 1
            else:
                length, position = _varint(data, position)
            stop = position + length
            if stop > end:
                raise MalformedMessage("a field of a chunk runs past the chunk's end")
            if number == _UPLOADED_PAYLOAD:
                chunk.payload = view[position:stop]
            elif number == _UPLOADED_CHUNK_ID:
                chunk.chunk_id = data[position:stop]
            position = stop
        elif wire == _VARINT:
            value, position = _varint(data, position)
            if number == _UPLOADED_COMPRESSION:
                chunk.compression = _int32(value)
            elif number == _UPLOADED_RAW_LENGTH:
                chunk.raw_length = value & _U32
        else:
            position = _skip_fixed(wire, position, end)
        if position > end:
            raise MalformedMessage("a field of a chunk runs past the chunk's end")
    return chunk


def _tag(data: bytes, position: int) -> tuple[int, int, int]:
    tag, position = _varint(data, position)
    number = tag >> 3
    if number == 0 or number > 0x1FFFFFFF:
        raise MalformedMessage(f"invalid field number {number}")
    return number, tag & 7, position


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` (IndexError past the end) and the position after it."""
    byte = data[position]
    if byte < 0x80:
        return byte, position + 1
    value, shift = byte & 0x7F, 7
    while True:
        position += 1
        byte = data[position]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, position + 1
        shift += 7
        if shift >= 70:
            raise MalformedMessage("a varint is longer than 10 bytes")


def _skip_fixed(wire: int, position: int, end: int) -> int:
    if wire == _I64:
        position += 8
    elif wire == _I32:
        position += 4
    else:
        raise MalformedMessage(f"unsupported wire type {wire}")
    if position > end:
        raise MalformedMessage("a field runs past the end of the message")
    return position


def _int32(value: int) -> int:
    """An enum's varint as the runtime keeps it: its low 32 bits, signed."""
    value &= _U32
    return value - (1 << 32) if value & 0x80000000 else value
