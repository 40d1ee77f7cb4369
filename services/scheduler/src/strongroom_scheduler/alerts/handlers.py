"""The alert pipeline's logic: fan an ``alert-raised`` event out to the account's in-app messages and
subscriptions, and the operator calls on subscriptions, messages and deliveries.

Like ``strongroom_scheduler.handlers``: plain functions over the ``AlertStore`` port, one
transaction each, errors raised as ``errors.*`` with a message meant for the operator.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from strongroom.events.v1 import events_pb2
from strongroom_platform import audit, paging
from strongroom_platform.auth import CallAuth, authorize, choose_account
from strongroom_platform.clock import Clock
from strongroom_platform.events import from_timestamp

from strongroom_scheduler.alerts import webhook
from strongroom_scheduler.alerts.model import (
    CHANNELS,
    KNOWN_KINDS,
    PENDING,
    PLATFORM_KINDS,
    WEBHOOK,
    Delivery,
    Message,
    Subscription,
    SubscriptionStats,
    kind_name,
    render,
)
from strongroom_scheduler.alerts.ports import AlertStore
from strongroom_scheduler.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

ALERT_CONSUMER = "scheduler.alert-raised"
DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_SUBSCRIPTIONS = 50
MAX_LIST_PAGE = 1000  # also the default page of subscriptions: more than an account may have
MAX_MARK_IDS = 1000
MAX_EMAIL_LENGTH = 254
# One address, no display name, no header-breaking characters: the SMTP envelope and To: use it as is.
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*$")


@dataclass
class AlertDeps:
    """What the alert handlers need.

    ``operator_account`` receives platform alerts (dead-lettered records; "" = logged only).
    ``email_enabled``: an SMTP relay is configured. ``wake`` is set when deliveries were queued,
    so the delivery worker starts at once instead of at its next poll.
    """

    store: AlertStore
    clock: Clock
    webhook_policy: webhook.WebhookPolicy
    operator_account: str = ""
    email_enabled: bool = False
    wake: asyncio.Event | None = None


# --- the consumer of alert-raised ------------------------------------------------------------


async def handle_alert_raised(event: events_pb2.AlertRaised, deps: AlertDeps) -> None:
    """One in-app message per alert, and one pending delivery per subscription that wants its kind.

    Idempotent by event id. Platform alerts (poison records, a missing data key) go to
    ``deps.operator_account``; an account alert
    without its account or instance is refused (``InvalidArgument``: dead-lettered).
    """
    kind = int(event.kind)
    if kind not in KNOWN_KINDS:
        log.warning("alert-raised %s of unknown kind %d ignored", event.meta.event_id, kind)
        return
    if kind in PLATFORM_KINDS:
        account = deps.operator_account
        log.warning(
            "ALERT %s source=%s topic=%s offset=%d: %s",
            kind_name(kind),
            event.source,
            event.topic,
            event.offset,
            event.reason,
        )
        if not account:
            return
    else:
        if not event.account_id or not event.instance_id:
            raise InvalidArgument(
                f"alert-raised {event.meta.event_id} ({kind_name(kind)}) lacks its account or instance"
            )
        account = event.account_id
        log.warning(
            "ALERT %s account=%s instance=%s job=%s: %s",
            kind_name(kind),
            account,
            event.instance_id,
            event.job_id,
            event.reason,
        )
    title, body = render(event)
    now = deps.clock.now()
    occurred = from_timestamp(event.meta.occurred_at) if event.meta.HasField("occurred_at") else now
    queued = 0
    async with deps.store.transaction() as tx:
        if not await tx.claim_event(ALERT_CONSUMER, event.meta.event_id):
            return
        message = Message(
            message_id=str(uuid.uuid4()),
            account_id=account,
            alert_event_id=event.meta.event_id,
            kind=kind,
            title=title,
            body=body,
            instance_id=event.instance_id,
            job_id=event.job_id,
            occurred_at=occurred,
            created_at=now,
        )
        if not await tx.insert_message(message):
            return
        for subscription in await tx.list_subscriptions(account):
            if not subscription.wants(kind):
                continue
            await tx.insert_delivery(
                Delivery(
                    delivery_id=str(uuid.uuid4()),
                    subscription_id=subscription.subscription_id,
                    account_id=account,
                    message_id=message.message_id,
                    channel=subscription.channel,
                    target=subscription.target,
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            queued += 1
    if queued and deps.wake is not None:
        deps.wake.set()


# --- subscriptions ---------------------------------------------------------------------------


def _kinds(kinds: Sequence[int]) -> tuple[int, ...]:
    unknown = sorted({k for k in kinds if k not in KNOWN_KINDS})
    if unknown:
        valid = ", ".join(kind_name(k) for k in sorted(KNOWN_KINDS))
        raise InvalidArgument(f"unknown alert kind(s) {', '.join(map(str, unknown))}; valid: {valid}")
    return tuple(sorted(set(kinds)))


def validate_email(address: str) -> str:
    """The address, stripped, if it is one plain address (no display name, no header injection)."""
    address = address.strip()
    if len(address) > MAX_EMAIL_LENGTH or not _EMAIL.match(address):
        raise InvalidArgument(f"{address[:100]!r} is not an email address (one address such as ops@example.com)")
    return address


async def create_subscription(
    deps: AlertDeps, *, account_id: str, channel: int, target: str, kinds: Sequence[int], call: CallAuth
) -> tuple[Subscription, SubscriptionStats]:
    """Subscribe a webhook or an email address to alerts of ``choose_account(account_id)``.

    A webhook gets a new signing secret (in the returned subscription; it is listed never again).
    """
    account = choose_account(account_id.strip(), call=call)
    if channel not in CHANNELS:
        raise InvalidArgument("channel must be CHANNEL_WEBHOOK or CHANNEL_EMAIL")
    wanted = _kinds(kinds)
    if channel == WEBHOOK:
        try:
            target = webhook.validate_url(target, deps.webhook_policy)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        secret = secrets.token_urlsafe(32)
    else:
        if not deps.email_enabled:
            raise FailedPrecondition(
                "email alerts are not configured on this deployment: set STRONGROOM_SMTP_HOST on the scheduler"
            )
        target = validate_email(target)
        secret = ""
    subscription = Subscription(
        subscription_id=str(uuid.uuid4()),
        account_id=account,
        channel=channel,
        target=target,
        kinds=wanted,
        signing_secret=secret,
        created_at=deps.clock.now(),
    )
    async with deps.store.transaction() as tx:
        existing = await tx.list_subscriptions(account)
        if len(existing) >= MAX_SUBSCRIPTIONS:
            raise FailedPrecondition(
                f"account {account} has {len(existing)} alert subscriptions, the most allowed; remove one first"
            )
        await tx.insert_subscription(subscription)
    audit.note(subscription_id=subscription.subscription_id)
    return subscription, SubscriptionStats()


async def list_subscriptions(
    deps: AlertDeps, account_id: str, *, page_size: int = 0, page_token: str = "", call: CallAuth
) -> tuple[list[tuple[Subscription, SubscriptionStats]], str]:
    """One page of the account's subscriptions, oldest first, with their delivery counts; the next
    page's token ("" on the last)."""
    account = choose_account(account_id.strip(), call=call)
    limit = paging.page_size(page_size, MAX_LIST_PAGE, MAX_LIST_PAGE)
    after = paging.token_position(page_token)
    async with deps.store.transaction() as tx:
        found = await tx.list_subscriptions(account, after=after, limit=limit + 1)
        subscriptions, token = paging.keyset_page(found, limit, lambda s: (s.created_at, s.subscription_id))
        stats = await tx.subscription_stats([s.subscription_id for s in subscriptions])
    return [(s, stats.get(s.subscription_id, SubscriptionStats())) for s in subscriptions], token


