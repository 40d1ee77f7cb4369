"""The billing store port; adapters in ``repository`` (PostgreSQL) and ``testing`` (in memory).

Events arrive on different topics, so in any order: every write is an
upsert that only moves facts forward (activated, canceled and expired never
revert), and an instance first seen through a point is created without a
region until its activation arrives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from strongroom_platform.db import InboxTx

from strongroom_billing.ledger import AccountDay, InstanceCharge, Plan, PlanBalance
from strongroom_billing.models import Usage


class BillingTx(InboxTx, Protocol):
    async def instance_activated(self, account_id: str, instance_id: str, region: str) -> None: ...

    async def instance_canceled(self, account_id: str, instance_id: str, at: dt.datetime) -> None:
        """Backups of the instance were canceled at ``at`` (the earliest time seen is kept)."""
        ...

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
        """Record the inventory's view of the instance (ADR 0040) unless a newer one (``as_of``) was
        applied; returns whether it was."""
        ...

    async def instance_reinstated(self, account_id: str, instance_id: str) -> None:
        """A canceled instance's versions were reinstated: it is billed again."""
        ...

    async def point_created(
        self, account_id: str, instance_id: str, version_id: str, created_at: dt.datetime, capacity_bytes: int
    ) -> None:
        """A point of ``version_id`` exists; the version's capacity is the largest any of its points reported."""
        ...

    async def version_expired(self, account_id: str, instance_id: str, version_id: str, at: dt.datetime) -> None:
        """The version is gone for good (a later point of it does not bring it back)."""
        ...

    async def usage(self, account_id: str, region: str) -> Usage:
        """Usage of the account in ``region`` ("" = all regions)."""
        ...

    # -- the daily ledger (ADR 0036) --

    async def ledger_frontier(self) -> tuple[dt.date | None, dt.datetime | None]:
        """(the last closed day, the creation time of the earliest version known); None when there is none."""
        ...

    async def charges_at(self, end: dt.datetime) -> list[InstanceCharge]:
        """Every instance's latest version created before ``end`` that was neither expired nor its
        instance canceled at ``end``; one per instance, any account."""
        ...

    async def plan_balances(self, day: dt.date) -> dict[str, list[PlanBalance]]:
        """Per account, the plans valid on ``day`` with GiB-days left."""
        ...

    async def close_day(
        self, day: dt.date, rows: Sequence[AccountDay], charges: Sequence[InstanceCharge], at: dt.datetime
    ) -> bool:
        """Write ``day``'s ledger (rows, per-instance charges, plan draws) once; False if it was already closed."""
        ...

    async def ledger(self, account_id: str, first: dt.date, last: dt.date) -> list[AccountDay]:
        """The account's ledger rows of ``first``..``last``, oldest first (``draws`` left empty)."""
        ...

    async def ledger_instances(
        self,
        account_id: str,
        first: dt.date,
        last: dt.date,
        *,
        after: tuple[dt.date, str] | None = None,
        limit: int | None = None,
    ) -> list[tuple[dt.date, InstanceCharge]]:
        """The account's per-instance charges of those days, by day then instance; ``after`` (day,
        instance_id) starts after that row, ``limit`` caps the rows."""
        ...

    async def last_closed_day(self) -> dt.date | None: ...

    async def add_plan(self, plan: Plan) -> None: ...

    async def plans(
        self, account_id: str, *, after: tuple[dt.date, str] | None = None, limit: int | None = None
    ) -> list[Plan]:
        """The account's plans, with what has been drawn from each, by (ends_on, plan_id bytewise);
        ``after``: strictly after that position; at most ``limit`` (None: all)."""
        ...


class BillingStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[BillingTx]: ...
