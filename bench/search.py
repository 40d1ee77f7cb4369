"""File search latency on a large synthetic index (ADR 0043): p50/p95 of the catalog's search reads.

    uv run python bench/search.py [--files 1000000] [--points 10] [--runs 200] [--out bench/results/FILE.md]
        [--compare]   # measure first with the name probe off (globs scan the rows, before ADR 0057)

Backing up 10 × 1M files through agents is too slow on this machine, so the search index rows are
generated in PostgreSQL (``generate_series``) in the exact layout the indexer writes (migration 7 of
the catalog, as the catalog's own role reads it), with versions, points and index outcomes beside
them. Two layouts, each an account with ``--points`` points of ``--files`` files:

- ``fleet``: ``--points`` instances with one point each, every point a full baseline: the worst
  case for a delta index (``points × files`` rows), what the latency target is about;
- ``daily``: one instance with ``--points`` daily points, 1% of the files changed, added or removed
  each day: what delta indexing stores for a backup history (compared with a full copy per point).

In ``fleet`` another account holds one more such point: the reads must leave it out (scoping). The reads are
``strongroom_catalog.search.search_files`` and ``file_history`` over ``PgCatalogStore`` (the
service's handlers without gRPC): exact names (rare and common), globs (suffix, prefix, infix,
case-insensitive), one instance, and the history of one path. Peers measured in the same
invocation: ``BrowsePoint`` of one directory (the catalog's existing read) and a sequential scan
of the names (what a search without the name indexes would cost).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from _latency import timed
from strongroom_catalog import handlers, search
from strongroom_catalog.migrations import SPEC
from strongroom_catalog.repository import PgCatalogStore
from strongroom_platform.auth import Role, operator
from strongroom_platform.db import create_pool
from strongroom_platform.pg_roles import OWNER_ROLE, SERVICE_ROLES, login_dsn, migrate_schemas
from strongroom_platform.schemas import with_platform
from strongroom_platform.testing import call_for
from strongroom_servers.postgres import LocalPostgres

ACCOUNT = "acct"
OTHER = "other"
PRINCIPAL = operator("token:bench", {ACCOUNT: Role.VIEWER})
EXTENSIONS = "ARRAY['txt','log','conf','jpg','py','json','dat']"
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

# A file i of a point: 20 files per directory, 1,000 directories per top directory; each directory
# has an index.js and a README.md (as in source trees), the other names are unique within the point.
_NAME = f"""CASE WHEN i % 20 = 0 THEN 'index.js' WHEN i % 20 = 10 THEN 'README.md'
            ELSE format('file-%s.%s', i, ({EXTENSIONS})[i % 7 + 1]) END"""
_PATH = f"format('d%s/s%s/%s', i / 20000, (i / 20) % 1000, {_NAME})"


async def _setup(owner: asyncpg.Connection, lineage: int, instance: str, account: str, seq: int, day: int) -> None:
    point = f"p-{instance}-{seq}"
    version = f"v-{instance}-{seq}"
    created = T0 + dt.timedelta(days=day)
    await owner.execute("INSERT INTO catalog.instances VALUES ($1) ON CONFLICT DO NOTHING", instance)
    await owner.execute("INSERT INTO catalog.versions VALUES ($1, $2, $3, $4)", version, instance, account, created)
    await owner.execute(
        "INSERT INTO catalog.points (point_id, version_id, instance_id, account_id, mount_point, device, fs_type,"
        " capacity_bytes, manifest_key, file_count, total_bytes, created_at, retain_until)"
        " VALUES ($1, $2, $3, $4, '/', '/dev/vda1', 'ext4', 0, 'm', 0, 0, $5, $5)",
        point,
        version,
        instance,
        account,
        created,
    )
    await owner.execute("INSERT INTO catalog.point_index_outcomes (point_id, browsable) VALUES ($1, true)", point)
    await owner.execute(
        "INSERT INTO catalog.search_lineages VALUES ($1, $2, $3, '/') ON CONFLICT DO NOTHING",
        lineage,
        instance,
        account,
    )
    await owner.execute("INSERT INTO catalog.search_points VALUES ($1, $2, $3)", lineage, seq, point)


async def _load(owner: asyncpg.Connection, layout: str, files: int, points: int) -> dict[str, float]:
    """Generate the index; returns rows and sizes. Indexes are dropped for the load and rebuilt."""
    indexes = await owner.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'catalog'"
        " AND tablename IN ('search_changes', 'search_names') AND indexname <> 'search_names_pkey'"
    )
    for index in indexes:
        await owner.execute(f"DROP INDEX catalog.{index['indexname']}")
    await owner.execute("SET maintenance_work_mem = '1GB'")
    await owner.execute("SET max_parallel_maintenance_workers = 1")
    started = time.perf_counter()
    if layout == "fleet":
        lineage = 0
        for account, count in ((ACCOUNT, points), (OTHER, 1)):
            for n in range(count):
                lineage += 1
                await _setup(owner, lineage, f"{account}-i{n}", account, 1, 0)
                await owner.execute(
                    f"INSERT INTO catalog.search_changes SELECT $1, {_PATH}, 1, {_NAME}, 1, i, i::bigint * 1000000000"
                    " FROM generate_series(1, $2) i",
                    lineage,
                    files,
                )
    else:
        await _setup(owner, 1, "daily-i0", ACCOUNT, 1, 0)
        await owner.execute(
            f"INSERT INTO catalog.search_changes SELECT 1, {_PATH}, 1, {_NAME}, 1, i, 0 FROM generate_series(1, $1) i",
            files,
        )
        for seq in range(2, points + 1):
            await _setup(owner, 1, "daily-i0", ACCOUNT, seq, seq - 1)
            # 1% per day: 0.8% of the files change (size, mtime), 0.1% are removed, 0.1% new ones appear
            # (a file may be picked again on a later day: an approximation of real churn)
            await owner.execute(
                f"""INSERT INTO catalog.search_changes
                SELECT 1, {_PATH}, $1::int, {_NAME},
                       CASE WHEN (i * 7 + $1::int * 131) % 1000 < 8 THEN 1 ELSE 0 END,
                       CASE WHEN (i * 7 + $1::int * 131) % 1000 < 8 THEN i + $1::int ELSE 0 END, $1::int
                FROM generate_series(1, $2::int) i WHERE (i * 7 + $1::int * 131) % 1000 < 9""",
                seq,
                files,
            )
            await owner.execute(
                f"""INSERT INTO catalog.search_changes
                SELECT 1, {_PATH}, $1::int, {_NAME}, 1, i, $1::int
                FROM generate_series($2::int + 1, $2::int + $3::int) i""",
                seq,
                files + (seq - 2) * (files // 1000),
                files // 1000,
            )
    # the distinct names, as the indexer adds them with the rows (ADR 0057)
    await owner.execute(
        "INSERT INTO catalog.search_names SELECT DISTINCT name FROM catalog.search_changes WHERE type <> 0"
    )
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    for index in indexes:
        await owner.execute(index["indexdef"])
    await owner.execute("ANALYZE catalog.search_names")
    await owner.execute("ANALYZE catalog.search_changes")
    await owner.execute("ANALYZE catalog.search_lineages")
    await owner.execute("ANALYZE catalog.search_points")
    indexed = time.perf_counter() - started
    rows = await owner.fetchval("SELECT count(*) FROM catalog.search_changes")
    table = await owner.fetchval("SELECT pg_table_size('catalog.search_changes')")
    total = await owner.fetchval("SELECT pg_total_relation_size('catalog.search_changes')")
    return {"rows": rows, "table_bytes": table, "total_bytes": total, "load_s": loaded, "index_s": indexed}


async def _measure(repo: PgCatalogStore, pool: asyncpg.Pool, layout: str, files: int, runs: int) -> list[list[str]]:
    rng = random.Random(7)
    instance = "acct-i1" if layout == "fleet" else "daily-i0"

    def unique(_: int) -> str:
        i = rng.randrange(1, files)
        while i % 10 == 0:
            i = rng.randrange(1, files)
        return f"file-{i}.{['txt', 'log', 'conf', 'jpg', 'py', 'json', 'dat'][i % 7]}"

    def find(pattern: Callable[[int], str], **kwargs: object) -> Callable[[int], Awaitable[object]]:
        async def run(n: int) -> object:
            page = await search.search_files(repo, pattern(n), call=call_for(_LIST, PRINCIPAL), **kwargs)  # type: ignore[arg-type]
            return page

        return run

    async def history(n: int) -> object:
        i = rng.randrange(1, files)
        ext = ["txt", "log", "conf", "jpg", "py", "json", "dat"][i % 7]
        name = "index.js" if i % 20 == 0 else "README.md" if i % 20 == 10 else f"file-{i}.{ext}"
        path = f"/d{i // 20000}/s{(i // 20) % 1000}/{name}"
        try:
            return await search.file_history(repo, instance, path, call=call_for(_HISTORY, PRINCIPAL))
        except Exception:  # a random path may not exist: a miss costs the same lookups
            return None

    async def scan(n: int) -> object:
        return await pool.fetchval(
            "SELECT count(*) FROM search_changes WHERE name LIKE $1", f"%{rng.randrange(100000, 999999)}%"
        )

    cases: list[tuple[str, Callable[[int], Awaitable[object]], int]] = [
        ("exact name, one file per point (file-N.ext)", find(unique), runs),
        ("exact name, 5% of all files (index.js), first page of 100", find(lambda n: "index.js"), runs),
        ("suffix glob '*-12345?.conf'", find(lambda n: f"*-{rng.randrange(10000, 99999)}?.conf"), runs),
        ("prefix glob 'file-12345*'", find(lambda n: f"file-{rng.randrange(10000, 99999)}*"), runs),
        ("infix glob '*le-4321*'", find(lambda n: f"*le-{rng.randrange(1000, 9999)}*"), runs),
        (
            "case-insensitive 'FILE-1234?.TXT'",
            find(lambda n: f"FILE-{rng.randrange(1000, 9999)}?.TXT", ignore_case=True),
            runs,
        ),
        ("broad glob '*.conf' (14% of files), first page of 100", find(lambda n: "*.conf"), max(10, runs // 10)),
        (f"one instance ({instance}), exact name", find(unique, instance_id=instance), runs),
        ("history of one path (GetFileHistory)", history, runs),
        ("peer: sequential scan of names (LIKE '%N%', no index)", scan, max(3, runs // 50)),
    ]
    table = []
    for label, call, n in cases:
        p50, p95, worst = await timed(n, call)
        table.append([label, str(n), f"{p50:.1f}", f"{p95:.1f}", f"{worst:.1f}"])
        print(f"  {label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms", flush=True)
    return table


_LIST = "/strongroom.catalog.v1.CatalogService/ListFiles"
_HISTORY = "/strongroom.catalog.v1.CatalogService/GetFileHistory"


async def _browse_peer(repo: PgCatalogStore, pool: asyncpg.Pool, owner: asyncpg.Connection, runs: int) -> list[str]:
    """BrowsePoint of one directory of a 10,000-entry point in the same database: the catalog's existing read."""
    await _setup(owner, 999999, "browse-i", ACCOUNT, 1, 0)
    await owner.execute(
        "INSERT INTO catalog.entries SELECT 'p-browse-i-1', '', format('d%s', i), 2, 493, 0, 0, 0, 0, ''"
        " FROM generate_series(0, 99) i"
    )
    await owner.execute(
        "INSERT INTO catalog.entries"
        " SELECT 'p-browse-i-1', format('d%s', i / 100), format('f%s', i), 1, 420, 0, 0, i, 0, ''"
        " FROM generate_series(0, 9999) i"
    )
    await owner.execute("ANALYZE catalog.entries")
    rng = random.Random(3)

    async def run(n: int) -> object:
        return await handlers.browse_point(
            repo, "p-browse-i-1", f"d{rng.randrange(0, 100)}", call=call_for(_BROWSE, PRINCIPAL)
        )

    p50, p95, worst = await timed(runs, run)
    print(f"  peer: BrowsePoint: p50 {p50:.1f} ms, p95 {p95:.1f} ms", flush=True)
    return ["peer: BrowsePoint of one directory (100 entries)", str(runs), f"{p50:.1f}", f"{p95:.1f}", f"{worst:.1f}"]


