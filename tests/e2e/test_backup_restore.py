"""The whole path on real Kafka, PostgreSQL and S3, each service in its own process.

activate -> enroll agent -> job-requested -> job delivered over the agent's stream ->
scan/chunk/dedup/upload -> point committed -> point-created -> catalog -> browse ->
restore a file and a directory elsewhere -> change a few files -> second backup uploads
only the changed data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from strongroom.agent.v1 import gateway_pb2
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.common.v1 import common_pb2
from strongroom.restore.v1 import restore_pb2, restore_pb2_grpc
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_cli.stack import SERVICES, ManagedProcess, Stack, operator_channel, spawn
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE, spki_sha256
from strongroom_testing.fixtures import PgLogins, S3Config
from strongroom_testing.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

FINISHED = {common_pb2.JOB_STATUS_COMPLETE, common_pb2.JOB_STATUS_PARTIAL_COMPLETE, common_pb2.JOB_STATUS_FAILED}


def make_tree(root: Path) -> None:
    """A source tree with text, binary (incompressible), nested dirs, a symlink, odd modes and mtimes."""
    (root / "etc/app").mkdir(parents=True)
    (root / "www/images").mkdir(parents=True)
    (root / "etc/app/config.yaml").write_text("listen: 0.0.0.0:8080\nworkers: 4\n")
    (root / "etc/app/secret.key").write_bytes(os.urandom(64))
    os.chmod(root / "etc/app/secret.key", 0o600)
    (root / "www/index.html").write_text("<h1>hello</h1>\n" * 1000)
    for i in range(5):
        (root / f"www/images/img{i}.bin").write_bytes(os.urandom(1_500_000 + i * 1000))
    (root / "www/big.log").write_bytes(b"".join(f"line {i} of a log file\n".encode() for i in range(400_000)))
    os.symlink("index.html", root / "www/home.html")
    os.utime(root / "etc/app/config.yaml", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def assert_same_file(original: Path, restored: Path) -> None:
    a, b = original.lstat(), restored.lstat()
    assert restored.read_bytes() == original.read_bytes(), restored
    assert (a.st_mode & 0o7777) == (b.st_mode & 0o7777), restored
    assert a.st_mtime_ns == b.st_mtime_ns, restored


@dataclass
class Platform:
    stack: Stack
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub
    restore: restore_pb2_grpc.RestoreServiceAsyncStub
    env: dict[str, str]
    logs: Path
    tls_dir: Path


@pytest.fixture
async def platform(
    stack_kafka: str, pg_logins: PgLogins, s3_config: S3Config, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with running_platform(stack_kafka, pg_logins, tmp_path, s3_settings(s3_config)) as running:
        yield running


def s3_settings(s3_config: S3Config) -> dict[str, str]:
    """The services' object store: the test's S3 server, a fresh bucket."""
    return {
        "STRONGROOM_OBJECT_STORE": "s3",
        "STRONGROOM_S3_ENDPOINT": s3_config.endpoint,
        "STRONGROOM_S3_ACCESS_KEY": s3_config.access_key,
        "STRONGROOM_S3_SECRET_KEY": s3_config.secret_key,
        "STRONGROOM_S3_SECURE": "1" if s3_config.secure else "0",
        "STRONGROOM_S3_BUCKET": f"e2e-{uuid.uuid4().hex[:12]}",
    }


@contextlib.asynccontextmanager
async def running_platform(
    kafka_bootstrap: str, pg_logins: PgLogins, tmp_path: Path, settings: dict[str, str], *, edge: bool = False
) -> AsyncIterator[Platform]:
    """The five services with TLS, each as its own PostgreSQL role, an admin token for account "acme"
    and operator stubs; ``settings`` on top. ``env`` holds the migration owner's DSN (for the test).
    ``edge`` starts the REST edge too (``stack.addresses["api"]``, ADR 0052)."""
    env = dict(os.environ)
    env.update(
        STRONGROOM_PG_MIGRATE_DSN=pg_logins.owner,
        STRONGROOM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        STRONGROOM_MASTER_KEY=base64.b64encode(os.urandom(32)).decode(),
    )
    env.update(settings)
    logs, tls_dir = tmp_path / "logs", tmp_path / "tls"
    stack = Stack()
    databases = {name: pg_logins.service(name) for name in SERVICES}
    await stack.start(env, logs, tls_dir=tls_dir, databases=databases, edge=edge)
    addresses = stack.addresses
    token = await create_admin_token(pg_logins.owner, "acme")
    channels = [
        operator_channel(addresses[name], ca_file=tls_dir / CA_CERT_FILE, token=token)
        for name in ("scheduler", "catalog", "restore")
    ]
    try:
        yield Platform(
            stack=stack,
            scheduler=scheduler_pb2_grpc.SchedulerServiceStub(channels[0]),
            catalog=catalog_pb2_grpc.CatalogServiceStub(channels[1]),
            restore=restore_pb2_grpc.RestoreServiceStub(channels[2]),
            env=env,
            logs=logs,
            tls_dir=tls_dir,
        )
    finally:
        for channel in channels:
            await channel.close()
        await stack.stop()
        for log in sorted(logs.glob("*.log")):
            sys.stderr.write(f"----- {log.name} (tail) -----\n")
            sys.stderr.write("\n".join(log.read_text(errors="replace").splitlines()[-40:]) + "\n")


async def start_agent(platform: Platform, token: str, state_dir: Path) -> ManagedProcess:
    gateway = platform.stack.addresses["gateway"]
    argv = [sys.executable, "-m", "strongroom_agent", "enroll", "--gateway", gateway, "--token", token]
    ca_file = platform.tls_dir / CA_CERT_FILE
    argv += ["--state-dir", str(state_dir), "--ca-file", str(ca_file), "--pin", spki_sha256(ca_file.read_bytes())]

    last: list[str] = []

    async def enrolled() -> bool:
        process = await asyncio.create_subprocess_exec(
            *argv, env=platform.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
        last[:] = [output.decode(errors="replace").strip()]
        return process.returncode == 0

    # The gateway learns of the activation from Kafka; its first group join can be slow on a loaded machine.
    try:
        await eventually("agent enrollment", enrolled, within=120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last attempt said: {last[0] if last else '(none)'}") from None
    # The agent holds a certificate of the agent CA and calls the gateway's mTLS listener (ADR 0028).
    state = json.loads((state_dir / "agent.json").read_text())
    assert state["mtls_address"] == ":" + platform.stack.addresses["gateway-agents"].rpartition(":")[2]
    assert (state_dir / "agent-identity.pem").stat().st_mode & 0o777 == 0o600
    run = [sys.executable, "-m", "strongroom_agent", "run", "--state-dir", str(state_dir)]
    return await spawn("agent", run, platform.env, platform.logs)


async def backup(platform: Platform, instance_id: str) -> scheduler_pb2.BackupJob:
    job = await platform.scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=instance_id))

    async def finished() -> scheduler_pb2.BackupJob | None:
        current = await platform.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id))
        return current if current.status in FINISHED else None

    final = await eventually("backup job to finish", finished, within=300)
    assert final.status == common_pb2.JOB_STATUS_COMPLETE, (final.error, list(final.file_errors))
    return final


async def restore(
    platform: Platform,
    point_id: str,
    include: list[str],
    target: Path,
    expect: common_pb2.JobStatus.ValueType = common_pb2.JOB_STATUS_COMPLETE,
) -> restore_pb2.RestoreJob:
    target.mkdir(parents=True, exist_ok=True)
    job = await platform.restore.CreateRestoreJob(
        restore_pb2.CreateRestoreJobRequest(
            point_id=point_id,
            include_paths=include,
            target_path=str(target),
            conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE,
        )
    )

    async def finished() -> restore_pb2.RestoreJob | None:
        current = await platform.restore.GetRestoreJob(
            restore_pb2.GetRestoreJobRequest(restore_job_id=job.restore_job_id)
        )
        return current if current.status in FINISHED else None

    final = await eventually("restore job to finish", finished, within=300)
    assert final.status == expect, (final.error, list(final.failed_files))
    return final


async def versions_with_points(platform: Platform, instance_id: str, count: int) -> list[catalog_pb2.Version]:
    async def listed() -> list[catalog_pb2.Version] | None:
        response = await platform.catalog.ListVersions(catalog_pb2.ListVersionsRequest(instance_id=instance_id))
        versions = list(response.versions)
        ready = len(versions) >= count and all(p.browsable for v in versions for p in v.points)
        return versions if ready else None

    return await eventually(f"{count} browsable version(s)", listed)


async def enrolled_instance(platform: Platform, source: Path, state_dir: Path) -> tuple[str, ManagedProcess]:
    """Activate an instance backing up ``source``, enroll and run its agent; (instance id, agent) once READY."""
    activated = await platform.scheduler.ActivateBackup(
        scheduler_pb2.ActivateBackupRequest(
            account_id="acme",
            name="web-1",
            region="local",
            settings=scheduler_pb2.BackupSettings(
                priority=common_pb2.BACKUP_PRIORITY_HIGH,
                daily_start_minute=120,
                keep_latest_version=True,
                roots=[str(source)],
            ),
            has_settings=True,
        )
    )
    instance_id = activated.instance.instance_id
    agent = await start_agent(platform, activated.enrollment_token, state_dir)

    async def ready() -> bool:
        instance = await platform.scheduler.GetInstance(scheduler_pb2.GetInstanceRequest(instance_id=instance_id))
        return instance.status == scheduler_pb2.RUNNING_STATUS_READY

    try:
        await eventually("instance READY after enrollment", ready)
    except BaseException:
        await agent.stop()
        raise
    return instance_id, agent


async def test_backup_browse_restore_and_incremental(platform: Platform, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source)
    instance_id, agent = await enrolled_instance(platform, source, tmp_path / "agent-state")
    try:
        first = await backup(platform, instance_id)
        assert f"(mTLS {platform.stack.addresses['gateway-agents']})" in (platform.logs / "agent.log").read_text()
        total_bytes = sum(p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink())
        assert first.stats.bytes_scanned >= total_bytes
        assert first.stats.bytes_uploaded > 0

        [version] = await versions_with_points(platform, instance_id, 1)
        [point] = version.points
        assert point.filesystem.mount_point == str(source)
        root = await platform.catalog.BrowsePoint(catalog_pb2.BrowsePointRequest(point_id=point.point_id, path=""))
        assert sorted(e.path.rsplit("/", 1)[-1] for e in root.entries) == ["etc", "www"]
        www = await platform.catalog.BrowsePoint(catalog_pb2.BrowsePointRequest(point_id=point.point_id, path="www"))
        names = {e.path.rsplit("/", 1)[-1]: e for e in www.entries}
        assert set(names) == {"images", "index.html", "big.log", "home.html"}
        assert names["home.html"].type == common_pb2.ENTRY_TYPE_SYMLINK

        # One file, then one directory, restored to another path on the same instance.
        file_target = tmp_path / "restored-file"
        await restore(platform, point.point_id, ["etc/app/config.yaml"], file_target)
        assert_same_file(source / "etc/app/config.yaml", file_target / "etc/app/config.yaml")
        assert not (file_target / "www").exists()

        dir_target = tmp_path / "restored-dir"
        await restore(platform, point.point_id, ["www"], dir_target)
        for original in (source / "www").rglob("*"):
            restored = dir_target / original.relative_to(source)
            if original.is_symlink():
                assert os.readlink(restored) == os.readlink(original)
            elif original.is_file():
                assert_same_file(original, restored)

        # Day 2: a few files change; only their new data is uploaded.
        with (source / "www/big.log").open("ab") as log:
            log.write(b"appended line\n" * 1000)
        (source / "etc/app/config.yaml").write_text("listen: 0.0.0.0:9090\nworkers: 8\n")
        (source / "www/new.txt").write_text("new file\n")
        second = await backup(platform, instance_id)
        assert 0 < second.stats.bytes_uploaded < first.stats.bytes_uploaded * 0.2, (
            second.stats.bytes_uploaded,
            first.stats.bytes_uploaded,
        )
        versions = await versions_with_points(platform, instance_id, 2)
        assert len(versions) == 2
        # File search (ADR 0043): the config is in both versions, the new file in the newest only.
        found = await platform.catalog.ListFiles(catalog_pb2.ListFilesRequest(pattern="*.yaml"))
        [hit] = [h for h in found.hits if h.instance_id == instance_id]
        assert hit.full_path == f"{source}/etc/app/config.yaml"
        assert [v.version_id for v in hit.versions] == [v.version_id for v in versions]
        assert hit.versions[0].size == len("listen: 0.0.0.0:9090\nworkers: 8\n")
        history = await platform.catalog.GetFileHistory(
            catalog_pb2.GetFileHistoryRequest(instance_id=instance_id, path=f"{source}/www/new.txt")
        )
        assert [v.version_id for v in history.versions] == [versions[0].version_id]
        newest_point = versions[0].points[0]
        day2_target = tmp_path / "restored-day2"
        await restore(platform, newest_point.point_id, ["www/big.log", "www/new.txt"], day2_target)
        assert_same_file(source / "www/big.log", day2_target / "www/big.log")
        assert_same_file(source / "www/new.txt", day2_target / "www/new.txt")
    finally:
        await agent.stop()
