"""The hand-encoded upload messages (backup/messages.py): the protobuf runtime's bytes, byte for byte."""

from __future__ import annotations

from strongroom.agent.v1 import gateway_pb2
from strongroom_agent.backup import Upload, upload_requests


def test_upload_requests_carry_many_chunks_per_message_in_order() -> None:
    uploads = [
        Upload(bytes([i]) * 32, 100, gateway_pb2.CHUNK_COMPRESSION_NONE, bytes(size), 0)
        for i, size in enumerate([300, 300, 300, 2000, 10, 10])
    ]
    requests = [gateway_pb2.UploadChunkRequest.FromString(r) for r in upload_requests("job-1", uploads, 700)]
    assert [[len(c.payload) for c in r.chunks] for r in requests] == [[300, 300], [300], [2000], [10, 10]]
    assert all(r.job_id == "job-1" and not r.chunk_id for r in requests)
    assert [c.chunk_id for r in requests for c in r.chunks] == [u.id for u in uploads]
    assert upload_requests("job-1", [], message_bytes=700) == []


def test_upload_requests_are_the_bytes_the_protobuf_runtime_writes() -> None:
    """Hand-encoded: every field, defaults left out, lengths past one varint byte, an empty job id."""
    uploads = [
        Upload(b"\x01" * 32, 5, gateway_pb2.CHUNK_COMPRESSION_NONE, b"12345", 0),
        Upload(b"\x02" * 32, 300_000, gateway_pb2.CHUNK_COMPRESSION_ZSTD, bytes(range(256)) * 600, 0),
        Upload(b"\x03" * 32, 0, gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED, b"", 0),
        Upload(b"\x04" * 32, 1 << 22, gateway_pb2.CHUNK_COMPRESSION_ZSTD, b"x" * 127, 0),
    ]
    for job_id in ("job-7", "j" * 200, ""):
        for message_bytes in (1, 200_000, 1 << 30):
            expected: list[bytes] = []
            current: list[gateway_pb2.UploadedChunk] = []
            size = 0
            for u in uploads:
                if current and size + len(u.payload) > message_bytes:
                    expected.append(gateway_pb2.UploadChunkRequest(job_id=job_id, chunks=current).SerializeToString())
                    current, size = [], 0
                current.append(
                    gateway_pb2.UploadedChunk(
                        chunk_id=u.id, compression=u.compression, raw_length=u.raw_length, payload=u.payload
                    )
                )
                size += len(u.payload)
            expected.append(gateway_pb2.UploadChunkRequest(job_id=job_id, chunks=current).SerializeToString())
            assert upload_requests(job_id, uploads, message_bytes) == expected, (job_id, message_bytes)
