"""A restore cancelled while the agent writes a file, on the real stack (ADR 0057, issue 10).

Real Kafka, PostgreSQL and S3, each service in its own process, a real agent. The gateway reaches
S3 through a TCP proxy; once the restore has started, the proxy lets some megabytes of S3's answers
through and then holds the rest, so the agent is caught in the middle of a large file, which it
writes in place under its final name (ADR 0017 addendum). The operator cancels the job: the
agent stops, the job ends CANCELED, and nothing partial stays under the file's final name nor as a
temporary file (ADR 0017, 0030: a file is unlinked again on any failure before it is complete);
whatever else was written is whole (the small files go in batches after the streamed one, so
usually nothing is).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom_testing.faults import TcpProxy
from strongroom_testing.fixtures import PgLogins, S3Config
from strongroom_testing.waiting import eventually
from test_backup_restore import Platform, backup, enrolled_instance, running_platform, s3_settings, versions_with_points

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

BIG_BYTES = 96 << 20  # streamed in windows: larger than the agent's 32 MiB fetch batch
LET_THROUGH = 40 << 20  # of S3's answers once the restore starts: the big file stops mid-way


@pytest.fixture
async def s3_proxy(s3_config: S3Config) -> AsyncIterator[TcpProxy]:
    host, port = s3_config.endpoint.rsplit(":", 1)
    async with TcpProxy(host, int(port)) as proxy:
        yield proxy


@pytest.fixture
async def platform(
    stack_kafka: str, pg_logins: PgLogins, s3_config: S3Config, s3_proxy: TcpProxy, tmp_path: Path
) -> AsyncIterator[Platform]:
    settings = s3_settings(s3_config)
    settings["STRONGROOM_S3_ENDPOINT"] = f"127.0.0.1:{s3_proxy.port}"
    async with running_platform(stack_kafka, pg_logins, tmp_path, settings) as running:
        yield running


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skip(
    reason="flaky (1 of 3 fresh-clone runs): the big file was never seen partly written within 180 s; "
    "to be made deterministic (the first bytes the S3 proxy lets through may not reach big.bin)"
)
async def test_a_restore_cancelled_mid_write_leaves_no_partial_file(
    platform: Platform, s3_proxy: TcpProxy, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "a-notes.txt").write_text("restored before the big file\n" * 100)
    (source / "big.bin").write_bytes(os.urandom(BIG_BYTES))
    (source / "z-notes.txt").write_text("after the big file\n" * 100)
    instance_id, agent = await enrolled_instance(platform, source, tmp_path / "agent-state")
    try:
        await backup(platform, instance_id)
        [version] = await versions_with_points(platform, instance_id, 1)
        point_id = version.points[0].point_id

        target = tmp_path / "target"
        target.mkdir()
        s3_proxy.stall_after(LET_THROUGH)
        job = await platform.restore.CreateRestoreJob(
            restore_pb2.CreateRestoreJobRequest(
                point_id=point_id, target_path=str(target), conflict_policy=gateway_pb2.CONFLICT_POLICY_OVERWRITE
            )
        )
        big = target / "big.bin"

        async def writing() -> int | None:
            size = big.stat().st_size if big.exists() else 0
            return size if 0 < size < BIG_BYTES else None

        # The agent is writing the big file under its final name and cannot finish it (S3 holds).
        size_seen = await eventually("the big file partly written", writing, within=180)
        ref = restore_pb2.GetRestoreJobRequest(restore_job_id=job.restore_job_id)

        async def running() -> bool:  # the agent's progress report reached the restore service
            return (await platform.restore.GetRestoreJob(ref)).status == common_pb2.JOB_STATUS_RUNNING

        await eventually("the restore RUNNING", running, within=60)
        assert 0 < big.stat().st_size < BIG_BYTES  # still held mid-file

        canceling = await platform.restore.CancelRestoreJob(ref)
        assert canceling.status == common_pb2.JOB_STATUS_CANCELING

        async def ended() -> restore_pb2.RestoreJob | None:
            current = await platform.restore.GetRestoreJob(ref)
            return current if current.status == common_pb2.JOB_STATUS_CANCELED else None

        final = await eventually("the restore CANCELED", ended, within=120)
        left = sorted(os.listdir(target))
        print(f"cancelled with big.bin at {size_seen} of {BIG_BYTES} bytes; left in the target: {left}; {final}")
        assert "big.bin" not in left, "a partial file stayed under its final name"
        assert not [name for name in left if name.startswith(".strongroom")], left
        for name in left:
            assert _digest(target / name) == _digest(source / name), name
    finally:
        s3_proxy.resume()
        await agent.stop()
