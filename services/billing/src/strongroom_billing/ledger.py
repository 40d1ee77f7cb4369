"""The daily ledger: which capacity each account is billed for on a day, and the fee (ADR 0036).

The seed's rule: the fee of day D is computed from the block-storage capacity of each instance's
*latest valid backup version created before the 00:00 that ends D* (in the billing zone, default
UTC+8). There is no fee before an instance's first version; a skipped day is billed on the latest
valid version. The free quota (100 GiB) is per account, across regions:

    fee = max(0, Σ capacity − 100 GiB) × price per GiB-day      (Decimal, 4 places, half up)

Resource plans (prepaid GiB-days) are drawn first, soonest-ending plan first; only what they do
not cover is charged. Everything here is plain arithmetic on values the store hands over.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from strongroom_billing.models import FREE_QUOTA_BYTES, GIB

__all__ = [
    "AccountDay",
    "InstanceCharge",
    "Plan",
    "PlanBalance",
    "PlanDraw",
    "close_day",
    "day_end",
    "days_to_close",
    "gib",
    "money",
]

_PLACES = Decimal("0.0001")


def money(value: Decimal) -> Decimal:
    """``value`` to 4 decimal places, half up: how every fee and GiB-day figure is stored."""
    return value.quantize(_PLACES, rounding=ROUND_HALF_UP)


def gib(nbytes: int) -> Decimal:
    """Bytes as GiB, exactly (a Decimal; 2^30 divides into a finite decimal)."""
    return Decimal(nbytes) / Decimal(GIB)


def day_end(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    """The instant ``day`` ends in ``zone``: the 00:00 that starts the next day, as UTC."""
    midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    return midnight.astimezone(dt.UTC)


def days_to_close(
    last_closed: dt.date | None,
    earliest_version: dt.datetime | None,
    now: dt.datetime,
    zone: dt.tzinfo,
    grace: dt.timedelta,
) -> list[dt.date]:
    """The days whose ledger can be written now, oldest first.

    A day closes ``grace`` after it ends, so that the events of its last minutes (a point created
    at 23:59) have arrived. The first day is the one of the earliest version: nothing is owed before.
    """
    if earliest_version is None:
        return []
    first = earliest_version.astimezone(zone).date() if last_closed is None else last_closed + dt.timedelta(days=1)
    days: list[dt.date] = []
    day = first
    while day_end(day, zone) + grace <= now:
        days.append(day)
        day += dt.timedelta(days=1)
    return days


@dataclass(frozen=True, slots=True)
class InstanceCharge:
    """One instance's billed capacity on a day: that of its latest valid version before the day's end."""

    account_id: str
    instance_id: str
    version_id: str
    capacity_bytes: int


@dataclass(frozen=True, slots=True)
class PlanBalance:
    """A resource plan with GiB-days left, usable on the day being closed."""

    plan_id: str
    ends_on: dt.date
    remaining_gib_days: Decimal


@dataclass(frozen=True, slots=True)
class Plan:
    """A resource plan: ``gib_days`` prepaid GiB-days usable on days ``starts_on``..``ends_on``."""

    plan_id: str
    account_id: str
    gib_days: Decimal
    starts_on: dt.date
    ends_on: dt.date
    created_at: dt.datetime
    used_gib_days: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class PlanDraw:
    plan_id: str
    gib_days: Decimal


@dataclass(frozen=True, slots=True)
class AccountDay:
    """One account's ledger row for one day."""

    account_id: str
    day: dt.date
    instances: int
    capacity_bytes: int
    billable_gib: Decimal
    price_per_gib_day: Decimal
    fee: Decimal  # before plans
    plan_gib_days: Decimal  # drawn from plans
    charged: Decimal  # the fee plans did not cover
    draws: tuple[PlanDraw, ...]


def _draw(plans: Iterable[PlanBalance], need: Decimal) -> tuple[PlanDraw, ...]:
    draws: list[PlanDraw] = []
    for plan in sorted(plans, key=lambda p: (p.ends_on, p.plan_id)):
        if need <= 0:
            break
        take = min(plan.remaining_gib_days, need)
        if take > 0:
            draws.append(PlanDraw(plan.plan_id, take))
            need -= take
    return tuple(draws)


def close_day(
    day: dt.date,
    charges: Iterable[InstanceCharge],
    plans: Mapping[str, Sequence[PlanBalance]],
    price_per_gib_day: Decimal,
) -> list[AccountDay]:
    """The ledger rows of ``day``: one per account with at least one billed instance."""
    capacity: dict[str, int] = {}
    instances: dict[str, int] = {}
    for charge in charges:
        capacity[charge.account_id] = capacity.get(charge.account_id, 0) + charge.capacity_bytes
        instances[charge.account_id] = instances.get(charge.account_id, 0) + 1
    rows: list[AccountDay] = []
    for account_id in sorted(capacity):
        billable = money(gib(max(0, capacity[account_id] - FREE_QUOTA_BYTES)))
        draws = _draw(plans.get(account_id, ()), billable)
        covered = sum((d.gib_days for d in draws), Decimal(0))
        rows.append(
            AccountDay(
                account_id=account_id,
                day=day,
                instances=instances[account_id],
                capacity_bytes=capacity[account_id],
                billable_gib=billable,
                price_per_gib_day=price_per_gib_day,
                fee=money(billable * price_per_gib_day),
                plan_gib_days=money(covered),
                charged=money((billable - covered) * price_per_gib_day),
                draws=draws,
            )
        )
    return rows
