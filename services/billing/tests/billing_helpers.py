"""Event builders for the billing tests."""

from __future__ import annotations

import datetime as dt

from strongroom.events.v1 import events_pb2
from strongroom_billing import handlers
from strongroom_billing.ports import BillingStore
from strongroom_platform.auth import CallAuth, Principal, Role, operator
from strongroom_platform.clock import utc
from strongroom_platform.events import new_meta, to_timestamp
from strongroom_platform.testing import call_for

GIB = 1 << 30
T0 = utc(2026, 1, 1)
GET_OVERVIEW = "/strongroom.billing.v1.BillingService/GetOverview"


def overview_call(principal: Principal | str = "acme") -> CallAuth:
    """The ``CallAuth`` of ``GetOverview`` by ``principal``; a string names the account of an admin."""
    if isinstance(principal, str):
        principal = operator(f"token:admin-of-{principal}", {principal: Role.ADMIN})
    return call_for(GET_OVERVIEW, principal)


async def activated(store: BillingStore, instance_id: str, region: str = "cn-hangzhou", account: str = "acme") -> None:
    event = events_pb2.InstanceActivated(
        meta=new_meta("scheduler", T0), account_id=account, instance_id=instance_id, region=region
    )
    await handlers.handle_instance_activated(event, store)


async def deactivated(store: BillingStore, instance_id: str, account: str = "acme") -> None:
    event = events_pb2.InstanceDeactivated(meta=new_meta("scheduler", T0), account_id=account, instance_id=instance_id)
    await handlers.handle_instance_deactivated(event, store)


def point_event(
    instance_id: str, version_id: str, capacity: int, *, day: int = 0, point: str = "p", account: str = "acme"
) -> events_pb2.PointCreated:
    return events_pb2.PointCreated(
        meta=new_meta("agent-gateway", T0),
        account_id=account,
        instance_id=instance_id,
        version_id=version_id,
        point_id=f"{version_id}-{point}",
        version_created_at=to_timestamp(T0 + dt.timedelta(days=day)),
        instance_capacity_bytes=capacity,
    )


async def point(store: BillingStore, instance_id: str, version_id: str, capacity: int, **kwargs: object) -> None:
    await handlers.handle_point_created(point_event(instance_id, version_id, capacity, **kwargs), store)  # type: ignore[arg-type]


async def expired(store: BillingStore, instance_id: str, version_id: str, account: str = "acme") -> None:
    event = events_pb2.VersionExpired(
        meta=new_meta("catalog", T0), account_id=account, instance_id=instance_id, version_id=version_id
    )
    await handlers.handle_version_expired(event, store)


def status_event(
    instance_id: str,
    *,
    activated: bool = False,
    released: bool = False,
    capacity: int = 0,
    at: dt.datetime = T0,
    region: str = "cn-hangzhou",
    account: str = "acme",
) -> events_pb2.InstanceStatusChanged:
    """The scheduler's instance-status-changed of an inventory instance (ADR 0040)."""
    return events_pb2.InstanceStatusChanged(
        meta=new_meta("scheduler", at),
        account_id=account,
        instance_id=instance_id,
        region=region,
        activated=activated,
        released=released,
        inventory_capacity_bytes=capacity,
    )


async def registered(store: BillingStore, instance_id: str, **kwargs: object) -> None:
    await handlers.handle_instance_status_changed(status_event(instance_id, **kwargs), store)  # type: ignore[arg-type]
