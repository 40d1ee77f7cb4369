"""Composition root of the scheduler: pool and migrations, outbox relay, consumers, schedule loop, gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from strongroom.scheduler.v1 import scheduler_pb2_grpc
from strongroom_platform import wiring
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.db import create_pool, migrate
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher
from strongroom_platform.outbox import start_relay
from strongroom_platform.runtime import serve_grpc

from strongroom_scheduler.alerts import LoggingAlerter
from strongroom_scheduler.consumers import GROUP_ID, record_handlers
from strongroom_scheduler.grpc_api import SchedulerServicer
from strongroom_scheduler.handlers import Deps
from strongroom_scheduler.migrations import MIGRATIONS, SCHEMA
from strongroom_scheduler.ports import Alerter
from strongroom_scheduler.repository import PgSchedulerStore
from strongroom_scheduler.schedule import run_schedule_loop, schedule_due
from strongroom_scheduler.settings import Settings

log = logging.getLogger(__name__)


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    publisher: EventPublisher | None = None,
    consumer_factory: ConsumerFactory | None = None,
    alerter: Alerter | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down gracefully.

    Prints ``LISTENING scheduler <host>:<port>`` once the gRPC server serves.
    ``publisher`` and ``consumer_factory`` default to the Kafka adapters.
    """
    clock = clock or SystemClock()
    async with contextlib.AsyncExitStack() as stack:
        if publisher is None:
            publisher = await stack.enter_async_context(wiring.publisher(settings))
        await _serve(settings, stop, clock, publisher, consumer_factory or wiring.consumer_factory(settings), alerter)


async def _serve(
    settings: Settings,
    stop: asyncio.Event,
    clock: Clock,
    publisher: EventPublisher,
    consumer_factory: ConsumerFactory,
    alerter: Alerter | None,
) -> None:
    pool = await create_pool(settings.pg_dsn, SCHEMA)
    tasks: list[asyncio.Task[None]] = []
    try:
        await migrate(pool, SCHEMA, MIGRATIONS)
        store = PgSchedulerStore(pool)
        deps = Deps(store=store, clock=clock, alerter=alerter or LoggingAlerter(), rng=random.SystemRandom())
        tasks.append(await start_relay(pool, SCHEMA, publisher, clock, replay=settings.outbox_replay))
        consumer = consumer_factory(GROUP_ID, record_handlers(deps))
        await consumer.start()
        try:

            async def tick() -> None:
                await schedule_due(store, clock)

            tasks.append(
                asyncio.create_task(
                    run_schedule_loop(tick, clock, interval=settings.schedule_interval), name="schedule"
                )
            )
            server = await serve_grpc(
                "scheduler",
                settings.grpc_listen,
                lambda s: scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(deps), s),
            )
            try:
                await stop.wait()
            finally:
                await server.stop(grace=5)
        finally:
            await consumer.stop()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()
