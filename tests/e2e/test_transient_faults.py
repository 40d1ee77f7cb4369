"""Transient faults inside a job (issue 9): a PostgreSQL or Kafka outage of up to 30 s costs retries, not the job.

Every service reaches PostgreSQL through a TCP proxy. Mid-backup, and again mid-restore, the
proxy is cut (open connections reset, new ones refused, as a restarting server would) and
reopened on the same port later. The jobs end COMPLETE; the restored files are byte-identical;
no job, no operator answer, carries a driver's exception text. The broker, stopped mid-backup and
started again on the same port and data, delays the job's events, not the job.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_servers import free_port
from strongroom_servers.kafka import LocalKafka
from strongroom_testing.faults import TcpProxy
from strongroom_testing.fixtures import PgLogins, S3Config, start_or_skip
from test_backup_restore import FINISHED, Platform, running_platform, versions_with_points
from test_resume import activate, finished, make_tree, start_agent, uploaded_at_least, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(900)]

T = TypeVar("T")

OUTAGE_SECONDS = 30.0
# Text of driver and socket errors that must never reach an operator.
RAW_DRIVER_TEXT = ("ConnectionRefused", "asyncpg", "Errno", "ConnectionDoesNotExist", "Traceback", "psycopg")


@pytest.fixture
async def pg_proxy(pg_logins: PgLogins) -> AsyncIterator[tuple[TcpProxy, PgLogins]]:
    """A proxy in front of PostgreSQL, and the test database's logins through it."""
    host, port = pg_logins.owner.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    async with TcpProxy(host, int(port)) as proxy:
        yield proxy, PgLogins(owner=proxy.dsn_via(pg_logins.owner), role_password=pg_logins.role_password)


@pytest.fixture
async def platform(
    stack_kafka: str, pg_proxy: tuple[TcpProxy, PgLogins], s3_config: S3Config, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with running_platform(stack_kafka, pg_proxy[1], tmp_path, s3_settings(s3_config)) as running:
        yield running


def s3_settings(s3_config: S3Config) -> dict[str, str]:
    return {
        "STRONGROOM_OBJECT_STORE": "s3",
        "STRONGROOM_S3_ENDPOINT": s3_config.endpoint,
        "STRONGROOM_S3_ACCESS_KEY": s3_config.access_key,
        "STRONGROOM_S3_SECRET_KEY": s3_config.secret_key,
        "STRONGROOM_S3_SECURE": "1" if s3_config.secure else "0",
        "STRONGROOM_S3_BUCKET": f"e2e-{uuid.uuid4().hex[:12]}",
    }


async def tolerant(what: str, probe: Callable[[], Awaitable[T | None]], within: float) -> T:
    """Poll ``probe`` until it returns a value; an UNAVAILABLE answer (the database is away) is a retry."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = await probe()
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
            assert not any(raw in (exc.details() or "") for raw in RAW_DRIVER_TEXT), exc.details()
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


async def outage(proxy: TcpProxy, seconds: float) -> None:
    """PostgreSQL unreachable for ``seconds``, as while it restarts; the jobs run on meanwhile."""
    await proxy.cut()
    try:
        await asyncio.sleep(seconds)
    finally:
        await proxy.reopen()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_database_outage_mid_backup_and_mid_restore_costs_retries_not_the_jobs(
    platform: Platform, pg_proxy: tuple[TcpProxy, PgLogins], tmp_path: Path
) -> None:
    proxy = pg_proxy[0]
    source = tmp_path / "source"
    total = make_tree(source)
    instance_id, token = await activate(platform, source)
    agent = await start_agent(platform, token, tmp_path / "agent-state")
    try:
        await wait_ready(platform, instance_id)
        job = await platform.scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=instance_id))

        async def progressed() -> bool:
            current = await platform.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id))
            assert current.status not in FINISHED, f"finished before the outage: {current}"
            return current.stats.bytes_uploaded >= total // 4

        await tolerant("a quarter uploaded", progressed, within=120)
        await outage(proxy, OUTAGE_SECONDS)

        async def backup_done() -> scheduler_pb2.BackupJob | None:
            current = await platform.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job.job_id))
            return current if current.status in FINISHED else None

        final = await tolerant("the backup to finish", backup_done, within=400)
        assert final.status == common_pb2.JOB_STATUS_COMPLETE, (final.error, list(final.file_errors))
        assert final.error == ""
        assert final.stats.bytes_read == total

        [version] = await versions_with_points(platform, instance_id, 1)
        [point] = version.points
        target = tmp_path / "restored"
        target.mkdir()
        restore_job = await platform.restore.CreateRestoreJob(
            restore_pb2.CreateRestoreJobRequest(
                point_id=point.point_id,
                target_path=str(target),
                conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE,
            )
        )
        # At once: the request travels restore service → Kafka → gateway → agent during the outage.
        await outage(proxy, OUTAGE_SECONDS / 2)

        async def restore_done() -> restore_pb2.RestoreJob | None:
            current = await platform.restore.GetRestoreJob(
                restore_pb2.GetRestoreJobRequest(restore_job_id=restore_job.restore_job_id)
            )
            return current if current.status in FINISHED else None

        restored = await tolerant("the restore to finish", restore_done, within=400)
        assert restored.status == common_pb2.JOB_STATUS_COMPLETE, (restored.error, list(restored.failed_files))
        assert restored.error == ""
        originals = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
        assert len(originals) == len([p for p in target.rglob("*") if p.is_file()])
        for relative in originals:
            assert digest(target / relative) == digest(source / relative), relative
    finally:
        await agent.stop()


@pytest.fixture
def restartable_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of this test's own on a fixed port, so that it can be stopped and started again."""
    if os.environ.get("TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("stops and restarts its own broker; an external one (TEST_KAFKA_BOOTSTRAP) cannot be")
    with start_or_skip(LocalKafka(tmp_path / "kafka", port=free_port())) as kafka:
        yield kafka


@pytest.fixture
async def broker_platform(
    restartable_kafka: LocalKafka, pg_logins: PgLogins, s3_config: S3Config, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with running_platform(restartable_kafka.bootstrap, pg_logins, tmp_path, s3_settings(s3_config)) as running:
        yield running


async def test_a_broker_outage_mid_backup_costs_time_not_the_job(
    broker_platform: Platform, restartable_kafka: LocalKafka, tmp_path: Path
) -> None:
    platform = broker_platform
    source = tmp_path / "source"
    total = make_tree(source)
    instance_id, token = await activate(platform, source)
    agent = await start_agent(platform, token, tmp_path / "agent-state")
    try:
        await wait_ready(platform, instance_id)
        job = await platform.scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=instance_id))
        await uploaded_at_least(platform, job.job_id, total // 4)

        started = time.monotonic()
        await asyncio.to_thread(restartable_kafka.stop)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - 12 - (time.monotonic() - started)))
        await asyncio.to_thread(restartable_kafka.start)  # about 10 s: the outage lasts about 30 s in all

        final = await finished(platform, job.job_id)
        assert final.status == common_pb2.JOB_STATUS_COMPLETE, (final.error, list(final.file_errors))
        assert final.stats.bytes_read == total
        # The point travels gateway → Kafka → catalog after the broker is back.
        await versions_with_points(platform, instance_id, 1)
    finally:
        await agent.stop()
