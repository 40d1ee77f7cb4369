"""Composition root of the scheduler: pool and migrations, outbox relay, consumers, schedule loop,
alert delivery worker, gRPC."""

from __future__ import annotations

import asyncio
import logging
import random
from contextlib import AsyncExitStack

import grpc
from strongroom_platform import audit, lifecycle, serving, wiring
from strongroom_platform.auth import token_api
from strongroom_platform.auth.tokens_pg import PgTokenStore
from strongroom_platform.clock import Clock, SystemClock
from strongroom_platform.eventbus import ConsumerFactory, EventPublisher

from strongroom_scheduler.alerts import grpc_api as alert_api
from strongroom_scheduler.alerts.delivery import run_delivery_loop
from strongroom_scheduler.alerts.handlers import AlertDeps
from strongroom_scheduler.alerts.mail import SmtpSender
from strongroom_scheduler.alerts.model import EMAIL, WEBHOOK
from strongroom_scheduler.alerts.ports import Sender
from strongroom_scheduler.alerts.prune import run_prune_loop
from strongroom_scheduler.alerts.repository import PgAlertStore
from strongroom_scheduler.alerts.webhook import WebhookSender
from strongroom_scheduler.audit_retention import run_audit_prune_loop
from strongroom_scheduler.consumers import GROUP_ID, record_handlers
from strongroom_scheduler.grpc_api import AuditServicer, SchedulerServicer, register, register_audit
from strongroom_scheduler.handlers import Deps
from strongroom_scheduler.inventory import note_preparation_failures
from strongroom_scheduler.migrations import SCHEMA, SPEC
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
    senders: dict[int, Sender] | None = None,
) -> None:
    """Serve until ``stop`` is set, then shut down in reverse order.

    Prints ``LISTENING scheduler <host>:<port>`` once the gRPC server serves.
    ``publisher`` and ``consumer_factory`` default to the Kafka adapters; ``senders`` (channel →
    sender) to webhooks over aiohttp and, when an SMTP relay is configured, email.
    """
    clock = clock or SystemClock()
    platform = settings.platform
    async with AsyncExitStack() as stack:
        pool = await lifecycle.open_pool(stack, platform, SPEC)
        # Mutating calls leave their audit record in this schema's outbox (ADR 0027).
        auth = await serving.open_auth(stack, platform, clock, audit_sink=audit.OutboxAuditSink(pool, SCHEMA, clock))
        store = PgSchedulerStore(pool)
        deps = Deps(
            store=store,
            clock=clock,
            rng=random.SystemRandom(),
            zone=settings.zone,
            preparation_timeout=settings.preparation_timeout,
            admission=settings.admission,
        )
        alert_settings = settings.alerts
        alert_store = PgAlertStore(pool)
        wake = asyncio.Event()
        alert_deps = AlertDeps(
            store=alert_store,
            clock=clock,
            webhook_policy=alert_settings.webhook,
            operator_account=alert_settings.operator_account,
            email_enabled=alert_settings.smtp is not None or (senders is not None and EMAIL in senders),
            wake=wake,
        )
        if senders is None:
            senders = {WEBHOOK: await stack.enter_async_context(WebhookSender(alert_settings.webhook, clock))}
            if alert_settings.smtp is not None:
                senders[EMAIL] = SmtpSender(alert_settings.smtp, clock)
        if publisher is None:
            publisher = await stack.enter_async_context(wiring.publisher(platform))
        await lifecycle.start_relay(stack, pool, SCHEMA, publisher, clock, replay=platform.outbox_replay)
        factory = consumer_factory or wiring.consumer_factory(platform)
        await lifecycle.start_consumer(stack, factory, GROUP_ID, record_handlers(deps, alert_deps))

        async def tick() -> None:
            done = await schedule_due(store, clock, zone=settings.zone, admission=deps.admission)
            deps.metrics.admission_waiting.set(done.waiting_total)
            await note_preparation_failures(store, clock)

        lifecycle.start_task(stack, run_schedule_loop(tick, clock, interval=settings.schedule_interval), "schedule")
        delivery = run_delivery_loop(
            alert_store, senders, clock, alert_settings.delivery, wake, interval=alert_settings.poll_interval
        )
        lifecycle.start_task(stack, delivery, "alert-delivery")
        lifecycle.start_task(stack, run_prune_loop(alert_store, clock, alert_settings.prune), "alert-prune")
        lifecycle.start_task(stack, run_audit_prune_loop(store, clock, settings.audit_retention), "audit-prune")
        scheduler_api = register(SchedulerServicer(deps))
        # API tokens are served by the scheduler (ADR 0024): the control plane's front door.
        # Token writes go through the scheduler's pool, so their audit records commit with them
        # in this schema's outbox (the SQL names schema auth).
        tokens_api = token_api.register(token_api.TokenServicer(PgTokenStore(pool), clock))
        audit_api = register_audit(AuditServicer(deps))
        alerts_api = alert_api.register(alert_api.AlertServicer(alert_deps))

        def services(server: grpc.aio.Server) -> None:
            scheduler_api(server)
            tokens_api(server)
            audit_api(server)
            alerts_api(server)

        await serving.serve_listeners(
            stack, "scheduler", platform, settings.grpc_listen, services, auth=auth.interceptor
        )
        await stop.wait()
        log.info("scheduler stopping")
