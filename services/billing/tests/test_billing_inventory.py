"""The overview over the inventory (ADR 0040): registered instances count, released ones do not,
the inventory's capacity wins; a reinstated instance is billed again. On the fake and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from billing_helpers import GIB, T0, activated, deactivated, expired, overview_call, point, registered, status_event
from strongroom.events.v1 import events_pb2
from strongroom_billing import handlers
from strongroom_billing.errors import InvalidArgument
from strongroom_billing.models import Usage
from strongroom_billing.ports import BillingStore
from strongroom_platform.events import new_meta


async def usage(store: BillingStore, region: str = "cn-hangzhou") -> tuple[int, int, int]:
    u: Usage = (await handlers.get_overview(store, "acme", region, call=overview_call())).usage
    return u.backed_up, u.unbacked_up, u.capacity_bytes


async def test_the_seed_overview_example_with_the_inventory(store: BillingStore) -> None:
    # 12 running instances: 5 activated with versions, 3 activated without, 4 not activated.
    for n in range(12):
        await registered(store, f"i{n}", activated=n < 8, capacity=40 * GIB)
    for n in range(8):
        await activated(store, f"i{n}")
    for n in range(5):
        await point(store, f"i{n}", f"v{n}", 10 * GIB)
    assert await usage(store) == (5, 7, 5 * 40 * GIB)  # the inventory's 40 GiB, not the agent's 10
    for n in range(5, 8):
        await point(store, f"i{n}", f"v{n}", 10 * GIB)
    assert await usage(store) == (8, 4, 8 * 40 * GIB)


async def test_released_instances_count_with_versions_only(store: BillingStore) -> None:
    await registered(store, "gone-with-versions", activated=True)
    await point(store, "gone-with-versions", "v1", 20 * GIB)
    await registered(store, "gone-without", activated=True)
    await registered(store, "gone-with-versions", activated=True, released=True, at=T0 + dt.timedelta(hours=1))
    await registered(store, "gone-without", activated=True, released=True, at=T0 + dt.timedelta(hours=1))
    # the seed: released instances that still have versions are backed up; un-backed-up counts
    # only unreleased instances
    assert await usage(store) == (1, 0, 20 * GIB)
    await expired(store, "gone-with-versions", "v1")
    assert await usage(store) == (0, 0, 0)


async def test_an_older_status_never_undoes_a_newer_one(store: BillingStore) -> None:
    await handlers.handle_instance_status_changed(
        status_event("i1", released=True, at=T0 + dt.timedelta(hours=2)), store
    )
    await handlers.handle_instance_status_changed(status_event("i1", at=T0 + dt.timedelta(hours=1)), store)
    assert await usage(store) == (0, 0, 0)  # still released


async def test_reinstated_instance_is_billed_again(store: BillingStore) -> None:
    await registered(store, "i1", activated=True)
    await activated(store, "i1")
    await point(store, "i1", "v1", 30 * GIB)
    await deactivated(store, "i1")
    assert await usage(store) == (0, 0, 0)
    event = events_pb2.InstanceReinstated(
        meta=new_meta("catalog", T0), account_id="acme", instance_id="i1", version_ids=["v1"]
    )
    await handlers.handle_instance_reinstated(event, store)
    await handlers.handle_instance_reinstated(event, store)
    assert await usage(store) == (1, 0, 30 * GIB)


async def test_a_status_without_its_instance_or_time_is_refused(store: BillingStore) -> None:
    with pytest.raises(InvalidArgument, match="without instance_id"):
        await handlers.handle_instance_status_changed(status_event(""), store)
    bad = status_event("i1")
    bad.meta.ClearField("occurred_at")
    with pytest.raises(InvalidArgument, match="occurred_at"):
        await handlers.handle_instance_status_changed(bad, store)
