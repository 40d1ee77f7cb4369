"""``strongroom messages list|read`` and ``strongroom alerts subscribe|list|remove|deliveries`` (ADR 0037)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable

from strongroom.alerts.v1 import alerts_pb2
from strongroom.events.v1 import events_pb2

from strongroom_cli import output
from strongroom_cli.context import Context, UsageError
from strongroom_cli.pages import every_page

_CHANNELS = {"webhook": alerts_pb2.CHANNEL_WEBHOOK, "email": alerts_pb2.CHANNEL_EMAIL}
_STATES = {
    "pending": alerts_pb2.DELIVERY_STATE_PENDING,
    "delivered": alerts_pb2.DELIVERY_STATE_DELIVERED,
    "dead": alerts_pb2.DELIVERY_STATE_DEAD,
}
_NOT_SUBSCRIBABLE = ("ALERT_KIND_UNSPECIFIED", "ALERT_KIND_DELIVERY_FAILED")  # the latter is in-app only


def _kind_choices() -> list[str]:
    return [
        name.removeprefix("ALERT_KIND_").lower()
        for name, _ in events_pb2.AlertKind.items()
        if name not in _NOT_SUBSCRIBABLE
    ]


def register(groups: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    messages = groups.add_parser("messages", help="in-app messages: failed backups and restores, and more")
    actions = messages.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("list", parents=[common], help="the account's messages, newest first")
    p.add_argument("--unread", action="store_true", help="unread messages only")
    p.add_argument("--limit", type=int, default=50, help="at most this many messages (default 50)")
    p.set_defaults(command=list_messages)
    p = actions.add_parser("read", parents=[common], help="mark messages read")
    p.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
    p.add_argument("--all", action="store_true", help="every unread message of the account")
    p.set_defaults(command=mark_read)

    alerts = groups.add_parser("alerts", help="alert subscriptions: webhooks and email (admins)")
    actions = alerts.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("subscribe", parents=[common], help="send the account's alerts to a webhook or address")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--webhook", metavar="URL", help="http(s) URL receiving signed JSON POSTs")
    target.add_argument("--email", metavar="ADDRESS", help="email address")
    p.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=_kind_choices(),
        help="only this kind (repeatable; default: every kind)",
    )
    p.set_defaults(command=subscribe)
    p = actions.add_parser("list", parents=[common], help="the account's subscriptions and their delivery counts")
    p.set_defaults(command=list_subscriptions)
    p = actions.add_parser("remove", parents=[common], help="remove a subscription (admins)")
    p.add_argument("subscription_id")
    p.set_defaults(command=remove)
    p = actions.add_parser("deliveries", parents=[common], help="webhook and email deliveries, newest first")
    p.add_argument("--state", choices=sorted(_STATES), help="only deliveries in this state")
    p.add_argument("--limit", type=int, default=50, help="at most this many, newest first (default 50; 0 = all)")
    p.set_defaults(command=list_deliveries)


def _kind(kind: int) -> str:
    try:
        return events_pb2.AlertKind.Name(kind).removeprefix("ALERT_KIND_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(kind)


async def list_messages(context: Context) -> int:
    args = context.args
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    request = alerts_pb2.ListMessagesRequest(account_id=context.account_id, unread_only=args.unread)
    messages: list[alerts_pb2.Message] = []
    unread = 0
    while len(messages) < args.limit:
        request.page_size = min(args.limit - len(messages), 500)
        page = await context.alerts().ListMessages(request, **context.call)
        messages += page.messages
        unread = page.unread
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if context.json:
        output.as_json(messages)
        return 0
    rows = [
        [
            m.message_id,
            output.timestamp(m.occurred_at),
            "" if m.HasField("read_at") else "*",
            _kind(m.kind),
            m.title,
        ]
        for m in messages
    ]
    output.table(["MESSAGE", "WHEN", "NEW", "KIND", "TITLE"], rows)
    for m in messages:
        print(f"\n{m.message_id}: {m.body}")
    print(f"\n{unread} unread")
    return 0


async def mark_read(context: Context) -> int:
    args = context.args
    if bool(args.message_ids) == bool(args.all):
        raise UsageError("name the messages to mark read, or give --all")
    request = alerts_pb2.MarkMessagesReadRequest(
        account_id=context.account_id, message_ids=args.message_ids, all=args.all
    )
    result = await context.alerts().MarkMessagesRead(request, **context.call)
    if context.json:
        output.as_json(result)
        return 0
    print(f"{result.marked} message(s) marked read")
    return 0


def _subscription_rows(subscriptions: list[alerts_pb2.Subscription]) -> list[list[str]]:
    return [
        [
            s.subscription_id,
            alerts_pb2.Channel.Name(s.channel).removeprefix("CHANNEL_").lower(),
            s.target,
            ",".join(_kind(k) for k in s.kinds) or "all",
            f"{s.delivered}/{s.pending}/{s.dead_lettered}",
            s.last_error or "-",
        ]
        for s in subscriptions
    ]


_SUBSCRIPTION_HEADERS = ["SUBSCRIPTION", "CHANNEL", "TARGET", "KINDS", "DELIVERED/PENDING/DEAD", "LAST ERROR"]


async def subscribe(context: Context) -> int:
    args = context.args
    channel = _CHANNELS["webhook" if args.webhook else "email"]
    request = alerts_pb2.CreateSubscriptionRequest(
        account_id=context.account_id,
        channel=channel,
        target=args.webhook or args.email,
        kinds=[events_pb2.AlertKind.Value(f"ALERT_KIND_{k.upper()}") for k in args.kind],
    )
    result = await context.alerts().CreateSubscription(request, **context.call)
    if context.json:
        output.as_json(result)
        return 0
    output.table(_SUBSCRIPTION_HEADERS, _subscription_rows([result.subscription]))
    if result.signing_secret:
        print(
            f"\nsigning secret (shown once; keep it to verify the Strongroom-Signature header): {result.signing_secret}"
        )
    return 0


async def list_subscriptions(context: Context) -> int:
    def fetch(token: str, size: int) -> Awaitable[alerts_pb2.ListSubscriptionsResponse]:
        request = alerts_pb2.ListSubscriptionsRequest(account_id=context.account_id, page_size=size, page_token=token)
        return context.alerts().ListSubscriptions(request, **context.call)

    result = alerts_pb2.ListSubscriptionsResponse(subscriptions=await every_page(fetch, lambda p: p.subscriptions))
    if context.json:
        output.as_json(result)
        return 0
    output.table(_SUBSCRIPTION_HEADERS, _subscription_rows(list(result.subscriptions)))
    return 0


async def remove(context: Context) -> int:
    request = alerts_pb2.DeleteSubscriptionRequest(subscription_id=context.args.subscription_id)
    result = await context.alerts().DeleteSubscription(request, **context.call)
    if context.json:
        output.as_json(result)
        return 0
    print(f"subscription {context.args.subscription_id} removed")
    return 0


async def list_deliveries(context: Context) -> int:
    args = context.args

    def fetch(token: str, size: int) -> Awaitable[alerts_pb2.ListDeliveriesResponse]:
        request = alerts_pb2.ListDeliveriesRequest(account_id=context.account_id, page_size=size, page_token=token)
        if args.state:
            request.state = _STATES[args.state]
        return context.alerts().ListDeliveries(request, **context.call)

    found = await every_page(fetch, lambda page: page.deliveries, limit=max(args.limit, 0))
    result = alerts_pb2.ListDeliveriesResponse(deliveries=found)
    if context.json:
        output.as_json(result)
        return 0
    rows = [
        [
            d.delivery_id,
            output.timestamp(d.created_at),
            alerts_pb2.DeliveryState.Name(d.state).removeprefix("DELIVERY_STATE_").lower(),
            d.target,
            str(d.attempts),
            d.last_error or "-",
        ]
        for d in result.deliveries
    ]
    output.table(["DELIVERY", "CREATED", "STATE", "TARGET", "ATTEMPTS", "LAST ERROR"], rows)
    return 0
