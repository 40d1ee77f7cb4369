"""gRPC ``AlertService``: convert, call ``alerts.handlers``; errors become status codes in ``grpc_errors``."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from strongroom.alerts.v1 import alerts_pb2, alerts_pb2_grpc
from strongroom_platform.auth import current_call
from strongroom_platform.events import to_timestamp

from strongroom_scheduler.alerts import handlers, webhook
from strongroom_scheduler.alerts.handlers import AlertDeps
from strongroom_scheduler.alerts.model import WEBHOOK, Delivery, Message, Subscription, SubscriptionStats

Context = grpc.aio.ServicerContext[object, object]


def subscription_to_proto(subscription: Subscription, stats: SubscriptionStats) -> alerts_pb2.Subscription:
    """Never the signing secret; a webhook URL shows its origin only (its path may hold a token)."""
    target = subscription.target
    if subscription.channel == WEBHOOK:
        target = webhook.display_target(target)
    return alerts_pb2.Subscription(
        subscription_id=subscription.subscription_id,
        account_id=subscription.account_id,
        channel=subscription.channel,  # type: ignore[arg-type]
        target=target,
        kinds=list(subscription.kinds),  # type: ignore[arg-type]
        created_at=to_timestamp(subscription.created_at),
        delivered=stats.delivered,
        pending=stats.pending,
        dead_lettered=stats.dead,
        last_error=stats.last_error,
    )


def message_to_proto(message: Message) -> alerts_pb2.Message:
    result = alerts_pb2.Message(
        message_id=message.message_id,
        kind=message.kind,  # type: ignore[arg-type]
        title=message.title,
        body=message.body,
        instance_id=message.instance_id,
        job_id=message.job_id,
        occurred_at=to_timestamp(message.occurred_at),
    )
    if message.read_at is not None:
        result.read_at.CopyFrom(to_timestamp(message.read_at))
    return result


def delivery_to_proto(delivery: Delivery) -> alerts_pb2.Delivery:
    target = webhook.display_target(delivery.target) if delivery.channel == WEBHOOK else delivery.target
    result = alerts_pb2.Delivery(
        delivery_id=delivery.delivery_id,
        subscription_id=delivery.subscription_id,
        message_id=delivery.message_id,
        channel=delivery.channel,  # type: ignore[arg-type]
        target=target,
        state=delivery.state,  # type: ignore[arg-type]
        attempts=delivery.attempts,
        last_error=delivery.last_error,
        created_at=to_timestamp(delivery.created_at),
    )
    if delivery.finished_at is None:
        result.next_attempt_at.CopyFrom(to_timestamp(delivery.next_attempt_at))
    else:
        result.finished_at.CopyFrom(to_timestamp(delivery.finished_at))
    return result


class AlertServicer(alerts_pb2_grpc.AlertServiceServicer):
    def __init__(self, deps: AlertDeps) -> None:
        self._deps = deps

    async def CreateSubscription(  # noqa: N802 (gRPC method name)
        self, request: alerts_pb2.CreateSubscriptionRequest, context: Context
    ) -> alerts_pb2.CreateSubscriptionResponse:
        subscription, stats = await handlers.create_subscription(
            self._deps,
            account_id=request.account_id,
            channel=request.channel,
            target=request.target,
            kinds=list(request.kinds),
            call=current_call(),
        )
        return alerts_pb2.CreateSubscriptionResponse(
            subscription=subscription_to_proto(subscription, stats), signing_secret=subscription.signing_secret
        )

    async def ListSubscriptions(  # noqa: N802
        self, request: alerts_pb2.ListSubscriptionsRequest, context: Context
    ) -> alerts_pb2.ListSubscriptionsResponse:
        found, next_page = await handlers.list_subscriptions(
            self._deps,
            request.account_id,
            page_size=request.page_size,
            page_token=request.page_token,
            call=current_call(),
        )
        return alerts_pb2.ListSubscriptionsResponse(
            subscriptions=[subscription_to_proto(s, st) for s, st in found], next_page_token=next_page
        )

    async def DeleteSubscription(  # noqa: N802
        self, request: alerts_pb2.DeleteSubscriptionRequest, context: Context
    ) -> alerts_pb2.DeleteSubscriptionResponse:
        await handlers.delete_subscription(self._deps, request.subscription_id, call=current_call())
        return alerts_pb2.DeleteSubscriptionResponse()

    async def ListMessages(  # noqa: N802
        self, request: alerts_pb2.ListMessagesRequest, context: Context
    ) -> alerts_pb2.ListMessagesResponse:
        messages, next_page, unread = await handlers.list_messages(
            self._deps,
            request.account_id,
            unread_only=request.unread_only,
            page_size=request.page_size,
            page_token=request.page_token,
            call=current_call(),
        )
        return alerts_pb2.ListMessagesResponse(
            messages=[message_to_proto(m) for m in messages], next_page_token=next_page, unread=unread
        )

    async def MarkMessagesRead(  # noqa: N802
        self, request: alerts_pb2.MarkMessagesReadRequest, context: Context
    ) -> alerts_pb2.MarkMessagesReadResponse:
        marked = await handlers.mark_messages_read(
            self._deps, request.account_id, list(request.message_ids), all_messages=request.all, call=current_call()
        )
        return alerts_pb2.MarkMessagesReadResponse(marked=marked)

    async def ListDeliveries(  # noqa: N802
        self, request: alerts_pb2.ListDeliveriesRequest, context: Context
    ) -> alerts_pb2.ListDeliveriesResponse:
        state = request.state or None
        deliveries, next_page = await handlers.list_deliveries(
            self._deps,
            request.account_id,
            state=state,
            limit=request.limit,
            page_size=request.page_size,
            page_token=request.page_token,
            call=current_call(),
        )
        return alerts_pb2.ListDeliveriesResponse(
            deliveries=[delivery_to_proto(d) for d in deliveries], next_page_token=next_page
        )


def register(servicer: AlertServicer) -> Callable[[grpc.aio.Server], None]:
    def add(server: grpc.aio.Server) -> None:
        alerts_pb2_grpc.add_AlertServiceServicer_to_server(servicer, server)

    return add
