"""Pruning the alert history (ADR 0037 update): finished deliveries and read messages older than the
configured age go, in bounded batches; unread messages, pending deliveries and the messages they
carry stay. On the fake and on PostgreSQL (as the scheduler's own role)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import AsyncIterator

import pytest
from strongroom.events.v1 import events_pb2
from strongroom_platform.alerts import account_alert
from strongroom_platform.auth import Role, operator
from strongroom_platform.clock import utc
from strongroom_platform.settings import SettingsError
from strongroom_platform.testing import FakeClock, call_for
from strongroom_scheduler.alerts import handlers
from strongroom_scheduler.alerts.delivery import DeliveryPolicy, deliver_due
from strongroom_scheduler.alerts.handlers import AlertDeps
from strongroom_scheduler.alerts.model import DELIVERED, PENDING, WEBHOOK
from strongroom_scheduler.alerts.ports import AlertStore
from strongroom_scheduler.alerts.prune import PrunePolicy, prune_alerts
from strongroom_scheduler.alerts.repository import PgAlertStore
from strongroom_scheduler.alerts.testing import InMemoryAlertStore, RecordingSender
from strongroom_scheduler.alerts.webhook import WebhookPolicy
from strongroom_scheduler.migrations import SPEC
from strongroom_scheduler.settings import AlertSettings
from strongroom_testing.fixtures import PgLogins

ADMIN = operator("token:admin", {"acme": Role.ADMIN})
DAY = 86400


def call(method: str):  # type: ignore[no-untyped-def]
    return call_for("/strongroom.alerts.v1.AlertService/" + method, ADMIN)


async def subscribe(deps: AlertDeps) -> None:
    """A webhook subscription of acme to every kind."""
    await handlers.create_subscription(
        deps,
        account_id="acme",
        channel=WEBHOOK,
        target="http://127.0.0.1:9/h",
        kinds=[],
        call=call("CreateSubscription"),
    )


async def raise_alert(deps: AlertDeps, job: str) -> None:
    """A backup-failed alert of acme's instance i-1, handled as the consumer would."""
    event = account_alert(
        events_pb2.ALERT_KIND_BACKUP_FAILED,
        producer="scheduler",
        now=deps.clock.now(),
        account_id="acme",
        instance_id="i-1",
        job_id=job,
        reason="failed",
    )
    await handlers.handle_alert_raised(event, deps)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[AlertStore]:
    if request.param == "memory":
        yield InMemoryAlertStore()
        return
    logins: PgLogins = request.getfixturevalue("pg_logins")
    pool = await logins.pool(SPEC)  # the scheduler's role: DELETE on both tables is declared
    try:
        yield PgAlertStore(pool)
    finally:
        await pool.close()


async def test_old_finished_deliveries_and_read_messages_are_pruned_in_batches(store: AlertStore) -> None:
    clock = FakeClock(utc(2026, 12, 6, 2, 0))
    deps = AlertDeps(
        store=store, clock=clock, webhook_policy=WebhookPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),))
    )
    await subscribe(deps)
    for n in range(5):
        await raise_alert(deps, f"j-{n}")
    assert await deliver_due(store, {WEBHOOK: RecordingSender()}, clock, DeliveryPolicy(batch=50)) == 5
    await raise_alert(deps, "j-5")  # its delivery stays pending
    messages, _, _ = await handlers.list_messages(
        deps, "acme", unread_only=False, page_size=0, page_token="", call=call("ListMessages")
    )
    by_job = {m.job_id: m.message_id for m in messages}
    read = [by_job[j] for j in ("j-0", "j-1", "j-2", "j-5")]  # j-3, j-4 stay unread
    await handlers.mark_messages_read(deps, "acme", read, all_messages=False, call=call("MarkMessagesRead"))

    policy = PrunePolicy(keep=dt.timedelta(days=90), batch=2)
    clock.advance(89 * DAY)
    pruned = await prune_alerts(store, clock, policy)
    assert (pruned.deliveries, pruned.messages) == (0, 0)  # younger than 90 days
    clock.advance(2 * DAY)
    pruned = await prune_alerts(store, clock, policy)
    assert (pruned.deliveries, pruned.messages) == (5, 3)  # in batches of 2
    left, _, unread = await handlers.list_messages(
        deps, "acme", unread_only=False, page_size=0, page_token="", call=call("ListMessages")
    )
    # unread ones stay whatever their age; a read one stays while its delivery is pending
    assert sorted(m.job_id for m in left) == ["j-3", "j-4", "j-5"] and unread == 2
    deliveries, _ = await handlers.list_deliveries(deps, "acme", state=None, limit=0, call=call("ListDeliveries"))
    assert [d.state for d in deliveries] == [PENDING]
    assert await handlers.list_deliveries(deps, "acme", state=DELIVERED, limit=0, call=call("ListDeliveries")) == (
        [],
        "",
    )
    pruned = await prune_alerts(store, clock, policy)
    assert (pruned.deliveries, pruned.messages) == (0, 0)


def test_the_age_is_a_setting_of_at_least_one_day() -> None:
    assert AlertSettings.from_env({}).prune.keep == dt.timedelta(days=90)
    assert AlertSettings.from_env({"STRONGROOM_ALERT_KEEP_DAYS": "30"}).prune.keep == dt.timedelta(days=30)
    for bad in ("0", "-5", "100000"):
        with pytest.raises(SettingsError, match="STRONGROOM_ALERT_KEEP_DAYS"):
            AlertSettings.from_env({"STRONGROOM_ALERT_KEEP_DAYS": bad})
