"""Throughput of the backup pipeline (read + chunk + hash + dedup + compress + upload).

On one generated large file, or with ``--tree`` on an existing tree (e.g. the
benchmark's kernel source). The gateway is an in-memory sink (no
verification), so this measures the agent's own CPU path. Usage:

    uv run python agent/bench/bench_pipeline.py [--size-mib 256] [--cores 2] [--dir DIR] [--tree DIR] [--profile N]

Each run prints its wall time and the process's CPU time; ``--profile N`` also
prints the N functions with the most self time on the event-loop thread
(cProfile sees only the thread it runs in: the loop, where the GIL is contended).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import random
import resource
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent.backup import PipelineLimits, run_backup
from strongroom_agent.exclusions import LinuxExclusions


class SinkGateway:
    def __init__(self) -> None:
        self.ids: set[bytes] = set()
        self.payload_bytes = 0

    async def find_missing_chunks(self, job_id: str, chunk_ids: Sequence[bytes]) -> list[bytes]:
        return [c for c in chunk_ids if c not in self.ids]

    async def upload_chunks(self, requests: Sequence[bytes]) -> gateway_pb2.UploadChunksResponse:
        messages = [gateway_pb2.UploadChunkRequest.FromString(r) for r in requests]
        chunks = [c for r in messages for c in (r.chunks if r.chunks else [r])]
        for c in chunks:
            self.ids.add(c.chunk_id)
            self.payload_bytes += len(c.payload)
        return gateway_pb2.UploadChunksResponse(chunks_stored=len(chunks))

    async def commit_point(
        self, requests: AsyncIterator[gateway_pb2.CommitPointRequest]
    ) -> gateway_pb2.CommitPointResponse:
        async for _ in requests:
            pass
        return gateway_pb2.CommitPointResponse(point_id=uuid.uuid4().hex)


def make_file(path: str, size: int) -> None:
    """Alternating 1 MiB blocks of random bytes and of text (compressible)."""
    rng = random.Random(1)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    block = 1 << 20
    with open(path, "wb") as f:
        for i in range(size // block):
            if i % 2:
                f.write(rng.randbytes(block))
            else:
                text = b" ".join(rng.choice(words) for _ in range(block // 5))
                f.write(text[:block].ljust(block, b"\n"))


def peak_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--avg-kib", type=int, default=1024)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--tree", default=None, help="back up this existing tree instead of a generated file")
    parser.add_argument(
        "--incremental", action="store_true", help="keep the agent's cache: the second run reads nothing"
    )
    parser.add_argument("--first-only", action="store_true", help="only the first run (all new)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the event loop's top N functions")
    args = parser.parse_args()
    avg = args.avg_kib << 10
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.tree:
            root = os.path.abspath(args.tree)
        else:
            root = os.path.join(tmp, "data")
            os.mkdir(root)
            make_file(os.path.join(root, "big.bin"), args.size_mib << 20)
        command = gateway_pb2.RunBackup(job_id="bench", max_cores=args.cores, accepts_base_point=args.incremental)
        command.repository.CopyFrom(
            gateway_pb2.RepositoryParameters(
                chunker_min_size=avg // 4, chunker_avg_size=avg, chunker_max_size=avg * 4, chunk_id_key=bytes(32)
            )
        )
        known: set[bytes] = set()
        for run in ("first (all new)", "second (all known)")[: 1 if args.first_only else 2]:
            gateway = SinkGateway()
            gateway.ids = known
            profiler = cProfile.Profile() if args.profile else None
            cpu = os.times()
            start = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            finished = await run_backup(
                command,
                client=gateway,  # type: ignore[arg-type]
                points=[common_pb2.Filesystem(mount_point=root)],
                exclusions=LinuxExclusions(),
                cancel=asyncio.Event(),
                spool_dir=tmp,
                state_dir=os.path.join(tmp, "state") if args.incremental else None,
                limits=PipelineLimits(racy_window_ns=0),  # the tree may be fresh: trust its timestamps
            )
            elapsed = time.perf_counter() - start
            after = os.times()
            cpu_s = (after.user - cpu.user) + (after.system - cpu.system)
            if profiler is not None:
                profiler.disable()
            assert finished.status == common_pb2.JOB_STATUS_COMPLETE, finished
            mb = finished.stats.bytes_read / 1e6
            print(
                f"{run}: {mb:.0f} MB in {elapsed:.2f} s = {mb / elapsed:.0f} MB/s "
                f"({args.cores} cores, avg chunk {args.avg_kib} KiB, "
                f"{finished.stats.files_read} files read, peak RSS {peak_rss_mb()} MB, "
                f"{finished.stats.chunks_new} chunks uploaded, payload {gateway.payload_bytes / 1e6:.0f} MB, "
                f"CPU {cpu_s:.2f} s)"
            )
            if profiler is not None:
                pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    asyncio.run(main())
