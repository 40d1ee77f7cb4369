"""Every server from ``runtime.start_grpc_server`` answers grpc.health.v1 and server reflection.

A real grpc.aio server on 127.0.0.1, behind the real auth interceptor: the health service and
reflection answer a caller without any credential, the service's own methods do not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from strongroom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from strongroom_platform.auth import Authenticator, AuthInterceptor, TokenVerifier
from strongroom_platform.auth.tokens import InMemoryTokenStore
from strongroom_platform.clock import SystemClock
from strongroom_platform.health import health_of, stop_server
from strongroom_platform.lifecycle import serve_health
from strongroom_platform.runtime import start_grpc_server

SERVICE = "strongroom.scheduler.v1.SchedulerService"


class _Scheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Never reached without a credential."""


@pytest.fixture
async def server() -> AsyncIterator[tuple[grpc.aio.Server, str]]:
    auth = AuthInterceptor(Authenticator(tokens=TokenVerifier(InMemoryTokenStore(), SystemClock())))

    def register(server: grpc.aio.Server) -> None:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(_Scheduler(), server)

    server, port = await start_grpc_server("127.0.0.1:0", register, interceptors=[auth])
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_health_answers_serving_for_the_server_and_each_service_without_a_credential(
    server: tuple[grpc.aio.Server, str],
) -> None:
    _, address = server
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="strongroom.nothing.v1.Nothing"))
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
        # The service itself still wants a credential: health is the only way in.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await scheduler_pb2_grpc.SchedulerServiceStub(channel).GetInstance(
                scheduler_pb2.GetInstanceRequest(instance_id="i-1")
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_reflection_lists_the_services_and_describes_them(server: tuple[grpc.aio.Server, str]) -> None:
    _, address = server
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        answers = [answer async for answer in stub.ServerReflectionInfo(iter(requests))]
    listed = {s.name for s in answers[0].list_services_response.service}
    assert listed == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert answers[1].file_descriptor_response.file_descriptor_proto  # the .proto, served by the server


async def test_a_watcher_sees_not_serving_when_the_server_stops(server: tuple[grpc.aio.Server, str]) -> None:
    grpc_server, address = server
    assert health_of(grpc_server) is not None
    async with grpc.aio.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(stop_server(grpc_server, 5))
        second = await asyncio.wait_for(watch.read(), 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        await stopping


async def test_the_plaintext_health_listener_mirrors_the_server_and_serves_nothing_else(
    server: tuple[grpc.aio.Server, str], capsys: pytest.CaptureFixture[str]
) -> None:
    main, _ = server
    async with contextlib.AsyncExitStack() as stack:
        await serve_health(stack, "scheduler", "127.0.0.1:0", main)
        announced = capsys.readouterr().out.split()
        assert announced[:2] == ["LISTENING", "scheduler-health"]
        async with grpc.aio.insecure_channel(announced[2]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
            # Only health: the service itself is not on this listener.
            with pytest.raises(grpc.aio.AioRpcError) as absent:
                await scheduler_pb2_grpc.SchedulerServiceStub(channel).GetInstance(
                    scheduler_pb2.GetInstanceRequest(instance_id="i-1")
                )
            assert absent.value.code() is grpc.StatusCode.UNIMPLEMENTED
            await stop_server(main, None)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