_BROWSE = "/strongroom.catalog.v1.CatalogService/BrowsePoint"


async def run_layout(
    pg: LocalPostgres, layout: str, files: int, points: int, runs: int, compare: bool
) -> tuple[dict[str, float], list[list[str]]]:
    database = f"search_{layout}"
    superuser = await asyncpg.connect(pg.dsn)
    try:
        if not await superuser.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", OWNER_ROLE):
            await superuser.execute(f'CREATE ROLE "{OWNER_ROLE}" LOGIN CREATEROLE NOSUPERUSER')
        await superuser.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await superuser.execute(f'CREATE DATABASE "{database}" OWNER "{OWNER_ROLE}"')
    finally:
        await superuser.close()
    base = pg.dsn.rsplit("/", 1)[0]
    owner_dsn = login_dsn(f"{base}/{database}", OWNER_ROLE)
    await migrate_schemas(owner_dsn, with_platform(SPEC))
    # the superuser loads (bulk, outside the service's privileges); the catalog's role reads
    owner = await asyncpg.connect(f"{base}/{database}")
    try:
        print(f"{layout}: loading {points} points of {files} files ...", flush=True)
        sizes = await _load(owner, layout, files, points)
        print(f"  {sizes}", flush=True)
        pool = await create_pool(login_dsn(f"{base}/{database}", SERVICE_ROLES["catalog"]), SPEC.schema)
        try:
            before: list[list[str]] = []
            if compare:
                # first, the same reads with globs scanning the rows only (before ADR 0057), same index
                before = await _measure(PgCatalogStore(pool, name_probe_limit=0), pool, layout, files, runs)
            repo = PgCatalogStore(pool)
            table = await _measure(repo, pool, layout, files, runs)
            table.append(await _browse_peer(repo, pool, owner, runs))
            if compare:
                by_query = {row[0]: row for row in before}
                table = [row + (by_query[row[0]][2:4] if row[0] in by_query else ["", ""]) for row in table]
        finally:
            await pool.close()
    finally:
        await owner.close()
    return sizes, table


