"""The alert pipeline on a real PostgreSQL: the SQL of fan-out, paging, delivery claims, leases and
dead-lettering, and concurrent workers never sending one delivery twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from collections.abc import AsyncIterator

import asyncpg
import pytest
from alerts_paging_check import check_subscription_and_delivery_pages
from strongroom.alerts.v1 import alerts_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.alerts import account_alert
from strongroom_platform.auth import Role, operator
from strongroom_platform.clock import utc
from strongroom_platform.testing import FakeClock, call_for
from strongroom_scheduler.alerts import handlers
from strongroom_scheduler.alerts.delivery import DeliveryPolicy, deliver_due
from strongroom_scheduler.alerts.grpc_api import subscription_to_proto
from strongroom_scheduler.alerts.handlers import AlertDeps
from strongroom_scheduler.alerts.model import DEAD, DELIVERED, EMAIL, PENDING, WEBHOOK
from strongroom_scheduler.alerts.repository import PgAlertStore
from strongroom_scheduler.alerts.testing import RecordingSender
from strongroom_scheduler.alerts.webhook import WebhookPolicy
from strongroom_scheduler.migrations import SPEC
from strongroom_testing.fixtures import PgLogins

pytestmark = pytest.mark.integration

SERVICE = "/strongroom.alerts.v1.AlertService/"
ADMIN = operator("token:admin", {"acme": Role.ADMIN})
POLICY = DeliveryPolicy(initial=10, maximum=40, max_attempts=3, lease=120, batch=50)


def call(method: str):  # type: ignore[no-untyped-def]
    return call_for(SERVICE + method, ADMIN)


@pytest.fixture
async def pool(pg_logins: PgLogins) -> AsyncIterator[asyncpg.Pool]:
    pool = await pg_logins.pool(SPEC)  # as the scheduler's own role: its declared privileges (ADR 0031)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(utc(2026, 12, 6, 2, 0))


@pytest.fixture
def deps(pool: asyncpg.Pool, clock: FakeClock) -> AlertDeps:
    return AlertDeps(
        store=PgAlertStore(pool),
        clock=clock,
        webhook_policy=WebhookPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),)),
        email_enabled=True,
    )


def alert(clock: FakeClock, job_id: str = "j-1", kind: int = events_pb2.ALERT_KIND_BACKUP_FAILED):  # type: ignore[no-untyped-def]
    return account_alert(
        kind,  # type: ignore[arg-type]
        producer="scheduler",
        now=clock.now(),
        account_id="acme",
        instance_id="i-1",
        instance_name="web-1",
        job_id=job_id,
        reason="the source root /data does not exist",
    )


async def subscribe(deps: AlertDeps, channel: int = WEBHOOK, target: str = "http://127.0.0.1:9/hook/tok", kinds=()):  # type: ignore[no-untyped-def]
    subscription, _ = await handlers.create_subscription(
        deps, account_id="acme", channel=channel, target=target, kinds=list(kinds), call=call("CreateSubscription")
    )
    return subscription


async def test_fan_out_is_idempotent_and_filters_kinds(deps: AlertDeps, clock: FakeClock, pool: asyncpg.Pool) -> None:
    hook = await subscribe(deps)
    await subscribe(deps, EMAIL, "ops@example.com", kinds=[events_pb2.ALERT_KIND_RESTORE_FAILED])
    event = alert(clock)
    await handlers.handle_alert_raised(event, deps)
    await handlers.handle_alert_raised(event, deps)
    messages, token, unread = await handlers.list_messages(
        deps, "acme", unread_only=False, page_size=0, page_token="", call=call("ListMessages")
    )
    assert (len(messages), token, unread) == (1, "", 1)
    assert messages[0].title == "Backup failed: web-1"
    deliveries, _ = await handlers.list_deliveries(deps, "acme", state=None, limit=0, call=call("ListDeliveries"))
    assert [(d.subscription_id, d.state, d.attempts) for d in deliveries] == [(hook.subscription_id, PENDING, 0)]


async def test_paging_and_mark_read(deps: AlertDeps, clock: FakeClock) -> None:
    for n in range(5):
        await handlers.handle_alert_raised(alert(clock, f"j-{n}"), deps)
        if n != 2:  # two messages share a creation time: the id breaks the tie
            clock.advance(1)
    seen: list[str] = []
    token = ""
    while True:
        page, token, _ = await handlers.list_messages(
            deps, "acme", unread_only=False, page_size=2, page_token=token, call=call("ListMessages")
        )
        seen += [m.job_id for m in page]
        if not token:
            break
    assert sorted(seen) == [f"j-{n}" for n in range(5)] and len(set(seen)) == 5
    assert seen[0] == "j-4" and seen[-1] == "j-0"
    page, _, _ = await handlers.list_messages(
        deps, "acme", unread_only=False, page_size=2, page_token="", call=call("ListMessages")
    )
    ids = [m.message_id for m in page]
    assert await handlers.mark_messages_read(deps, "acme", ids, all_messages=False, call=call("MarkMessagesRead")) == 2
    assert await handlers.mark_messages_read(deps, "acme", ids, all_messages=False, call=call("MarkMessagesRead")) == 0
    unread, _, count = await handlers.list_messages(
        deps, "acme", unread_only=True, page_size=0, page_token="", call=call("ListMessages")
    )
    assert count == 3 and not {m.message_id for m in unread} & set(ids)
    assert await handlers.mark_messages_read(deps, "acme", [], all_messages=True, call=call("MarkMessagesRead")) == 3


async def test_retry_dead_letter_stats_and_secret_never_listed(deps: AlertDeps, clock: FakeClock) -> None:
    hook = await subscribe(deps)
    await handlers.handle_alert_raised(alert(clock), deps)
    sender = RecordingSender(failures=["HTTP 503"] * 3)
    for attempt in range(1, 4):
        assert await deliver_due(deps.store, {WEBHOOK: sender}, clock, POLICY) == 1
        assert await deliver_due(deps.store, {WEBHOOK: sender}, clock, POLICY) == 0
        clock.advance(POLICY.backoff(attempt).total_seconds())
    [delivery], _ = await handlers.list_deliveries(deps, "acme", state=DEAD, limit=0, call=call("ListDeliveries"))
    assert (delivery.attempts, delivery.last_error) == (3, "HTTP 503")
    [(subscription, stats)], _ = await handlers.list_subscriptions(deps, "acme", call=call("ListSubscriptions"))
    assert (stats.delivered, stats.pending, stats.dead, stats.last_error) == (0, 0, 1, "HTTP 503")
    listed = subscription_to_proto(subscription, stats)
    assert hook.signing_secret not in str(listed) and "tok" not in listed.target
    assert listed.target == "http://127.0.0.1:9/…" and listed.dead_lettered == 1
    assert "signing_secret" not in alerts_pb2.Subscription.DESCRIPTOR.fields_by_name
    messages, _, _ = await handlers.list_messages(
        deps, "acme", unread_only=False, page_size=0, page_token="", call=call("ListMessages")
    )
    assert messages[0].kind == events_pb2.ALERT_KIND_DELIVERY_FAILED
    assert messages[0].title == "Alert delivery given up: webhook http://127.0.0.1:9/…"


async def test_lease_and_concurrent_workers(deps: AlertDeps, clock: FakeClock) -> None:
    await subscribe(deps)
    for n in range(30):
        await handlers.handle_alert_raised(alert(clock, f"j-{n}"), deps)
    store = deps.store
    async with store.transaction() as tx:  # a worker claims two and dies
        dead_worker = await tx.claim_due(clock.now(), clock.now() + dt.timedelta(seconds=POLICY.lease), 2)
    senders = [RecordingSender() for _ in range(4)]
    policy = DeliveryPolicy(initial=10, maximum=40, max_attempts=3, lease=120, batch=5)
    while sum(await asyncio.gather(*(deliver_due(store, {WEBHOOK: s}, clock, policy) for s in senders))):
        pass
    sent = [o.delivery.delivery_id for s in senders for o in s.sent]
    assert len(sent) == len(set(sent)) == 28  # SKIP LOCKED: no delivery twice
    clock.advance(POLICY.lease)
    assert await deliver_due(store, {WEBHOOK: senders[0]}, clock, policy) == 2
    retaken = {o.delivery.delivery_id: o.delivery.attempts for o in senders[0].sent[-2:]}
    assert retaken == {o.delivery.delivery_id: 2 for o in dead_worker}
    delivered, _ = await handlers.list_deliveries(deps, "acme", state=DELIVERED, limit=500, call=call("ListDeliveries"))
    assert len(delivered) == 30


async def test_removing_a_subscription_drops_its_pending_deliveries(deps: AlertDeps, clock: FakeClock) -> None:
    hook = await subscribe(deps)
    await handlers.handle_alert_raised(alert(clock), deps)
    await handlers.delete_subscription(deps, hook.subscription_id, call=call("DeleteSubscription"))
    assert await deliver_due(deps.store, {WEBHOOK: RecordingSender()}, clock, POLICY) == 0
    assert await handlers.list_deliveries(deps, "acme", state=None, limit=0, call=call("ListDeliveries")) == ([], "")
    messages, _, _ = await handlers.list_messages(
        deps, "acme", unread_only=False, page_size=0, page_token="", call=call("ListMessages")
    )
    assert len(messages) == 1  # the in-app message stays


async def test_subscriptions_and_deliveries_in_pages(deps: AlertDeps, clock: FakeClock) -> None:
    await check_subscription_and_delivery_pages(deps, clock)
