"""gRPC channels to the operator services' public listeners, and the generic unary call.

The channels carry no client certificate and no credential: every call sends the REST caller's
own ``authorization`` metadata, so the edge can do nothing its caller could not (ADR 0052).
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf.message import Message
from strongroom_telemetry.grpc_tracing import client_interceptors

from strongroom_api.rules import Route
from strongroom_api.transcode import message_class


def open_channel(address: str, *, ca_pem: bytes | None, insecure_plaintext: bool) -> grpc.aio.Channel:
    """A TLS channel trusting ``ca_pem`` (None: the system roots), or plaintext when allowed."""
    if insecure_plaintext:
        return grpc.aio.insecure_channel(address, interceptors=client_interceptors())
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(address, credentials, interceptors=client_interceptors())


class GrpcInvoker:
    """Calls a route's RPC on the channel of its backend, within ``timeout`` seconds."""

    def __init__(self, channels: Mapping[str, grpc.aio.Channel], *, timeout: float) -> None:
        self._channels = channels
        self._timeout = timeout

    async def __call__(self, route: Route, request: Message, metadata: tuple[tuple[str, str], ...]) -> Message:
        call = self._channels[route.backend].unary_unary(
            route.grpc_path,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=message_class(route.method.output_type).FromString,
        )
        response: Message = await call(request, metadata=metadata, timeout=self._timeout)
        return response