async def delete_subscription(deps: AlertDeps, subscription_id: str, *, call: CallAuth) -> None:
    """Remove a subscription of an account the caller administers (another's is NotFound)."""
    subscription_id = subscription_id.strip()
    if not subscription_id:
        raise InvalidArgument("subscription_id is required")

    def not_found() -> NotFound:
        return NotFound(f"alert subscription {subscription_id} not found")

    async with deps.store.transaction() as tx:
        subscription = await tx.get_subscription(subscription_id)
        if subscription is None:
            raise not_found()
        authorize(subscription.account_id, not_found, call=call)
        await tx.delete_subscription(subscription_id)
    audit.note(subscription_id=subscription_id)


# --- in-app messages -------------------------------------------------------------------------


async def list_messages(
    deps: AlertDeps, account_id: str, *, unread_only: bool, page_size: int, page_token: str, call: CallAuth
) -> tuple[list[Message], str, int]:
    """One page of the account's messages, newest first; the next page's token ("" on the last) and
    the count of unread messages."""
    account = choose_account(account_id.strip(), call=call)
    limit = paging.page_size(page_size, DEFAULT_PAGE, MAX_PAGE)
    after = paging.token_position(page_token)
    async with deps.store.transaction() as tx:
        messages = await tx.list_messages(account, unread_only=unread_only, after=after, limit=limit + 1)
        unread = await tx.count_unread(account)
    page, token = paging.keyset_page(messages, limit, lambda m: (m.created_at, m.message_id))
    return page, token, unread


async def mark_messages_read(
    deps: AlertDeps, account_id: str, message_ids: Sequence[str], *, all_messages: bool, call: CallAuth
) -> int:
    """Mark the given messages (or with ``all_messages`` every unread one) of the account read;
    ids of other accounts' messages change nothing. Returns how many were unread."""
    account = choose_account(account_id.strip(), call=call)
    ids = sorted({m.strip() for m in message_ids if m.strip()})
    if all_messages == bool(ids):
        raise InvalidArgument("name the messages to mark read, or ask for all of them (not both)")
    if len(ids) > MAX_MARK_IDS:
        raise InvalidArgument(f"at most {MAX_MARK_IDS} message ids per call")
    async with deps.store.transaction() as tx:
        return await tx.mark_read(account, None if all_messages else ids, deps.clock.now())


async def list_deliveries(
    deps: AlertDeps,
    account_id: str,
    *,
    state: int | None,
    limit: int,
    page_size: int = 0,
    page_token: str = "",
    call: CallAuth,
) -> tuple[list[Delivery], str]:
    """One page of the account's deliveries, newest first (``limit`` is the page size when
    ``page_size`` is 0, its name before pages); the next page's token ("" on the last)."""
    account = choose_account(account_id.strip(), call=call)
    size = paging.page_size(page_size or limit, DEFAULT_PAGE, MAX_PAGE)
    after = paging.token_position(page_token)
    async with deps.store.transaction() as tx:
        found = await tx.list_deliveries(account, state, size + 1, after)
    return paging.keyset_page(found, size, lambda d: (d.created_at, d.delivery_id))
