"""ReadManifest's gateway side alone, before and after streaming (issue 13, ADR 0069).

    uv run python bench/restore_manifest.py [--entries 78631] [--rounds 5] [--batch 1000]

A version 1 manifest of ``--entries`` entries shaped like the benchmark tree (one directory per 16
files, one or two chunk ids per file) is sealed into an in-memory object store, then read
``--rounds`` times each way, interleaved:

* ``whole``: the way ReadManifest read it before ADR 0069: ``read_point_manifest``, then
  ``filter_entries`` of all of it in a worker thread, then the batches;
* ``streamed``: ``manifests.stream_point_entries`` (parsed a batch at a time, the next one while the
  previous is handed on).

Then the same entries as a version 2 manifest's segments (ADR 0065; ``segments.cut_segments``), their
contents in memory (the pack reads are the same both ways), expanded the way ReadManifest did before
(``manifest_from_segments``, which rebuilds and recompresses the version 1 stream, then
``filter_entries``) and the way it does now (each segment's records checked with
``segment_records`` and filtered straight away, ``filter_records``): CPU only, in this thread.

Per read: the time to the first batch (what the agent waited for before it could start), the time
to the last batch, and the process's CPU seconds. The consumer does nothing with a batch but count
it, so the figures are the gateway's manifest work alone (no gRPC, no S3).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Sequence

from strongroom.common.v1 import common_pb2
from strongroom_gateway import manifests
from strongroom_gateway.keys import AccountKeys, MasterKey, MasterKeyring
from strongroom_gateway.ports import Account, Point
from strongroom_gateway.segments import cut_segments
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform.clock import SystemClock
from strongroom_platform.manifest import encode_manifest, manifest_from_segments, segment_records
from strongroom_platform.testing import FakeClock, InMemoryObjectStore

ACCOUNT = "bench-manifest"


def tree(count: int) -> list[common_pb2.FileEntry]:
    """``count`` entries in path order: a directory, then its 16 files, and so on."""
    entries = [common_pb2.FileEntry(path="", type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755)]
    n = 0
    while len(entries) < count:
        d = f"data/d{n // 16:05}"
        entries.append(common_pb2.FileEntry(path=d, type=common_pb2.ENTRY_TYPE_DIRECTORY, mode=0o755))
        for i in range(16):
            if len(entries) >= count:
                break
            chunks = [os.urandom(32) for _ in range(1 + (i % 2))]
            entries.append(
                common_pb2.FileEntry(
                    path=f"{d}/file-{i:02}.bin",
                    type=common_pb2.ENTRY_TYPE_FILE,
                    mode=0o644,
                    size=20_000 * (i + 1),
                    mtime_ns=1_700_000_000_000_000_000 + i,
                    chunk_ids=chunks,
                )
            )
        n += 16
    return entries


async def whole(
    objects: InMemoryObjectStore, keys: AccountKeys, point: Point, store: InMemoryGatewayStore, batch: int
) -> AsyncIterator[Sequence[common_pb2.FileEntry]]:
    """ReadManifest's reading before ADR 0069 (points/restore.py at main)."""
    data = await manifests.read_point_manifest(objects, keys, point, store=store)
    entries = await asyncio.to_thread(manifests.filter_entries, data, [], [])
    for start in range(0, len(entries), batch):
        yield entries[start : start + batch]


async def timed(batches: AsyncIterator[Sequence[common_pb2.FileEntry]]) -> tuple[float, float, float, int]:
    """(seconds to the first batch, seconds to the last, CPU seconds, entries)."""
    cpu, start = time.process_time(), time.perf_counter()
    first = 0.0
    count = 0
    async for entries in batches:
        if not count:
            first = time.perf_counter() - start
        count += len(entries)
        await asyncio.sleep(0)  # the send: the loop runs other work between messages
    return first, time.perf_counter() - start, time.process_time() - cpu, count


async def amain(args: argparse.Namespace) -> int:
    clock = FakeClock(SystemClock().now())
    store = InMemoryGatewayStore()
    objects = InMemoryObjectStore(clock)
    keys = AccountKeys(store, MasterKeyring(MasterKey("bench", secrets.token_bytes(32))), clock, objects=objects)
    async with store.transaction() as tx:
        await tx.ensure_account(Account(ACCOUNT, secrets.token_bytes(32), 1))
    entries = tree(args.entries)
    point = Point(
        point_id="p-bench",
        account_id=ACCOUNT,
        instance_id="i-bench",
        job_id="j-bench",
        version_id="1",
        mount_point="/",
        filesystem=b"",
        manifest_key="manifests/p-bench",
        file_count=len(entries),
        total_bytes=0,
        created_at=clock.now(),
        retain_until=clock.now() + dt.timedelta(days=1),
    )
    data = await manifests.seal(keys, account_id=ACCOUNT, point_id=point.point_id, manifest=encode_manifest(entries))
    await objects.put(point.manifest_key, data)
    print(f"{len(entries)} entries, sealed manifest {len(data) / 1e6:.2f} MB, load {os.getloadavg()[0]:.1f}")
    results: dict[str, list[tuple[float, float, float, int]]] = {"whole": [], "streamed": []}
    for n in range(args.rounds):
        for name in results:
            if name == "whole":
                batches = whole(objects, keys, point, store, args.batch)
            else:
                batches = manifests.stream_point_entries(objects, keys, point, [], [], store=store, batch=args.batch)
            load = os.getloadavg()[0]
            r = await timed(batches)
            assert r[3] == len(entries), r
            results[name].append(r)
            print(
                f"round {n + 1} {name:8} first batch {r[0] * 1e3:7.1f} ms, last {r[1] * 1e3:7.1f} ms,"
                f" CPU {r[2]:.3f} s (load {load:.1f})"
            )
    print("\n| way | first batch (ms, median) | last batch (ms, median) | CPU s (median) |\n|---|---:|---:|---:|")
    for name, rs in results.items():
        med = [statistics.median(r[i] for r in rs) for i in range(3)]
        print(f"| {name} | {med[0] * 1e3:.1f} | {med[1] * 1e3:.1f} | {med[2]:.3f} |")
    segments_ab(entries, args.rounds)
    return 0


def segments_ab(entries: Sequence[common_pb2.FileEntry], rounds: int) -> None:
    """Version 2: the CPU of expanding and filtering the segments, rebuilt stream vs records straight."""
    cut = list(cut_segments(secrets.token_bytes(32), ((e.path.encode(), e.SerializeToString()) for e in entries)))
    refs = [ref for ref, _ in cut]
    contents = [content for _, content in cut]

    def rebuilt() -> int:
        return len(manifests.filter_entries(manifest_from_segments(refs, contents), [], []))

    def straight() -> int:
        return sum(
            len(list(manifests.filter_records(segment_records(ref, content), [], [])))
            for ref, content in zip(refs, contents, strict=True)
        )

    print(f"\nversion 2: {len(refs)} segments")
    cpu: dict[str, list[float]] = {"rebuilt": [], "straight": []}
    for n in range(rounds):
        for name, way in (("rebuilt", rebuilt), ("straight", straight)):
            start = time.process_time()
            assert way() == len(entries)
            cpu[name].append(time.process_time() - start)
            print(f"round {n + 1} {name:8} CPU {cpu[name][-1]:.3f} s (load {os.getloadavg()[0]:.1f})")
    print("\n| version 2 way | CPU s (median) |\n|---|---:|")
    for name, values in cpu.items():
        print(f"| {name} | {statistics.median(values):.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=78_631)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1_000)
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
