"""The billing process end to end: consumers, PostgreSQL and gRPC, over the in-memory event bus."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import grpc
import pytest
from billing_helpers import GIB, T0, point_event
from strongroom.billing.v1 import billing_pb2, billing_pb2_grpc
from strongroom.events.v1 import events_pb2
from strongroom_billing import bootstrap
from strongroom_billing.settings import Settings
from strongroom_platform.admin import create_admin_token
from strongroom_platform.events import AUDIT_RECORDED, INSTANCE_ACTIVATED, POINT_CREATED, new_meta
from strongroom_platform.settings import PlatformSettings, SettingsError
from strongroom_platform.testing import InMemoryEventBus
from strongroom_testing.faults import TcpProxy
from strongroom_testing.fixtures import PgLogins
from strongroom_testing.pki import LocalPki


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "STRONGROOM_PG_DSN": "postgresql://x",
            "STRONGROOM_KAFKA_BOOTSTRAP": "k:9092",
            "STRONGROOM_KAFKA_IDEMPOTENT": "0",
            "STRONGROOM_OBJECT_STORE": "file:/unused",
            "STRONGROOM_INSECURE_PLAINTEXT": "1",
        }
    )
    assert (settings.platform.kafka_idempotent, settings.grpc_listen) == (False, "127.0.0.1:0")
    with pytest.raises(SettingsError, match="STRONGROOM_PG_DSN"):
        Settings.from_env({"STRONGROOM_KAFKA_BOOTSTRAP": "k:9092", "STRONGROOM_OBJECT_STORE": "file:/unused"})


def _settings(logins: PgLogins, pki: LocalPki, *, via: TcpProxy | None = None) -> Settings:
    dsn, owner = logins.service("billing"), logins.owner
    if via is not None:
        dsn, owner = via.dsn_via(dsn), via.dsn_via(owner)
    platform = PlatformSettings(
        dsn, "unused:9092", True, "file:unused", None, "none", tls=pki.tls("billing"), pg_migrate_dsn=owner
    )
    return Settings(platform=platform)


@pytest.mark.integration
async def test_process_consumes_and_serves_overview(
    pg_logins: PgLogins, local_pki: LocalPki, capsys: pytest.CaptureFixture[str]
) -> None:
    bus = InMemoryEventBus()
    stop = asyncio.Event()
    token = await create_admin_token(pg_logins.owner, "acme")
    task = asyncio.create_task(
        bootstrap.run(_settings(pg_logins, local_pki), stop, consumer_factory=bus.consumer, publisher=bus)
    )
    try:
        printed = ""
        for _ in range(500):
            printed += capsys.readouterr().out
            if "LISTENING billing " in printed:
                break
            await asyncio.sleep(0.02)
        address = printed.split("LISTENING billing ", 1)[1].split()[0]
        activated = events_pb2.InstanceActivated(
            meta=new_meta("scheduler", T0), account_id="acme", instance_id="i1", region="r1"
        )
        await bus.publish(INSTANCE_ACTIVATED, b"i1", activated.SerializeToString())
        await bus.publish(POINT_CREATED, b"i1", point_event("i1", "v1", 150 * GIB).SerializeToString())
        await bus.publish(POINT_CREATED, b"i1", b"\x01garbage")
        async with local_pki.operator_channel(address, token) as channel:
            stub = billing_pb2_grpc.BillingServiceStub(channel)
            expected = billing_pb2.Overview(
                backed_up_instances=1,
                backed_up_capacity_bytes=150 * GIB,
                free_quota_bytes=100 * GIB,
                free_quota_used_bytes=100 * GIB,
                billable_capacity_bytes=50 * GIB,
            )
            for _ in range(500):
                overview = await stub.GetOverview(billing_pb2.GetOverviewRequest(account_id="acme"))
                if overview == expected:
                    break
                await asyncio.sleep(0.02)
            assert overview == expected
            regional = await stub.GetOverview(billing_pb2.GetOverviewRequest(account_id="acme", region="r1"))
            assert (regional.backed_up_instances, regional.free_quota_bytes) == (1, 0)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetOverview(billing_pb2.GetOverviewRequest(region=" r1"))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "surrounding spaces" in (info.value.details() or "")
            # A mutating call: served, and its audit record leaves through billing's outbox (ADR 0027).
            plan = await stub.CreatePlan(
                billing_pb2.CreatePlanRequest(
                    account_id="acme", gib_days="300", starts_on="2026-12-01", ends_on="2026-12-31"
                )
            )
            assert plan.gib_days == "300.0000"
            for _ in range(500):
                if bus.topics.get(AUDIT_RECORDED):
                    break
                await asyncio.sleep(0.02)
            [(_, recorded)] = bus.topics[AUDIT_RECORDED]
            audited = events_pb2.AuditRecorded.FromString(recorded)
            assert audited.method.endswith("/CreatePlan") and list(audited.account_ids) == ["acme"]
        for _ in range(500):
            if bus.topics.get(f"{POINT_CREATED}.dlq"):
                break
            await asyncio.sleep(0.02)
        assert len(bus.topics[f"{POINT_CREATED}.dlq"]) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert (printed + capsys.readouterr().out).count("LISTENING billing") == 1


@pytest.mark.integration
async def test_a_call_while_the_database_is_down_is_unavailable_with_a_clear_message(
    pg_logins: PgLogins, local_pki: LocalPki, capsys: pytest.CaptureFixture[str]
) -> None:
    target = urlsplit(pg_logins.owner)
    token = await create_admin_token(pg_logins.owner, "acme")
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        stop = asyncio.Event()
        settings = _settings(pg_logins, local_pki, via=proxy)
        bus = InMemoryEventBus()
        task = asyncio.create_task(bootstrap.run(settings, stop, consumer_factory=bus.consumer, publisher=bus))
        try:
            address = await _listening("billing", capsys)
            async with local_pki.operator_channel(address, token) as channel:
                stub = billing_pb2_grpc.BillingServiceStub(channel)
                await stub.GetOverview(billing_pb2.GetOverviewRequest(account_id="acme"))  # the database is up
                await proxy.cut()
                for _ in range(2):  # the pool's connection reset, then a new connection refused
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.GetOverview(billing_pb2.GetOverviewRequest(account_id="acme"))
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert info.value.details() == "the metadata database is unavailable; retry"
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def _listening(service: str, capsys: pytest.CaptureFixture[str]) -> str:
    printed = ""
    for _ in range(500):
        printed += capsys.readouterr().out
        if f"LISTENING {service} " in printed:
            return printed.split(f"LISTENING {service} ", 1)[1].split()[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{service} never printed LISTENING")
