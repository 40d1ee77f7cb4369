"""Composition root of the restore service: pool, migrations, outbox relay, consumer, catalog client, gRPC."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from strongroom_platform import audit, lifecycle, serving, wiring
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher

from strongroom_restore import consumers
from strongroom_restore.catalog_client import GrpcCatalogClient
from strongroom_restore.grpc_api import RestoreServicer, register
from strongroom_restore.migrations import SCHEMA, SPEC
from strongroom_restore.ports import CatalogClient, InstanceDirectory
from strongroom_restore.repository import PgRestoreStore
from strongroom_restore.scheduler_client import SchedulerInstanceDirectory
from strongroom_restore.settings import Settings

log = logging.getLogger(__name__)


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    publisher: EventPublisher | None = None,
    consumer_factory: ConsumerFactory | None = None,
    catalog: CatalogClient | None = None,
    instances: InstanceDirectory | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down in reverse order.

    Prints ``LISTENING restore <host>:<port>`` on stdout once the gRPC API
    serves. Dependencies left as None are built from ``settings``.
    """
    clock = clock or SystemClock()
    async with AsyncExitStack() as stack:
        platform = settings.platform
        pool = await lifecycle.open_pool(stack, platform, SPEC)
        # Mutating calls leave their audit record in this schema's outbox (ADR 0027).
        auth = await serving.open_auth(stack, platform, clock, audit_sink=audit.OutboxAuditSink(pool, SCHEMA, clock))
        repo = PgRestoreStore(pool)

        if catalog is None:
            # the catalog's internal listener, with this service's certificate (ADR 0024)
            channel = serving.peer_channel(platform, settings.catalog_addr)
            stack.push_async_callback(channel.close, None)
            catalog = GrpcCatalogClient(channel)
        if instances is None:
            # the scheduler's internal listener, for the facts of restore targets (ADR 0024)
            scheduler_channel = serving.peer_channel(platform, settings.scheduler_addr)
            stack.push_async_callback(scheduler_channel.close, None)
            instances = SchedulerInstanceDirectory(scheduler_channel)
        if publisher is None:
            publisher = await stack.enter_async_context(wiring.publisher(platform))
        if consumer_factory is None:
            consumer_factory = wiring.consumer_factory(platform)

        await lifecycle.start_relay(stack, pool, SCHEMA, publisher, clock, replay=platform.outbox_replay)
        await lifecycle.start_consumer(stack, consumer_factory, consumers.GROUP_ID, consumers.record_handlers(repo))
        servicer = RestoreServicer(repo, catalog, clock, instances)
        await serving.serve_listeners(
            stack, "restore", platform, settings.grpc_listen, register(servicer), auth=auth.interceptor
        )
        await stop.wait()
        log.info("restore stopping")