async def main(args: argparse.Namespace) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="strongroom-search-bench-"))
    pg = LocalPostgres(None, work / "pg")
    pg.start()
    lines = [
        "# File search latency (bench/search.py)",
        "",
        f"{args.points} points of {args.files:,} files each per layout; {args.runs} runs per query"
        " (fewer for the broad glob and the scan); times in ms, measured at the catalog's handlers over"
        " PgCatalogStore as the catalog's role (no gRPC). Index rows generated in PostgreSQL, not by backups:"
        " backing up 10 × 1M files through agents is too slow on this 2-core machine.",
        f"PostgreSQL {pg.server_version()}, non-durable test settings (fsync off), shared 2-core machine.",
        "",
    ]
    try:
        for layout in args.layouts:
            sizes, table = await run_layout(pg, layout, args.files, args.points, args.runs, args.compare)
            full_copy = args.files * (args.points + (1 if layout == "fleet" else 0))  # fleet: one more, another account
            lines += [
                f"## Layout `{layout}`",
                "",
                f"- index rows: {int(sizes['rows']):,} (a full copy per point would be {full_copy:,}:"
                f" {sizes['rows'] / full_copy:.3f}×)",
                f"- search_changes: table {sizes['table_bytes'] / 2**20:,.0f} MiB, with indexes"
                f" {sizes['total_bytes'] / 2**20:,.0f} MiB ({sizes['total_bytes'] / sizes['rows']:.0f} B/row)",
                f"- generation {sizes['load_s']:.0f} s, index build {sizes['index_s']:.0f} s",
                "",
                *(
                    [
                        "| query | runs | p50 | p95 | max | p50 before | p95 before |",
                        "|---|---|---|---|---|---|---|",
                    ]
                    if args.compare
                    else ["| query | runs | p50 | p95 | max |", "|---|---|---|---|---|"]
                ),
                *("| " + " | ".join(row) + " |" for row in table),
                "",
            ]
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--layouts", nargs="+", default=["fleet", "daily"], choices=["fleet", "daily"])
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--compare",
        action="store_true",
        help="measure again with globs scanning the rows only (before ADR 0057's name probe), same index",
    )
    arguments = parser.parse_args()
    report = asyncio.run(main(arguments))
    print("\n".join(report))
    if arguments.out is not None:
        arguments.out.write_text("\n".join(report) + "\n")
    sys.exit(0)
