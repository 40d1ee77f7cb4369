"""The gateway's receive-and-verify step of UploadChunks alone, the previous way and the current one (ADR 0074).

    uv run python bench/ingest_path.py [DIR] [--small-mib S] [--large-mib L] [--rounds 5]

Takes ``S`` MiB of the small files of ``DIR`` (default: the benchmark's day-1 tree; each file under
256 KiB is one chunk, as the benchmark's chunker leaves it) and ``L`` MiB of its large files (the same
part of each: binary, log and mixed) cut with the gateway's chunker sizes (256 KiB / 1 MiB / 4 MiB),
compresses every chunk as the agent does (``chunking.compress``) and builds the agent's
UploadChunkRequest messages (``messages.upload_requests``). Then, in one thread, each side in turn
per round (the order rotates), every message is received (a fresh copy of its bytes, as gRPC hands
over each message; the copy is not timed), read and verified:

- ``runtime``: the previous way: parsed by the protobuf runtime (the generated ``FromString``, as
  gRPC did), each chunk's fields and payload read out of the message, each chunk verified with
  ``chunks.verify_payload`` (its content inflated into new memory);
- ``runtime-reused``: the runtime's parse and payload copies, verified with ``chunks.verify_uploads``
  (the verification change alone);
- ``views``: ``upload_messages.read_upload_request`` (payloads as views into the received bytes),
  ``ingest._uploaded_chunks`` and ``chunks.verify_uploads`` (large zstd chunks inflated into the
  thread's reused buffer), then each payload copied out as the pack buffer keeps it.

Prints the CPU seconds (user + system) and minor page faults of each side per round, and the medians.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dataset  # noqa: E402
from pyfastcdc import FastCDC  # noqa: E402
from strongroom.agent.v1 import gateway_pb2  # noqa: E402
from strongroom_agent.backup import PipelineLimits  # noqa: E402
from strongroom_agent.backup.messages import Upload, upload_requests  # noqa: E402
from strongroom_agent.chunking import chunk_id, compress  # noqa: E402
from strongroom_gateway.chunks import PACK_COMPRESSION, UploadedPayload, verify_payload, verify_uploads  # noqa: E402
from strongroom_gateway.ingest import _uploaded_chunks  # noqa: E402
from strongroom_gateway.upload_messages import read_upload_request  # noqa: E402

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


def runtime_side(data: bytes) -> int:
    """The previous way: the protobuf runtime's parse, the payloads read out of it, verified into new memory."""
    request = gateway_pb2.UploadChunkRequest.FromString(data)
    held = 0
    for chunk in request.chunks:
        payload = chunk.payload  # each read of a bytes field copies it out of the message
        compression = PACK_COMPRESSION[chunk.compression]
        verify_payload(KEY, chunk.chunk_id, payload, compression, chunk.raw_length)
        held += len(payload)
    return held


def views_side(data: bytes) -> int:
    """The current way: read from the bytes, verified in the reused buffer, payloads copied as a pack keeps them."""
    chunks: list[UploadedPayload] = _uploaded_chunks(read_upload_request(data))
    passed, refusal = verify_uploads(KEY, chunks)
    if refusal is not None:
        raise refusal
    return sum(len(bytes(c.payload)) for c in chunks[:passed])


def runtime_reused_side(data: bytes) -> int:
    """The protobuf runtime's parse and payload copies, verified through the reused buffer (the verify change alone)."""
    request = gateway_pb2.UploadChunkRequest.FromString(data)
    chunks = [
        UploadedPayload(c.chunk_id, PACK_COMPRESSION[c.compression], c.raw_length, c.payload) for c in request.chunks
    ]
    passed, refusal = verify_uploads(KEY, chunks)
    if refusal is not None:
        raise refusal
    return sum(len(c.payload) for c in chunks[:passed])


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
