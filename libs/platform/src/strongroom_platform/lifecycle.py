"""The parts of a service's composition root, each registering its own cleanup.

Every ``bootstrap.run`` opens one ``contextlib.AsyncExitStack`` and starts its parts with these
helpers in dependency order (pool, relay, consumer, background tasks, gRPC server); leaving the
stack stops them in reverse order: the server stops taking calls first, the pool closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, cast

import asyncpg
import grpc

from strongroom_platform import outbox
from strongroom_platform.clock import Clock
from strongroom_platform.db import close_pool, create_pool
from strongroom_platform.eventbus import ConsumerFactory, EventConsumer, EventPublisher, Handler
from strongroom_platform.health import health_of, serve_health_only, stop_server
from strongroom_platform.pg_roles import SchemaSpec, check_service_login, migrate_schemas
from strongroom_platform.runtime import serve_grpc
from strongroom_platform.schemas import with_platform
from strongroom_platform.settings import PlatformSettings
from strongroom_platform.tls import backend_ssl_context
from strongroom_platform.trusted_time import check_offset_allowed, clock_offset

__all__ = ["cancel", "open_pool", "serve", "start_consumer", "start_relay", "start_task"]


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has finished."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def open_pool(
    stack: AsyncExitStack, settings: PlatformSettings, spec: SchemaSpec, *, max_size: int = 10
) -> asyncpg.Pool:
    """A pool on ``spec.schema`` as the service's own role; closed when the stack unwinds (ADR 0031).

    With ``settings.pg_migrate_dsn`` (the migration owner) the platform's schemas and ``spec`` are
    migrated first, with their roles and grants. The pool logs in with ``settings.pg_dsn`` and is
    refused (:class:`~strongroom_platform.pg_roles.LoginRefused`) when that login is a superuser or
    owns the schema, when the schema is behind this build, or when the trusted clock is offset
    outside standalone mode.
    """
    tls = backend_ssl_context(settings.pg_tls)
    if settings.pg_migrate_dsn is not None:
        await migrate_schemas(settings.pg_migrate_dsn, with_platform(spec), tls=tls)
    pool = await create_pool(settings.pg_dsn, spec.schema, max_size=max_size, tls=tls)
    stack.push_async_callback(close_pool, pool)
    async with pool.acquire() as proxy:
        conn = cast(asyncpg.Connection, proxy)  # the pool hands out a proxy that forwards every call
        await check_service_login(conn, spec)
        check_offset_allowed(await clock_offset(conn), settings.object_store)
    return pool


async def start_relay(
    stack: AsyncExitStack, pool: asyncpg.Pool, schema: str, publisher: EventPublisher, clock: Clock, *, replay: bool
) -> None:
    """The outbox relay of ``schema`` (see ``outbox.start_relay``); cancelled when the stack unwinds."""
    stack.push_async_callback(cancel, await outbox.start_relay(pool, schema, publisher, clock, replay=replay))


async def start_consumer(
    stack: AsyncExitStack, factory: ConsumerFactory, group_id: str, handlers: Mapping[str, Handler]
) -> EventConsumer:
    """A started consumer of ``group_id``; stopped (offsets committed) when the stack unwinds."""
    consumer = factory(group_id, handlers)
    await consumer.start()
    stack.push_async_callback(consumer.stop)
    return consumer


def start_task(stack: AsyncExitStack, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """``work`` as a background task (a periodic loop); cancelled when the stack unwinds."""
    task = asyncio.create_task(work, name=name)
    stack.push_async_callback(cancel, task)
    return task


async def serve(
    stack: AsyncExitStack,
    service: str,
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    *,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> grpc.aio.Server:
    """The service's gRPC server, announced (``runtime.serve_grpc``); when the stack unwinds its
    health turns NOT_SERVING and it stops with 5 s grace."""
    server = await serve_grpc(service, listen, register, credentials=credentials, interceptors=interceptors)
    stack.push_async_callback(stop_server, server, 5)
    return server


async def serve_health(stack: AsyncExitStack, service: str, listen: str, of: grpc.aio.Server) -> grpc.aio.Server:
    """A plaintext listener on ``listen`` carrying only ``grpc.health.v1.Health`` of the server ``of``.

    For the kubelet's ``grpc:`` probes, which cannot speak TLS (ADR 0044): the answers are those of
    ``of`` (SERVING once it serves, NOT_SERVING once it stops). Announced as
    ``LISTENING <service>-health <addr>``; stopped when the stack unwinds.
    """
    health = health_of(of)
    if health is None:
        raise ValueError("serve_health needs a server started by runtime.start_grpc_server")
    server, port = await serve_health_only(listen, health)
    stack.push_async_callback(server.stop, 1)
    print(f"LISTENING {service}-health {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    return server
