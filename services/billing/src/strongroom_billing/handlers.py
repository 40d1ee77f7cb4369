"""Billing logic: apply instance and point events (idempotently), compute the overview."""

from __future__ import annotations

import logging

from strongroom.events.v1 import events_pb2
from strongroom_platform.auth import CallAuth, choose_account
from strongroom_platform.events import from_timestamp

from strongroom_billing.errors import InvalidArgument
from strongroom_billing.models import Overview, overview
from strongroom_billing.ports import BillingStore

log = logging.getLogger(__name__)

CONSUMER = "billing"
DEFAULT_ACCOUNT = "default"


def _require(value: str, what: str, event: str) -> None:
    if not value:
        raise InvalidArgument(f"{event} without {what}")


async def handle_instance_activated(event: events_pb2.InstanceActivated, store: BillingStore) -> None:
    _require(event.instance_id, "instance_id", "instance-activated")
    async with store.transaction() as tx:
        if await tx.claim_event(CONSUMER, event.meta.event_id):
            await tx.instance_activated(event.account_id or DEFAULT_ACCOUNT, event.instance_id, event.region)


async def handle_instance_deactivated(event: events_pb2.InstanceDeactivated, store: BillingStore) -> None:
    _require(event.instance_id, "instance_id", "instance-deactivated")
    async with store.transaction() as tx:
        if await tx.claim_event(CONSUMER, event.meta.event_id):
            await tx.instance_canceled(event.account_id or DEFAULT_ACCOUNT, event.instance_id)


async def handle_point_created(event: events_pb2.PointCreated, store: BillingStore) -> None:
    _require(event.instance_id, "instance_id", "point-created")
    _require(event.version_id, "version_id", "point-created")
    created_at = from_timestamp(
        event.version_created_at if event.HasField("version_created_at") else event.meta.occurred_at
    )
    async with store.transaction() as tx:
        if await tx.claim_event(CONSUMER, event.meta.event_id):
            await tx.point_created(
                event.account_id or DEFAULT_ACCOUNT,
                event.instance_id,
                event.version_id,
                created_at,
                event.instance_capacity_bytes,
            )


async def handle_version_expired(event: events_pb2.VersionExpired, store: BillingStore) -> None:
    _require(event.instance_id, "instance_id", "version-expired")
    _require(event.version_id, "version_id", "version-expired")
    async with store.transaction() as tx:
        if await tx.claim_event(CONSUMER, event.meta.event_id):
            await tx.version_expired(
                event.account_id or DEFAULT_ACCOUNT,
                event.instance_id,
                event.version_id,
                from_timestamp(event.meta.occurred_at),
            )


async def get_overview(store: BillingStore, account_id: str, region: str, *, call: CallAuth) -> Overview:
    """The seed's overview of one region, or of all regions (with the free quota) when ``region`` is empty.

    Of the account ``choose_account(account_id)`` picks (ADR 0024): empty = the credential's only one.
    """
    account = choose_account(account_id.strip(), call=call)
    if region != region.strip():
        raise InvalidArgument(f"region must not have surrounding spaces, got {region!r}")
    async with store.transaction() as tx:
        usage = await tx.usage(account, region)
    return overview(usage, all_regions=not region)
