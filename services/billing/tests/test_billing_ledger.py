"""The daily ledger (ADR 0036): the seed's billing rules, against the fake and PostgreSQL alike."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from billing_helpers import GIB, registered
from strongroom.events.v1 import events_pb2
from strongroom_billing import handlers, ledger
from strongroom_billing.errors import InvalidArgument, NotFound
from strongroom_billing.ledger import InstanceCharge, PlanBalance
from strongroom_billing.ports import BillingStore
from strongroom_billing.settings import LedgerSettings
from strongroom_platform import paging
from strongroom_platform.auth import CallAuth, Role, operator
from strongroom_platform.events import new_meta, to_timestamp
from strongroom_platform.testing import FakeClock, call_for
from strongroom_platform.zones import DEFAULT_ZONE

UTC8 = DEFAULT_ZONE
PRICE = Decimal("0.0005")
SETTINGS = LedgerSettings(zone=UTC8, price_per_gib_day=PRICE, grace=dt.timedelta(hours=1))


def at8(day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    """December ``day`` 2026, ``hour``:``minute`` in UTC+8, as an aware instant."""
    return dt.datetime(2026, 12, day, hour, minute, tzinfo=UTC8)


def call(method: str, account: str = "acme", role: Role = Role.ADMIN) -> CallAuth:
    return call_for(f"/strongroom.billing.v1.BillingService/{method}", operator(f"token:{account}", {account: role}))


async def point(
    store: BillingStore, instance: str, version: str, capacity: int, when: dt.datetime, account: str = "acme"
) -> None:
    event = events_pb2.PointCreated(
        meta=new_meta("agent-gateway", when),
        account_id=account,
        instance_id=instance,
        version_id=version,
        point_id=f"{version}-p",
        version_created_at=to_timestamp(when),
        instance_capacity_bytes=capacity,
    )
    await handlers.handle_point_created(event, store)


async def expired(store: BillingStore, instance: str, version: str, when: dt.datetime) -> None:
    event = events_pb2.VersionExpired(
        meta=new_meta("catalog", when), account_id="acme", instance_id=instance, version_id=version
    )
    await handlers.handle_version_expired(event, store)


async def canceled(store: BillingStore, instance: str, when: dt.datetime) -> None:
    event = events_pb2.InstanceDeactivated(meta=new_meta("scheduler", when), account_id="acme", instance_id=instance)
    await handlers.handle_instance_deactivated(event, store)


async def days(store: BillingStore, first: str, last: str, account: str = "acme") -> dict[str, ledger.AccountDay]:
    view = await handlers.list_ledger(store, account, first, last, False, call=call("ListLedger", account))
    return {d.day.isoformat(): d for d in view.days}


# -- pure rules ---------------------------------------------------------------------------------


def test_a_day_ends_at_midnight_in_the_billing_zone() -> None:
    assert ledger.day_end(dt.date(2026, 12, 1), UTC8) == dt.datetime(2026, 12, 1, 16, 0, tzinfo=dt.UTC)


def test_a_day_closes_after_its_grace_and_not_before_the_first_version() -> None:
    grace = dt.timedelta(hours=1)
    assert ledger.days_to_close(None, None, at8(10), UTC8, grace) == []
    first = at8(1, 9)
    assert ledger.days_to_close(None, first, at8(2, 0, 59), UTC8, grace) == []
    assert ledger.days_to_close(None, first, at8(2, 1), UTC8, grace) == [dt.date(2026, 12, 1)]
    assert ledger.days_to_close(dt.date(2026, 12, 1), first, at8(4, 2), UTC8, grace) == [
        dt.date(2026, 12, 2),
        dt.date(2026, 12, 3),
    ]


def test_the_seed_example_three_instances_of_40_50_60_gib() -> None:
    charges = [InstanceCharge("acme", f"i{n}", f"v{n}", size * GIB) for n, size in enumerate((40, 50, 60))]
    [row] = ledger.close_day(dt.date(2026, 12, 1), charges, {}, PRICE)
    assert (row.instances, row.capacity_bytes) == (3, 150 * GIB)
    assert row.billable_gib == Decimal("50.0000")  # 150 GiB less the free 100 GiB
    assert row.fee == row.charged == Decimal("0.0250")  # 50 x 0.0005
    assert row.plan_gib_days == Decimal(0)


def test_under_the_free_quota_the_fee_is_zero_and_fees_round_half_up_to_4_places() -> None:
    [row] = ledger.close_day(dt.date(2026, 12, 1), [InstanceCharge("a", "i", "v", 100 * GIB)], {}, PRICE)
    assert (row.billable_gib, row.fee) == (Decimal(0), Decimal(0))
    odd = InstanceCharge("a", "i", "v", 100 * GIB + GIB // 2)  # 0.5 GiB over
    [row] = ledger.close_day(dt.date(2026, 12, 1), [odd], {}, Decimal("0.00015"))
    assert row.fee == Decimal("0.0001")  # 0.000075 rounds half up


def test_plans_are_drawn_soonest_ending_first_and_only_the_rest_is_charged() -> None:
    charges = [InstanceCharge("a", "i", "v", 130 * GIB)]  # 30 GiB billable
    plans = {
        "a": [
            PlanBalance("late", dt.date(2027, 6, 1), Decimal(100)),
            PlanBalance("soon", dt.date(2027, 1, 1), Decimal(20)),
        ]
    }
    [row] = ledger.close_day(dt.date(2026, 12, 1), charges, plans, PRICE)
    assert [(d.plan_id, d.gib_days) for d in row.draws] == [("soon", Decimal(20)), ("late", Decimal(10))]
    assert row.plan_gib_days == Decimal(30)
    assert (row.fee, row.charged) == (Decimal("0.0150"), Decimal("0.0000"))


# -- behaviour, fake and PostgreSQL ------------------------------------------------------------


async def test_no_fee_before_the_first_version_then_daily_rows(store: BillingStore) -> None:
    clock = FakeClock(at8(1, 12))
    assert await handlers.close_ledger_days(store, clock, SETTINGS) == []
    for n, size in enumerate((40, 50, 60)):
        await point(store, f"i{n}", f"v{n}", size * GIB, at8(2, 3))
    clock.set(at8(4, 2))
    assert await handlers.close_ledger_days(store, clock, SETTINGS) == [dt.date(2026, 12, 2), dt.date(2026, 12, 3)]
    rows = await days(store, "2026-12-01", "2026-12-03")
    assert sorted(rows) == ["2026-12-02", "2026-12-03"]  # nothing on the 1st: no version yet
    for row in rows.values():
        assert (row.capacity_bytes, row.billable_gib, row.fee) == (150 * GIB, Decimal(50), Decimal("0.0250"))
    assert await handlers.close_ledger_days(store, clock, SETTINGS) == []  # each day once


async def test_the_latest_version_before_midnight_decides_and_a_skipped_day_keeps_it(store: BillingStore) -> None:
    await point(store, "i1", "v1", 120 * GIB, at8(1, 3))
    await point(store, "i1", "v2", 150 * GIB, at8(1, 23, 59))  # disk grown; before the 2nd's midnight
    await point(store, "i1", "v3", 200 * GIB, at8(3, 0, 1))  # after the 3rd began: billed from the 3rd
    # no version on the 2nd (a skipped backup): the 2nd is billed on v2
    clock = FakeClock(at8(5, 2))
    await handlers.close_ledger_days(store, clock, SETTINGS)
    rows = await days(store, "2026-12-01", "2026-12-04")
    assert {d: r.capacity_bytes // GIB for d, r in rows.items()} == {
        "2026-12-01": 150,
        "2026-12-02": 150,
        "2026-12-03": 200,
        "2026-12-04": 200,
    }
    view = await handlers.list_ledger(store, "acme", "2026-12-02", "2026-12-02", True, call=call("ListLedger"))
    assert [(c.instance_id, c.version_id) for c in view.instances[dt.date(2026, 12, 2)]] == [("i1", "v2")]


async def test_a_day_is_billed_with_the_inventory_capacity_of_its_version_not_todays(store: BillingStore) -> None:
    # The inventory says 40 GiB; the agent's filesystems report 7. The disk grows to 80 GiB on the
    # 3rd at noon, after that day's version; the 4th's version is the first made with 80 GiB.
    await registered(store, "i1", activated=True, capacity=40 * GIB, at=at8(1, 1))
    await point(store, "i1", "v1", 7 * GIB, at8(1, 3))
    await point(store, "i1", "v2", 7 * GIB, at8(2, 3))
    await point(store, "i1", "v3", 7 * GIB, at8(3, 3))
    await registered(store, "i1", activated=True, capacity=80 * GIB, at=at8(3, 12))
    await point(store, "i1", "v4", 7 * GIB, at8(4, 3))
    # closed later (on the 6th), when the inventory already says 80 GiB
    await handlers.close_ledger_days(store, FakeClock(at8(6, 2)), SETTINGS)
    rows = await days(store, "2026-12-01", "2026-12-05")
    assert {d: r.capacity_bytes // GIB for d, r in rows.items()} == {
        "2026-12-01": 40,
        "2026-12-02": 40,
        "2026-12-03": 40,  # the 3rd's version was made with 40 GiB attached
        "2026-12-04": 80,
        "2026-12-05": 80,  # skipped: billed on the 4th's version
    }
    # a late, older inventory record changes nothing already closed, and an instance the inventory
    # never described is billed on the agent's report
    await point(store, "i2", "w1", 7 * GIB, at8(6, 3))
    await handlers.close_ledger_days(store, FakeClock(at8(7, 2)), SETTINGS)
    view = await handlers.list_ledger(store, "acme", "2026-12-06", "2026-12-06", True, call=call("ListLedger"))
    assert [(c.instance_id, c.capacity_bytes // GIB) for c in view.instances[dt.date(2026, 12, 6)]] == [
        ("i1", 80),
        ("i2", 7),
    ]


async def test_an_inventory_record_after_the_version_still_wins_over_the_agent(store: BillingStore) -> None:
    # An agent enrolled on a host the inventory learned of only later that day.
    await point(store, "i1", "v1", 7 * GIB, at8(1, 3))
    await registered(store, "i1", activated=True, capacity=40 * GIB, at=at8(1, 9))
    await handlers.close_ledger_days(store, FakeClock(at8(3, 2)), SETTINGS)
    rows = await days(store, "2026-12-01", "2026-12-02")
    assert {d: r.capacity_bytes // GIB for d, r in rows.items()} == {"2026-12-01": 40, "2026-12-02": 40}


async def test_expired_versions_and_canceled_instances_stop_billing(store: BillingStore) -> None:
    await point(store, "i1", "v1", 150 * GIB, at8(1, 3))
    await point(store, "i2", "w1", 60 * GIB, at8(1, 3))
    await expired(store, "i1", "v1", at8(3, 12))  # gone during the 3rd
    await canceled(store, "i2", at8(2, 12))  # canceled during the 2nd
    clock = FakeClock(at8(5, 2))
    await handlers.close_ledger_days(store, clock, SETTINGS)
    rows = await days(store, "2026-12-01", "2026-12-04")
    assert {d: r.capacity_bytes // GIB for d, r in rows.items()} == {"2026-12-01": 210, "2026-12-02": 150}


async def test_a_plan_offsets_the_fee_until_it_is_used_up(store: BillingStore) -> None:
    clock = FakeClock(at8(1, 0))
    plan = await handlers.create_plan(store, clock, "acme", "75", "2026-12-01", "2026-12-31", call=call("CreatePlan"))
    await point(store, "i1", "v1", 150 * GIB, at8(1, 3))  # 50 GiB billable a day
    clock.set(at8(4, 2))
    await handlers.close_ledger_days(store, clock, SETTINGS)
    rows = await days(store, "2026-12-01", "2026-12-03")
    assert [(r.plan_gib_days, r.charged) for r in rows.values()] == [
        (Decimal(50), Decimal(0)),
        (Decimal(25), Decimal("0.0125")),
        (Decimal(0), Decimal("0.0250")),
    ]
    [listed], _ = await handlers.list_plans(store, "acme", call=call("ListPlans"))
    assert (listed.plan_id, listed.gib_days, listed.used_gib_days) == (plan.plan_id, Decimal(75), Decimal(75))


async def test_another_account_sees_none_of_it(store: BillingStore) -> None:
    await point(store, "i1", "v1", 150 * GIB, at8(1, 3))
    await point(store, "x1", "xv", 300 * GIB, at8(1, 3), account="other")
    await handlers.close_ledger_days(store, FakeClock(at8(2, 2)), SETTINGS)
    assert (await days(store, "2026-12-01", "2026-12-01"))["2026-12-01"].capacity_bytes == 150 * GIB
    with pytest.raises(NotFound):
        await handlers.list_ledger(store, "other", "", "", False, call=call("ListLedger"))
    with pytest.raises(NotFound):
        await handlers.list_plans(store, "other", call=call("ListPlans"))


@pytest.mark.parametrize(
    ("gib_days", "starts", "ends", "message"),
    [
        ("ten", "2026-12-01", "2026-12-31", "decimal number"),
        ("-5", "2026-12-01", "2026-12-31", "positive"),
        ("NaN", "2026-12-01", "2026-12-31", "positive"),
        ("1.00001", "2026-12-01", "2026-12-31", "4 decimal places"),
        ("10", "2026-12-31", "2026-12-01", "before starts_on"),
        ("10", "12/01/2026", "2026-12-31", "YYYY-MM-DD"),
    ],
)
async def test_bad_plans_are_refused_clearly(
    store: BillingStore, gib_days: str, starts: str, ends: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await handlers.create_plan(store, FakeClock(), "acme", gib_days, starts, ends, call=call("CreatePlan"))


async def test_ledger_ranges_are_bounded(store: BillingStore) -> None:
    with pytest.raises(InvalidArgument, match="at most 366"):
        await handlers.list_ledger(store, "acme", "2025-01-01", "2026-12-01", False, call=call("ListLedger"))
    with pytest.raises(InvalidArgument, match="after to_day"):
        await handlers.list_ledger(store, "acme", "2026-12-02", "2026-12-01", False, call=call("ListLedger"))
    assert (await handlers.list_ledger(store, "acme", "", "", False, call=call("ListLedger"))).days == []


# -- pages (issue 14) ------------------------------------------------------------------------------


async def ledger_pages(store: BillingStore, page_size: int, include_instances: bool) -> list[handlers.LedgerView]:
    pages: list[handlers.LedgerView] = []
    token = ""
    while True:
        view = await handlers.list_ledger(
            store,
            "acme",
            "2026-12-01",
            "2026-12-04",
            include_instances,
            page_size=page_size,
            page_token=token,
            call=call("ListLedger"),
        )
        pages.append(view)
        if not view.next_page_token:
            return pages
        token = view.next_page_token


async def test_the_ledger_lists_in_pages_of_days_and_cuts_a_day_whose_rows_do_not_fit(
    store: BillingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        await point(store, f"i{n}", f"v{n}", 10 * GIB, at8(1, 3))
    await handlers.close_ledger_days(store, FakeClock(at8(5, 2)), SETTINGS)
    by_day = await ledger_pages(store, 1, False)
    assert [[d.day.day for d in p.days] for p in by_day] == [[1], [2], [3], [4]]
    assert [[d.day.day for d in p.days] for p in await ledger_pages(store, 0, False)] == [[1, 2, 3, 4]]

    monkeypatch.setattr(handlers, "MAX_LEDGER_INSTANCE_ROWS", 4)
    pages = await ledger_pages(store, 3, True)
    # a cut day comes again on the next page, with the rows after the cut
    assert [[d.day.day for d in p.days] for p in pages] == [[1, 2], [2, 3], [3, 4]]
    rows = [(day.day, c.instance_id) for p in pages for day, charges in p.instances.items() for c in charges]
    assert rows == [(d, f"i{n}") for d in range(1, 5) for n in range(3)]  # every row once, in order


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        paging.position_token(dt.datetime(2026, 12, 1, 5, tzinfo=dt.UTC), "day"),  # not a day's start
        paging.position_token(dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "in:"),  # no instance
        paging.position_token(dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "elsewhere"),
    ],
)
async def test_a_forged_ledger_page_token_is_refused(store: BillingStore, token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
        await handlers.list_ledger(
            store, "acme", "2026-12-01", "2026-12-04", False, page_token=token, call=call("ListLedger")
        )


async def test_plans_are_listed_in_pages_by_end_date_ties_by_id_in_byte_order(store: BillingStore) -> None:
    clock = FakeClock(at8(1))
    made = []
    for ends_on in ("2026-12-31", "2026-12-10", "2026-12-31", "2027-01-31", "2026-12-10"):
        plan = await handlers.create_plan(store, clock, "acme", "10", "2026-12-01", ends_on, call=call("CreatePlan"))
        made.append((plan.ends_on, plan.plan_id.encode(), plan.plan_id))
    pages: list[list[str]] = []
    token = ""
    while True:
        plans, token = await handlers.list_plans(store, "acme", page_size=2, page_token=token, call=call("ListPlans"))
        pages.append([p.plan_id for p in plans])
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [plan_id for p in pages for plan_id in p] == [plan_id for *_, plan_id in sorted(made)]
    whole, last = await handlers.list_plans(store, "acme", call=call("ListPlans"))
    assert [p.plan_id for p in whole] == [plan_id for p in pages for plan_id in p] and last == ""
    for bad in ("garbage!", paging.position_token(at8(1), "")):
        with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
            await handlers.list_plans(store, "acme", page_token=bad, call=call("ListPlans"))
