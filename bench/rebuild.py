"""Disaster recovery on the benchmark data set: how long a rebuild from the bucket takes (ADR 0032).

    uv run python bench/rebuild.py --data DIR [--work DIR] [--out bench/results/FILE.md]

One invocation, on the stack of ``strongroom_runner`` (real PostgreSQL, Kafka, versitygw):

1. full backup of ``--data`` (the benchmark tree, ``bench/dataset.py build``): the reference;
2. ``pg_dump`` of the whole database, then ``pg_restore`` into a fresh one: the recovery path when
   a database backup exists (the peer);
3. the services stop and the database is dropped; ``strongroom-admin rebuild --from-bucket`` into
   a fresh database (timed: the rebuild proper), then the services start on it and the catalog
   indexes the rebuilt point (timed until it is browsable: the rebuild as an operator sees it);
4. the instance gets a new enrollment token, the agent enrolls again to the same id, and a
   single file is restored and compared (the rebuilt deployment works).

Prints the times and their ratios to the full backup and to the dump/restore, all measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc  # noqa: E402
from strongroom.restore.v1 import restore_pb2_grpc  # noqa: E402
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc  # noqa: E402
from strongroom_cli.stack import SERVICES, Stack, operator_channel, spawn  # noqa: E402
from strongroom_platform.admin import create_admin_token  # noqa: E402
from strongroom_platform.certs import spki_sha256  # noqa: E402
from strongroom_platform.pg_roles import OWNER_ROLE, SERVICE_ROLES, login_dsn  # noqa: E402
from strongroom_runner import StrongroomBench  # noqa: E402
from strongroom_servers.postgres import LocalPostgres  # noqa: E402


def _dsn(server_dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(server_dsn)._replace(path=f"/{database}"))


async def _create(superuser_dsn: str, owner_dsn: str, database: str) -> str:
    """A new database owned by the migration owner (ADR 0031); the owner's DSN on it."""
    conn = await asyncpg.connect(superuser_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{database}" OWNER "{OWNER_ROLE}"')
    finally:
        await conn.close()
    return _dsn(owner_dsn, database)


async def _counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            table: int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
            for table in ("gateway.packs", "gateway.chunks", "gateway.points", "catalog.entries")
        }
    finally:
        await conn.close()


