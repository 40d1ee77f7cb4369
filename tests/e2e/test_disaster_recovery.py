"""Issue 9 ("Disaster recovery") on the real stack: every database dropped, rebuilt from the bucket.

Back up a tree through the five services (real Kafka, PostgreSQL, versitygw S3), stop them, drop
the database that held every schema, and play the attacker on the bucket with the services' S3
credentials (a delete marker on the account's key record). Then, in a fresh database:
``strongroom-admin rebuild --from-bucket`` (with the same master key), start the services, create
an admin token, issue the instance a new enrollment token, enroll the agent again to the same
instance id, and browse and restore the point byte for byte (ADR 0032).
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from minio import Minio
from strongroom.catalog.v1 import catalog_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_platform.pg_roles import OWNER_ROLE
from strongroom_testing.fixtures import PgLogins, S3Config
from test_backup_restore import (
    assert_same_file,
    backup,
    enrolled_instance,
    eventually,
    make_tree,
    restore,
    running_platform,
    start_agent,
    versions_with_points,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(900)]


def _name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


async def _drop(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn, timeout=30)
    try:
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _fresh_database(server_dsn: str, logins: PgLogins) -> PgLogins:
    """A new empty database owned by the migration owner, with the same logins (ADR 0031)."""
    name = f"t_dr_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_dsn, timeout=30)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" OWNER "{OWNER_ROLE}"')
    finally:
        await conn.close()
    owner = urlunsplit(urlsplit(logins.owner)._replace(path=f"/{name}"))
    return PgLogins(owner=owner, role_password=logins.role_password)


async def _index(dsn: str) -> dict[str, object]:
    """What the gateway's database held that the bucket must give back."""
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "keys": await conn.fetch("SELECT account_id, master_key_id, wrapped_key FROM gateway.account_keys"),
            "accounts": await conn.fetch("SELECT account_id, chunk_id_key, chunker_seed FROM gateway.accounts"),
            "packs": await conn.fetch(
                "SELECT pack_id, object_key, size, format_version, version_id FROM gateway.packs ORDER BY pack_id"
            ),
            "chunks": await conn.fetch(
                'SELECT account_id, chunk_id, pack_id, "offset", length, raw_length, compression'
                " FROM gateway.chunks ORDER BY account_id, chunk_id"
            ),
            "points": await conn.fetch(
                "SELECT point_id, account_id, instance_id, job_id, version_id, mount_point, filesystem, manifest_key,"
                " manifest_version_id, file_count, total_bytes, created_at, retain_until FROM gateway.points"
            ),
            "filesystems": await conn.fetch(
                "SELECT instance_id, mount_point, filesystem, approved FROM gateway.instance_filesystems"
                " ORDER BY instance_id, mount_point"
            ),
        }
    finally:
        await conn.close()


