"""The large files' read, cut, hash and compress: the Python path against the native cutter, alternating (ADR 0083).

    uv run python bench/large_read_ab.py --data DIR [--rounds 3] [--min-bytes N] [--agent-allocator]

In this process, on one thread, no stack: every file of the day-1 tree (``--data``) larger than
``--min-bytes`` (default 1 MiB, the agent's small-file limit: what ``Reader`` reads alone) read through
``read.FileReader`` with the gateway's chunker sizes (256 KiB / 1 MiB / 4 MiB) and 4 MiB steps, as the
backup reads it, then each chunk encoded as it would be uploaded:

- ``python``: no cutter (pyfastcdc, ``bytes`` copies, BLAKE3), then ``chunking.compress`` per chunk (the
  compress stage's work);
- ``native``: ``NativeCutter`` (read, cut, hash and compress in one call per step); nothing after.

``--agent-allocator`` applies the agent's malloc settings first (``memory.tune_allocator``: buffers up
to 9 MiB from the heap, ADR 0077), as the agent runs. A first pass of each side warms the page cache
and is not counted. Then ``--rounds`` rounds, the two
sides alternating (the first side alternates per round). Per side and round: CPU seconds of this
process (user, system), wall seconds, minor page faults, MB read, chunks, stored MB; then the native/python ratios per
round. Each round checks that both sides gave the same chunk ids and stored sizes within 1%.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from strongroom.agent.v1 import gateway_pb2
from strongroom_agent.backup import native
from strongroom_agent.backup.read import FileReader, open_for_backup
from strongroom_agent.chunking import ChunkParams, compress
from strongroom_agent.throttle import Unlimited

MiB = 1 << 20
PARAMS = ChunkParams(min_size=256 << 10, avg_size=1 << 20, max_size=4 << 20, key=bytes(range(32)), seed=7)
STEP_BYTES = 4 << 20  # PipelineLimits.read_batch_bytes


@dataclass
class Side:
    user_s: float
    sys_s: float
    wall_s: float
    minflt_k: float
    read_mb: float
    chunks: int
    stored_mb: float
    ids: str  # a digest of every chunk id in order


def read_all(paths: list[str], natively: native.NativeExtension | None) -> Side:
    """Read every path as ``Reader`` reads a large file (no retry: the tree does not change)."""
    digest = hashlib.blake2b()
    read = chunks = stored = 0
    before, wall, faults = os.times(), time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for path in paths:
        cutter = natively.cutter(PARAMS, compress=True) if natively is not None else None
        reader = FileReader(path, PARAMS, open_for_backup, Unlimited(), threading.Event(), STEP_BYTES, cutter)
        try:
            while True:
                step = reader.step()
                read += step.bytes_read
                for chunk in step.chunks:
                    if chunk.compression == gateway_pb2.CHUNK_COMPRESSION_UNSPECIFIED:
                        _, payload = compress(chunk.content)
                    else:
                        payload = chunk.content
                    stored += len(payload)
                    digest.update(chunk.id)
                    chunks += 1
                if step.done:
                    if not step.consistent:
                        raise SystemExit(f"{path} changed while being read: the tree must stay still")
                    break
        finally:
            reader.close()
    after, wall = os.times(), time.perf_counter() - wall
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return Side(
        after.user - before.user,
        after.system - before.system,
        wall,
        faults / 1e3,
        read / 1e6,
        chunks,
        stored / 1e6,
        digest.hexdigest(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="the day-1 tree (bench/dataset.py)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-bytes", type=int, default=MiB, help="files larger than this (the small-file limit)")
    parser.add_argument("--agent-allocator", action="store_true", help="the agent's malloc settings first")
    args = parser.parse_args(argv)
    if args.agent_allocator:
        from strongroom_agent.memory import tune_allocator

        print(f"agent allocator settings applied: {tune_allocator()}", flush=True)
    natively = native.load()
    if natively is None:
        print("the native extension is not built (make native)", file=sys.stderr)
        return 2
    paths = sorted(
        str(Path(root) / name)
        for root, _, names in os.walk(args.data)
        for name in names
        if not os.path.islink(Path(root) / name) and os.path.getsize(Path(root) / name) > args.min_bytes
    )
    print(f"{len(paths)} files over {args.min_bytes} bytes, {sum(os.path.getsize(p) for p in paths) / 1e6:.1f} MB")
    sides: dict[str, native.NativeExtension | None] = {"python": None, "native": natively}
    for side in sides.values():  # warm the page cache, and each path's first allocations
        read_all(paths, side)
    rows: list[tuple[int, str, Side]] = []
    load: list[float] = []
    for round_no in range(1, args.rounds + 1):
        order = list(sides) if round_no % 2 else list(reversed(sides))
        done: dict[str, Side] = {}
        for name in order:
            done[name] = result = read_all(paths, sides[name])
            rows.append((round_no, name, result))
            load.append(os.getloadavg()[0])
            print(
                f"round {round_no} {name}: user {result.user_s:.2f} s, sys {result.sys_s:.2f} s,"
                f" wall {result.wall_s:.2f} s, {result.minflt_k:.1f} k faults, {result.read_mb:.1f} MB read,"
                f" {result.chunks} chunks,"
                f" {result.stored_mb:.1f} MB stored, load {load[-1]:.1f}",
                flush=True,
            )
        python, nat = done["python"], done["native"]
        if python.ids != nat.ids or python.chunks != nat.chunks:
            raise SystemExit("the two sides cut or hashed differently")
        if abs(python.stored_mb - nat.stored_mb) > 0.01 * python.stored_mb:
            raise SystemExit(f"stored {nat.stored_mb:.1f} MB native against {python.stored_mb:.1f} MB python")
    print()
    print("| round | side | user s | sys s | CPU s | wall s | minor faults k | MB read | chunks | stored MB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for round_no, name, r in rows:
        cpu = r.user_s + r.sys_s
        print(
            f"| {round_no} | {name} | {r.user_s:.2f} | {r.sys_s:.2f} | {cpu:.2f} | {r.wall_s:.2f} | {r.minflt_k:.1f} |"
            f" {r.read_mb:.1f} | {r.chunks} | {r.stored_mb:.1f} |"
        )
    print()
    print("| round | native/python CPU | user | sys | wall | minor faults |")
    print("|---:|---:|---:|---:|---:|---:|")
    by = {(n, s): r for n, s, r in rows}
    for round_no in range(1, args.rounds + 1):
        p, n = by[(round_no, "python")], by[(round_no, "native")]
        print(
            f"| {round_no} | {(n.user_s + n.sys_s) / (p.user_s + p.sys_s):.3f} | {n.user_s / p.user_s:.3f} |"
            f" {n.sys_s / max(p.sys_s, 0.01):.3f} | {n.wall_s / p.wall_s:.3f} |"
            f" {n.minflt_k / max(p.minflt_k, 0.001):.3f} |"
        )
    print(f"\n1-minute load after each side: {', '.join(f'{x:.1f}' for x in load)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
