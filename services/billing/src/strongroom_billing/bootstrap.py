"""Composition root of billing: pool and migrations, consumers, gRPC."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

import asyncpg
from strongroom_platform import audit, lifecycle, serving, wiring
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher
from strongroom_platform.trusted_time import trusted_clock

from strongroom_billing import handlers
from strongroom_billing.consumers import GROUP_ID, record_handlers
from strongroom_billing.grpc_api import BillingServicer, register
from strongroom_billing.migrations import SCHEMA, SPEC
from strongroom_billing.repository import PgBillingStore
from strongroom_billing.settings import Settings

log = logging.getLogger(__name__)


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    consumer_factory: ConsumerFactory | None = None,
    publisher: EventPublisher | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down in reverse order; prints ``LISTENING billing <host>:<port>``.

    Billing's only events are the audit records of its mutating calls (``CreatePlan``), which
    commit with their effect in this schema's outbox (ADR 0027); ``clock`` checks token expiry and
    decides which ledger days have ended.
    """
    clock = clock or SystemClock()
    platform = settings.platform
    async with AsyncExitStack() as stack:
        pool = await lifecycle.open_pool(stack, platform, SPEC)
        auth = await serving.open_auth(stack, platform, clock, audit_sink=audit.OutboxAuditSink(pool, SCHEMA, clock))
        if publisher is None:
            publisher = await stack.enter_async_context(wiring.publisher(platform))
        await lifecycle.start_relay(stack, pool, SCHEMA, publisher, clock, replay=platform.outbox_replay)
        store = PgBillingStore(pool)
        factory = consumer_factory or wiring.consumer_factory(platform)
        await lifecycle.start_consumer(stack, factory, GROUP_ID, record_handlers(store))
        lifecycle.start_task(stack, _close_days_forever(store, pool, clock, settings), "billing-ledger")
        servicer = BillingServicer(store, clock, settings.ledger)
        await serving.serve_listeners(
            stack, "billing", platform, settings.grpc_listen, register(servicer), auth=auth.interceptor
        )
        await stop.wait()
        log.info("billing stopping")


async def _close_days_forever(store: PgBillingStore, pool: asyncpg.Pool, clock: Clock, settings: Settings) -> None:
    """Close the ledger's ended days every ``interval_seconds``; a failed pass is retried next time.

    Days end by the trusted time (ADR 0036, update of 2026-12-06): the service clock plus the
    trusted offset, which only standalone mode's ``--clock-offset-days`` sets; it is read every pass.
    """
    while True:
        try:
            await handlers.close_ledger_days(store, await trusted_clock(pool, clock), settings.ledger)
        except Exception:
            log.exception("ledger: closing days failed; retrying in %.0f s", settings.ledger.interval_seconds)
        await clock.sleep(settings.ledger.interval_seconds)
