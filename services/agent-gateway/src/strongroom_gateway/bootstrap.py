"""Composition root of the agent gateway: pool, migrations, outbox relay, consumer, pack writer, gRPC."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack

import grpc
from strongroom_platform import lifecycle, wiring
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.runtime import start_grpc_server
from strongroom_platform.settings import SettingsError

from strongroom_gateway import consumers, manifest_api
from strongroom_gateway.grpc_api import GatewayServicer, register
from strongroom_gateway.ingest import PackWriter
from strongroom_gateway.keys import AccountKeys, MasterKeyring
from strongroom_gateway.migrations import MIGRATIONS, SCHEMA
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.sessions import SessionRegistry
from strongroom_gateway.settings import Settings

log = logging.getLogger(__name__)


def _both(
    first: Callable[[grpc.aio.Server], None], second: Callable[[grpc.aio.Server], None]
) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        first(server)
        second(server)

    return add


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    object_store: ObjectStore | None = None,
    publisher: EventPublisher | None = None,
    consumer_factory: ConsumerFactory | None = None,
    store: GatewayStore | None = None,
    keyring: MasterKeyring | None = None,
    schema: str = SCHEMA,
) -> None:
    """Serve until ``stop`` is set, then shut down in reverse order.

    Prints ``LISTENING gateway <host>:<port>`` on stdout once the gRPC API
    serves. Dependencies left as None are built from ``settings``; with an
    injected ``store`` no database is opened and no outbox relay runs (the
    fake store keeps its outbox in memory). The master keyring comes from
    ``settings.master_key`` unless injected; without either the gateway refuses
    to start (it never stores backup data unencrypted).
    """
    clock = clock or SystemClock()
    if keyring is None:
        if settings.master_key is None:
            raise SettingsError("no master key configured (STRONGROOM_MASTER_KEY or STRONGROOM_MASTER_KEY_FILE)")
        # Before any connection: a missing or unreadable key fails the start at once.
        keyring = await asyncio.to_thread(MasterKeyring.load, settings.master_key)
    log.info("encrypting with master key id %s", keyring.current.key_id)
    async with AsyncExitStack() as stack:
        if store is None:
            pool = await lifecycle.open_pool(stack, settings.platform.pg_dsn, schema, MIGRATIONS)
            store = PgGatewayStore(pool)
            if publisher is None:
                publisher = await stack.enter_async_context(wiring.publisher(settings.platform))
            await lifecycle.start_relay(stack, pool, schema, publisher, clock, replay=settings.platform.outbox_replay)
        if object_store is None:
            object_store = await stack.enter_async_context(wiring.object_store(settings.platform, clock))
        if consumer_factory is None:
            consumer_factory = wiring.consumer_factory(settings.platform)

        sessions = SessionRegistry()
        keys = AccountKeys(store, keyring, clock)
        writer = PackWriter(
            store,
            object_store,
            clock,
            keys=keys,
            target_bytes=settings.pack_target_bytes,
            max_concurrent_writes=settings.max_concurrent_writes,
        )
        stack.push_async_callback(writer.close)

        handlers = consumers.record_handlers(store, clock, sessions)
        await lifecycle.start_consumer(stack, consumer_factory, consumers.GROUP_ID, handlers)

        servicer = GatewayServicer(
            store=store,
            object_store=object_store,
            clock=clock,
            sessions=sessions,
            writer=writer,
            job_poll_interval=settings.job_poll_interval,
            unthrottled=settings.unthrottled,
        )
        # The internal ManifestService (decrypted manifests for the catalog) gets its own listener
        # when one is configured, so the agents' listener never serves it (ADR 0016).
        internal = manifest_api.register(
            manifest_api.ManifestServicer(store=store, object_store=object_store, keys=keys)
        )
        if settings.internal_listen:
            internal_server, internal_port = await start_grpc_server(settings.internal_listen, internal)
            stack.push_async_callback(internal_server.stop, 5)
            log.info("gateway internal API on %s:%d", settings.internal_listen.rsplit(":", 1)[0], internal_port)
            services = register(servicer)
        else:
            services = _both(register(servicer), internal)
        await lifecycle.serve(stack, "gateway", settings.grpc_listen, services)
        await stop.wait()
        log.info("gateway stopping")
