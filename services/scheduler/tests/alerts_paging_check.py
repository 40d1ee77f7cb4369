"""Paging of alert subscriptions and deliveries (issue 14), run against the fake store and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from strongroom.events.v1 import events_pb2
from strongroom_platform.alerts import account_alert
from strongroom_platform.auth import Role, operator
from strongroom_platform.errors import InvalidArgument
from strongroom_platform.testing import FakeClock, call_for
from strongroom_scheduler.alerts import handlers
from strongroom_scheduler.alerts.handlers import AlertDeps
from strongroom_scheduler.alerts.model import WEBHOOK

T = TypeVar("T")
ADMIN = operator("token:admin", {"acme": Role.ADMIN})


def _call(method: str):  # type: ignore[no-untyped-def]
    return call_for("/strongroom.alerts.v1.AlertService/" + method, ADMIN)


async def _pages(read: Callable[[str], Awaitable[tuple[list[T], str]]]) -> list[list[T]]:
    pages: list[list[T]] = []
    token = ""
    while True:
        items, token = await read(token)
        pages.append(items)
        if not token:
            return pages


async def check_subscription_and_delivery_pages(deps: AlertDeps, clock: FakeClock) -> None:
    made = []
    for n in range(5):
        subscription, _ = await handlers.create_subscription(
            deps,
            account_id="acme",
            channel=WEBHOOK,
            target=f"http://127.0.0.1:9/hook/{n}",
            kinds=[],
            call=_call("CreateSubscription"),
        )
        made.append(subscription.subscription_id)
        if n % 2:  # pairs share a creation time: the id breaks the tie
            clock.advance(60)

    async def subscriptions(token: str) -> tuple[list[str], str]:
        found, next_page = await handlers.list_subscriptions(
            deps, "acme", page_size=2, page_token=token, call=_call("ListSubscriptions")
        )
        return [s.subscription_id for s, _ in found], next_page

    pages = await _pages(subscriptions)
    assert [len(p) for p in pages] == [2, 2, 1]
    whole, last = await handlers.list_subscriptions(deps, "acme", call=_call("ListSubscriptions"))
    assert [s for p in pages for s in p] == [s.subscription_id for s, _ in whole] and last == ""
    assert sorted(made) == sorted(s.subscription_id for s, _ in whole)

    for job in ("j-1", "j-2"):  # each alert: one delivery per subscription
        clock.advance(60)
        event = account_alert(
            events_pb2.ALERT_KIND_BACKUP_FAILED,
            producer="scheduler",
            now=clock.now(),
            account_id="acme",
            instance_id="i-1",
            instance_name="web-1",
            job_id=job,
            reason="the source root /data does not exist",
        )
        await handlers.handle_alert_raised(event, deps)

    async def deliveries(token: str) -> tuple[list[str], str]:
        found, next_page = await handlers.list_deliveries(
            deps, "acme", state=None, limit=0, page_size=4, page_token=token, call=_call("ListDeliveries")
        )
        return [d.delivery_id for d in found], next_page

    pages = await _pages(deliveries)
    assert [len(p) for p in pages] == [4, 4, 2]
    every, last = await handlers.list_deliveries(deps, "acme", state=None, limit=500, call=_call("ListDeliveries"))
    assert [d for p in pages for d in p] == [d.delivery_id for d in every] and last == ""
    assert [d.created_at for d in every] == sorted((d.created_at for d in every), reverse=True)
    # the old name: limit is the page size when page_size is 0
    some, token = await handlers.list_deliveries(deps, "acme", state=None, limit=3, call=_call("ListDeliveries"))
    assert len(some) == 3 and token

    for bad in ("garbage!", "bm90LWEtZGF0ZXxrZXk="):
        with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
            await handlers.list_subscriptions(deps, "acme", page_token=bad, call=_call("ListSubscriptions"))
        with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
            await handlers.list_deliveries(
                deps, "acme", state=None, limit=0, page_token=bad, call=_call("ListDeliveries")
            )
