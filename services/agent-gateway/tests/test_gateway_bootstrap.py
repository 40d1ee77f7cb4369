"""The composition root serves, announces its address, consumes events and stops cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import socket

import grpc
import pytest
from gateway_helpers import AGENT_VERSION, meta
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom.events.v1 import events_pb2
from strongroom.gateway.v1 import manifest_pb2, manifest_pb2_grpc
from strongroom_gateway.bootstrap import run
from strongroom_gateway.keys import MasterKeyConfig
from strongroom_gateway.settings import Settings
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform import events
from strongroom_platform.events import to_timestamp
from strongroom_platform.settings import PlatformSettings, SettingsError
from strongroom_platform.testing import FakeClock, InMemoryEventBus, InMemoryObjectStore
from strongroom_testing.pki import LocalPki


async def test_run_announces_and_serves_with_injected_fakes(
    local_pki: LocalPki, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    bus = InMemoryEventBus()
    store = InMemoryGatewayStore()
    settings = Settings(
        platform=PlatformSettings(
            pg_dsn="unused",
            kafka_bootstrap="unused",
            kafka_idempotent=True,
            object_store="file:unused",
            s3=None,
            otel="none",
            tls=dataclasses.replace(local_pki.tls("gateway"), client_ca_file=None),
        ),
        master_key=MasterKeyConfig(key=bytes(range(32))),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run(
            settings,
            stop,
            clock=clock,
            object_store=InMemoryObjectStore(clock),
            consumer_factory=bus.consumer,
            store=store,
        )
    )
    try:
        address = ""
        for _ in range(500):
            out = capsys.readouterr().out
            if out:
                [line] = out.splitlines()
                assert line.startswith("LISTENING gateway 127.0.0.1:")
                address = line.split()[2]
                break
            await asyncio.sleep(0.01)
        assert address
        token = "one-time-token"
        activated = events_pb2.InstanceActivated(
            meta=meta(),
            account_id="acct",
            instance_id="i-1",
            enrollment_token_sha256=hashlib.sha256(token.encode()).hexdigest(),
            token_expires_at=to_timestamp(clock.now() + dt.timedelta(hours=1)),
        )
        await bus.publish(events.INSTANCE_ACTIVATED, b"i-1", activated.SerializeToString())
        agent_tls = grpc.ssl_channel_credentials(root_certificates=local_pki.ca_file.read_bytes())
        async with grpc.aio.secure_channel(address, agent_tls) as channel:
            stub = gateway_pb2_grpc.AgentGatewayServiceStub(channel)
            for _ in range(500):
                if "i-1" in store.state.instances:
                    break
                await asyncio.sleep(0.01)
            response = await stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token=token, agent_version=AGENT_VERSION))
        assert response.instance_id == "i-1"
        assert bus.committed("agent-gateway", events.INSTANCE_ACTIVATED) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _serving(capsys: pytest.CaptureFixture[str]) -> str:
    """The agents' listener (the internal one announces itself first, as gateway-internal)."""
    printed = ""
    for _ in range(500):
        printed += capsys.readouterr().out
        if "LISTENING gateway " in printed:
            return printed.split("LISTENING gateway ", 1)[1].split()[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the gateway did not announce itself")


async def test_internal_api_only_on_its_own_listener_for_the_catalog_only(
    local_pki: LocalPki, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    bus = InMemoryEventBus()
    internal = f"127.0.0.1:{_free_port()}"
    tls = local_pki.tls("gateway")
    settings = Settings(
        platform=PlatformSettings("unused", "unused", True, "file:unused", None, "none", tls=tls),
        master_key=MasterKeyConfig(key=bytes(range(32))),
        internal_listen=internal,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run(
            settings,
            stop,
            clock=clock,
            object_store=InMemoryObjectStore(clock),
            consumer_factory=bus.consumer,
            store=InMemoryGatewayStore(),
        )
    )
    request = manifest_pb2.ReadPointManifestRequest(point_id="p-unknown")
    try:
        agents = await _serving(capsys)
        agent_tls = grpc.ssl_channel_credentials(root_certificates=local_pki.ca_file.read_bytes())
        async with grpc.aio.secure_channel(agents, agent_tls) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [r async for r in manifest_pb2_grpc.ManifestServiceStub(channel).ReadPointManifest(request)]
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # not on the agents' listener
        async with local_pki.service_channel(internal, "catalog") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [r async for r in manifest_pb2_grpc.ManifestServiceStub(channel).ReadPointManifest(request)]
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        async with local_pki.service_channel(internal, "restore") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [r async for r in manifest_pb2_grpc.ManifestServiceStub(channel).ReadPointManifest(request)]
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # another service's certificate
        async with grpc.aio.secure_channel(internal, agent_tls) as channel:  # no client certificate
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [r async for r in manifest_pb2_grpc.ManifestServiceStub(channel).ReadPointManifest(request)]
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_run_refuses_to_start_without_a_master_key() -> None:
    settings = Settings(platform=PlatformSettings("unused", "unused", True, "file:unused", None, "none"))
    with pytest.raises(SettingsError, match="no master key configured"):
        await run(settings, asyncio.Event(), store=InMemoryGatewayStore())
