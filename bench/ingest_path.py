"""The gateway's receive-and-verify step of UploadChunks alone: the gateway's way and two tried ones (ADR 0074).

    uv run python bench/ingest_path.py [DIR] [--small-mib S] [--large-mib L] [--rounds 5]

Takes ``S`` MiB of the small files of ``DIR`` (default: the benchmark's day-1 tree; each file under
256 KiB is one chunk, as the benchmark's chunker leaves it) and ``L`` MiB of its large files (the same
part of each: binary, log and mixed) cut with the gateway's chunker sizes (256 KiB / 1 MiB / 4 MiB),
compresses every chunk as the agent does (``chunking.compress``) and builds the agent's
UploadChunkRequest messages (``messages.upload_requests``). Then, in one thread, each side in turn
per round (the order rotates), every message is received (a fresh copy of its bytes, as gRPC hands
over each message; the copy is not timed), read and verified:

- ``runtime``: the gateway's way: parsed by the protobuf runtime (the generated ``FromString``, as
  gRPC does), each chunk's fields and payload read out of the message, each chunk verified with
  ``chunks.verify_payload`` (its content inflated into new memory);
- ``runtime-reused`` (tried, not taken): the runtime's parse and payload copies, a zstd chunk of
  128 KiB or more inflated into one reused buffer (a stream reader's ``readinto``) and hashed there;
- ``views`` (tried, not taken): the message read from its bytes in Python (``read_upload_request`` below:
  payloads as views, no copy by the runtime), verified as ``runtime-reused``, then each payload
  copied out as a pack buffer would keep it.

The tried ways live here only (the gateway was not changed): both cost more CPU than the gateway's.

Prints the CPU seconds (user + system) and minor page faults of each side per round, and the medians.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
from pyfastcdc import FastCDC  # noqa: E402
from strongroom.agent.v1 import gateway_pb2  # noqa: E402
from strongroom_agent.backup import PipelineLimits  # noqa: E402
from strongroom_agent.backup.messages import Upload, upload_requests  # noqa: E402
from strongroom_agent.chunking import chunk_id, compress  # noqa: E402
from strongroom_gateway.chunks import PACK_COMPRESSION, _decompressor, verify_payload  # noqa: E402
from strongroom_gateway.packfile import COMPRESSION_ZSTD  # noqa: E402

MiB = 1 << 20
MIN_SIZE, AVG_SIZE, MAX_SIZE, SEED = 256 << 10, 1 << 20, 4 << 20, 7
MESSAGE_BYTES = PipelineLimits().upload_message_bytes  # the agent's messages
KEY = bytes(range(32))


def cpu() -> tuple[float, int]:
    """CPU seconds (user + system) and minor page faults of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def load_messages(root: Path, small_mib: int, large_mib: int) -> tuple[list[bytes], int, int]:
    """The upload messages of the chosen files' chunks, their chunk count and raw bytes."""
    uploads: list[Upload] = []
    raw = small = 0
    for dirpath, _dirs, names in sorted(os.walk(root / "src")):
        for name in sorted(names):
            path = Path(dirpath) / name
            if small >= small_mib * MiB:
                break
            if not path.is_file() or path.is_symlink() or not 0 < path.stat().st_size < MIN_SIZE:
                continue
            content = path.read_bytes()
            uploads.append(Upload(chunk_id(KEY, content), len(content), *compress(content), 0))
            small += len(content)
    raw += small
    big = sorted(p for p in (root / "big").rglob("*") if p.is_file())
    cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=SEED)
    share = large_mib * MiB // max(1, len(big))
    for path in big:
        with path.open("rb") as f:
            data = f.read(share)
        for chunk in cdc.cut_buf(data):
            content = bytes(chunk.data)
            uploads.append(Upload(chunk_id(KEY, content), len(content), *compress(content), 0))
            raw += len(content)
    return upload_requests("job-bench", uploads, MESSAGE_BYTES), len(uploads), raw


# ---------------------------------------------------------------- the tried ways (not taken, ADR 0074)

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


_local = threading.local()
INTO_BUFFER_MIN = 128 << 10
SCRATCH_BYTES = 4 << 20


def _reused(size: int) -> memoryview:
    buffer: bytearray | None = getattr(_local, "scratch", None)
    if size > SCRATCH_BYTES:
        return memoryview(bytearray(size))
    if buffer is None:
        buffer = _local.scratch = bytearray(SCRATCH_BYTES)
    return memoryview(buffer)[:size]


