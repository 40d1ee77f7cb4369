"""Catalog indexing at scale (issue 14, ADR 0049): a 1M-entry point on day 1 and day 2, before and after.

    uv run python bench/catalog.py [--files 1000000] [--runs 200] [--before-ref main] [--out bench/results/FILE.md]

Two manifests of the shape of ``dataset.py scale`` (small files in directories of 1,000, under
directories of 100): day 1, and day 2 with 1% of the files touched as ``dataset.py day2`` does (a
quarter appended, a quarter edited in place with the same size, a quarter deleted, as many new
files). Unchanged entries are byte-identical across the two days, as the gateway writes them (the
same chunk ids).

Each variant runs in its own process (peak RSS is that process's ``VmHWM``, reset before each day
through ``/proc/self/clear_refs``) on its own database of one PostgreSQL: ``before`` is the catalog
package of ``--before-ref`` (extracted with ``git archive``), ``after`` the working tree's. Both
index through ``handlers.handle_point_created`` as the catalog's role, reading the manifests from a
``ManifestReader`` that streams local files in the gateway's 1 MiB pieces (no gateway process: its
decrypt and gRPC costs are not in the times). Reported per day: time until the point is browsable,
peak RSS, index size (every catalog table of the browse and search indexes); then p50/p95 of
BrowsePoint (one directory of 1,000 files, first page) and of search on the day-2 point.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from _latency import timed

REPO = Path(__file__).resolve().parent.parent
SEED = 20261206
PER_DIR = 1000
PIECE = 1 << 20
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
MTIME = 1_700_000_000_000_000_000
ACCOUNT = "acct"
INSTANCE = "bench-i"
_TABLES = ("entries", "tree_changes", "tree_points", "search_changes", "search_points")


# --- the data ---------------------------------------------------------------------------------


def _chunk(i: int, day: int = 0) -> bytes:
    return hashlib.blake2b(b"%d:%d" % (i, day), digest_size=32).digest()


def _files(count: int, day: int) -> Iterator[tuple[str, int, int, int, bytes]]:
    """(path, size, mtime_ns, i, chunk id) of every file of the day, in path order."""
    rng = random.Random(f"{SEED}:{day}")
    sizes = random.Random(SEED)
    changed: dict[int, str] = {}
    if day == 2:
        for i in range(count):
            if rng.random() < 0.01:
                changed[i] = rng.choice(("append", "edit", "delete", "add"))
    dirs = (count + PER_DIR - 1) // PER_DIR
    for d in range(dirs):
        for f in range(min(PER_DIR, count - d * PER_DIR)):
            i = d * PER_DIR + f
            size = sizes.randint(64, 4096)
            path = f"d{d // 100:03d}/d{d:05d}/f{f:04d}.txt"
            kind = changed.get(i)
            if kind == "delete":
                continue
            if kind == "append":
                yield path, size + 100, MTIME + 86_400 * 10**9, i, _chunk(i, 2)
            elif kind == "edit":
                yield path, size, MTIME + 86_400 * 10**9, i, _chunk(i, 2)
            else:
                yield path, size, MTIME, i, _chunk(i)
            if kind == "add":
                yield f"{path}.new", 100, MTIME + 86_400 * 10**9, i, _chunk(i, 3)


def write_manifest(path: Path, count: int, day: int) -> int:
    """The day's manifest into ``path``; returns its number of entries."""
    from strongroom.common.v1 import common_pb2
    from strongroom_platform.manifest import ManifestEncoder

    encoder = ManifestEncoder()
    entries = 0
    last_dirs: tuple[str, str] = ("", "")
    with open(path, "wb") as out:
        out.write(encoder.add(common_pb2.FileEntry(path="", type=2, mode=0o755)))
        for file_path, size, mtime, _, chunk in _files(count, day):
            top, sub, _ = file_path.split("/")
            for directory in (top, f"{top}/{sub}"):
                if directory not in last_dirs:
                    out.write(encoder.add(common_pb2.FileEntry(path=directory, type=2, mode=0o755, mtime_ns=MTIME)))
                    entries += 1
            last_dirs = (top, f"{top}/{sub}")
            out.write(
                encoder.add(
                    common_pb2.FileEntry(
                        path=file_path,
                        type=1,
                        mode=0o644,
                        uid=1000,
                        gid=1000,
                        size=size,
                        mtime_ns=mtime,
                        chunk_ids=[chunk],
                    )
                )
            )
            entries += 1
        out.write(encoder.finish())
    return entries


# --- one variant, in its own process ----------------------------------------------------------


