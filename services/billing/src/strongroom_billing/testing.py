"""In-memory fake of ``BillingStore`` (serialized transactions, rollback on error)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal

from strongroom_platform.paging import keyset_slice
from strongroom_platform.testing import InMemoryTransactions, claim_once

from strongroom_billing.ledger import AccountDay, InstanceCharge, Plan, PlanBalance
from strongroom_billing.models import Usage


@dataclass
class _Instance:
    account_id: str
    region: str = ""
    activated: bool = False
    canceled: bool = False
    canceled_at: dt.datetime | None = None
    registered: bool = False
    released: bool = False
    inventory_capacity_bytes: int = 0
    status_at: dt.datetime | None = None
    # (as_of, capacity) of every inventory record received: the history the ledger bills from
    capacities: dict[dt.datetime, int] = field(default_factory=dict)

    def capacity_for(self, created_at: dt.datetime, end: dt.datetime) -> int:
        """The inventory's capacity when a version was created, else its first before ``end`` (0: none)."""
        before = [at for at in self.capacities if at <= created_at]
        if before:
            return self.capacities[max(before)]
        known = [at for at in self.capacities if at < end]
        return self.capacities[min(known)] if known else 0


@dataclass
class _Version:
    instance_id: str
    created_at: dt.datetime
    capacity_bytes: int
    expired: bool = False
    expired_at: dt.datetime | None = None


def _earliest(a: dt.datetime | None, b: dt.datetime) -> dt.datetime:
    return b if a is None else min(a, b)


@dataclass
class _State:
    instances: dict[str, _Instance] = field(default_factory=dict)
    versions: dict[str, _Version] = field(default_factory=dict)
    claimed: set[tuple[str, str]] = field(default_factory=set)
    closed_days: dict[dt.date, dt.datetime] = field(default_factory=dict)
    ledger_days: dict[tuple[str, dt.date], AccountDay] = field(default_factory=dict)
    ledger_instances: dict[tuple[str, dt.date, str], InstanceCharge] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)
    draws: dict[tuple[str, dt.date], Decimal] = field(default_factory=dict)


