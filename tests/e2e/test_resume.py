"""Interrupted backups on real processes: the agent killed mid-backup, the gateway restarted mid-backup.

The agent is killed (SIGKILL) once the scheduler shows a good part of the data
uploaded; a new agent process connects, the gateway re-delivers the unfinished
job (ADR 0007), and the second attempt uploads only what the first did not store
(FindMissingChunks). The gateway, killed and restarted on the same address,
costs the agent retries (capped backoff on UNAVAILABLE), not the job.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from strongroom.catalog.v1 import catalog_pb2
from strongroom.common.v1 import common_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_cli.stack import ManagedProcess, spawn
from test_backup_restore import FINISHED, Platform, eventually, start_agent

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

FILES = 64
FILE_BYTES = 4_000_000  # 256 MB of incompressible data: 26 s at the low priority's 10 MB/s, so the
# interruption (after half is reported uploaded, with progress reports seconds apart) lands mid-job


def make_tree(root: Path) -> int:
    for i in range(FILES):
        path = root / f"d{i % 4}" / f"f{i:02}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(FILE_BYTES))
    return FILES * FILE_BYTES


async def activate(platform: Platform, source: Path) -> tuple[str, str]:
    activated = await platform.scheduler.ActivateBackup(
        scheduler_pb2.ActivateBackupRequest(
            account_id="acme",
            name="db-1",
            region="local",
            settings=scheduler_pb2.BackupSettings(
                priority=common_pb2.BACKUP_PRIORITY_LOW, daily_start_minute=120, roots=[str(source)]
            ),
            has_settings=True,
        )
    )
    return activated.instance.instance_id, activated.enrollment_token


async def restart_agent(platform: Platform, state_dir: Path) -> ManagedProcess:
    run = [sys.executable, "-m", "strongroom_agent", "run", "--state-dir", str(state_dir)]
    return await spawn("agent", run, platform.env, platform.logs)


async def wait_ready(platform: Platform, instance_id: str) -> None:
    async def ready() -> bool:
        instance = await platform.scheduler.GetInstance(scheduler_pb2.GetInstanceRequest(instance_id=instance_id))
        return instance.status == scheduler_pb2.RUNNING_STATUS_READY

    await eventually("instance READY", ready)


async def uploaded_at_least(platform: Platform, job_id: str, nbytes: int) -> scheduler_pb2.BackupJob:
    async def progressed() -> scheduler_pb2.BackupJob | None:
        job = await platform.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id))
        assert job.status not in FINISHED, f"the job finished before it could be interrupted: {job}"
        return job if job.stats.bytes_uploaded >= nbytes else None

    return await eventually(f"{nbytes} bytes uploaded", progressed, within=120)


async def finished(platform: Platform, job_id: str) -> scheduler_pb2.BackupJob:
    async def done() -> scheduler_pb2.BackupJob | None:
        job = await platform.scheduler.GetJob(scheduler_pb2.GetJobRequest(job_id=job_id))
        return job if job.status in FINISHED else None

    return await eventually("the backup to finish", done, within=300)


async def point_files(platform: Platform, instance_id: str) -> int:
    async def listed() -> list[catalog_pb2.Version] | None:
        response = await platform.catalog.ListVersions(catalog_pb2.ListVersionsRequest(instance_id=instance_id))
        versions = list(response.versions)
        return versions if versions and all(p.browsable for v in versions for p in v.points) else None

    [version] = await eventually("a browsable version", listed)
    return sum(p.file_count for p in version.points)


async def test_agent_killed_mid_backup_resumes_without_uploading_again(platform: Platform, tmp_path: Path) -> None:
    source = tmp_path / "source"
    total = make_tree(source)
    instance_id, token = await activate(platform, source)
    state_dir = tmp_path / "agent-state"
    agent = await start_agent(platform, token, state_dir)
    try:
        await wait_ready(platform, instance_id)
        job = await platform.scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=instance_id))
        before_kill = await uploaded_at_least(platform, job.job_id, total // 2)
        agent.process.kill()
        await agent.stop()

        agent = await restart_agent(platform, state_dir)
        final = await finished(platform, job.job_id)
        assert final.status == common_pb2.JOB_STATUS_COMPLETE, (final.error, list(final.file_errors))
        # The stats are the second attempt's: it read everything but uploaded only the rest.
        assert final.stats.bytes_read == total
        assert final.stats.bytes_uploaded <= total - before_kill.stats.bytes_uploaded + (32 << 20)
        assert final.stats.bytes_uploaded < total * 0.5, (final.stats.bytes_uploaded, total)
        assert await point_files(platform, instance_id) == FILES
    finally:
        await agent.stop()


async def test_gateway_restarted_mid_backup_costs_retries_not_the_job(platform: Platform, tmp_path: Path) -> None:
    source = tmp_path / "source"
    total = make_tree(source)
    instance_id, token = await activate(platform, source)
    agent = await start_agent(platform, token, tmp_path / "agent-state")
    try:
        await wait_ready(platform, instance_id)
        job = await platform.scheduler.RunBackupNow(scheduler_pb2.RunBackupNowRequest(instance_id=instance_id))
        await uploaded_at_least(platform, job.job_id, total // 4)

        stack = platform.stack
        gateway = stack.processes["gateway"]
        address = gateway.address
        gateway.process.kill()
        await gateway.stop()
        await asyncio.sleep(3)  # the agent's calls fail with UNAVAILABLE meanwhile
        stack.processes["gateway"] = await stack._start_one("gateway", platform.env, platform.logs, address, 90)

        final = await finished(platform, job.job_id)
        assert final.status == common_pb2.JOB_STATUS_COMPLETE, (final.error, list(final.file_errors))
        assert final.stats.bytes_read == total
        # Only the chunks of calls cut by the restart are sent twice.
        assert final.stats.bytes_uploaded < total * 1.3
        assert await point_files(platform, instance_id) == FILES
        agent_log = (platform.logs / "agent.log").read_text(errors="replace")
        assert "retry" in agent_log
    finally:
        await agent.stop()
