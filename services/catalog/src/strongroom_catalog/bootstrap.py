"""Composition root of the catalog: pool, migrations, outbox relay, consumer, retention, gRPC."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from strongroom_platform import audit, lifecycle, serving, wiring
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher
from strongroom_platform.objectstore import ObjectStore

from strongroom_catalog import consumers
from strongroom_catalog.grpc_api import CatalogServicer, register
from strongroom_catalog.manifests import GatewayManifestReader, ManifestReader
from strongroom_catalog.migrations import SCHEMA, SPEC
from strongroom_catalog.repository import PgCatalogStore
from strongroom_catalog.retention import run_retention
from strongroom_catalog.settings import Settings

log = logging.getLogger(__name__)


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    object_store: ObjectStore | None = None,
    publisher: EventPublisher | None = None,
    consumer_factory: ConsumerFactory | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down in reverse order.

    Prints ``LISTENING catalog <host>:<port>`` on stdout once the gRPC API
    serves. Dependencies left as None are built from ``settings``.
    """
    clock = clock or SystemClock()
    async with AsyncExitStack() as stack:
        platform = settings.platform
        pool = await lifecycle.open_pool(stack, platform, SPEC)
        # Reinstatements and holds are audited (ADR 0027, 0040): their records leave through this outbox.
        auth = await serving.open_auth(stack, platform, clock, audit_sink=audit.OutboxAuditSink(pool, SCHEMA, clock))
        repo = PgCatalogStore(pool)

        manifests: ObjectStore | ManifestReader
        if object_store is not None:
            manifests = object_store
        elif settings.gateway_addr:
            # the gateway's internal listener, with this service's certificate (ADR 0016, 0024)
            channel = serving.peer_channel(platform, settings.gateway_addr)
            stack.push_async_callback(channel.close, None)
            manifests = GatewayManifestReader(channel)
        else:
            log.warning("STRONGROOM_GATEWAY_ADDR unset: encrypted manifests cannot be indexed")
            manifests = await stack.enter_async_context(wiring.object_store(settings.platform, clock))
        if publisher is None:
            publisher = await stack.enter_async_context(wiring.publisher(platform))
        if consumer_factory is None:
            consumer_factory = wiring.consumer_factory(platform)

        await lifecycle.start_relay(stack, pool, SCHEMA, publisher, clock, replay=platform.outbox_replay)
        await lifecycle.start_consumer(
            stack, consumer_factory, consumers.GROUP_ID, consumers.record_handlers(repo, manifests)
        )
        retention = run_retention(repo, clock, interval=settings.retention_interval)
        lifecycle.start_task(stack, retention, "catalog-retention")
        await serving.serve_listeners(
            stack,
            "catalog",
            platform,
            settings.grpc_listen,
            register(CatalogServicer(repo, clock)),
            auth=auth.interceptor,
        )
        await stop.wait()
        log.info("catalog stopping")
