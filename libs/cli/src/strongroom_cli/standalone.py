"""``strongroom standalone``: the whole platform in one command, on embedded backends.

Starts an embedded PostgreSQL (durable, under the data directory), the Tansu
Kafka-compatible broker (in memory; the services' outboxes replay their events
to it at every start), a filesystem object store, every service in its own
process and a local agent enrolled as an instance. Then it backs up a
directory (a demo directory it creates, or the one named) and prints how to
browse the backup and restore a file. Runs until Ctrl-C. State lives in the
data directory (default ``.strongroom``) and survives a restart.

PostgreSQL is used as in production (ADR 0031): the embedded server's superuser only creates the
migration owner and its database ``strongroom``; the owner migrates; each service logs in as its
own role. ``--clock-offset-days N`` runs the platform N days in the future: the trusted time that
decides expiry (``trusted.clock_offset``) is set, by the owner, for this run only; a start without
the flag resets it to 0. Only standalone mode, with its filesystem object store, may do this.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE, spki_sha256, write_private
from strongroom_platform.pg_roles import OWNER_ROLE, SERVICE_ROLES, login_dsn, migrate_schemas
from strongroom_platform.runtime import run_until_signalled
from strongroom_platform.schemas import installed_specs
from strongroom_platform.trusted_time import set_clock_offset
from strongroom_servers.postgres import LocalPostgres
from strongroom_servers.tansu import LocalTansu

from strongroom_cli.stack import EDGE, MIGRATE_DSN, SERVICES, ManagedProcess, Stack, operator_channel, spawn

DEMO_FILES: Mapping[str, bytes] = {
    "hello.txt": b"Hello from Strongroom!\n",
    "docs/readme.md": b"# Demo\n\nThis directory was created by `make run` and is backed up daily.\n",
    "docs/notes/todo.txt": b"- restore a file\n- restore a directory\n",
    "data/numbers.csv": "".join(f"{i},{i * i}\n" for i in range(20000)).encode(),
    "data/blob.bin": bytes(range(256)) * 4096,
}


class StandaloneError(RuntimeError):
    """A step of the standalone start failed; the message says which and where the logs are."""


@dataclass(frozen=True)
class Options:
    data_dir: Path
    backup_dir: Path | None
    clock_offset_days: int = 0


DATABASE = "strongroom"


async def provision_database(superuser_dsn: str, *, clock_offset: dt.timedelta) -> tuple[str, dict[str, str]]:
    """As the embedded server's superuser: the migration owner (no superuser, CREATEROLE) and its
    database; then, as the owner, every schema, role and grant, and the trusted clock's offset.

    Returns the owner's DSN and each service's role DSN on that database.
    """
    import asyncpg

    conn = await asyncpg.connect(superuser_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", OWNER_ROLE):
            await conn.execute(f'CREATE ROLE "{OWNER_ROLE}" LOGIN CREATEROLE NOSUPERUSER')
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}" OWNER "{OWNER_ROLE}"')
    finally:
        await conn.close()
    owner = login_dsn(superuser_dsn, OWNER_ROLE).rsplit("/", 1)[0] + "/" + DATABASE
    await migrate_schemas(owner, installed_specs())
    conn = await asyncpg.connect(owner)
    try:
        await set_clock_offset(conn, clock_offset)
    finally:
        await conn.close()
    return owner, {name: login_dsn(owner, SERVICE_ROLES[name]) for name in SERVICES}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _say(text: str) -> None:
    print(text, flush=True)


class StateFile:
    """JSON state of the standalone installation (ports, instance), kept across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.path)


def create_demo_dir(path: Path) -> None:
    """Create the demo directory with a few files (kept if it already exists)."""
    for name, content in DEMO_FILES.items():
        target = path / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)