class InMemoryBillingTx:
    def __init__(self, state: _State) -> None:
        self._s = state

    async def claim_event(self, consumer: str, event_id: str) -> bool:
        return claim_once(self._s.claimed, consumer, event_id)

    def _instance(self, account_id: str, instance_id: str) -> _Instance:
        return self._s.instances.setdefault(instance_id, _Instance(account_id=account_id))

    async def instance_activated(self, account_id: str, instance_id: str, region: str) -> None:
        instance = self._instance(account_id, instance_id)
        instance.region = region
        instance.activated = True

    async def instance_canceled(self, account_id: str, instance_id: str, at: dt.datetime) -> None:
        instance = self._instance(account_id, instance_id)
        instance.canceled = True
        instance.canceled_at = _earliest(instance.canceled_at, at)

    async def instance_inventory(
        self,
        account_id: str,
        instance_id: str,
        region: str,
        *,
        released: bool,
        capacity_bytes: int,
        as_of: dt.datetime,
    ) -> bool:
        instance = self._instance(account_id, instance_id)
        instance.capacities.setdefault(as_of, capacity_bytes)
        if instance.status_at is not None and as_of < instance.status_at:
            return False
        instance.region, instance.registered, instance.released = region, True, released
        instance.inventory_capacity_bytes, instance.status_at = capacity_bytes, as_of
        return True

    async def instance_reinstated(self, account_id: str, instance_id: str) -> None:
        instance = self._s.instances.get(instance_id)
        if instance is not None and instance.account_id == account_id:
            instance.canceled, instance.canceled_at = False, None

    async def point_created(
        self, account_id: str, instance_id: str, version_id: str, created_at: dt.datetime, capacity_bytes: int
    ) -> None:
        self._instance(account_id, instance_id)
        version = self._s.versions.setdefault(version_id, _Version(instance_id, created_at, capacity_bytes))
        version.capacity_bytes = max(version.capacity_bytes, capacity_bytes)
        version.created_at = min(version.created_at, created_at)

    async def version_expired(self, account_id: str, instance_id: str, version_id: str, at: dt.datetime) -> None:
        version = self._s.versions.setdefault(version_id, _Version(instance_id, at, 0))
        version.expired = True
        version.expired_at = _earliest(version.expired_at, at)

    async def usage(self, account_id: str, region: str) -> Usage:
        backed_up = unbacked_up = capacity = 0
        for instance_id, instance in self._s.instances.items():
            if instance.account_id != account_id or instance.canceled or (region and instance.region != region):
                continue
            live = [v for v in self._s.versions.values() if v.instance_id == instance_id and not v.expired]
            if live:
                backed_up += 1
                capacity += instance.inventory_capacity_bytes or max(live, key=lambda v: v.created_at).capacity_bytes
            elif (instance.activated or instance.registered) and not instance.released:
                unbacked_up += 1
        return Usage(backed_up=backed_up, unbacked_up=unbacked_up, capacity_bytes=capacity)

    # -- the daily ledger --

    async def ledger_frontier(self) -> tuple[dt.date | None, dt.datetime | None]:
        created = [v.created_at for v in self._s.versions.values() if v.capacity_bytes > 0]
        return await self.last_closed_day(), min(created, default=None)

    async def last_closed_day(self) -> dt.date | None:
        return max(self._s.closed_days, default=None)

    async def charges_at(self, end: dt.datetime) -> list[InstanceCharge]:
        latest: dict[str, tuple[dt.datetime, str]] = {}
        for version_id, v in self._s.versions.items():
            instance = self._s.instances[v.instance_id]
            gone = v.expired and (v.expired_at is None or v.expired_at < end)
            canceled = instance.canceled and (instance.canceled_at is None or instance.canceled_at < end)
            if v.created_at >= end or gone or canceled:
                continue
            key = (v.created_at, version_id)
            if v.instance_id not in latest or key > latest[v.instance_id]:
                latest[v.instance_id] = key
        return [
            InstanceCharge(
                self._s.instances[i].account_id,
                i,
                version_id,
                self._s.instances[i].capacity_for(self._s.versions[version_id].created_at, end)
                or self._s.versions[version_id].capacity_bytes,
            )
            for i, (_, version_id) in sorted(latest.items())
        ]

    def _used(self, plan_id: str) -> Decimal:
        return sum((g for (p, _), g in self._s.draws.items() if p == plan_id), Decimal(0))

    async def plan_balances(self, day: dt.date) -> dict[str, list[PlanBalance]]:
        out: dict[str, list[PlanBalance]] = {}
        for plan in self._s.plans.values():
            remaining = plan.gib_days - self._used(plan.plan_id)
            if plan.starts_on <= day <= plan.ends_on and remaining > 0:
                out.setdefault(plan.account_id, []).append(PlanBalance(plan.plan_id, plan.ends_on, remaining))
        return out

    async def close_day(
        self, day: dt.date, rows: Sequence[AccountDay], charges: Sequence[InstanceCharge], at: dt.datetime
    ) -> bool:
        if day in self._s.closed_days:
            return False
        self._s.closed_days[day] = at
        for row in rows:
            self._s.ledger_days[(row.account_id, day)] = dataclasses.replace(row, draws=())
            for draw in row.draws:
                self._s.draws[(draw.plan_id, day)] = draw.gib_days
        for charge in charges:
            self._s.ledger_instances[(charge.account_id, day, charge.instance_id)] = charge
        return True

    async def ledger(self, account_id: str, first: dt.date, last: dt.date) -> list[AccountDay]:
        return [
            row
            for (account, day), row in sorted(self._s.ledger_days.items(), key=lambda kv: kv[0][1])
            if account == account_id and first <= day <= last
        ]

    async def ledger_instances(
        self,
        account_id: str,
        first: dt.date,
        last: dt.date,
        *,
        after: tuple[dt.date, str] | None = None,
        limit: int | None = None,
    ) -> list[tuple[dt.date, InstanceCharge]]:
        return [
            (day, charge)
            for (account, day, instance_id), charge in sorted(
                self._s.ledger_instances.items(), key=lambda kv: kv[0][1:]
            )
            if account == account_id and first <= day <= last and (after is None or (day, instance_id) > after)
        ][:limit]

    async def add_plan(self, plan: Plan) -> None:
        if plan.plan_id in self._s.plans:
            raise ValueError(f"plan {plan.plan_id} exists")
        self._s.plans[plan.plan_id] = plan

    async def plans(
        self, account_id: str, *, after: tuple[dt.date, str] | None = None, limit: int | None = None
    ) -> list[Plan]:
        mine = (
            dataclasses.replace(p, used_gib_days=self._used(p.plan_id))
            for p in self._s.plans.values()
            if p.account_id == account_id
        )
        return keyset_slice(mine, lambda p: (p.ends_on, p.plan_id), after, limit=limit)


class InMemoryBillingStore(InMemoryTransactions[_State]):
    def __init__(self) -> None:
        super().__init__(_State())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryBillingTx]:
        async with self._transaction_state() as state:
            yield InMemoryBillingTx(state)
