"""The 60-day retention simulation (issue 10, ADR 0041): stored bytes per day against live bytes.

    uv run python bench/retention.py [--days 60] [--scale 10] [--repack-below 0.6] [--hot-below 0.6]
        [--compare] [--out bench/results/F.md]

One process: the gateway's gRPC servicer, pack writer, commit and garbage collector (the real
code), on the **filesystem object store** whose locks follow a shifted clock that advances one day
per backup; the in-memory gateway store stands for PostgreSQL, its trusted time the same shifted
clock. The tree is the benchmark tree's shape at 1/``scale`` of its size (about 78k source files and
1.25 GB of large files at scale 1): small files are one chunk each, large files chunks of random
data of 1 MiB / ``scale`` (so that they keep their share of the tree and of the daily change). Each
day applies ``bench/dataset.py``'s day-2 change (1 % of the small files: a quarter appended, a
quarter edited, a quarter deleted, as many added; 4 KiB inserted into every large file but one,
which re-chunks one chunk per file), backs up (FindMissingChunks, upload of the missing chunks, a
full manifest), expires the points 30 days old as the catalog would (``version-expired``) and runs
one collection (safety interval 1 h), which moves the chunks the newest point uses out of packs
where they are below ``--hot-below`` of the size (generational moves, ADR 0042's update of
2026-12-06; 0 turns them off) and repacks packs whose live bytes fell below ``--repack-below`` of
their size (ADR 0042; 0 turns repacking off, as before it existed). ``--compare`` runs the same
simulation without generational moves beside it (a second process) and prints both.

Printed per day: stored bytes (packs + manifests, file sizes in the store), live bytes (distinct
chunks referenced by unexpired points, at their stored size, + their manifests: the manifest objects
and, for manifest format version 2, the distinct segment blobs they list) and stored / live.
Manifests are read as the gateway reads them (``read_point_manifest``), whatever version was written.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services" / "agent-gateway" / "tests"))

from gateway_helpers import GatewayHarness, aiter_of, chunk_id, dir_entry, meta, upload_request  # noqa: E402
from strongroom.agent.v1 import gateway_pb2  # noqa: E402
from strongroom.common.v1 import common_pb2  # noqa: E402
from strongroom.events.v1 import events_pb2  # noqa: E402
from strongroom_gateway.gc import collector  # noqa: E402
from strongroom_gateway.gc.repack import RepackPolicy  # noqa: E402
from strongroom_gateway.testing import InMemoryGatewayStore  # noqa: E402
from strongroom_platform import events  # noqa: E402
from strongroom_platform.clock import utc  # noqa: E402
from strongroom_platform.manifest import decode_manifest  # noqa: E402
from strongroom_platform.objectstore import ObjectStore  # noqa: E402
from strongroom_platform.objectstore_fs import FilesystemObjectStore  # noqa: E402
from strongroom_platform.testing import FakeClock  # noqa: E402

MiB = 1 << 20
SEED = 20261206


@dataclasses.dataclass
class Tree:
    """path -> list of chunk contents."""

    files: dict[str, list[bytes]]
    rng: random.Random
    chunk: int = MiB
    serial: int = 0

    @classmethod
    def build(cls, scale: int) -> Tree:
        rng = random.Random(SEED)
        files: dict[str, list[bytes]] = {}
        for n in range(78_000 // scale):
            files[f"src/{n // 1000:03d}/f{n:06d}.c"] = [_small(rng)]
        # Large files keep their share of the tree and of the daily change: 1 MiB chunks at scale 1.
        chunk = MiB // scale
        for n in range(8):
            files[f"big/file{n}.bin"] = [rng.randbytes(chunk) for _ in range(1250 // 8)]
        return cls(files, rng, chunk=chunk)

    def day(self) -> None:
        """The day-2 change of bench/dataset.py, on chunks."""
        rng = self.rng
        small = sorted(p for p in self.files if p.startswith("src/"))
        changed = rng.sample(small, max(4, len(small) // 100))
        quarter = len(changed) // 4
        for path in changed[:quarter]:  # appended
            self.files[path] = [self.files[path][0] + rng.randbytes(rng.randint(64, 2048))]
        for path in changed[quarter : 2 * quarter]:  # edited in the middle, same size
            old = self.files[path][0]
            middle = len(old) // 2
            self.files[path] = [old[:middle] + rng.randbytes(min(256, len(old) - middle)) + old[middle + 256 :]]
        for path in changed[2 * quarter : 3 * quarter]:  # deleted
            del self.files[path]
        for _ in range(quarter):  # added
            self.serial += 1
            self.files[f"src/new/d{self.serial:06d}.c"] = [_small(rng)]
        for n in range(1, 8):  # 4 KiB inserted near the start of every large file but the first
            chunks = self.files[f"big/file{n}.bin"]
            insert = min(4096, self.chunk // 4)
            chunks[0] = chunks[0][:1000] + rng.randbytes(insert) + chunks[0][1000 : self.chunk - insert]


def _small(rng: random.Random) -> bytes:
    size = int(rng.lognormvariate(8.5, 1.2)) % (256 * 1024) + 64
    half = rng.randbytes(size // 2)
    return half + half[: size - len(half)]  # compressible, like source


def _file_entry(path: str, key: bytes, chunks: list[bytes]) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(
        path=path,
        type=common_pb2.ENTRY_TYPE_FILE,
        mode=0o644,
        size=sum(len(c) for c in chunks),
        mtime_ns=1,
        chunk_ids=[chunk_id(key, c) for c in chunks],
    )


def _dirs(paths: list[str]) -> list[str]:
    out = {""}
    for path in paths:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return sorted(out)


async def _store_bytes(objects: ObjectStore, prefix: str) -> tuple[int, int]:
    """Bytes and number of every stored version under ``prefix`` (what the bucket bills)."""
    total = count = 0
    async for version in objects.list_versions(prefix):
        total += (await objects.stat(version.key, version_id=version.version_id)).size
        count += 1
    return total, count


async def simulate(
    days: int, scale: int, work: Path, repack_below: float, hot_below: float, label: str = ""
) -> list[tuple[int, int, int, int, int]]:
    clock = FakeClock(utc(2026, 1, 1, 1, 0))
    gw = GatewayHarness(clock, store=InMemoryGatewayStore(trusted_clock=clock))
    gw.objects = FilesystemObjectStore(work, clock)  # type: ignore[assignment]
    await gw.start()
    tree = Tree.build(scale)
    agent = await gw.enrolled_agent("i-sim")
    key = await gw.key_of(agent.account_id)
    points: list[tuple[str, dt.datetime]] = []
    manifests: dict[str, _Manifest] = {}
    rows: list[tuple[int, int, int, int, int]] = []
    policy = collector.Policy(repack=RepackPolicy(below=repack_below, hot_below=hot_below))
    deps = collector.Deps(gw.store, gw.objects, gw.objects, gw.keys, clock, policy)
    try:
        for day in range(1, days + 1):
            if day > 1:
                tree.day()
            job = f"job-{day}"
            await gw.request_backup(agent, job)
            contents = {}
            for chunks in tree.files.values():
                for c in chunks:
                    contents[chunk_id(key, c)] = c
            ids = list(contents)
            missing: list[bytes] = []
            for start in range(0, len(ids), 10_000):
                response = await gw.stub.FindMissingChunks(
                    gateway_pb2.FindMissingChunksRequest(job_id=job, chunk_ids=ids[start : start + 10_000]),
                    metadata=agent.md,
                )
                missing.extend(response.missing_chunk_ids)
            for start in range(0, len(missing), 256):
                batch = [upload_request(job, key, contents[c]) for c in missing[start : start + 256]]
                await gw.stub.UploadChunks(aiter_of(batch), metadata=agent.md)
            paths = sorted(tree.files)
            entries = [dir_entry(d) for d in _dirs(paths)] + [_file_entry(p, key, tree.files[p]) for p in paths]
            entries.sort(key=lambda e: e.path)
            header = gateway_pb2.CommitPointRequest(
                header=gateway_pb2.PointHeader(
                    job_id=job, filesystem=common_pb2.Filesystem(mount_point="/", device="/dev/vda1", fs_type="ext4")
                )
            )
            requests = [header] + [
                gateway_pb2.CommitPointRequest(entries=gateway_pb2.EntryBatch(entries=entries[i : i + 1000]))
                for i in range(0, len(entries), 1000)
            ]
            point = (await gw.stub.CommitPoint(aiter_of(requests), metadata=agent.md)).point_id
            jobs = gw.store.state.jobs
            jobs[job] = dataclasses.replace(jobs[job], state="finished")  # the agent's final report
            points.append((point, clock.now()))
            stat = await gw.objects.stat(f"manifests/{agent.account_id}/{point}")
            data, segment_ids = await gw.point_blobs(point)
            manifests[point] = _Manifest(_chunk_ids(data), segment_ids, stat.size)
            # The catalog's expiry: versions 30 days old (trusted time), one event each.
            for point_id, created in points:
                state = gw.store.state
                if created <= clock.now() - dt.timedelta(days=30) and point_id not in state.gc.expirations:
                    await gw.deliver(
                        events.VERSION_EXPIRED,
                        events_pb2.VersionExpired(
                            meta=meta(),
                            account_id=agent.account_id,
                            instance_id=agent.instance_id,
                            version_id=state.points[point_id].version_id,
                            point_ids=[point_id],
                        ),
                    )
            clock.advance(hours=2)
            await collector.collect(deps)
            pack_bytes, pack_count = await _store_bytes(gw.objects, "packs/")
            stored = pack_bytes + (await _store_bytes(gw.objects, "manifests/"))[0]
            live = _live_bytes(gw, manifests)
            rows.append((day, stored, live, len(_live_points(gw)), pack_count))
            print(
                f"{label}day {day:2d}: stored {stored / MiB:8.1f} MiB  live {live / MiB:8.1f} MiB"
                f"  ratio {stored / live:5.3f}",
                flush=True,
            )
            clock.advance(hours=22)
    finally:
        await gw.stop()
    return rows


def _live_points(gw: GatewayHarness) -> list[str]:
    state = gw.store.state
    return [p for p in state.points if p not in state.gc.expirations]


@dataclasses.dataclass(frozen=True)
class _Manifest:
    """A point's manifest as the live-bytes count needs it: its chunks, its segments, its object's size."""

    chunk_ids: frozenset[bytes]
    segment_ids: list[bytes]
    size: int


def _chunk_ids(data: bytes) -> frozenset[bytes]:
    return frozenset(bytes(c) for entry in decode_manifest(data) for c in entry.chunk_ids)


def _live_bytes(gw: GatewayHarness, manifests: dict[str, _Manifest]) -> int:
    """Distinct chunks and manifest segments of the unexpired points at their stored size, plus their
    manifest objects."""
    state = gw.store.state
    live_blobs: set[bytes] = set()
    total = 0
    for point_id in _live_points(gw):
        manifest = manifests[point_id]
        total += manifest.size
        live_blobs.update(manifest.chunk_ids)
        live_blobs.update(manifest.segment_ids)
    return total + sum(state.chunks[("acct-a", c)].length for c in live_blobs)


def _run(
    days: int, scale: int, repack_below: float, hot_below: float, label: str
) -> list[tuple[int, int, int, int, int]]:
    with tempfile.TemporaryDirectory(prefix="strongroom-retention-") as work:
        return asyncio.run(simulate(days, scale, Path(work), repack_below, hot_below, label))


def _worst(rows: list[tuple[int, int, int, int, int]]) -> float:
    return max((r[1] / r[2] for r in rows if r[0] > 31), default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--repack-below", type=float, default=RepackPolicy().below)
    parser.add_argument("--hot-below", type=float, default=RepackPolicy().hot_below)
    parser.add_argument("--compare", action="store_true", help="also run without generational moves (--hot-below 0)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as pool:
        after = pool.submit(_run, args.days, args.scale, args.repack_below, args.hot_below, "after  ")
        before = pool.submit(_run, args.days, args.scale, args.repack_below, 0.0, "before ") if args.compare else None
        rows = after.result()
        before_rows = before.result() if before is not None else None
    lines = [
        f"# Retention simulation: {args.days} daily backups, 30-day retention, tree at 1/{args.scale}",
        "",
        f"Generational moves below {args.hot_below:.0%} used by the newest point, repacking below"
        f" {args.repack_below:.0%} live (0 %: off).",
        "",
        "| day | stored MiB | live MiB | stored / live | live points | pack objects |",
        "|---:|---:|---:|---:|---:|---:|",
        *(f"| {d} | {s / MiB:.1f} | {live / MiB:.1f} | {s / live:.3f} | {n} | {k} |" for d, s, live, n, k in rows),
        "",
        f"Worst stored / live once retention is steady (days 32-{args.days}): {_worst(rows):.3f} (goal <= 1.25).",
    ]
    if before_rows is not None:
        lines += [
            "",
            f"Same run, same process start, without generational moves (--hot-below 0, repacking below"
            f" {args.repack_below:.0%}: ADR 0042 before its update):",
            "",
            "| day | before: stored MiB | before: stored / live | before: pack objects"
            " | after: stored MiB | after: stored / live | after: pack objects |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {b[0]} | {b[1] / MiB:.1f} | {b[1] / b[2]:.3f} | {b[4]}"
                f" | {a[1] / MiB:.1f} | {a[1] / a[2]:.3f} | {a[4]} |"
                for b, a in zip(before_rows, rows, strict=True)
            ),
            "",
            f"Worst once steady (days 32-{args.days}): before {_worst(before_rows):.3f}, after {_worst(rows):.3f}.",
        ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
