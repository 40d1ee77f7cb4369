"""In-memory fake of ``BillingStore`` (serialized transactions, rollback on error)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from strongroom_platform.testing import InMemoryTransactions, claim_once

from strongroom_billing.models import Usage


@dataclass
class _Instance:
    account_id: str
    region: str = ""
    activated: bool = False
    canceled: bool = False


@dataclass
class _Version:
    instance_id: str
    created_at: dt.datetime
    capacity_bytes: int
    expired: bool = False


class _State:
    def __init__(self) -> None:
        self.instances: dict[str, _Instance] = {}
        self.versions: dict[str, _Version] = {}
        self.claimed: set[tuple[str, str]] = set()


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

    async def instance_canceled(self, account_id: str, instance_id: str) -> None:
        self._instance(account_id, instance_id).canceled = True

    async def point_created(
        self, account_id: str, instance_id: str, version_id: str, created_at: dt.datetime, capacity_bytes: int
    ) -> None:
        self._instance(account_id, instance_id)
        version = self._s.versions.setdefault(version_id, _Version(instance_id, created_at, capacity_bytes))
        version.capacity_bytes = max(version.capacity_bytes, capacity_bytes)

    async def version_expired(self, account_id: str, instance_id: str, version_id: str, at: dt.datetime) -> None:
        self._s.versions.setdefault(version_id, _Version(instance_id, at, 0)).expired = True

    async def usage(self, account_id: str, region: str) -> Usage:
        backed_up = unbacked_up = capacity = 0
        for instance_id, instance in self._s.instances.items():
            if instance.account_id != account_id or instance.canceled or (region and instance.region != region):
                continue
            live = [v for v in self._s.versions.values() if v.instance_id == instance_id and not v.expired]
            if live:
                backed_up += 1
                capacity += max(live, key=lambda v: v.created_at).capacity_bytes
            elif instance.activated:
                unbacked_up += 1
        return Usage(backed_up=backed_up, unbacked_up=unbacked_up, capacity_bytes=capacity)


class InMemoryBillingStore(InMemoryTransactions[_State]):
    def __init__(self) -> None:
        super().__init__(_State())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryBillingTx]:
        async with self._transaction_state() as state:
            yield InMemoryBillingTx(state)
