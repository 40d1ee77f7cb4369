"""``grpc_methods.register_service``: a per-method table of response serializers, on a real grpc.aio server.

The health service's generated registration stands in for any service: ``Check`` is given
``as_sent`` (its servicer answers with bytes it serialized itself, or with a message), ``Watch``
keeps the message's own serializer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from strongroom_platform import grpc_methods

SERVING = health_pb2.HealthCheckResponse.SERVING
# Unknown to HealthCheckResponse: a message that went through its own serializer would not carry them.
_EXTRA = b"\xfa\x3e\x05extra"


class _Health(health_pb2_grpc.HealthServicer):
    """``Check`` answers with serialized bytes (plus a field only bytes sent unchanged keep), or a
    message for the service ``"message"``; ``Watch`` with messages."""

    async def Check(self, request: health_pb2.HealthCheckRequest, context: object) -> object:  # type: ignore[override]
        if request.service == "message":
            return health_pb2.HealthCheckResponse(status=SERVING)
        return health_pb2.HealthCheckResponse(status=SERVING).SerializeToString() + _EXTRA

    async def Watch(  # type: ignore[override]
        self, request: health_pb2.HealthCheckRequest, context: object
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        yield health_pb2.HealthCheckResponse(status=SERVING)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    register = grpc_methods.register_service(
        health_pb2_grpc.add_HealthServicer_to_server, _Health(), {"Check": grpc_methods.as_sent}
    )
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(None)


def _raw_check(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """``Check`` with the response bytes as they arrive (no deserializer)."""
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=None,
    )


async def test_a_method_with_its_own_serializer_sends_the_servicers_bytes_unchanged(channel: grpc.aio.Channel) -> None:
    sent = await _raw_check(channel)(health_pb2.HealthCheckRequest(service="bytes"))
    assert sent == health_pb2.HealthCheckResponse(status=SERVING).SerializeToString() + _EXTRA
    # The generated client reads them as the method's response message.
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="bytes"))
    assert answer.status == SERVING


async def test_the_pass_through_method_still_accepts_a_message(channel: grpc.aio.Channel) -> None:
    sent = await _raw_check(channel)(health_pb2.HealthCheckRequest(service="message"))
    assert sent == health_pb2.HealthCheckResponse(status=SERVING).SerializeToString()


async def test_other_methods_keep_the_messages_own_serializer(channel: grpc.aio.Channel) -> None:
    answers = [a async for a in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())]
    assert [a.status for a in answers] == [SERVING]


async def test_a_serializer_for_a_method_the_service_lacks_is_refused() -> None:
    register = grpc_methods.register_service(
        health_pb2_grpc.add_HealthServicer_to_server, _Health(), {"Chek": grpc_methods.as_sent}
    )
    with pytest.raises(ValueError, match="grpc.health.v1.Health has no method Chek"):
        register(grpc.aio.server())


def test_as_sent_passes_bytes_and_serializes_messages() -> None:
    assert grpc_methods.as_sent(b"\x08\x01xyz") == b"\x08\x01xyz"
    assert grpc_methods.as_sent(health_pb2.HealthCheckResponse(status=SERVING)) == b"\x08\x01"
