"""The standard services every listener carries: ``grpc.health.v1.Health`` and server reflection.

:func:`add_standard_services` registers the service's own handlers through a recorder that
learns their names, then the health service (every name, and ``""`` for the whole server) and
reflection over those names, so ``grpcurl`` lists and calls them without the .proto files.
``runtime.start_grpc_server`` calls it; the auth policy admits both services without a credential.

Health answers follow the server's life: ``NOT_SERVING`` until :meth:`ServerHealth.serving`
(called once the server has started, and the composition root starts its server last, when
everything else is ready), ``SERVING`` then, and ``NOT_SERVING`` again from :func:`stop_server`
on, before the server stops taking calls -- a ``Watch`` stream sees each change.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_reflection.v1alpha import reflection

__all__ = ["ServerHealth", "add_standard_services", "health_of", "serve_health_only", "stop_server"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

_HEALTH: weakref.WeakKeyDictionary[grpc.aio.Server, ServerHealth] = weakref.WeakKeyDictionary()


class ServerHealth:
    """The health servicer of one server and the service names it reports on."""

    def __init__(self, services: Sequence[str]) -> None:
        self.services = tuple(services)
        self.servicer = HealthServicer()

    async def not_serving(self) -> None:
        for name in ("", *self.services):
            await self.servicer.set(name, NOT_SERVING)

    async def serving(self) -> None:
        """Report ``SERVING`` for the server and each of its services."""
        for name in ("", *self.services):
            await self.servicer.set(name, SERVING)

    async def stopping(self) -> None:
        """Report ``NOT_SERVING`` for good (later ``serving`` calls change nothing)."""
        await self.servicer.enter_graceful_shutdown()


class _NameRecorder:
    """Stands in for the server while ``register`` runs: forwards everything, notes service names."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self.names: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        for handler in handlers:
            name = getattr(handler, "service_name", None)
            if callable(name) and name() not in self.names:
                self.names.append(name())
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        if service_name not in self.names:
            self.names.append(service_name)
        # grpcio's own method; the type stubs predate it.
        cast(Any, self._server).add_registered_method_handlers(service_name, method_handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


async def add_standard_services(server: grpc.aio.Server, register: Callable[[grpc.aio.Server], None]) -> ServerHealth:
    """``register(server)``, then health and reflection over the names it registered (see the module docstring)."""
    recorder = _NameRecorder(server)
    register(cast(grpc.aio.Server, recorder))
    health = ServerHealth(recorder.names)
    await health.not_serving()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection([*recorder.names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    _HEALTH[server] = health
    return health


def health_of(server: grpc.aio.Server) -> ServerHealth | None:
    """The health of a server built by ``runtime.start_grpc_server``."""
    return _HEALTH.get(server)


async def serve_health_only(listen: str, health: ServerHealth) -> tuple[grpc.aio.Server, int]:
    """Start a plaintext server on ``listen`` serving nothing but ``health``'s answers; return it and its port.

    Health answers carry no data beyond SERVING / NOT_SERVING, so this listener needs no TLS and no
    authentication (the policy already lets anyone call ``grpc.health.v1.Health``).
    """
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    return server, port


async def stop_server(server: grpc.aio.Server, grace: float | None) -> None:
    """Report ``NOT_SERVING``, then stop ``server`` letting calls in flight finish within ``grace`` seconds."""
    health = _HEALTH.get(server)
    if health is not None:
        await health.stopping()
    await server.stop(grace)
