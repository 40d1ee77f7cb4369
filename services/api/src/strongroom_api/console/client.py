"""The services as the console calls them: the same public listeners and channels as the REST edge,
each call carrying the signed-in user's own token (the console holds no privilege, ADR 0054)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import grpc
from strongroom.alerts.v1 import alerts_pb2_grpc
from strongroom.auth.v1 import auth_pb2, auth_pb2_grpc
from strongroom.billing.v1 import billing_pb2_grpc
from strongroom.catalog.v1 import catalog_pb2_grpc
from strongroom.restore.v1 import restore_pb2_grpc
from strongroom.scheduler.v1 import scheduler_pb2_grpc

from strongroom_api.errors import ApiError, from_rpc_error

Resp = TypeVar("Resp")

ROLE_NAMES = {auth_pb2.ROLE_VIEWER: "viewer", auth_pb2.ROLE_OPERATOR: "operator", auth_pb2.ROLE_ADMIN: "admin"}


class ConsoleError(Exception):
    """A service refused or failed a call; ``message`` is for the user, ``status`` the HTTP status."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.message = error.message
        self.code = error.code
        self.status = error.http_status


class Services:
    """Typed stubs on the edge's channels; ``call`` sends one request as the session's user."""

    def __init__(self, channels: Mapping[str, grpc.aio.Channel], *, timeout: float) -> None:
        self.timeout = timeout
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channels["scheduler"])
        self.tokens = auth_pb2_grpc.TokenServiceStub(channels["scheduler"])
        self.alerts = alerts_pb2_grpc.AlertServiceStub(channels["scheduler"])
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(channels["catalog"])
        self.restore = restore_pb2_grpc.RestoreServiceStub(channels["restore"])
        self.billing = billing_pb2_grpc.BillingServiceStub(channels["billing"])

    async def call(self, method: Callable[..., Awaitable[Resp]], request: object, authorization: str) -> Resp:
        """``method(request)`` with the user's ``authorization``; a gRPC status becomes ConsoleError
        with the service's own message (never a traceback)."""
        try:
            return await method(request, metadata=(("authorization", authorization),), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise ConsoleError(from_rpc_error(exc)) from None
