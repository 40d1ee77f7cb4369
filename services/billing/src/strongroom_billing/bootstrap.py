"""Composition root of billing: pool and migrations, consumers, gRPC."""

from __future__ import annotations

import asyncio

from strongroom.billing.v1 import billing_pb2_grpc
from strongroom_platform import wiring
from strongroom_platform.clock import Clock
from strongroom_platform.db import create_pool, migrate
from strongroom_platform.eventbus import ConsumerFactory
from strongroom_platform.runtime import serve_grpc

from strongroom_billing.consumers import GROUP_ID, record_handlers
from strongroom_billing.grpc_api import BillingServicer
from strongroom_billing.migrations import MIGRATIONS, SCHEMA
from strongroom_billing.repository import PgBillingStore
from strongroom_billing.settings import Settings


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    consumer_factory: ConsumerFactory | None = None,
) -> None:
    """Serve until ``stop`` is set; prints ``LISTENING billing <host>:<port>`` once serving.

    Billing produces no events, so it has no publisher; ``clock`` is accepted for the
    common ``run`` shape (nothing here depends on time yet).
    """
    del clock
    consumer_factory = consumer_factory or wiring.consumer_factory(settings)
    pool = await create_pool(settings.pg_dsn, SCHEMA)
    try:
        await migrate(pool, SCHEMA, MIGRATIONS)
        store = PgBillingStore(pool)
        consumer = consumer_factory(GROUP_ID, record_handlers(store))
        await consumer.start()
        try:
            server = await serve_grpc(
                "billing",
                settings.grpc_listen,
                lambda s: billing_pb2_grpc.add_BillingServiceServicer_to_server(BillingServicer(store), s),
            )
            try:
                await stop.wait()
            finally:
                await server.stop(grace=5)
        finally:
            await consumer.stop()
    finally:
        await pool.close()
