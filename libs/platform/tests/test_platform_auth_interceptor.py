"""The auth interceptor on a real grpc.aio server: who gets through, and what they are told."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from strongroom.billing.v1 import billing_pb2, billing_pb2_grpc
from strongroom.gateway.v1 import manifest_pb2, manifest_pb2_grpc
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_platform.auth import (
    AgentCall,
    Authenticator,
    AuthInterceptor,
    InMemoryTokenStore,
    NotFound,
    Principal,
    Role,
    TokenVerifier,
    Unauthenticated,
    agent,
    authorize,
    choose_account,
    current_call,
    new_token,
)
from strongroom_platform.clock import utc
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.testing import FakeClock, InMemoryAuditSink

INSTANCES = {"i-acme": "acme", "i-globex": "globex"}


class Billing(billing_pb2_grpc.BillingServiceServicer):
    async def GetOverview(self, request: Any, context: Any) -> billing_pb2.Overview:  # noqa: N802
        account = choose_account(request.account_id)
        return billing_pb2.Overview(backed_up_instances=len(account))


class Scheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    async def PauseBackup(self, request: Any, context: Any) -> scheduler_pb2.Instance:  # noqa: N802
        def missing() -> Exception:
            return NotFound(f"instance {request.instance_id} not found")

        account = INSTANCES.get(request.instance_id)
        if account is None:
            raise missing()
        authorize(account, missing)
        return scheduler_pb2.Instance(instance_id=request.instance_id, account_id=account or "")


class Manifests(manifest_pb2_grpc.ManifestServiceServicer):
    async def ReadPointManifest(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        yield manifest_pb2.ReadPointManifestResponse()


@dataclass
class Stack:
    channel: grpc.aio.Channel
    tokens: dict[str, str]
    audit: InMemoryAuditSink


async def agent_authenticator(call: AgentCall) -> Principal:
    if call.bearer != "Bearer i-acme.secret":
        raise Unauthenticated("unknown agent credential")
    return agent("acme", "i-acme")


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    clock = FakeClock(utc(2026, 12, 1))
    store = InMemoryTokenStore()
    tokens = {}
    for name, grants in {
        "viewer": {"acme": Role.VIEWER},
        "operator": {"acme": Role.OPERATOR},
        "globex": {"globex": Role.ADMIN},
    }.items():
        token, record = new_token(
            name=name, grants=grants, created_by="test", now=clock.now(), lifetime=dt.timedelta(days=1)
        )
        await store.insert(record)
        tokens[name] = token
    authenticator = Authenticator(tokens=TokenVerifier(store, clock), agents=agent_authenticator)

    def register(server: grpc.aio.Server) -> None:
        billing_pb2_grpc.add_BillingServiceServicer_to_server(Billing(), server)
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(Scheduler(), server)
        manifest_pb2_grpc.add_ManifestServiceServicer_to_server(Manifests(), server)

    audit = InMemoryAuditSink(clock, producer="scheduler")
    interceptor = AuthInterceptor(authenticator, audit_sink=audit)
    server, port = await start_grpc_server("127.0.0.1:0", register, interceptors=[interceptor])
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Stack(channel, tokens, audit)
    finally:
        await channel.close()
        await server.stop(None)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def test_no_credential_is_unauthenticated(stack: Stack) -> None:
    billing = billing_pb2_grpc.BillingServiceStub(stack.channel)
    code, details = await code_of(billing.GetOverview(billing_pb2.GetOverviewRequest(account_id="acme")))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "needs a credential" in details


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer nonsense", "Bearer srt_" + "0" * 24 + "_" + "A" * 43])
async def test_bad_credentials_are_unauthenticated(stack: Stack, value: str) -> None:
    billing = billing_pb2_grpc.BillingServiceStub(stack.channel)
    call = billing.GetOverview(billing_pb2.GetOverviewRequest(), metadata=(("authorization", value),))
    code, _ = await code_of(call)
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_the_account_comes_from_the_credential(stack: Stack) -> None:
    billing = billing_pb2_grpc.BillingServiceStub(stack.channel)
    overview = await billing.GetOverview(billing_pb2.GetOverviewRequest(), metadata=bearer(stack.tokens["viewer"]))
    assert overview.backed_up_instances == len("acme")
    code, details = await code_of(
        billing.GetOverview(
            billing_pb2.GetOverviewRequest(account_id="globex"), metadata=bearer(stack.tokens["viewer"])
        )
    )
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, "account globex not found")


async def test_a_viewer_cannot_mutate(stack: Stack) -> None:
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(stack.channel)
    code, details = await code_of(
        scheduler.PauseBackup(scheduler_pb2.InstanceRef(instance_id="i-acme"), metadata=bearer(stack.tokens["viewer"]))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "cannot pause backups" in details


async def test_a_foreign_instance_reads_like_a_random_id(stack: Stack) -> None:
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(stack.channel)
    answers = []
    for instance_id in ("i-globex", "i-nonexistent"):
        code, details = await code_of(
            scheduler.PauseBackup(
                scheduler_pb2.InstanceRef(instance_id=instance_id), metadata=bearer(stack.tokens["operator"])
            )
        )
        answers.append((code, details.replace(instance_id, "<id>")))
    assert answers[0] == answers[1] == (grpc.StatusCode.NOT_FOUND, "instance <id> not found")
    instance = await scheduler.PauseBackup(
        scheduler_pb2.InstanceRef(instance_id="i-acme"), metadata=bearer(stack.tokens["operator"])
    )
    assert instance.account_id == "acme"


async def test_operators_and_agents_cannot_read_manifests(stack: Stack) -> None:
    manifests = manifest_pb2_grpc.ManifestServiceStub(stack.channel)
    for metadata in (bearer(stack.tokens["globex"]), (("authorization", "Bearer i-acme.secret"),), ()):
        call = manifests.ReadPointManifest(manifest_pb2.ReadPointManifestRequest(), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "only Strongroom services may read manifests" in (info.value.details() or "")


async def test_a_method_without_a_rule_is_refused() -> None:
    async def behavior(request: bytes, context: Any) -> bytes:
        current_call()
        return request

    handler = grpc.method_handlers_generic_handler(
        "strongroom.test.v1.Unlisted", {"Echo": grpc.unary_unary_rpc_method_handler(behavior)}
    )
    server, port = await start_grpc_server(
        "127.0.0.1:0",
        lambda s: s.add_generic_rpc_handlers((handler,)),
        interceptors=[AuthInterceptor(Authenticator(tokens=None))],
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/strongroom.test.v1.Unlisted/Echo")
            code, details = await code_of(echo(b"x"))
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert "is not open to any caller" in details
    finally:
        await server.stop(None)


# --- the audit trail (ADR 0027) ------------------------------------------------------------


async def test_a_mutating_call_is_recorded_with_who_which_account_what_and_result(stack: Stack) -> None:
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(stack.channel)
    await scheduler.PauseBackup(
        scheduler_pb2.InstanceRef(instance_id="i-acme"), metadata=bearer(stack.tokens["operator"])
    )
    [event] = stack.audit.events
    assert event.meta.event_id and event.meta.producer == "scheduler"
    assert event.meta.occurred_at.ToDatetime(tzinfo=dt.UTC) == utc(2026, 12, 1)
    assert event.subject.startswith("token:") and event.principal_kind == "operator"
    assert list(event.account_ids) == ["acme"]
    assert event.method == "/strongroom.scheduler.v1.SchedulerService/PauseBackup"
    assert event.verb == "pause backups"
    assert dict(event.resources) == {"instance_id": "i-acme"}
    assert (event.result_code, event.result_message) == ("OK", "")


async def test_refusals_are_recorded_with_the_answer_the_caller_got(stack: Stack) -> None:
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(stack.channel)
    viewer, operator = bearer(stack.tokens["viewer"]), bearer(stack.tokens["operator"])
    viewer_code, viewer_details = await code_of(
        scheduler.PauseBackup(scheduler_pb2.InstanceRef(instance_id="i-acme"), metadata=viewer)
    )
    await code_of(scheduler.PauseBackup(scheduler_pb2.InstanceRef(instance_id="i-globex"), metadata=operator))
    denied, foreign = stack.audit.events
    assert (denied.result_code, denied.result_message) == (viewer_code.name, viewer_details)
    assert denied.result_code == "PERMISSION_DENIED" and list(denied.account_ids) == ["acme"]
    # the victim account's admins see the attempt; the caller was told "not found", like a random id
    assert (foreign.result_code, foreign.result_message) == ("NOT_FOUND", "instance i-globex not found")
    assert list(foreign.account_ids) == ["globex"]
    assert dict(foreign.resources) == {"instance_id": "i-globex"}


async def test_anonymous_calls_and_reads_are_not_recorded(stack: Stack) -> None:
    scheduler = scheduler_pb2_grpc.SchedulerServiceStub(stack.channel)
    billing = billing_pb2_grpc.BillingServiceStub(stack.channel)
    code, _ = await code_of(scheduler.PauseBackup(scheduler_pb2.InstanceRef(instance_id="i-acme")))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    await code_of(
        scheduler.PauseBackup(
            scheduler_pb2.InstanceRef(instance_id="i-acme"), metadata=(("authorization", "Bearer nonsense"),)
        )
    )
    await billing.GetOverview(billing_pb2.GetOverviewRequest(), metadata=bearer(stack.tokens["operator"]))
    assert stack.audit.events == []


async def test_a_server_without_an_audit_sink_refuses_to_mutate() -> None:
    clock = FakeClock(utc(2026, 12, 1))
    store = InMemoryTokenStore()
    token, record = new_token(
        name="op", grants={"acme": Role.ADMIN}, created_by="test", now=clock.now(), lifetime=dt.timedelta(days=1)
    )
    await store.insert(record)
    interceptor = AuthInterceptor(Authenticator(tokens=TokenVerifier(store, clock)))

    def register(server: grpc.aio.Server) -> None:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(Scheduler(), server)

    server, port = await start_grpc_server("127.0.0.1:0", register, interceptors=[interceptor])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            code, details = await code_of(
                scheduler.PauseBackup(scheduler_pb2.InstanceRef(instance_id="i-acme"), metadata=bearer(token))
            )
    finally:
        await server.stop(None)
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "keeps no audit trail" in details
