"""Composition root of the agent gateway: pool, migrations, outbox relay, consumer, pack writer, gRPC."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from strongroom_platform import lifecycle, serving, wiring
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.settings import SettingsError
from strongroom_platform.tls import backend_ssl_context

from strongroom_gateway import agents, consumers, manifest_api
from strongroom_gateway.grpc_api import GatewayServicer, register
from strongroom_gateway.ingest import PackWriter
from strongroom_gateway.keys import AccountKeys, MasterKeyring
from strongroom_gateway.migrations import MIGRATIONS, SCHEMA
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.sessions import SessionRegistry
from strongroom_gateway.settings import Settings

log = logging.getLogger(__name__)


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
        platform = settings.platform
        if store is None:
            pool = await lifecycle.open_pool(
                stack, platform.pg_dsn, schema, MIGRATIONS, tls=backend_ssl_context(platform.pg_tls)
            )
            store = PgGatewayStore(pool)
            if publisher is None:
                publisher = await stack.enter_async_context(wiring.publisher(platform))
            await lifecycle.start_relay(stack, pool, schema, publisher, clock, replay=platform.outbox_replay)
        if object_store is None:
            object_store = await stack.enter_async_context(wiring.object_store(platform, clock))
        if consumer_factory is None:
            consumer_factory = wiring.consumer_factory(platform)

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
        # The internal ManifestService (decrypted manifests, for the catalog only) is served on the
        # internal listener, to callers with a service certificate; never on the agents' port
        # (ADR 0016, 0024).
        internal = manifest_api.register(
            manifest_api.ManifestServicer(store=store, object_store=object_store, keys=keys)
        )
        internal_listen = settings.internal_listen or platform.internal_listen
        if not internal_listen:
            log.warning("no internal listener (STRONGROOM_GATEWAY_INTERNAL_LISTEN): the catalog cannot index points")
        # The gateway serves agents (their credential) and services (their certificate), no operator.
        auth = serving.agents_only(agents.authenticator(store))
        await serving.serve_listeners(
            stack,
            "gateway",
            platform,
            settings.grpc_listen,
            register(servicer),
            auth=auth,
            internal_listen=internal_listen,
            internal_register=internal,
        )
        await stop.wait()
        log.info("gateway stopping")
