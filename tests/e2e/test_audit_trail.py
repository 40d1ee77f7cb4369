"""The audit trail on the real stack (ADR 0027): mutations and refusals on two services reach the
scheduler's trail through their outboxes and Kafka, and admins read them back (API and CLI)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import uuid

import grpc
import pytest
from strongroom.audit.v1 import audit_pb2, audit_pb2_grpc
from strongroom.auth.v1 import auth_pb2, auth_pb2_grpc
from strongroom.restore.v1 import restore_pb2
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_cli.stack import operator_channel
from strongroom_platform.admin import create_admin_token
from strongroom_platform.auth import Role
from strongroom_platform.auth.tokens import parse_token
from strongroom_platform.certs import CA_CERT_FILE
from test_backup_restore import Platform, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

SCHEDULER = "/strongroom.scheduler.v1.SchedulerService/"


async def test_mutations_and_refusals_are_recorded_and_read_back_by_admins(platform: Platform) -> None:
    dsn = platform.env["STRONGROOM_PG_MIGRATE_DSN"]
    ca = platform.tls_dir / CA_CERT_FILE
    scheduler_address = platform.stack.addresses["scheduler"]
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    admin = await create_admin_token(dsn, "acme", name="audit-admin")
    viewer = await create_admin_token(dsn, "acme", role=Role.VIEWER, name="audit-viewer")

    async with operator_channel(scheduler_address, ca_file=ca, token=admin) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        activated = await scheduler.ActivateBackup(
            scheduler_pb2.ActivateBackupRequest(account_id="acme", name="audited", region="local")
        )
        instance_id = activated.instance.instance_id
        await scheduler.PauseBackup(scheduler_pb2.InstanceRef(instance_id=instance_id))
        created = await auth_pb2_grpc.TokenServiceStub(channel).CreateToken(
            auth_pb2.CreateTokenRequest(
                name="ci", grants=[auth_pb2.Grant(account_id="acme", role=auth_pb2.ROLE_VIEWER)]
            )
        )
    async with operator_channel(scheduler_address, ca_file=ca, token=viewer) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await scheduler_pb2_grpc.SchedulerServiceStub(channel).ResumeBackup(
                scheduler_pb2.InstanceRef(instance_id=instance_id)
            )
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as not_admin:
            await audit_pb2_grpc.AuditServiceStub(channel).ListAuditEvents(audit_pb2.ListAuditEventsRequest())
        assert not_admin.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # a refusal on another service (restore), recorded through that service's own outbox
    missing_point = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await platform.restore.CreateRestoreJob(
            restore_pb2.CreateRestoreJobRequest(point_id=missing_point, target_path="/tmp/nowhere")
        )
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    # an anonymous call has no "who": refused and not recorded
    async with grpc.aio.secure_channel(scheduler_address, grpc.ssl_channel_credentials(ca.read_bytes())) as nobody:
        with pytest.raises(grpc.aio.AioRpcError):
            await scheduler_pb2_grpc.SchedulerServiceStub(nobody).PauseBackup(
                scheduler_pb2.InstanceRef(instance_id=instance_id), timeout=30
            )

    wanted = {
        ("ActivateBackup", "OK"),
        ("PauseBackup", "OK"),
        ("CreateToken", "OK"),
        ("ResumeBackup", "PERMISSION_DENIED"),
        ("CreateRestoreJob", "NOT_FOUND"),
    }

    def mine(event: audit_pb2.AuditEvent) -> bool:
        return (
            instance_id in event.resources.values()
            or missing_point in event.resources.values()
            or (event.resources.get("token_id") == created.token.token_id)
        )

    async with operator_channel(scheduler_address, ca_file=ca, token=admin) as channel:
        trail = audit_pb2_grpc.AuditServiceStub(channel)

        async def recorded() -> dict[tuple[str, str], audit_pb2.AuditEvent] | None:
            since = audit_pb2.ListAuditEventsRequest(account_id="acme", page_size=1000)
            since.since.FromDatetime(started)
            page = await trail.ListAuditEvents(since)
            found = {(e.method.rsplit("/", 1)[1], e.result_code): e for e in page.events if mine(e)}
            return found if set(found) >= wanted else None

        found = await eventually("the audit records", recorded, within=120)
    assert len([e for e in found.values()]) == len(wanted), "an anonymous call or a read was recorded"
    activate = found[("ActivateBackup", "OK")]
    assert activate.service == "scheduler" and activate.principal_kind == "operator"
    assert list(activate.account_ids) == ["acme"] and activate.method == SCHEDULER + "ActivateBackup"
    assert activate.subject.startswith("token:")
    refused = found[("ResumeBackup", "PERMISSION_DENIED")]
    assert refused.result_message == denied.value.details()
    assert refused.subject != activate.subject  # the viewer, not the admin
    restore = found[("CreateRestoreJob", "NOT_FOUND")]
    assert restore.service == "restore" and restore.resources["point_id"] == missing_point
    parsed = parse_token(created.secret)
    assert parsed is not None
    # The whole secret part (it may itself contain "_"; the last piece alone can be one character).
    assert parsed[1] not in str(found[("CreateToken", "OK")])

    # the same trail through the CLI
    env = {
        **platform.env,
        "STRONGROOM_SCHEDULER_ADDR": scheduler_address,
        "STRONGROOM_TOKEN": admin,
        "STRONGROOM_TLS_CA": str(ca),
    }
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "strongroom_cli", "--account", "acme", "audit", "list", "--since", "1h",
        "--subject", activate.subject, "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    listed = json.loads(out)
    assert activate.event_id in {e["event_id"] for e in listed}
    assert {e["subject"] for e in listed} == {activate.subject}
