"""The trust boundary, attacked as issue 8 describes, on the real stack (ADRs 0023, 0024).

Every RPC of every operator service is called, from the descriptors generated from ``proto/``:
- with no credential: UNAUTHENTICATED;
- with the admin token of another account, naming the victim's resources: exactly the answer a
  random id gets (no oracle), and never the victim's data;
- with a viewer token of the victim's account on a mutating call: PERMISSION_DENIED.
Every listener refuses a plaintext client; the internal listeners refuse callers without a
service certificate; the agent port refuses unauthenticated agent calls; restore targets of
another account or unknown are refused at creation with the same message.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from strongroom.audit.v1 import audit_pb2
from strongroom.auth.v1 import auth_pb2
from strongroom.billing.v1 import billing_pb2
from strongroom.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from strongroom.gateway.v1 import manifest_pb2, manifest_pb2_grpc
from strongroom.restore.v1 import restore_pb2
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_cli.stack import operator_channel
from strongroom_platform.admin import create_admin_token
from strongroom_platform.auth import POLICY, Caller, Role
from strongroom_platform.certs import CA_CERT_FILE
from test_backup_restore import Platform, backup, make_tree, start_agent, versions_with_points

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

SERVICE_OF = {
    "strongroom.scheduler.v1.SchedulerService": "scheduler",
    "strongroom.auth.v1.TokenService": "scheduler",
    "strongroom.audit.v1.AuditService": "scheduler",
    "strongroom.alerts.v1.AlertService": "scheduler",
    "strongroom.catalog.v1.CatalogService": "catalog",
    "strongroom.billing.v1.BillingService": "billing",
    "strongroom.restore.v1.RestoreService": "restore",
}
LIST_INSTANCES = "/strongroom.scheduler.v1.SchedulerService/ListInstances"
GET_POINT = "/strongroom.catalog.v1.CatalogService/GetPoint"
# imported for their descriptors (the pool must hold every operator service)
_ = (alerts_pb2, audit_pb2, auth_pb2, billing_pb2, catalog_pb2, restore_pb2, scheduler_pb2)


def operator_methods() -> list[tuple[str, str, Any]]:
    """(address name, full method, input type) of every operator RPC, from the generated descriptors."""
    pool = descriptor_pool.Default()
    found = []
    for service_name, address in SERVICE_OF.items():
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            full = f"/{service_name}/{method.name}"
            assert Caller.OPERATOR in POLICY[full].callers, full
            found.append((address, full, message_factory.GetMessageClass(method.input_type)))
    return found


def request_for(message_type: Any, ids: dict[str, str]) -> Message:
    """A request naming the given resources in whatever id fields the message has."""
    message = message_type()
    for field in message.DESCRIPTOR.fields:
        if field.name in ids and field.type == field.TYPE_STRING and not field.is_repeated:
            setattr(message, field.name, ids[field.name])
    if isinstance(message, restore_pb2.CreateRestoreJobRequest):
        message.target_path = "/tmp/strongroom-attack"
    if isinstance(message, auth_pb2.CreateTokenRequest):
        message.name = "attack"
        message.grants.add(account_id=ids["account_id"], role=auth_pb2.ROLE_ADMIN)
    return message


async def call(channel: grpc.aio.Channel, method: str, request: Message) -> tuple[grpc.StatusCode, str, bytes]:
    """(code, details, response bytes) of a unary call; streams are not operator RPCs."""
    rpc = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=bytes)
    try:
        response = await rpc(request, timeout=30)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", b""
    return grpc.StatusCode.OK, "", response


async def test_every_operator_rpc_holds_the_account_boundary(platform: Platform, tmp_path: Path) -> None:
    stack, env = platform.stack, platform.env
    dsn = env["STRONGROOM_PG_MIGRATE_DSN"]
    ca = platform.tls_dir / CA_CERT_FILE
    addresses = stack.addresses

    # The victim (account acme, the fixture's admin) has an instance with a backup, a job and a point.
    source = tmp_path / "source"
    make_tree(source)
    activated = await platform.scheduler.ActivateBackup(
        scheduler_pb2.ActivateBackupRequest(
            account_id="acme",
            name="victim",
            region="local",
            settings=scheduler_pb2.BackupSettings(roots=[str(source)], daily_start_minute=120),
            has_settings=True,
        )
    )
    instance_id = activated.instance.instance_id
    agent = await start_agent(platform, activated.enrollment_token, tmp_path / "agent")
    try:
        job = await backup(platform, instance_id)
        [version] = await versions_with_points(platform, instance_id, 1)
    finally:
        await agent.stop()
    point_id = version.points[0].point_id
    owner = await create_admin_token(dsn, "acme", name="owner")
    async with operator_channel(addresses["scheduler"], ca_file=ca, token=owner) as channel:
        subscribed = await alerts_pb2_grpc.AlertServiceStub(channel).CreateSubscription(
            alerts_pb2.CreateSubscriptionRequest(
                account_id="acme", channel=alerts_pb2.CHANNEL_WEBHOOK, target="https://hooks.example.com/acme"
            )
        )
    victim_ids = {
        "account_id": "acme",
        "instance_id": instance_id,
        "job_id": job.job_id,
        "point_id": point_id,
        "restore_job_id": str(uuid.uuid4()),
        "token_id": "0" * 24,
        "target_instance_id": instance_id,
        "subscription_id": subscribed.subscription.subscription_id,
    }
    random_ids = {k: (v if k == "account_id" else str(uuid.uuid4())) for k, v in victim_ids.items()}
    random_ids |= {"account_id": "no-such-account", "token_id": "1" * 24}

    attacker = await create_admin_token(dsn, "mallory", name="attacker")
    viewer = await create_admin_token(dsn, "acme", role=Role.VIEWER, name="viewer")
    seen = 0
    for address_name, method, message_type in operator_methods():
        address = addresses[address_name]
        rule = POLICY[method]
        async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca.read_bytes())) as nobody:
            code, details, _ = await call(nobody, method, request_for(message_type, victim_ids))
            assert code is grpc.StatusCode.UNAUTHENTICATED, (method, code, details)
        async with operator_channel(address, ca_file=ca, token=attacker) as channel:
            on_victim = await call(channel, method, request_for(message_type, victim_ids))
            on_random = await call(channel, method, request_for(message_type, random_ids))

        def mask(details: str) -> str:
            for value in (*victim_ids.values(), *random_ids.values()):
                details = details.replace(value, "<id>")
            return details

        # no oracle: the victim's ids get exactly the answer random ids get
        assert (on_victim[0], mask(on_victim[1])) == (on_random[0], mask(on_random[1])), (method, on_victim, on_random)
        assert on_victim[2] == on_random[2], (method, "the victim's data reached the attacker")
        assert instance_id.encode() not in on_victim[2] and point_id.encode() not in on_victim[2], method
        if rule.mutating:
            async with operator_channel(address, ca_file=ca, token=viewer) as channel:
                code, details, _ = await call(channel, method, request_for(message_type, victim_ids))
            assert code is grpc.StatusCode.PERMISSION_DENIED, (method, code, details)
        seen += 1
    assert seen >= 20

    # the victim's data is intact: nothing the attacker sent changed it
    after = await platform.scheduler.GetInstance(scheduler_pb2.GetInstanceRequest(instance_id=instance_id))
    assert after.status != scheduler_pb2.RUNNING_STATUS_CANCELED
    async with operator_channel(addresses["scheduler"], ca_file=ca, token=owner) as channel:
        listed = await alerts_pb2_grpc.AlertServiceStub(channel).ListSubscriptions(
            alerts_pb2.ListSubscriptionsRequest(account_id="acme")
        )
    assert [s.subscription_id for s in listed.subscriptions] == [subscribed.subscription.subscription_id]


async def test_every_listener_refuses_plaintext_and_internal_ones_need_a_service_certificate(
    platform: Platform,
) -> None:
    addresses = platform.stack.addresses
    # five services, each public and internal, and the gateway's agent mTLS listener (ADR 0028)
    assert len(addresses) == 11, addresses
    ca = (platform.tls_dir / CA_CERT_FILE).read_bytes()
    for name, address in sorted(addresses.items()):
        async with grpc.aio.insecure_channel(address) as plaintext:
            code, _, _ = await call(plaintext, LIST_INSTANCES, scheduler_pb2.ListInstancesRequest())
        assert code is grpc.StatusCode.UNAVAILABLE, (name, code)
        if name.endswith("-internal") or name == "gateway-agents":
            # TLS without a client certificate: the handshake itself fails
            async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca)) as no_cert:
                code, _, _ = await call(no_cert, GET_POINT, catalog_pb2.GetPointRequest())
            assert code is grpc.StatusCode.UNAVAILABLE, (name, code)


async def test_agent_rpcs_and_manifests_need_their_own_identities(platform: Platform) -> None:
    ca = (platform.tls_dir / CA_CERT_FILE).read_bytes()
    gateway = platform.stack.addresses["gateway"]
    async with grpc.aio.secure_channel(gateway, grpc.ssl_channel_credentials(ca)) as channel:
        stub = gateway_pb2_grpc.AgentGatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.FindMissingChunks(gateway_pb2.FindMissingChunksRequest(), timeout=30)
        assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as forged:
            await stub.FindMissingChunks(
                gateway_pb2.FindMissingChunksRequest(), metadata=(("authorization", "Bearer i-1.forged"),), timeout=30
            )
        assert forged.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # ManifestService is not served on the agents' port at all
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            async for _ in manifest_pb2_grpc.ManifestServiceStub(channel).ReadPointManifest(
                manifest_pb2.ReadPointManifestRequest(point_id="p"), timeout=30
            ):
                pass
        assert absent.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_restore_targets_of_another_account_or_unknown_are_refused_alike(
    platform: Platform, tmp_path: Path
) -> None:
    dsn = platform.env["STRONGROOM_PG_MIGRATE_DSN"]
    ca = platform.tls_dir / CA_CERT_FILE
    source = tmp_path / "source"
    make_tree(source)
    mine = await platform.scheduler.ActivateBackup(
        scheduler_pb2.ActivateBackupRequest(
            account_id="acme",
            name="mine",
            region="local",
            settings=scheduler_pb2.BackupSettings(roots=[str(source)], daily_start_minute=120),
            has_settings=True,
        )
    )
    agent = await start_agent(platform, mine.enrollment_token, tmp_path / "agent")
    try:
        await backup(platform, mine.instance.instance_id)
        [version] = await versions_with_points(platform, mine.instance.instance_id, 1)
    finally:
        await agent.stop()
    other_token = await create_admin_token(dsn, "globex", lifetime=dt.timedelta(days=1))
    async with operator_channel(platform.stack.addresses["scheduler"], ca_file=ca, token=other_token) as channel:
        theirs = await scheduler_stub(channel).ActivateBackup(
            scheduler_pb2.ActivateBackupRequest(account_id="globex", name="theirs", region="local")
        )
    answers = []
    for target in (theirs.instance.instance_id, str(uuid.uuid4())):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await platform.restore.CreateRestoreJob(
                restore_pb2.CreateRestoreJobRequest(
                    point_id=version.points[0].point_id, target_instance_id=target, target_path="/tmp/x"
                )
            )
        answers.append((refused.value.code(), (refused.value.details() or "").replace(target, "<id>")))
    assert answers[0] == answers[1] == (grpc.StatusCode.NOT_FOUND, "instance <id> not found")
    for instance in (mine.instance.instance_id, theirs.instance.instance_id):
        listed = await platform.restore.ListRestoreJobs(restore_pb2.ListRestoreJobsRequest(instance_id=instance))
        assert list(listed.jobs) == [], "a refused restore leaves no job behind (nothing stays QUEUED)"
    # File search (ADR 0043): another account's admin finds none of acme's files, and acme's instance
    # is not found exactly like an unknown one.
    assert [h.path for h in (await platform.catalog.ListFiles(catalog_pb2.ListFilesRequest(pattern="*.yaml"))).hits]
    async with operator_channel(platform.stack.addresses["catalog"], ca_file=ca, token=other_token) as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        assert list((await catalog.ListFiles(catalog_pb2.ListFilesRequest(pattern="*.yaml"))).hits) == []
        refusals = []
        for target in (mine.instance.instance_id, str(uuid.uuid4())):
            for call in (
                catalog.ListFiles(catalog_pb2.ListFilesRequest(pattern="*.yaml", instance_id=target)),
                catalog.GetFileHistory(
                    catalog_pb2.GetFileHistoryRequest(instance_id=target, path=f"{source}/etc/app/config.yaml")
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                refusals.append((refused.value.code(), (refused.value.details() or "").replace(target, "<id>")))
        assert refusals[:2] == refusals[2:]
        assert {code for code, _ in refusals} == {grpc.StatusCode.NOT_FOUND}


def scheduler_stub(channel: grpc.aio.Channel) -> Any:
    return scheduler_pb2_grpc.SchedulerServiceStub(channel)