def _read_piece(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(PIECE)


class FileManifests:
    """A ManifestReader over local manifest files, streamed in the gateway's pieces."""

    def __init__(self, files: dict[str, Path]) -> None:
        self._files = files

    async def read_point_manifest(self, point_id: str) -> bytes:
        return self._files[point_id].read_bytes()

    async def stream_point_manifest(self, point_id: str) -> AsyncIterator[bytes]:
        offset = 0
        while piece := await asyncio.to_thread(_read_piece, self._files[point_id], offset):
            offset += len(piece)
            yield piece


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


async def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(args.src))
    import asyncpg
    from strongroom.common.v1 import common_pb2
    from strongroom.events.v1 import events_pb2
    from strongroom_catalog import handlers, search
    from strongroom_catalog.migrations import SPEC
    from strongroom_catalog.repository import PgCatalogStore
    from strongroom_platform.auth import Role, operator
    from strongroom_platform.db import create_pool
    from strongroom_platform.events import new_meta, to_timestamp
    from strongroom_platform.pg_roles import OWNER_ROLE, SERVICE_ROLES, login_dsn, migrate_schemas
    from strongroom_platform.schemas import with_platform
    from strongroom_platform.testing import call_for

    assert Path(handlers.__file__).is_relative_to(args.src), handlers.__file__
    principal = operator("token:bench", {ACCOUNT: Role.VIEWER})
    base = args.dsn.rsplit("/", 1)[0]
    await migrate_schemas(login_dsn(f"{base}/{args.database}", OWNER_ROLE), with_platform(SPEC))
    pool = await create_pool(login_dsn(f"{base}/{args.database}", SERVICE_ROLES["catalog"]), SPEC.schema)
    owner = await asyncpg.connect(f"{base}/{args.database}")
    repo = PgCatalogStore(pool)
    reader = FileManifests({"p1": args.work / "day1.manifest", "p2": args.work / "day2.manifest"})
    result: dict[str, Any] = {"days": []}
    try:
        for day, point_id in ((1, "p1"), (2, "p2")):
            created = T0 + dt.timedelta(days=day)
            event = events_pb2.PointCreated(
                meta=new_meta("agent-gateway", created),
                account_id=ACCOUNT,
                instance_id=INSTANCE,
                job_id=f"job-{day}",
                version_id=f"v{day}",
                point_id=point_id,
                filesystem=common_pb2.Filesystem(mount_point="/", device="/dev/vda1", fs_type="ext4"),
                version_created_at=to_timestamp(created),
                manifest_key=f"manifests/{ACCOUNT}/{point_id}",
                retain_until=to_timestamp(created + dt.timedelta(days=31)),
            )
            _reset_hwm()
            rss_before = _hwm_kib()
            started, cpu = time.perf_counter(), time.process_time()
            await handlers.handle_point_created(event, repo=repo, store=reader)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            peak = _hwm_kib()
            point = await repo.get_point(point_id)
            assert point is not None and point.browsable, point
            await owner.execute("VACUUM ANALYZE")
            sizes = {}
            for table in _TABLES:
                sizes[table] = await owner.fetchval(
                    "SELECT coalesce(pg_total_relation_size(to_regclass($1)), 0)", f"catalog.{table}"
                )
            result["days"].append(
                {"day": day, "seconds": elapsed, "cpu_seconds": cpu}
                | {"rss_start_mib": rss_before / 1024, "peak_rss_mib": peak / 1024}
                | {"bytes": sizes}
            )
            print(
                f"  {args.label} day {day}: {elapsed:.2f} s ({cpu:.2f} s CPU), peak RSS {peak / 1024:.0f} MiB",
                flush=True,
            )
        rng = random.Random(5)
        dirs = (args.files + PER_DIR - 1) // PER_DIR
        browse = call_for("/strongroom.catalog.v1.CatalogService/BrowsePoint", principal)
        find = call_for("/strongroom.catalog.v1.CatalogService/ListFiles", principal)
        history = call_for("/strongroom.catalog.v1.CatalogService/GetFileHistory", principal)

        async def browse_dir(_: int) -> object:
            d = rng.randrange(dirs)
            return await handlers.browse_point(repo, "p2", f"d{d // 100:03d}/d{d:05d}", call=browse)

        async def browse_root(_: int) -> object:
            return await handlers.browse_point(repo, "p2", "", call=browse)

        async def find_common(_: int) -> object:  # one file of this name per directory
            return await search.search_files(repo, f"f{rng.randrange(PER_DIR):04d}.txt", call=find)

        async def find_glob(_: int) -> object:
            return await search.search_files(repo, f"f{rng.randrange(100, 999):03d}?.txt", call=find)

        async def one_history(_: int) -> object:
            d = rng.randrange(dirs)
            return await search.file_history(
                repo, INSTANCE, f"/d{d // 100:03d}/d{d:05d}/f{rng.randrange(PER_DIR):04d}.txt", call=history
            )

        result["reads"] = {}
        for label, call in (
            ("BrowsePoint, one directory of 1,000 files (first page of 200)", browse_dir),
            ("BrowsePoint, the root", browse_root),
            ("search, exact name in every directory (first page of 100)", find_common),
            ("search, glob 'fNNN?.txt' (first page of 100)", find_glob),
            ("history of one path", one_history),
        ):
            result["reads"][label] = (await timed(args.runs, call))[:2]
    finally:
        await owner.close()
        await pool.close()
    return result


