"""The billing store port; adapters in ``repository`` (PostgreSQL) and ``testing`` (in memory).

Events arrive on different topics, so in any order: every write is an
upsert that only moves facts forward (activated, canceled and expired never
revert), and an instance first seen through a point is created without a
region until its activation arrives.
"""

from __future__ import annotations

import datetime as dt
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from strongroom_platform.db import InboxTx

from strongroom_billing.models import Usage


class BillingTx(InboxTx, Protocol):
    async def instance_activated(self, account_id: str, instance_id: str, region: str) -> None: ...

    async def instance_canceled(self, account_id: str, instance_id: str) -> None: ...

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


class BillingStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[BillingTx]: ...