def verify_reused(expected_id: bytes, payload: bytes | memoryview, compression: int, raw_length: int) -> None:
    """``verify_payload``, but a zstd chunk of INTO_BUFFER_MIN or more that declares its size is inflated
    into the thread's reused buffer (one read past its end finds any excess) and hashed there."""
    large = compression == COMPRESSION_ZSTD and raw_length >= INTO_BUFFER_MIN
    if large and zstandard.frame_content_size(payload) == raw_length:
        out = _reused(raw_length)
        reader = _decompressor().stream_reader(payload)  # the gateway's per-thread decompressor
        filled = 0
        while filled < raw_length:
            n = reader.readinto(out[filled:])
            if n == 0:
                break
            filled += n
        if reader.readinto(bytearray(1)) or filled != raw_length:
            raise ValueError("content is not raw_length bytes")
        if blake3.blake3(out, key=KEY).digest() != expected_id:
            raise ValueError("chunk id mismatch")
        return
    verify_payload(KEY, expected_id, bytes(payload), compression, raw_length)


def runtime_side(data: bytes) -> int:
    """The gateway's way: the protobuf runtime's parse, the payloads read out of it, verified into new memory."""
    request = gateway_pb2.UploadChunkRequest.FromString(data)
    held = 0
    for chunk in request.chunks:
        payload = chunk.payload  # each read of a bytes field copies it out of the message
        verify_payload(KEY, chunk.chunk_id, payload, PACK_COMPRESSION[chunk.compression], chunk.raw_length)
        held += len(payload)
    return held


def runtime_reused_side(data: bytes) -> int:
    """The runtime's parse and payload copies, large zstd chunks verified in the reused buffer."""
    request = gateway_pb2.UploadChunkRequest.FromString(data)
    held = 0
    for chunk in request.chunks:
        payload = chunk.payload
        verify_reused(chunk.chunk_id, payload, PACK_COMPRESSION[chunk.compression], chunk.raw_length)
        held += len(payload)
    return held


def views_side(data: bytes) -> int:
    """Read from the bytes (payloads as views), verified as ``runtime_reused``, payloads copied as a pack keeps them."""
    held = 0
    for chunk in read_upload_request(data).chunks:
        verify_reused(chunk.chunk_id, chunk.payload, PACK_COMPRESSION[chunk.compression], chunk.raw_length)
        held += len(bytes(chunk.payload))
    return held


SIDES = {"runtime": runtime_side, "runtime-reused": runtime_reused_side, "views": views_side}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, help="a day-1 tree (default: build one under --work)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "strongroom-bench")
    parser.add_argument("--small-mib", type=int, default=256)
    parser.add_argument("--large-mib", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = args.data or dataset.day1_tree(args.work, quick=False)
    messages, count, raw = load_messages(root, args.small_mib, args.large_mib)
    wire = sum(len(m) for m in messages)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{len(messages)} messages, {count:,} chunks, {raw / 1e6:,.1f} MB raw, {wire / 1e6:,.1f} MB sent\n")
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in SIDES}
    held_by: dict[str, int] = {}
    print("| round | side | CPU s | minor faults |")
    print("|---:|---|---:|---:|")
    for round_no in range(args.rounds):
        order = list(SIDES)[round_no % len(SIDES) :] + list(SIDES)[: round_no % len(SIDES)]
        for name in order:
            side = SIDES[name]
            spent, faults, held = 0.0, 0, 0
            for message in messages:
                received = bytes(bytearray(message))  # a fresh object per message, as gRPC hands it over
                cpu0, faults0 = cpu()
                held += side(received)
                cpu1, faults1 = cpu()
                spent += cpu1 - cpu0
                faults += faults1 - faults0
                del received
            held_by[name] = held
            results[name].append((spent, faults))
            print(f"| {round_no + 1} | {name} | {spent:.3f} | {faults:,} |", flush=True)
    if len(set(held_by.values())) != 1:
        raise SystemExit(f"the sides kept different payload bytes: {held_by}")
    print()
    base_cpu = statistics.median(c for c, _ in results["runtime"])
    print("| side | CPU s (median) | / runtime | minor faults (median) |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        median_cpu = statistics.median(c for c, _ in rows)
        median_faults = statistics.median(f for _, f in rows)
        print(f"| {name} | {median_cpu:.3f} | {median_cpu / base_cpu:.3f} | {median_faults:,.0f} |")
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