# --- the driver -------------------------------------------------------------------------------


def _extract(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "services/catalog/src"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    archive_path = into / "src.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(into, filter="data")
    return into / "services" / "catalog" / "src"


async def _database(dsn: str, name: str) -> None:
    import asyncpg
    from strongroom_platform.pg_roles import OWNER_ROLE

    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", OWNER_ROLE):
            await conn.execute(f'CREATE ROLE "{OWNER_ROLE}" LOGIN CREATEROLE NOSUPERUSER')
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}" OWNER "{OWNER_ROLE}"')
    finally:
        await conn.close()


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]], entries: dict[int, int], pg: str) -> list[str]:
    lines = [
        "# Catalog indexing, day 1 and day 2 of a 1M-entry point (bench/catalog.py)",
        "",
        f"`uv run python bench/catalog.py --files {args.files} --runs {args.runs} --before-ref {args.before_ref}`;"
        f" before = the catalog of `{args.before_ref}`, after = this branch, in one invocation.",
        f"Day 1: {entries[1]:,} entries; day 2: {entries[2]:,} entries, 1% of the files touched"
        " (a quarter appended, a quarter edited, a quarter deleted, as many added).",
        f"PostgreSQL {pg}, test settings (fsync off); shared 2-core machine. Manifests streamed from local files"
        " (no gateway process: decrypt and gRPC not included).",
        "",
        "Times: wall time from the event to the point browsable; in parentheses the catalog process's own CPU"
        " time (PostgreSQL's work is not in it). Load average during the run: see the note below the tables.",
        "",
        "| | day 1 browsable (s) | day 1 peak RSS (MiB) | day 2 browsable (s) | day 2 peak RSS (MiB) |"
        " index after day 1 (MiB) | added by day 2 (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, result in results.items():
        d1, d2 = result["days"]
        size1, size2 = sum(d1["bytes"].values()), sum(d2["bytes"].values())
        lines.append(
            f"| {label} | {d1['seconds']:.2f} ({d1.get('cpu_seconds', 0):.2f}) | {d1['peak_rss_mib']:.0f} |"
            f" {d2['seconds']:.2f} ({d2.get('cpu_seconds', 0):.2f}) |"
            f" {d2['peak_rss_mib']:.0f} | {_mib(size1)} | {_mib(size2 - size1)} |"
        )
    lines += ["", "Index size by table after day 2 (MiB):", "", "| | " + " | ".join(_TABLES) + " |"]
    lines.append("|---" * (len(_TABLES) + 1) + "|")
    for label, result in results.items():
        sizes = result["days"][1]["bytes"]
        lines.append(f"| {label} | " + " | ".join(_mib(sizes[t]) for t in _TABLES) + " |")
    lines += ["", f"Reads on the day-2 point, {args.runs} runs each, ms (p50 / p95):", ""]
    labels = list(next(iter(results.values()))["reads"])
    lines += ["| read | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for read in labels:
        cells = [f"{r['reads'][read][0]:.1f} / {r['reads'][read][1]:.1f}" for r in results.values()]
        lines.append(f"| {read} | " + " | ".join(cells) + " |")
    lines += ["", f"Load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores."]
    return lines


async def main(args: argparse.Namespace) -> list[str]:
    from strongroom_servers.postgres import LocalPostgres

    work = Path(tempfile.mkdtemp(prefix="strongroom-catalog-bench-"))
    entries = {}
    for day in (1, 2):
        started = time.perf_counter()
        entries[day] = write_manifest(work / f"day{day}.manifest", args.files, day)
        size = (work / f"day{day}.manifest").stat().st_size
        print(f"day {day}: {entries[day]:,} entries, {size / 2**20:.1f} MiB ({time.perf_counter() - started:.0f} s)")
    sources = {"before": _extract(args.before_ref, work / "before"), "after": REPO / "services" / "catalog" / "src"}
    pg = LocalPostgres(None, work / "pg")
    pg.start()
    results = {}
    try:
        for label, src in sources.items():
            database = f"catalog_{label}"
            await _database(pg.dsn, database)
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, __file__, "_variant", "--src", str(src), "--dsn", pg.dsn, "--database", database]
                + ["--work", str(work), "--files", str(args.files), "--runs", str(args.runs), "--label", label],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            for line in done.stdout.splitlines():
                if line.startswith("RESULT "):
                    results[label] = json.loads(line[7:])
                else:
                    print(line, flush=True)
        return report(args, results, entries, pg.server_version())
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "_variant"])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--before-ref", default="main")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--src", type=Path)
    parser.add_argument("--dsn")
    parser.add_argument("--database")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--label")
    arguments = parser.parse_args()
    if arguments.mode == "_variant":
        print("RESULT " + json.dumps(asyncio.run(run_variant(arguments))), flush=True)
        sys.exit(0)
    lines = asyncio.run(main(arguments))
    print("\n".join(lines))
    if arguments.out is not None:
        arguments.out.write_text("\n".join(lines) + "\n")