async def main(data: Path, work: Path) -> list[str]:
    bench = StrongroomBench(work)
    await bench.start(unthrottled_gateway=True)
    lines: list[str] = []
    try:
        pg = bench.servers[0]
        assert isinstance(pg, LocalPostgres)
        server_dsn = bench.env["STRONGROOM_PG_MIGRATE_DSN"]  # the migration owner, on the deployment's database
        inst = await bench.new_instance(data, priority="high", unthrottled=True)
        full = await bench.backup(inst)
        point_id = await bench.latest_point(inst, 1)
        await inst.agent.stop()
        bench.instances.clear()
        before = await _counts(server_dsn)

        # The peer: the databases from a dump (custom format, as an operator's nightly backup).
        dump = work / "control-plane.dump"
        started = time.perf_counter()
        await asyncio.to_thread(
            subprocess.run, [str(pg.bin_dir / "pg_dump"), "-Fc", "-f", str(dump), server_dsn], check=True
        )
        dumped = time.perf_counter() - started
        restored_dsn = await _create(pg.dsn, server_dsn, "from_dump")
        started = time.perf_counter()
        await asyncio.to_thread(
            subprocess.run, [str(pg.bin_dir / "pg_restore"), "-d", restored_dsn, str(dump)], check=True
        )
        pg_restore_s = time.perf_counter() - started

        # The disaster: the services stop, every schema is gone.
        for channel in bench.channels:
            await channel.close(None)
        assert bench.stack is not None
        await bench.stack.stop()
        rebuilt_dsn = await _create(pg.dsn, server_dsn, "rebuilt")
        databases = {name: login_dsn(rebuilt_dsn, SERVICE_ROLES[name]) for name in SERVICES}
        env = dict(bench.env, STRONGROOM_PG_MIGRATE_DSN=rebuilt_dsn)
        rebuild_env = dict(env, STRONGROOM_PG_DSN=databases["gateway"])
        started = time.perf_counter()
        rebuild = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", "from strongroom_platform.admin import main; main()", "rebuild", "--from-bucket"],
            env=rebuild_env,
            capture_output=True,
            text=True,
            check=True,
        )
        rebuild_s = time.perf_counter() - started
        summary = [line for line in rebuild.stdout.splitlines() if line.startswith("rebuilt ")]

        started = time.perf_counter()
        bench.stack = Stack()
        bench.env = env
        await bench.stack.start(env, work / "logs-rebuilt", tls_dir=work / "tls", databases=databases)
        addresses = bench.stack.addresses
        token = await create_admin_token(rebuilt_dsn, inst.account_id, name="after-rebuild")
        bench.channels = [
            operator_channel(addresses[n], ca_file=bench.ca_file, token=token)
            for n in ("scheduler", "catalog", "restore")
        ]
        bench.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(bench.channels[0])
        bench.catalog = catalog_pb2_grpc.CatalogServiceStub(bench.channels[1])
        bench.restore_api = restore_pb2_grpc.RestoreServiceStub(bench.channels[2])
        assert await bench.latest_point(inst, 1) == point_id
        browsable_s = time.perf_counter() - started
        after = await _counts(rebuilt_dsn)

        # The deployment works again: re-enroll to the same id, restore one file.
        issued = await bench.scheduler.IssueEnrollmentToken(scheduler_pb2.InstanceRef(instance_id=inst.instance_id))
        state_dir = work / "agents" / f"{inst.instance_id}-again"
        enroll = [sys.executable, str(HERE / "_agent.py"), "enroll", "--gateway", addresses["gateway"]]
        enroll += ["--token", issued.enrollment_token, "--state-dir", str(state_dir)]
        enroll += ["--ca-file", str(bench.ca_file), "--pin", spki_sha256(bench.ca_file.read_bytes())]
        await asyncio.to_thread(subprocess.run, enroll, env=env, check=True, capture_output=True)
        run = [sys.executable, str(HERE / "_agent.py"), "run", "--state-dir", str(state_dir)]
        inst.agent = await spawn("agent-again", run, env, work / "logs-rebuilt")
        bench.instances.append(inst)

        async def ready() -> bool:
            current = await bench.scheduler.GetInstance(scheduler_pb2.GetInstanceRequest(instance_id=inst.instance_id))
            return current.status == scheduler_pb2.RUNNING_STATUS_READY

        await bench._eventually("instance READY again", ready, within=120, every=0.2)
        sample = next(p for p in sorted(data.rglob("*.c")) if 64 << 10 <= p.stat().st_size <= 1 << 20)
        relative = sample.relative_to(data).as_posix()
        target = work / "restored-after-rebuild"
        shutil.rmtree(target, ignore_errors=True)
        await bench.restore(inst, point_id, target, include=[relative])
        same = hashlib.sha256((target / relative).read_bytes()).digest() == hashlib.sha256(sample.read_bytes()).digest()
        browse = await bench.catalog.BrowsePoint(catalog_pb2.BrowsePointRequest(point_id=point_id, path=""))

        total = rebuild_s + browsable_s
        assert full.stats is not None
        lines += [
            f"- Data: {data} ({full.stats.files_scanned} files, {full.stats.bytes_scanned / 1e9:.2f} GB scanned);"
            f" stored {full.bytes_added / 1e9:.2f} GB in the bucket.",
            f"- Before the disaster: {before}. Rebuilt: {after}.",
            f"- Rebuild output: {summary[0] if summary else rebuild.stdout.strip()[-300:]}",
            f"- After re-enrolling: restored `{relative}` byte-identical: {same}; root lists {len(browse.entries)}"
            " entries.",
            "",
            "| step | seconds | / full backup | / pg_dump + pg_restore |",
            "|---|---:|---:|---:|",
            f"| full backup (reference) | {full.wall:.1f} | 1.00 | {full.wall / (dumped + pg_restore_s):.2f} |",
            f"| pg_dump of every schema (peer, part 1) | {dumped:.1f} | {dumped / full.wall:.3f} | |",
            f"| pg_restore into a fresh database (peer, part 2) | {pg_restore_s:.1f}"
            f" | {pg_restore_s / full.wall:.3f} | |",
            f"| `strongroom-admin rebuild --from-bucket` | {rebuild_s:.1f} | {rebuild_s / full.wall:.3f}"
            f" | {rebuild_s / (dumped + pg_restore_s):.2f} |",
            f"| services start until the point is browsable again | {browsable_s:.1f} | {browsable_s / full.wall:.3f}"
            " | |",
            f"| rebuild + browsable | {total:.1f} | {total / full.wall:.3f} | {total / (dumped + pg_restore_s):.2f} |",
        ]
    finally:
        await bench.stop()
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "strongroom-bench-rebuild")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = asyncio.run(main(args.data, args.work))
    text = "\n".join(out)
    print(text)
    if args.out is not None:
        args.out.write_text(f"# Rebuild from the bucket on the benchmark data set (bench/rebuild.py)\n\n{text}\n")
