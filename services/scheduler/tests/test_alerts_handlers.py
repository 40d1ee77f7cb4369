"""The alert pipeline's logic over the in-memory fakes: fan-out, subscriptions, messages, deliveries."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress

import pytest
from alerts_paging_check import check_subscription_and_delivery_pages
from strongroom.events.v1 import events_pb2
from strongroom_platform.alerts import account_alert
from strongroom_platform.auth import CallAuth, Principal, Role, operator
from strongroom_platform.clock import utc
from strongroom_platform.errors import PermissionDenied
from strongroom_platform.events import new_meta
from strongroom_platform.testing import FakeClock, call_for
from strongroom_scheduler.alerts import handlers
from strongroom_scheduler.alerts.delivery import DeliveryPolicy, deliver_due
from strongroom_scheduler.alerts.handlers import AlertDeps
from strongroom_scheduler.alerts.model import DEAD, DELIVERED, EMAIL, PENDING, WEBHOOK
from strongroom_scheduler.alerts.testing import InMemoryAlertStore, RecordingSender
from strongroom_scheduler.alerts.webhook import WebhookPolicy
from strongroom_scheduler.errors import FailedPrecondition, InvalidArgument, NotFound

SERVICE = "/strongroom.alerts.v1.AlertService/"
FAILED = events_pb2.ALERT_KIND_BACKUP_FAILED
RESTORE_FAILED = events_pb2.ALERT_KIND_RESTORE_FAILED


def call(method: str, principal: Principal | None = None) -> CallAuth:
    return call_for(SERVICE + method, principal or operator("token:admin", {"acme": Role.ADMIN}))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(utc(2026, 12, 6, 2, 0))


@pytest.fixture
def store() -> InMemoryAlertStore:
    return InMemoryAlertStore()


@pytest.fixture
def deps(store: InMemoryAlertStore, clock: FakeClock) -> AlertDeps:
    return AlertDeps(
        store=store,
        clock=clock,
        webhook_policy=WebhookPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),)),
        operator_account="platform-team",
        email_enabled=True,
        wake=asyncio.Event(),
    )


def alert(clock: FakeClock, kind: int = FAILED, account: str = "acme", **kwargs: str) -> events_pb2.AlertRaised:
    return account_alert(
        kind,  # type: ignore[arg-type]
        producer="scheduler",
        now=clock.now(),
        account_id=account,
        instance_id=kwargs.get("instance_id", "i-1"),
        instance_name=kwargs.get("instance_name", "web-1"),
        job_id=kwargs.get("job_id", "j-1"),
        reason=kwargs.get("reason", "the source root /data does not exist"),
    )


async def subscribe(deps: AlertDeps, channel: int = WEBHOOK, target: str = "http://127.0.0.1:9/hook", **kw: object):  # type: ignore[no-untyped-def]
    subscription, _ = await handlers.create_subscription(
        deps,
        account_id=str(kw.get("account", "acme")),
        channel=channel,
        target=target,
        kinds=list(kw.get("kinds", [])),  # type: ignore[call-overload]
        call=call("CreateSubscription", kw.get("principal")),  # type: ignore[arg-type]
    )
    return subscription


# --- fan-out --------------------------------------------------------------------------------


async def test_alert_becomes_a_message_and_one_delivery_per_matching_subscription(
    deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock
) -> None:
    hook = await subscribe(deps)
    mail = await subscribe(deps, EMAIL, "ops@example.com", kinds=[RESTORE_FAILED])
    assert deps.wake is not None and not deps.wake.is_set()
    event = alert(clock)
    await handlers.handle_alert_raised(event, deps)
    [message] = store.messages
    assert (message.account_id, message.kind, message.instance_id, message.job_id) == ("acme", FAILED, "i-1", "j-1")
    assert message.title == "Backup failed: web-1"
    assert message.body == "Instance web-1 (i-1), backup job j-1: the source root /data does not exist"
    [delivery] = store.deliveries  # the email subscription wants restore failures only
    assert (delivery.subscription_id, delivery.state, delivery.attempts) == (hook.subscription_id, PENDING, 0)
    assert delivery.next_attempt_at == clock.now()
    assert deps.wake.is_set()
    # redelivered: nothing new
    await handlers.handle_alert_raised(event, deps)
    assert (len(store.messages), len(store.deliveries)) == (1, 1)
    clock.advance(1)
    await handlers.handle_alert_raised(alert(clock, RESTORE_FAILED, job_id="r-1"), deps)
    assert {d.subscription_id for d in store.deliveries} == {hook.subscription_id, mail.subscription_id}
    assert store.messages[-1].title == "Restore failed: web-1"
    assert "restore job r-1" in store.messages[-1].body


async def test_other_accounts_subscriptions_get_nothing(
    deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock
) -> None:
    other_admin = operator("token:other", {"other": Role.ADMIN})
    await subscribe(deps, account="other", principal=other_admin)
    await handlers.handle_alert_raised(alert(clock), deps)
    assert store.deliveries == []
    assert [m.account_id for m in store.messages] == ["acme"]


async def test_account_alert_without_account_is_refused(deps: AlertDeps, clock: FakeClock) -> None:
    event = events_pb2.AlertRaised(meta=new_meta("inventory", clock.now()), kind=FAILED, instance_id="i-1")
    with pytest.raises(InvalidArgument, match="lacks its account or instance"):
        await handlers.handle_alert_raised(event, deps)


async def test_poison_alert_goes_to_the_operator_account(
    deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock
) -> None:
    event = events_pb2.AlertRaised(
        meta=new_meta("catalog", clock.now()),
        kind=events_pb2.ALERT_KIND_POISON_RECORD,
        source="catalog",
        topic="point-created",
        partition=0,
        offset=41,
        dead_letter_topic="point-created.dlq",
        reason="failed 5 times; last: KeyError: 'x'",
        attempts=5,
    )
    await handlers.handle_alert_raised(event, deps)
    [message] = store.messages
    assert message.account_id == "platform-team"
    assert message.title == "Event dead-lettered by catalog"
    assert "point-created (partition 0, offset 41)" in message.body and "point-created.dlq" in message.body
    deps.operator_account = ""
    await handlers.handle_alert_raised(
        events_pb2.AlertRaised(meta=new_meta("catalog", clock.now()), kind=events_pb2.ALERT_KIND_POISON_RECORD), deps
    )
    assert len(store.messages) == 1  # no operator account: logged only


async def test_unknown_kind_is_ignored(deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock) -> None:
    event = alert(clock)
    event.kind = 99  # type: ignore[assignment]  # a kind added by a newer producer
    await handlers.handle_alert_raised(event, deps)
    assert store.messages == []


async def test_inventory_kinds_are_delivered(deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock) -> None:
    # The inventory (issue 10, built later) only publishes these; nothing else is needed here.
    await subscribe(deps)
    for kind in (events_pb2.ALERT_KIND_PREPARATION_FAILED, events_pb2.ALERT_KIND_INSTANCE_STOPPED):
        await handlers.handle_alert_raised(alert(clock, kind, job_id="", reason="installation timed out"), deps)
        clock.advance(1)
    assert [m.title for m in store.messages] == ["Backup client installation failed: web-1", "Instance stopped: web-1"]
    assert len(store.deliveries) == 2


# --- subscriptions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "must be http:// or https://"),
        ("gopher://127.0.0.1:70/", "must be http:// or https://"),
        ("http://user:pw@example.com/hook", "must not carry credentials"),
        ("http://169.254.169.254/latest/meta-data/", "webhooks may not reach 169.254.169.254"),
        ("http://100.100.100.200/latest/meta-data/", "webhooks may not reach 100.100.100.200"),
        ("http://[::ffff:169.254.169.254]/", "webhooks may not reach"),
        ("http://10.0.0.5/hook", "webhooks may not reach 10.0.0.5"),
        ("http://[::1]:8080/", "webhooks may not reach ::1"),
        ("http://example.com:0/", "port must be 1-65535"),
        ("http://exa mple.com/", "spaces or control characters"),
        ("https://", "names no host"),
        ("", "required"),
    ],
)
async def test_webhook_urls_that_are_refused(deps: AlertDeps, url: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why.replace("(", r"\(").replace("[", r"\[")):
        await subscribe(deps, target=url)


async def test_allow_list_never_opens_metadata(deps: AlertDeps) -> None:
    deps.webhook_policy = WebhookPolicy(allow=(ipaddress.ip_network("0.0.0.0/0"),))
    with pytest.raises(InvalidArgument, match="169.254.169.254"):
        await subscribe(deps, target="http://169.254.169.254/")
    assert (await subscribe(deps, target="http://10.0.0.5/hook")).target == "http://10.0.0.5/hook"


async def test_webhook_gets_a_secret_email_none(deps: AlertDeps) -> None:
    hook = await subscribe(deps, target="  https://hooks.example.com/T0/B0/secret-path  ")
    assert hook.target == "https://hooks.example.com/T0/B0/secret-path"
    assert len(hook.signing_secret) >= 40
    mail = await subscribe(deps, EMAIL, " ops@example.com ")
    assert (mail.target, mail.signing_secret) == ("ops@example.com", "")


@pytest.mark.parametrize(
    "address", ["ops@example.com\r\nBcc: victim@example.org", "Ops <ops@example.com>", "a@b@c", "no-at-sign", "@x.org"]
)
async def test_bad_email_addresses_are_refused(deps: AlertDeps, address: str) -> None:
    with pytest.raises(InvalidArgument, match="is not an email address"):
        await subscribe(deps, EMAIL, address)


async def test_email_without_smtp_relay_is_refused(deps: AlertDeps) -> None:
    deps.email_enabled = False
    with pytest.raises(FailedPrecondition, match="STRONGROOM_SMTP_HOST"):
        await subscribe(deps, EMAIL, "ops@example.com")


async def test_unknown_kind_and_channel_are_refused(deps: AlertDeps) -> None:
    with pytest.raises(InvalidArgument, match="unknown alert kind"):
        await subscribe(deps, kinds=[42])
    with pytest.raises(InvalidArgument, match="channel must be"):
        await subscribe(deps, channel=0)


async def test_viewers_and_operators_cannot_subscribe(deps: AlertDeps) -> None:
    for role in (Role.VIEWER, Role.OPERATOR):
        with pytest.raises(PermissionDenied):
            await subscribe(deps, principal=operator("token:x", {"acme": role}))


async def test_remove_own_subscription_only(deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock) -> None:
    hook = await subscribe(deps)
    await handlers.handle_alert_raised(alert(clock), deps)
    intruder = operator("token:other", {"other": Role.ADMIN})
    with pytest.raises(NotFound, match="not found"):
        await handlers.delete_subscription(deps, hook.subscription_id, call=call("DeleteSubscription", intruder))
    await handlers.delete_subscription(deps, hook.subscription_id, call=call("DeleteSubscription"))
    listed, _ = await handlers.list_subscriptions(deps, "acme", call=call("ListSubscriptions"))
    assert listed == [] and store.deliveries == []
    with pytest.raises(NotFound):
        await handlers.delete_subscription(deps, hook.subscription_id, call=call("DeleteSubscription"))


# --- in-app messages -------------------------------------------------------------------------


async def test_messages_page_newest_first_and_mark_read(deps: AlertDeps, clock: FakeClock) -> None:
    for n in range(5):
        await handlers.handle_alert_raised(alert(clock, job_id=f"j-{n}"), deps)
        clock.advance(60)
    pages: list[list[str]] = []
    token = ""
    while True:
        messages, token, unread = await handlers.list_messages(
            deps, "", unread_only=False, page_size=2, page_token=token, call=call("ListMessages")
        )
        pages.append([m.job_id for m in messages])
        assert unread == 5
        if not token:
            break
    assert pages == [["j-4", "j-3"], ["j-2", "j-1"], ["j-0"]]
    newest, _, _ = await handlers.list_messages(
        deps, "acme", unread_only=False, page_size=1, page_token="", call=call("ListMessages")
    )
    viewer = operator("token:viewer", {"acme": Role.VIEWER})
    with pytest.raises(PermissionDenied):
        await handlers.mark_messages_read(
            deps, "acme", [newest[0].message_id], all_messages=False, call=call("MarkMessagesRead", viewer)
        )
    operator_role = operator("token:operator", {"acme": Role.OPERATOR})
    marked = await handlers.mark_messages_read(
        deps,
        "acme",
        [newest[0].message_id, "not-a-message"],
        all_messages=False,
        call=call("MarkMessagesRead", operator_role),
    )
    assert marked == 1
    unread_only, _, unread = await handlers.list_messages(
        deps, "acme", unread_only=True, page_size=0, page_token="", call=call("ListMessages")
    )
    assert unread == 4 and [m.job_id for m in unread_only] == ["j-3", "j-2", "j-1", "j-0"]
    assert await handlers.mark_messages_read(deps, "acme", [], all_messages=True, call=call("MarkMessagesRead")) == 4
    assert await handlers.mark_messages_read(deps, "acme", [], all_messages=True, call=call("MarkMessagesRead")) == 0


async def test_messages_of_another_account_stay_unread_and_hidden(deps: AlertDeps, clock: FakeClock) -> None:
    await handlers.handle_alert_raised(alert(clock, account="other"), deps)
    intruder = operator("token:acme-admin", {"acme": Role.ADMIN})
    with pytest.raises(NotFound):
        await handlers.list_messages(
            deps, "other", unread_only=False, page_size=0, page_token="", call=call("ListMessages", intruder)
        )
    mine, _, _ = await handlers.list_messages(
        deps, "acme", unread_only=False, page_size=0, page_token="", call=call("ListMessages", intruder)
    )
    assert mine == []


async def test_bad_page_token_and_mark_arguments(deps: AlertDeps) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        await handlers.list_messages(
            deps, "acme", unread_only=False, page_size=0, page_token="garbage!", call=call("ListMessages")
        )
    with pytest.raises(InvalidArgument, match="not both"):
        await handlers.mark_messages_read(deps, "acme", [], all_messages=False, call=call("MarkMessagesRead"))
    with pytest.raises(InvalidArgument, match="not both"):
        await handlers.mark_messages_read(deps, "acme", ["m"], all_messages=True, call=call("MarkMessagesRead"))


# --- deliveries ------------------------------------------------------------------------------

POLICY = DeliveryPolicy(initial=10, maximum=40, max_attempts=4, lease=120)


async def test_delivery_succeeds_once(deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock) -> None:
    hook = await subscribe(deps)
    await handlers.handle_alert_raised(alert(clock), deps)
    sender = RecordingSender()
    assert await deliver_due(store, {WEBHOOK: sender}, clock, POLICY) == 1
    [sent] = sender.sent
    assert sent.signing_secret == hook.signing_secret and sent.message.job_id == "j-1"
    [delivery] = store.deliveries
    assert (delivery.state, delivery.attempts, delivery.finished_at) == (DELIVERED, 1, clock.now())
    assert await deliver_due(store, {WEBHOOK: sender}, clock, POLICY) == 0


async def test_failures_back_off_then_dead_letter_with_a_message(
    deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock
) -> None:
    await subscribe(deps)
    await handlers.handle_alert_raised(alert(clock), deps)
    sender = RecordingSender(failures=["HTTP 500"] * 10)
    senders = {WEBHOOK: sender}
    waits = []
    for attempt in range(1, 5):
        assert await deliver_due(store, senders, clock, POLICY) == 1
        [delivery] = store.deliveries
        assert (delivery.attempts, delivery.last_error) == (attempt, "HTTP 500")
        if attempt < 4:
            assert delivery.state == PENDING
            waits.append((delivery.next_attempt_at - clock.now()).total_seconds())
            clock.advance(waits[-1] - 1)
            assert await deliver_due(store, senders, clock, POLICY) == 0  # not before its backoff
            clock.advance(1)
    assert waits == [10, 20, 40]  # doubling, capped at the maximum
    [delivery] = store.deliveries
    assert (delivery.state, delivery.finished_at) == (DEAD, clock.now())
    clock.advance(3600)
    assert await deliver_due(store, senders, clock, POLICY) == 0
    notice = store.messages[-1]
    assert notice.kind == events_pb2.ALERT_KIND_DELIVERY_FAILED
    assert notice.title == "Alert delivery given up: webhook http://127.0.0.1:9/…"
    assert "after 4 attempts" in notice.body and "Last error: HTTP 500" in notice.body
    dead, _ = await handlers.list_deliveries(deps, "acme", state=DEAD, limit=0, call=call("ListDeliveries"))
    assert [d.delivery_id for d in dead] == [delivery.delivery_id]
    [(_, stats)], _ = await handlers.list_subscriptions(deps, "acme", call=call("ListSubscriptions"))
    assert (stats.delivered, stats.pending, stats.dead, stats.last_error) == (0, 0, 1, "HTTP 500")


async def test_a_delivery_whose_sender_died_is_taken_again_after_its_lease(
    deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock
) -> None:
    await subscribe(deps)
    await handlers.handle_alert_raised(alert(clock), deps)
    async with store.transaction() as tx:  # a worker claims it, then its process dies
        [claimed] = await tx.claim_due(clock.now(), clock.now() + dt.timedelta(seconds=POLICY.lease), 10)
    sender = RecordingSender()
    assert await deliver_due(store, {WEBHOOK: sender}, clock, POLICY) == 0
    clock.advance(POLICY.lease)
    assert await deliver_due(store, {WEBHOOK: sender}, clock, POLICY) == 1
    assert [o.delivery.delivery_id for o in sender.sent] == [claimed.delivery.delivery_id]
    assert store.deliveries[0].attempts == 2


async def test_a_channel_without_sender_fails_its_attempts(
    deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock
) -> None:
    await subscribe(deps, EMAIL, "ops@example.com")
    await handlers.handle_alert_raised(alert(clock), deps)
    await deliver_due(store, {WEBHOOK: RecordingSender()}, clock, POLICY)
    assert "not configured" in store.deliveries[0].last_error


async def test_missing_data_key_goes_to_the_operator_account(
    deps: AlertDeps, store: InMemoryAlertStore, clock: FakeClock
) -> None:
    event = events_pb2.AlertRaised(
        meta=new_meta("agent-gateway", clock.now()),
        kind=events_pb2.ALERT_KIND_DATA_KEY_MISSING,
        source="agent-gateway",
        reason="account acme: the data key is missing from the gateway database but held in the bucket",
        record_key=b"acme",
    )
    await handlers.handle_alert_raised(event, deps)
    [message] = store.messages
    assert (message.account_id, message.title) == ("platform-team", "Data key missing: account acme")
    assert message.body.startswith("account acme: the data key is missing")


async def test_subscriptions_and_deliveries_in_pages(deps: AlertDeps, clock: FakeClock) -> None:
    await check_subscription_and_delivery_pages(deps, clock)