async def _rebuild(env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from strongroom_platform.admin import main; main()",
        "rebuild",
        "--from-bucket",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    return time.monotonic() - started, text


async def test_drop_every_database_rebuild_from_the_bucket_reenroll_browse_restore(
    stack_kafka: str,
    pg_server_dsn: str,
    pg_logins: PgLogins,
    s3_config: S3Config,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = f"e2e-dr-{uuid.uuid4().hex[:12]}"
    settings = {
        "STRONGROOM_OBJECT_STORE": "s3",
        "STRONGROOM_S3_ENDPOINT": s3_config.endpoint,
        "STRONGROOM_S3_ACCESS_KEY": s3_config.access_key,
        "STRONGROOM_S3_SECRET_KEY": s3_config.secret_key,
        "STRONGROOM_S3_SECURE": "1" if s3_config.secure else "0",
        "STRONGROOM_S3_BUCKET": bucket,
        # The one secret kept apart from the databases.
        "STRONGROOM_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    source = tmp_path / "source"
    make_tree(source)
    async with running_platform(stack_kafka, pg_logins, tmp_path / "before", settings) as platform:
        instance_id, agent = await enrolled_instance(platform, source, tmp_path / "agent-state")
        try:
            await backup(platform, instance_id)
            [version] = await versions_with_points(platform, instance_id, 1)
            [point] = version.points
        finally:
            await agent.stop()

    before = await _index(pg_logins.owner)
    # The disaster: every schema (gateway, catalog, scheduler, billing, restore, auth) is gone.
    await _drop(pg_server_dsn, _name(pg_logins.owner))
    # The attacker, with the services' S3 credentials: a plain DELETE hides the account's key record.
    s3 = Minio(
        s3_config.endpoint,
        access_key=s3_config.access_key,
        secret_key=s3_config.secret_key,
        secure=s3_config.secure,
    )
    [key_record] = [o.object_name for o in s3.list_objects(bucket, prefix="vault/keys/", recursive=True)]
    s3.remove_object(bucket, key_record)
    assert not list(s3.list_objects(bucket, prefix="vault/keys/", recursive=True))

    after = await _fresh_database(pg_server_dsn, pg_logins)
    try:
        env = dict(os.environ)
        env.update(after.env("gateway"), STRONGROOM_KAFKA_BOOTSTRAP=stack_kafka, **settings)
        seconds, output = await _rebuild(env)
        assert "rebuilt 1 account(s), 1 instance(s)" in output and "1 point(s)" in output, output
        # The same packs, chunk index (every location), points and keys as before the disaster.
        assert await _index(after.owner) == before

        # A fresh deployment on the rebuilt database; running_platform bootstraps the admin token
        # (strongroom-admin token create) as an operator would.
        async with running_platform(stack_kafka, after, tmp_path / "after", settings) as platform:

            async def known() -> scheduler_pb2.Instance | None:
                try:
                    request = scheduler_pb2.GetInstanceRequest(instance_id=instance_id)
                    return await platform.scheduler.GetInstance(request)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    return None

            recovered = await eventually("the scheduler to learn the recovered instance", known)
            assert (recovered.account_id, recovered.name, recovered.region) == ("acme", "web-1", "local")
            issued = await platform.scheduler.IssueEnrollmentToken(scheduler_pb2.InstanceRef(instance_id=instance_id))
            assert issued.instance.instance_id == instance_id
            agent = await start_agent(platform, issued.enrollment_token, tmp_path / "agent-state-2")
            try:

                async def ready() -> bool:
                    current = await platform.scheduler.GetInstance(
                        scheduler_pb2.GetInstanceRequest(instance_id=instance_id)
                    )
                    return current.status == scheduler_pb2.RUNNING_STATUS_READY

                await eventually("the re-enrolled instance READY", ready)
                [rebuilt_version] = await versions_with_points(platform, instance_id, 1)
                assert rebuilt_version.version_id == version.version_id
                [rebuilt_point] = rebuilt_version.points
                assert rebuilt_point.point_id == point.point_id
                assert rebuilt_point.filesystem.mount_point == str(source)
                www = await platform.catalog.BrowsePoint(
                    catalog_pb2.BrowsePointRequest(point_id=point.point_id, path="www")
                )
                assert {e.path.rsplit("/", 1)[-1] for e in www.entries} == {
                    "images",
                    "index.html",
                    "big.log",
                    "home.html",
                }
                target = tmp_path / "restored"
                job = await restore(platform, point.point_id, [], target)
            finally:
                await agent.stop()
    finally:
        await _drop(pg_server_dsn, _name(after.owner))

    originals = [p for p in source.rglob("*") if p.is_file() or p.is_symlink()]
    for original in originals:
        copy = target / original.relative_to(source)
        if original.is_symlink():
            assert os.readlink(copy) == os.readlink(original)
        else:
            assert_same_file(original, copy)
    assert job.stats.files_restored == len(originals)
    with capsys.disabled():
        print(f"\ndisaster recovery: rebuild from the bucket took {seconds:.1f} s; {output.strip().splitlines()[-2]}")
