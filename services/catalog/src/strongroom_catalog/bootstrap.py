"""Composition root of the catalog: pool, migrations, outbox relay, consumer, retention, gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack

import grpc
from strongroom_platform import wiring
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.db import create_pool, migrate
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher
from strongroom_platform.objectstore import ObjectStore
from strongroom_platform.outbox import start_relay
from strongroom_platform.runtime import serve_grpc

from strongroom_catalog import consumers
from strongroom_catalog.grpc_api import CatalogServicer, register
from strongroom_catalog.manifests import GatewayManifestReader, ManifestReader
from strongroom_catalog.migrations import MIGRATIONS, SCHEMA
from strongroom_catalog.repository import PgCatalogRepository
from strongroom_catalog.retention import run_retention
from strongroom_catalog.settings import Settings

log = logging.getLogger(__name__)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    object_store: ObjectStore | None = None,
    publisher: EventPublisher | None = None,
    consumer_factory: ConsumerFactory | None = None,
    schema: str = SCHEMA,
) -> None:
    """Serve until ``stop`` is set, then shut down in reverse order.

    Prints ``LISTENING catalog <host>:<port>`` on stdout once the gRPC API
    serves. Dependencies left as None are built from ``settings``.
    """
    clock = clock or SystemClock()
    async with AsyncExitStack() as stack:
        pool = await create_pool(settings.platform.pg_dsn, schema)
        stack.push_async_callback(pool.close)
        await migrate(pool, schema, MIGRATIONS)
        repo = PgCatalogRepository(pool)

        manifests: ObjectStore | ManifestReader
        if object_store is not None:
            manifests = object_store
        elif settings.gateway_addr:
            channel = grpc.aio.insecure_channel(settings.gateway_addr)
            stack.push_async_callback(channel.close, None)
            manifests = GatewayManifestReader(channel)
        else:
            log.warning("STRONGROOM_GATEWAY_ADDR unset: encrypted manifests cannot be indexed")
            manifests = await stack.enter_async_context(wiring.object_store(settings.platform, clock))
        if publisher is None:
            publisher = await stack.enter_async_context(wiring.publisher(settings.platform))
        if consumer_factory is None:
            consumer_factory = wiring.consumer_factory(settings.platform)

        relay = await start_relay(pool, schema, publisher, clock, replay=settings.platform.outbox_replay)
        stack.push_async_callback(_cancel, relay)

        consumer = consumer_factory(consumers.GROUP_ID, consumers.handlers(repo, manifests))
        await consumer.start()
        stack.push_async_callback(consumer.stop)

        retention = asyncio.create_task(
            run_retention(repo, clock, interval=settings.retention_interval), name="catalog-retention"
        )
        stack.push_async_callback(_cancel, retention)

        server = await serve_grpc("catalog", settings.grpc_listen, register(CatalogServicer(repo)))
        stack.push_async_callback(server.stop, 5)
        await stop.wait()
        log.info("catalog stopping")