async def _wait_for(what: str, check: Any, within: float, log_hint: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise StandaloneError(f"timed out after {within:.0f}s waiting for {what}; see {log_hint}")
        await asyncio.sleep(0.5)


async def _ensure_instance(
    state: StateFile, scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub, backup_dir: Path
) -> tuple[str, str | None]:
    """Return (instance_id, enrollment token or None when already enrolled)."""
    instance_id = state.data.get("instance_id")
    if instance_id and state.data.get("backup_dir") == str(backup_dir):
        return str(instance_id), None
    settings = scheduler_pb2.BackupSettings(
        priority=common_pb2.BACKUP_PRIORITY_HIGH,
        daily_start_minute=2 * 60,
        keep_latest_version=True,
        roots=[str(backup_dir)],
    )
    response = await scheduler.ActivateBackup(
        scheduler_pb2.ActivateBackupRequest(
            account_id="default", name=socket.gethostname(), region="local", settings=settings, has_settings=True
        )
    )
    return response.instance.instance_id, response.enrollment_token


async def _enroll_agent(
    gateway: str, token: str, agent_dir: Path, env: Mapping[str, str], logs: Path, ca_file: Path
) -> None:
    """Enroll the local agent, pinned to the local CA; retried while the gateway has not yet seen
    the activation event."""
    deadline = time.monotonic() + 60
    argv = [sys.executable, "-m", "strongroom_agent", "enroll", "--gateway", gateway, "--token", token]
    argv += ["--state-dir", str(agent_dir), "--ca-file", str(ca_file), "--pin", spki_sha256(ca_file.read_bytes())]
    while True:
        process = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
        if process.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise StandaloneError(f"agent enrollment failed: {output.decode(errors='replace').strip()}")
        await asyncio.sleep(1)


async def _first_backup(
    instance_id: str,
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub,
    logs: Path,
) -> catalog_pb2.Version:
    """Run a backup now unless the instance already has a version; return the newest version."""
    versions = await catalog.ListVersions(catalog_pb2.ListVersionsRequest(instance_id=instance_id))
    if versions.versions:
        return versions.versions[0]

    async def ready() -> bool:
        instance = await scheduler.GetInstance(scheduler_pb2.GetInstanceRequest(instance_id=instance_id))
        return instance.status in (scheduler_pb2.RUNNING_STATUS_READY, scheduler_pb2.RUNNING_STATUS_RUNNING)

    await _wait_for("the agent to be ready", ready, 60, str(logs))
    job = await scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=instance_id))
    _say(f"backing up (job {job.job_id}) ...")
    finished = (common_pb2.JOB_STATUS_COMPLETE, common_pb2.JOB_STATUS_PARTIAL_COMPLETE, common_pb2.JOB_STATUS_FAILED)

    async def done() -> scheduler_pb2.BackupJob | None:
        current = await scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id))
        return current if current.status in finished else None

    final: scheduler_pb2.BackupJob = await _wait_for("the first backup", done, 600, str(logs))
    if final.status == common_pb2.JOB_STATUS_FAILED:
        raise StandaloneError(f"the first backup failed: {final.error}; see {logs}")

    async def catalogued() -> catalog_pb2.ListVersionsResponse | None:
        listed = await catalog.ListVersions(catalog_pb2.ListVersionsRequest(instance_id=instance_id))
        return listed if listed.versions and all(p.browsable for p in listed.versions[0].points) else None

    listed: catalog_pb2.ListVersionsResponse = await _wait_for("the catalog", catalogued, 60, str(logs))
    stats = final.stats
    _say(f"backup complete: {stats.files_scanned} files, {stats.bytes_scanned} bytes, {stats.bytes_uploaded} uploaded")
    return listed.versions[0]


