"""The verification's persistence port: the gateway's unit of work plus the verification tables.

``VerifyTx`` extends ``GatewayTx`` (points, chunk index and accounts are read in the same
transactions); adapters ``repository.PgVerifyStore`` and ``testing.InMemoryVerifyStore``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from strongroom_gateway.ports import ChunkLocation, GatewayTx, Pack, Point
from strongroom_gateway.verify.model import (
    DamagedFile,
    DamagedPack,
    PointCheck,
    Progress,
    Recoverability,
    State,
    Verification,
)


class VerifyTx(GatewayTx, Protocol):
    async def list_points(self, account_id: str, instance_id: str | None = None) -> list[Point]:
        """The account's points (of one instance when given), oldest first."""
        ...

    async def pack_chunks(self, pack_id: str) -> tuple[Pack | None, list[ChunkLocation]]:
        """A pack and the chunk rows recorded in it (offset order); (None, []) for an unknown pack."""
        ...

    async def insert_verification(self, verification: Verification) -> None: ...

    async def get_verification(self, verification_id: str) -> Verification | None: ...

    async def list_verifications(
        self, account_id: str, instance_id: str | None, limit: int, after: tuple[dt.datetime, str] | None = None
    ) -> list[Verification]:
        """Newest first by (created_at, verification_id bytewise); ``after``: strictly older than
        that position."""
        ...

    async def claim_verification(self, owner: str, now: dt.datetime, lease_until: dt.datetime) -> Verification | None:
        """Take the oldest queued verification, or a running one whose lease expired, for ``owner``.

        A verification taken over is started again from nothing: its progress and the damage
        it had recorded are cleared.
        """
        ...

    async def update_progress(
        self, verification_id: str, owner: str, progress: Progress, lease_until: dt.datetime
    ) -> bool:
        """Record progress and extend the lease; False when ``owner`` no longer holds it."""
        ...

    async def finish_verification(
        self, verification_id: str, owner: str, state: State, now: dt.datetime, progress: Progress, error: str
    ) -> bool:
        """Final state; False when ``owner`` no longer holds the lease (nothing changes then)."""
        ...

    async def add_damaged_files(self, verification_id: str, first_seq: int, files: Sequence[DamagedFile]) -> None: ...

    async def add_damaged_packs(self, verification_id: str, packs: Sequence[DamagedPack]) -> None: ...

    async def damaged_files(self, verification_id: str, limit: int) -> list[DamagedFile]: ...

    async def damaged_packs(self, verification_id: str, limit: int) -> list[DamagedPack]: ...

    async def record_pack_check(self, pack_id: str, checked_at: dt.datetime, damaged_chunks: int, reason: str) -> None:
        """Insert or replace the pack's last check."""
        ...

    async def count_packs(self) -> int: ...

    async def least_recently_checked_packs(self, limit: int) -> list[str]:
        """Pack ids by their last check (never checked: their creation), oldest first; never checked first on ties."""
        ...

    async def record_point_check(self, check: PointCheck) -> None:
        """A full check replaces the point's row; a partial one (the sample) only raises its damaged count."""
        ...

    async def recoverability(self, account_id: str, instance_id: str | None) -> list[Recoverability]:
        """Per instance with a checked point: its newest fully checked point and its damaged points."""
        ...

    async def claim_day(self, day: dt.date, verification_id: str) -> bool:
        """Reserve ``day``'s sample for ``verification_id``; False when another one has it."""
        ...


class VerifyStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[VerifyTx]: ...
