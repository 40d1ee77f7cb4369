from __future__ import annotations

import pytest
from billing_helpers import GIB, activated, deactivated, expired, overview_call, point, point_event
from strongroom_billing import handlers
from strongroom_billing.errors import InvalidArgument
from strongroom_billing.models import FREE_QUOTA_BYTES, Usage
from strongroom_billing.ports import BillingStore


async def usage(store: BillingStore, region: str = "", account: str = "acme") -> Usage:
    return (await handlers.get_overview(store, account, region, call=overview_call(account))).usage


async def test_free_quota_is_100_gib() -> None:
    assert FREE_QUOTA_BYTES == 107374182400


async def test_seed_example(store: BillingStore) -> None:
    # 12 running instances in the region: 5 activated with versions, 3 activated without,
    # 4 never activated (billing never hears of those, so they are not counted here).
    for n in range(8):
        await activated(store, f"i{n}")
    for n in range(5):
        await point(store, f"i{n}", f"v{n}", 40 * GIB)
    view = await handlers.get_overview(store, "acme", "cn-hangzhou", call=overview_call())
    assert (view.usage.backed_up, view.usage.unbacked_up) == (5, 3)
    assert view.usage.capacity_bytes == 200 * GIB
    assert view.free_quota_bytes == 0  # quota figures belong to the all-regions view
    # after the 3 others get versions: 8 backed up, 0 (seed: 4, the never-activated ones) un-backed-up
    for n in range(5, 8):
        await point(store, f"i{n}", f"v{n}", 10 * GIB)
    total = await handlers.get_overview(store, "acme", "", call=overview_call())
    assert (total.usage.backed_up, total.usage.unbacked_up, total.usage.capacity_bytes) == (8, 0, 230 * GIB)
    assert total.free_quota_bytes == 100 * GIB
    assert total.free_quota_used_bytes == 100 * GIB
    assert total.billable_bytes == 130 * GIB


async def test_under_the_quota_nothing_is_billable(store: BillingStore) -> None:
    await activated(store, "a")
    await point(store, "a", "v1", 60 * GIB)
    total = await handlers.get_overview(store, "acme", "", call=overview_call())
    assert (total.free_quota_used_bytes, total.billable_bytes) == (60 * GIB, 0)


async def test_regions_and_accounts_are_separate(store: BillingStore) -> None:
    await activated(store, "a", region="r1")
    await activated(store, "b", region="r2")
    await activated(store, "c", region="r1", account="other")
    await point(store, "a", "va", 5 * GIB)
    await point(store, "c", "vc", 7 * GIB, account="other")
    assert await usage(store, "r1") == Usage(backed_up=1, unbacked_up=0, capacity_bytes=5 * GIB)
    assert await usage(store, "r2") == Usage(backed_up=0, unbacked_up=1, capacity_bytes=0)
    assert await usage(store, "") == Usage(backed_up=1, unbacked_up=1, capacity_bytes=5 * GIB)
    assert await usage(store, "", account="other") == Usage(backed_up=1, unbacked_up=0, capacity_bytes=7 * GIB)


async def test_capacity_comes_from_the_latest_version(store: BillingStore) -> None:
    await activated(store, "a")
    await point(store, "a", "v2", 80 * GIB, day=1)
    await point(store, "a", "v1", 40 * GIB, day=0)  # older version arriving late
    assert (await usage(store)).capacity_bytes == 80 * GIB
    # a second point of the same version does not count twice
    await point(store, "a", "v2", 80 * GIB, day=1, point="data")
    assert (await usage(store)).capacity_bytes == 80 * GIB
    await expired(store, "a", "v2")
    assert (await usage(store)).capacity_bytes == 40 * GIB


async def test_instance_without_versions_left_is_unbacked(store: BillingStore) -> None:
    await activated(store, "a")
    await point(store, "a", "v1", 40 * GIB)
    await expired(store, "a", "v1")
    assert await usage(store) == Usage(backed_up=0, unbacked_up=1, capacity_bytes=0)


async def test_expired_version_is_not_revived_by_a_late_point(store: BillingStore) -> None:
    await activated(store, "a")
    await expired(store, "a", "v1")
    await point(store, "a", "v1", 40 * GIB)
    assert await usage(store) == Usage(backed_up=0, unbacked_up=1, capacity_bytes=0)


async def test_canceled_instance_is_neither_counted_nor_billed(store: BillingStore) -> None:
    await activated(store, "a")
    await activated(store, "b")
    await point(store, "a", "v1", 300 * GIB)
    await deactivated(store, "a")
    await deactivated(store, "b")
    total = await handlers.get_overview(store, "acme", "", call=overview_call())
    assert total.usage == Usage(backed_up=0, unbacked_up=0, capacity_bytes=0)
    assert total.billable_bytes == 0
    await activated(store, "a")  # a late duplicate-looking activation does not revive it
    assert (await usage(store)).unbacked_up == 0


async def test_point_before_activation_counts_once_activation_arrives(store: BillingStore) -> None:
    await point(store, "a", "v1", 20 * GIB)
    assert await usage(store, "") == Usage(backed_up=1, unbacked_up=0, capacity_bytes=20 * GIB)
    assert await usage(store, "cn-hangzhou") == Usage(backed_up=0, unbacked_up=0, capacity_bytes=0)
    await activated(store, "a")
    assert await usage(store, "cn-hangzhou") == Usage(backed_up=1, unbacked_up=0, capacity_bytes=20 * GIB)


async def test_redelivered_events_apply_once(store: BillingStore) -> None:
    await activated(store, "a")
    event = point_event("a", "v1", 20 * GIB)
    await handlers.handle_point_created(event, store)
    await handlers.handle_point_created(event, store)
    assert (await usage(store)).capacity_bytes == 20 * GIB


async def test_event_without_ids_is_rejected(store: BillingStore) -> None:
    with pytest.raises(InvalidArgument, match="point-created without version_id"):
        await handlers.handle_point_created(point_event("a", "", 1), store)


async def test_the_credentials_only_account_and_bad_region(store: BillingStore) -> None:
    await activated(store, "a", account="default")
    assert (await handlers.get_overview(store, "", "", call=overview_call("default"))).usage.unbacked_up == 1
    with pytest.raises(InvalidArgument, match="surrounding spaces"):
        await handlers.get_overview(store, "acme", " r1", call=overview_call())