def _print_instructions(
    instance_id: str, version: catalog_pb2.Version, backup_dir: Path, data_dir: Path, *, rest: str
) -> None:
    point = version.points[0]
    sample = next((name for name in DEMO_FILES if (backup_dir / name).is_file()), "")
    cli = str(Path(".venv/bin/strongroom").absolute()) if Path(".venv/bin/strongroom").exists() else "strongroom"
    located = (
        []
        if data_dir == (Path.cwd() / ".strongroom").absolute()
        else [f"  export STRONGROOM_STANDALONE_DIR={data_dir}"]
    )
    lines = [
        "",
        f"Strongroom is running. {backup_dir} is backed up as instance {instance_id}.",
        f"Backup version {version.version_id}, point {point.point_id} ({point.file_count} files).",
        f"Every connection is TLS (local CA in {data_dir / 'tls'}); the CLI signs in with {data_dir / 'admin-token'}.",
        "In another terminal (same directory):",
        *located,
        f"  {cli} whoami",
        f"  {cli} versions list {instance_id}",
        f"  {cli} browse {point.point_id} {os.path.dirname(sample)}",
        "  mkdir -p /tmp/strongroom-restore",
        f"  {cli} restore create {point.point_id} --include {sample or '<path>'} "
        "--target-path /tmp/strongroom-restore --wait",
        f"  cmp {backup_dir / sample} /tmp/strongroom-restore/{sample}",
        f"Web console: https://{rest}/console/ (sign in with the token in {data_dir / ADMIN_TOKEN_FILE}; "
        f"the browser must trust the local CA {data_dir / 'tls' / CA_CERT_FILE})",
        f"REST API (OpenAPI 3 at https://{rest}/openapi.yaml):",
        f"  curl --cacert {data_dir / 'tls' / CA_CERT_FILE} "
        f'-H "Authorization: Bearer $(cat {data_dir / ADMIN_TOKEN_FILE})" https://{rest}/v1/instances',
        f"Logs: {data_dir / 'logs'}. Ctrl-C stops everything; state is kept in {data_dir}.",
    ]
    _say("\n".join(lines))


ADMIN_TOKEN_FILE = "admin-token"
ADMIN_TOKEN_REFRESH = 30 * 86400  # seconds: a token older than this is replaced at start


async def _admin_token(data_dir: Path, dsn: str) -> str:
    """The standalone admin token of account ``default`` (file 0600), made anew when missing or old.

    Made with the migration owner's database access (``dsn``, as ``strongroom-admin token create``);
    valid 90 days, replaced at a start once 30 days old, so a running standalone never holds an
    expired one.
    """
    path = data_dir / ADMIN_TOKEN_FILE
    if path.is_file() and time.time() - path.stat().st_mtime < ADMIN_TOKEN_REFRESH:
        return path.read_text().strip()
    token = await create_admin_token(dsn, "default", name="standalone")
    write_private(path, token.encode() + b"\n")
    return token


async def run(options: Options, stop: asyncio.Event) -> None:
    """Start everything, run the first backup, print instructions, wait for ``stop``."""
    data_dir = options.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(data_dir)
    try:
        await _run_locked(options, stop)
    finally:
        lock.close()


