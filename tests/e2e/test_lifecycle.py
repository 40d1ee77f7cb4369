"""The inventory and the lifecycle on the real stack (issue 10, ADR 0040): every status by its real
trigger, one backup per host, the overview's counts over the inventory, a hold, and cancel versus
pause (cancel hides the versions at once, stops billing and uninstalls the agent; an admin
reinstates them while their locks hold)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from strongroom.billing.v1 import billing_pb2, billing_pb2_grpc
from strongroom.catalog.v1 import catalog_pb2
from strongroom.common.v1 import common_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_cli.stack import operator_channel
from strongroom_platform.admin import create_admin_token
from strongroom_platform.certs import CA_CERT_FILE
from strongroom_testing.fixtures import PgLogins, S3Config
from test_backup_restore import Platform, backup, eventually, make_tree, running_platform, start_agent

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(900)]

S = scheduler_pb2
GIB = 1 << 30


@pytest.fixture
async def platform(
    stack_kafka: str, pg_logins: PgLogins, s3_config: S3Config, tmp_path: Path
) -> AsyncIterator[Platform]:
    settings = {
        "STRONGROOM_OBJECT_STORE": "s3",
        "STRONGROOM_S3_ENDPOINT": s3_config.endpoint,
        "STRONGROOM_S3_ACCESS_KEY": s3_config.access_key,
        "STRONGROOM_S3_SECRET_KEY": s3_config.secret_key,
        "STRONGROOM_S3_SECURE": "1" if s3_config.secure else "0",
        "STRONGROOM_S3_BUCKET": f"e2e-{uuid.uuid4().hex[:12]}",
        # the preparation timeout, shortened so that PREPARATION_FAILED is reached by its real trigger
        "STRONGROOM_PREPARATION_TIMEOUT": "4",
        "STRONGROOM_SCHEDULE_INTERVAL": "1",
    }
    async with running_platform(stack_kafka, pg_logins, tmp_path, settings) as running:
        yield running


async def status_of(platform: Platform, instance_id: str) -> scheduler_pb2.Instance:
    return await platform.scheduler.GetInstance(S.GetInstanceRequest(instance_id=instance_id))


async def reaches(platform: Platform, instance_id: str, status: int, within: float = 120) -> scheduler_pb2.Instance:
    async def probe() -> scheduler_pb2.Instance | None:
        instance = await status_of(platform, instance_id)
        return instance if instance.status == status else None

    return await eventually(f"instance {instance_id} {S.RunningStatus.Name(status)}", probe, within=within)  # type: ignore[arg-type]


async def test_inventory_statuses_hold_and_cancel_versus_pause(platform: Platform, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source)
    ca = platform.tls_dir / CA_CERT_FILE
    billing_channel = operator_channel(
        platform.stack.addresses["billing"],
        ca_file=ca,
        token=await create_admin_token(platform.env["STRONGROOM_PG_MIGRATE_DSN"], "acme"),
    )
    billing = billing_pb2_grpc.BillingServiceStub(billing_channel)

    async def counts(expected: tuple[int, int]) -> billing_pb2.Overview:
        async def probe() -> billing_pb2.Overview | None:
            view = await billing.GetOverview(billing_pb2.GetOverviewRequest(account_id="acme", region="local"))
            return view if (view.backed_up_instances, view.unbacked_up_instances) == expected else None

        return await eventually(f"overview backed/un-backed {expected}", probe)

    try:
        # The inventory: two hosts known before activation.
        registered = await platform.scheduler.RegisterInstances(
            S.RegisterInstancesRequest(
                account_id="acme",
                instances=[
                    S.InventoryRecord(
                        host_id="host-a",
                        name="web-a",
                        region="local",
                        os="linux",
                        block_devices=[common_pb2.BlockDevice(device="/dev/vda", size_bytes=40 * GIB)],
                    ),
                    S.InventoryRecord(host_id="host-b", name="web-b", region="local"),
                ],
            )
        )
        a, b = (i.instance_id for i in registered.instances)
        assert [i.status for i in registered.instances] == [S.RUNNING_STATUS_NOT_ACTIVATED] * 2
        await counts((0, 2))  # the seed: not activated instances are un-backed-up

        # Preparing -> Preparation Failed: no agent enrolls within the (shortened) timeout.
        activated_b = await platform.scheduler.ActivateBackup(
            S.ActivateBackupRequest(account_id="acme", host_id="host-b")
        )
        assert activated_b.instance.status == S.RUNNING_STATUS_PREPARING
        failed = await reaches(platform, b, S.RUNNING_STATUS_PREPARATION_FAILED)
        assert "did not enroll" in failed.last_error

        # Not Activated -> Preparing -> Ready: activation, then the agent's enrollment.
        activated_a = await platform.scheduler.ActivateBackup(
            S.ActivateBackupRequest(
                account_id="acme",
                instance_id=a,
                has_settings=True,
                settings=S.BackupSettings(
                    priority=common_pb2.BACKUP_PRIORITY_HIGH,
                    daily_start_minute=120,
                    keep_latest_version=True,
                    roots=[str(source)],
                ),
            )
        )
        assert activated_a.instance.status == S.RUNNING_STATUS_PREPARING
        # One backup per host: a second activation of host-a is refused.
        with pytest.raises(grpc.aio.AioRpcError) as twice:
            await platform.scheduler.ActivateBackup(S.ActivateBackupRequest(account_id="acme", host_id="host-a"))
        assert twice.value.code() is grpc.StatusCode.ALREADY_EXISTS
        state_dir = tmp_path / "agent-state"
        agent = await start_agent(platform, activated_a.enrollment_token, state_dir)
        try:
            await reaches(platform, a, S.RUNNING_STATUS_READY)
            # Ready -> Running (Backing Up) -> Running: a backup job runs and completes.
            job = await backup(platform, a)
            running = await reaches(platform, a, S.RUNNING_STATUS_RUNNING)
            assert running.inventory.host_id == "host-a"
            versions = (await platform.catalog.ListVersions(catalog_pb2.ListVersionsRequest(instance_id=a))).versions
            assert [v.version_id for v in versions] == [job.version_id]
            point_id = versions[0].points[0].point_id
            view = await counts((1, 1))
            assert view.backed_up_capacity_bytes == 40 * GIB  # the inventory's disks, not the filesystem's size

            # Pause keeps the versions (and billing); resume runs again.
            paused = await platform.scheduler.PauseBackup(S.InstanceRef(instance_id=a))
            assert paused.status == S.RUNNING_STATUS_PAUSED
            assert (
                len((await platform.catalog.ListVersions(catalog_pb2.ListVersionsRequest(instance_id=a))).versions) == 1
            )
            await counts((1, 1))
            assert (
                await platform.scheduler.ResumeBackup(S.InstanceRef(instance_id=a))
            ).status == S.RUNNING_STATUS_RUNNING

            # A hold, placed and released by an admin (audited).
            hold = await platform.catalog.PlaceHold(
                catalog_pb2.PlaceHoldRequest(instance_id=a, kind=catalog_pb2.HOLD_KIND_LEGAL, reason="case 42")
            )
            held = await platform.catalog.ListHolds(catalog_pb2.ListHoldsRequest(instance_id=a))
            assert [h.hold_id for h in held.holds] == [hold.hold_id]
            released = await platform.catalog.ReleaseHold(catalog_pb2.ReleaseHoldRequest(hold_id=hold.hold_id))
            assert released.HasField("released_at")

            # Cancel: the versions vanish from every read and restore path, billing stops, the agent uninstalls.
            canceled = await platform.scheduler.CancelBackup(S.InstanceRef(instance_id=a))
            assert canceled.status == S.RUNNING_STATUS_CANCELED

            async def hidden() -> bool:
                listed = await platform.catalog.ListVersions(catalog_pb2.ListVersionsRequest(instance_id=a))
                return not listed.versions

            await eventually("versions hidden after the cancel", hidden, within=60)
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await platform.catalog.GetPoint(catalog_pb2.GetPointRequest(point_id=point_id))
            assert gone.value.code() is grpc.StatusCode.NOT_FOUND and "canceled" in (gone.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as no_restore:
                await platform.restore.CreateRestoreJob(
                    restore_pb2.CreateRestoreJobRequest(point_id=point_id, target_path=str(tmp_path / "r"))
                )
            assert no_restore.value.code() is grpc.StatusCode.NOT_FOUND
            await counts((0, 1))
            listed = await platform.scheduler.ListInstances(S.ListInstancesRequest(account_id="acme"))
            assert a not in [i.instance_id for i in listed.instances]  # removed from the list

            async def uninstalled() -> bool:
                return agent.process.returncode is not None and not state_dir.exists()

            await eventually("the agent to remove its state and exit", uninstalled, within=60)
            assert agent.process.returncode == 0
        finally:
            await agent.stop()

        # Reinstate (the locks still hold): listed, restorable and billed again; the instance is paused.
        reinstated = await platform.catalog.ReinstateBackup(catalog_pb2.ReinstateBackupRequest(instance_id=a))
        assert list(reinstated.version_ids) == [job.version_id]
        back = await reaches(platform, a, S.RUNNING_STATUS_PAUSED)
        assert not back.agent_enrolled
        assert (await platform.catalog.GetPoint(catalog_pb2.GetPointRequest(point_id=point_id))).point_id == point_id
        await counts((1, 1))

        # Stopped: the inventory says host-b is gone; it no longer counts as un-backed-up.
        stopped = await platform.scheduler.ReleaseInstance(S.InstanceRef(instance_id=b))
        assert stopped.status == S.RUNNING_STATUS_STOPPED
        await counts((1, 0))
    finally:
        await billing_channel.close()
