"""The serialized ``UploadChunkRequest`` messages of an UploadChunks call, encoded by hand (ADR 0071).

``upload_requests`` writes the bytes the protobuf runtime would write for an
``UploadChunkRequest`` with ``job_id`` and ``chunks`` (agent/v1/gateway.proto):
fields in number order, proto3 defaults left out, one ``b"".join`` per message.
Building the message objects and then serializing them copied every payload
twice, each time into freshly allocated memory. The wire format is the proto's;
``test_agent_messages.py`` holds the encoder to the runtime's own serialization
byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from strongroom.agent.v1 import gateway_pb2

from strongroom_agent.wire import uvarint


@dataclass
class Upload:
    """A chunk ready to upload: ``payload`` is its content encoded as ``compression``.

    ``charge`` is what it holds of the memory budget until the upload returns.
    """

    id: bytes
    raw_length: int
    compression: gateway_pb2.ChunkCompression.ValueType
    payload: bytes
    charge: int


# Tags (field number << 3 | wire type) of UploadChunkRequest and UploadedChunk (agent/v1/gateway.proto).
_REQUEST_JOB_ID = b"\x0a"  # UploadChunkRequest.job_id = 1, length-delimited
_REQUEST_CHUNKS = b"\x32"  # UploadChunkRequest.chunks = 6, length-delimited
_CHUNK_ID = b"\x0a"  # UploadedChunk.chunk_id = 1, length-delimited
_CHUNK_COMPRESSION = b"\x10"  # UploadedChunk.compression = 2, varint
_CHUNK_RAW_LENGTH = b"\x18"  # UploadedChunk.raw_length = 3, varint
_CHUNK_PAYLOAD = b"\x22"  # UploadedChunk.payload = 4, length-delimited


def _chunk_field(u: Upload) -> tuple[bytes, bytes]:
    """``u`` as an ``UploadChunkRequest.chunks`` field: its tag, lengths and scalars, then its payload.

    Fields in number order and proto3 defaults left out, as the protobuf runtime writes them.
    """
    head = _CHUNK_ID + uvarint(len(u.id)) + u.id
    if u.compression:
        head += _CHUNK_COMPRESSION + uvarint(u.compression)
    if u.raw_length:
        head += _CHUNK_RAW_LENGTH + uvarint(u.raw_length)
    if u.payload:
        head += _CHUNK_PAYLOAD + uvarint(len(u.payload))
    return _REQUEST_CHUNKS + uvarint(len(head) + len(u.payload)) + head, u.payload


def upload_requests(job_id: str, uploads: Sequence[Upload], message_bytes: int) -> list[bytes]:
    """The serialized messages of one UploadChunks call: many chunks per message, each message about ``message_bytes``.

    One message per chunk made the gRPC machinery, not the data, most of the
    upload's CPU on both sides for trees of small files (ADR 0020). Each
    message is the bytes the protobuf runtime would write for an
    ``UploadChunkRequest`` with ``job_id`` and ``chunks``, encoded here in one
    join: building the message and then serializing it copied every payload
    twice, each into freshly allocated memory (ADR 0071).
    """
    job = job_id.encode()
    lead = _REQUEST_JOB_ID + uvarint(len(job)) + job if job else b""
    requests: list[bytes] = []
    parts = [lead]
    size = 0
    for u in uploads:
        if len(parts) > 1 and size + len(u.payload) > message_bytes:
            requests.append(b"".join(parts))
            parts, size = [lead], 0
        parts.extend(_chunk_field(u))
        size += len(u.payload)
    if len(parts) > 1:
        requests.append(b"".join(parts))
    return requests