def _lock_data_dir(data_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on the data directory for the life of the process."""
    handle = (data_dir / "lock").open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StandaloneError(
            f"another `strongroom standalone` is already running with data directory {data_dir}"
        ) from None
    return handle


async def _run_locked(options: Options, stop: asyncio.Event) -> None:
    data_dir = options.data_dir
    logs = data_dir / "logs"
    state = StateFile(data_dir / "state.json")
    ports: dict[str, int] = state.data.setdefault("ports", {})
    for name in (*SERVICES, EDGE):
        ports.setdefault(name, _free_port())
    state.save()
    backup_dir = (options.backup_dir or data_dir / "demo").absolute()
    if options.backup_dir is None:
        create_demo_dir(backup_dir)
    elif not backup_dir.is_dir():
        raise StandaloneError(f"backup directory {backup_dir} does not exist or is not a directory")

    _say(f"starting embedded PostgreSQL and broker (data in {data_dir}) ...")
    postgres = LocalPostgres(None, data_dir / "pg", durable=True)
    await asyncio.to_thread(postgres.start)
    tansu = LocalTansu()
    stack = Stack()
    agent: ManagedProcess | None = None
    try:
        await asyncio.to_thread(tansu.start)
        offset = dt.timedelta(days=options.clock_offset_days)
        owner, databases = await provision_database(postgres.dsn, clock_offset=offset)
        if offset:
            _say(f"warning: the trusted clock runs {options.clock_offset_days} days ahead (--clock-offset-days)")
        env = dict(os.environ)
        env.pop("STRONGROOM_PG_DSN", None)
        env.update(
            STRONGROOM_PG_MIGRATE_DSN=owner,
            STRONGROOM_KAFKA_BOOTSTRAP=tansu.bootstrap,
            STRONGROOM_KAFKA_IDEMPOTENT="0",  # Tansu refuses idempotent producers
            STRONGROOM_KAFKA_PARTITIONS="1",  # one process per service: one worker per topic is enough
            STRONGROOM_OBJECT_STORE=f"file:{data_dir / 'objects'}",
            # The gateway creates the master key here (mode 0600) on first start (ADR 0015).
            STRONGROOM_MASTER_KEY_FILE=str(data_dir / "master.key"),
            STRONGROOM_OUTBOX_REPLAY="1",  # the in-memory broker starts empty every time
        )
        _say("starting services (TLS, local CA) ...")
        listen = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        tls_dir = data_dir / "tls"
        await stack.start(env, logs, listen=listen, tls_dir=tls_dir, databases=databases, edge=True)
        addresses = stack.addresses
        (data_dir / "standalone.json").write_text(json.dumps(addresses, indent=2))
        token = await _admin_token(data_dir, owner)
        agent_env_base = {k: v for k, v in env.items() if k != MIGRATE_DSN}
        ca_file = tls_dir / CA_CERT_FILE
        async with (
            operator_channel(addresses["scheduler"], ca_file=ca_file, token=token) as scheduler_channel,
            operator_channel(addresses["catalog"], ca_file=ca_file, token=token) as catalog_channel,
        ):
            scheduler = scheduler_pb2_grpc.SchedulerServiceStub(scheduler_channel)
            catalog = catalog_pb2_grpc.CatalogServiceStub(catalog_channel)
            instance_id, enrollment = await _ensure_instance(state, scheduler, backup_dir)
            agent_dir = data_dir / "agent"
            agent_env = dict(agent_env_base, STRONGROOM_AGENT_STATE_DIR=str(agent_dir))
            if enrollment is not None:
                await _enroll_agent(addresses["gateway"], enrollment, agent_dir, agent_env, logs, ca_file)
                state.data.update(instance_id=instance_id, backup_dir=str(backup_dir))
                state.save()
            agent_argv = [sys.executable, "-m", "strongroom_agent", "run", "--state-dir", str(agent_dir)]
            agent = await spawn("agent", agent_argv, agent_env, logs)
            version = await _first_backup(instance_id, scheduler, catalog, logs)
            _print_instructions(instance_id, version, backup_dir, data_dir, rest=addresses[EDGE])
        await stop.wait()
        _say("stopping ...")
    finally:
        await _shutdown(agent, stack, tansu, postgres)


async def _shutdown(agent: ManagedProcess | None, stack: Stack, tansu: LocalTansu, postgres: LocalPostgres) -> None:
    """Stop everything in reverse order; one step failing does not skip the others."""
    steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("services", stack.stop),
        ("broker", lambda: asyncio.to_thread(tansu.stop)),
        ("PostgreSQL", lambda: asyncio.to_thread(postgres.stop)),
    ]
    if agent is not None:
        steps.insert(0, ("agent", agent.stop))
    for what, step in steps:
        try:
            await step()
        except Exception as exc:  # keep stopping the rest
            print(f"warning: stopping the {what} failed: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``strongroom standalone``."""
    parser = argparse.ArgumentParser(prog="strongroom standalone", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".strongroom"), help="where state is kept")
    parser.add_argument("--backup-dir", type=Path, default=None, help="directory to back up (default: a demo dir)")
    parser.add_argument(
        "--clock-offset-days",
        type=int,
        default=0,
        help="run the platform's trusted clock this many days ahead (tests of time rules; standalone only)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.clock_offset_days <= 3650:
        parser.error("--clock-offset-days must be between 0 and 3650")
    options = Options(
        data_dir=args.data_dir.absolute(), backup_dir=args.backup_dir, clock_offset_days=args.clock_offset_days
    )
    failure: list[str] = []

    async def guarded(stop: asyncio.Event) -> None:
        try:
            await run(options, stop)
        except (StandaloneError, OSError, grpc.aio.AioRpcError) as exc:
            failure.append(str(exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc))

    run_until_signalled(guarded)
    if failure:
        print(f"error: {failure[0]}", file=sys.stderr)
        return 1
    return 0
