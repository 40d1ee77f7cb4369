"""In-memory fake of the verification store: the gateway fake plus the verification tables."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from strongroom_platform.paging import keyset_slice

from strongroom_gateway.ports import ChunkLocation, Pack, Point
from strongroom_gateway.testing import InMemoryGatewayStore, InMemoryGatewayTx, _State
from strongroom_gateway.verify.model import (
    DamagedFile,
    DamagedPack,
    PointCheck,
    Progress,
    Recoverability,
    State,
    Verification,
)


@dataclasses.dataclass
class VerifyState:
    verifications: dict[str, Verification] = dataclasses.field(default_factory=dict)
    leases: dict[str, tuple[str, dt.datetime]] = dataclasses.field(default_factory=dict)
    files: dict[str, dict[int, DamagedFile]] = dataclasses.field(default_factory=dict)
    packs: dict[str, dict[str, DamagedPack]] = dataclasses.field(default_factory=dict)
    pack_checks: dict[str, tuple[dt.datetime, int, str]] = dataclasses.field(default_factory=dict)
    point_checks: dict[str, PointCheck] = dataclasses.field(default_factory=dict)
    days: dict[dt.date, str] = dataclasses.field(default_factory=dict)


class InMemoryVerifyStore(InMemoryGatewayStore):
    """The gateway fake with the verification tables; transactions roll both back together."""

    def __init__(self) -> None:
        super().__init__()
        self.verify_state = VerifyState()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryVerifyTx]:
        async with self._lock:
            snapshot, verify_snapshot = self._state.copy(), copy.deepcopy(self.verify_state)
            try:
                yield InMemoryVerifyTx(self._state, self.verify_state)
            except BaseException:
                self._state, self.verify_state = snapshot, verify_snapshot
                raise


class InMemoryVerifyTx(InMemoryGatewayTx):
    def __init__(self, state: _State, verify: VerifyState) -> None:
        super().__init__(state)
        self._v = verify

    async def list_points(self, account_id: str, instance_id: str | None = None) -> list[Point]:
        points = [
            p
            for p in self._s.points.values()
            if p.account_id == account_id and (instance_id is None or p.instance_id == instance_id)
        ]
        return sorted(points, key=lambda p: (p.created_at, p.point_id))

    async def pack_chunks(self, pack_id: str) -> tuple[Pack | None, list[ChunkLocation]]:
        pack = self._s.packs.get(pack_id)
        if pack is None:
            return None, []
        chunks = [c for c in self._s.chunks.values() if c.pack_id == pack_id]
        return pack, sorted(chunks, key=lambda c: c.offset)

    async def insert_verification(self, verification: Verification) -> None:
        if verification.verification_id in self._v.verifications:
            raise ValueError(f"duplicate verification {verification.verification_id}")
        self._v.verifications[verification.verification_id] = verification

    async def get_verification(self, verification_id: str) -> Verification | None:
        return self._v.verifications.get(verification_id)

    async def list_verifications(
        self, account_id: str, instance_id: str | None, limit: int, after: tuple[dt.datetime, str] | None = None
    ) -> list[Verification]:
        found = (
            v
            for v in self._v.verifications.values()
            if v.account_id == account_id and (instance_id is None or v.instance_id == instance_id)
        )
        return keyset_slice(found, lambda v: (v.created_at, v.verification_id), after, descending=True, limit=limit)

    async def claim_verification(self, owner: str, now: dt.datetime, lease_until: dt.datetime) -> Verification | None:
        candidates = [
            v
            for v in self._v.verifications.values()
            if v.state == "queued" or (v.state == "running" and self._v.leases[v.verification_id][1] < now)
        ]
        if not candidates:
            return None
        v = min(candidates, key=lambda v: v.created_at)
        if v.state == "running":
            self._v.files.pop(v.verification_id, None)
            self._v.packs.pop(v.verification_id, None)
        claimed = dataclasses.replace(v, state="running", started_at=v.started_at or now, progress=Progress())
        self._v.verifications[v.verification_id] = claimed
        self._v.leases[v.verification_id] = (owner, lease_until)
        return claimed

    def _held(self, verification_id: str, owner: str) -> Verification | None:
        v = self._v.verifications.get(verification_id)
        lease = self._v.leases.get(verification_id)
        if v is None or v.state != "running" or lease is None or lease[0] != owner:
            return None
        return v

    async def update_progress(
        self, verification_id: str, owner: str, progress: Progress, lease_until: dt.datetime
    ) -> bool:
        v = self._held(verification_id, owner)
        if v is None:
            return False
        self._v.verifications[verification_id] = dataclasses.replace(v, progress=progress)
        self._v.leases[verification_id] = (owner, lease_until)
        return True

    async def finish_verification(
        self, verification_id: str, owner: str, state: State, now: dt.datetime, progress: Progress, error: str
    ) -> bool:
        v = self._held(verification_id, owner)
        if v is None:
            return False
        self._v.verifications[verification_id] = dataclasses.replace(
            v, state=state, finished_at=now, progress=progress, error=error
        )
        del self._v.leases[verification_id]
        return True

    async def add_damaged_files(self, verification_id: str, first_seq: int, files: Sequence[DamagedFile]) -> None:
        listed = self._v.files.setdefault(verification_id, {})
        for n, f in enumerate(files):
            if first_seq + n in listed:
                raise ValueError("duplicate damaged-file row")  # the SQL primary key
            listed[first_seq + n] = f

    async def add_damaged_packs(self, verification_id: str, packs: Sequence[DamagedPack]) -> None:
        listed = self._v.packs.setdefault(verification_id, {})
        for p in packs:
            listed.setdefault(p.pack_id, p)

    async def damaged_files(self, verification_id: str, limit: int) -> list[DamagedFile]:
        listed = self._v.files.get(verification_id, {})
        return [listed[seq] for seq in sorted(listed)][:limit]

    async def damaged_packs(self, verification_id: str, limit: int) -> list[DamagedPack]:
        listed = self._v.packs.get(verification_id, {})
        return [listed[p] for p in sorted(listed)][:limit]

    async def record_pack_check(self, pack_id: str, checked_at: dt.datetime, damaged_chunks: int, reason: str) -> None:
        if pack_id not in self._s.packs:
            raise ValueError(f"unknown pack {pack_id}")  # the SQL foreign key
        self._v.pack_checks[pack_id] = (checked_at, damaged_chunks, reason)

    async def count_packs(self) -> int:
        return len([p for p in self._s.packs if p not in self._s.gc.reclaimed])

    async def least_recently_checked_packs(self, limit: int) -> list[str]:
        def freshness(pack: Pack) -> tuple[dt.datetime, bool, str]:
            check = self._v.pack_checks.get(pack.pack_id)
            return (check[0] if check else pack.created_at, check is not None, pack.pack_id)

        packs = [p for p in self._s.packs.values() if p.pack_id not in self._s.gc.reclaimed]
        return [p.pack_id for p in sorted(packs, key=freshness)[:limit]]

    async def record_point_check(self, check: PointCheck) -> None:
        current = self._v.point_checks.get(check.point_id)
        if current is None or check.full:
            self._v.point_checks[check.point_id] = check
        else:
            self._v.point_checks[check.point_id] = dataclasses.replace(
                current, damaged_files=max(current.damaged_files, check.damaged_files)
            )

    async def recoverability(self, account_id: str, instance_id: str | None) -> list[Recoverability]:
        by_instance: dict[str, list[PointCheck]] = {}
        for c in self._v.point_checks.values():
            if c.account_id == account_id and (instance_id is None or c.instance_id == instance_id):
                by_instance.setdefault(c.instance_id, []).append(c)
        out: list[Recoverability] = []
        for instance, checks in sorted(by_instance.items()):
            full = [c for c in checks if c.full]
            last = max(full, key=lambda c: c.point_created_at) if full else None
            out.append(
                Recoverability(
                    instance_id=instance,
                    last_verified_point_id=last.point_id if last else "",
                    last_verified_point_created_at=last.point_created_at if last else None,
                    last_verified_at=last.checked_at if last else None,
                    damaged_files=last.damaged_files if last else 0,
                    damaged_points=sum(1 for c in checks if c.damaged_files > 0),
                    last_verification_id=last.verification_id if last else "",
                )
            )
        return out

    async def claim_day(self, day: dt.date, verification_id: str) -> bool:
        if day in self._v.days:
            return False
        self._v.days[day] = verification_id
        return True
