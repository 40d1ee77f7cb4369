"""Opening fetched pack ranges: split a range into its blobs, decrypt or decode and verify each.

Contract: pure CPU (run on a worker thread); a blob that cannot be served is answered
``damaged`` with the reason (ADR 0030), never raised, so the rest of its range is still served.
"""

from __future__ import annotations

from typing import NamedTuple

from strongroom.agent.v1 import gateway_pb2

from strongroom_gateway.chunks import PROTO_COMPRESSION, ChunkRejected, verify_payload
from strongroom_gateway.crypto import DataKey
from strongroom_gateway.packfile import ENCRYPTED_VERSIONS, PackFormatError, open_blob
from strongroom_gateway.points.planning import ReadRange


class OpenedChunk(NamedTuple):
    """A served chunk: ``data`` encoded as ``compression``, ``raw_length`` bytes once decoded.

    ``damage`` set: the chunk cannot be served (no data), and why (ADR 0030).
    """

    chunk_id: bytes
    data: bytes
    compression: gateway_pb2.ChunkCompression.ValueType
    raw_length: int
    damage: str = ""


def damaged(chunk_id: bytes, raw_length: int, reason: str) -> OpenedChunk:
    """The answer for a chunk whose stored bytes cannot be served."""
    return OpenedChunk(chunk_id, b"", gateway_pb2.CHUNK_COMPRESSION_NONE, raw_length, reason)


def open_range(
    chunk_id_key: bytes, data_key: DataKey | None, read: ReadRange, data: bytes, *, compressed: bool = False
) -> dict[bytes, OpenedChunk]:
    """Split a fetched range into its blobs and open each for sending; pure CPU, for a worker thread.

    A blob of an authenticated (encrypted) pack is only decrypted when the
    agent takes ``compressed`` data: AES-GCM proves it is the payload the
    gateway verified and sealed for this account and chunk id. Every other blob
    is decoded and its id re-checked (``verify_payload``). A blob that does
    not open or verify, or that the range does not hold in full, is answered
    ``damaged`` with the reason; the other blobs of the range are served.
    """
    view = memoryview(data)
    responses: dict[bytes, OpenedChunk] = {}
    for blob in read.blobs:
        begin = blob.offset - read.offset
        if begin + blob.length > len(data):
            responses[blob.chunk_id] = damaged(
                blob.chunk_id, blob.raw_length, f"its pack is shorter than recorded ({read.offset + len(data)} bytes)"
            )
            continue
        stored = bytes(view[begin : begin + blob.length])
        encrypted = blob.pack_format in ENCRYPTED_VERSIONS
        try:
            payload = open_blob(data_key, blob.pack_format, blob.chunk_id, blob.compression, blob.raw_length, stored)
        except PackFormatError as exc:
            reason = "authentication failed" if encrypted and data_key is not None else f"cannot be opened: {exc}"
            responses[blob.chunk_id] = damaged(blob.chunk_id, blob.raw_length, reason)
            continue
        if compressed and encrypted:
            compression = PROTO_COMPRESSION[blob.compression]
        else:
            try:
                payload = verify_payload(chunk_id_key, blob.chunk_id, payload, blob.compression, blob.raw_length)
            except ChunkRejected as exc:
                responses[blob.chunk_id] = damaged(blob.chunk_id, blob.raw_length, f"verification failed: {exc}")
                continue
            compression = gateway_pb2.CHUNK_COMPRESSION_NONE
        responses[blob.chunk_id] = OpenedChunk(blob.chunk_id, payload, compression, blob.raw_length)
    return responses
