"""The packs a committing point references: locating chunks, locking packs, refusing moved or reclaimed ones.

Contract: ``chunk_packs`` locates chunks of an account; ``extend_pack_locks`` keeps every referenced
pack's Object Lock at least as long as the point (ADR 0010); inside the commit's transaction,
``refuse_moved`` raises ``Moved`` when collection moved chunks out of the packs since ``epoch``
(ADR 0057; the commit locates them again) and ``refuse_reclaimed`` fails the commit when a pack was
reclaimed (ADR 0041, 0042).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Sequence

from strongroom_platform.objectstore import ObjectStore

from strongroom_gateway.errors import FailedPrecondition
from strongroom_gateway.ingest import LOCK_MARGIN, RETENTION
from strongroom_gateway.ports import GatewayStore, GatewayTx, Pack

# Packs whose lock ends sooner than this after a commit get their lock extended.
LOCK_EXTENSION_SLACK = RETENTION + LOCK_MARGIN / 2


async def chunk_packs(store: GatewayStore, account_id: str, chunk_ids: Sequence[bytes]) -> tuple[set[str], list[bytes]]:
    async with store.transaction() as tx:
        return await tx.chunk_packs(account_id, chunk_ids)


async def extend_pack_locks(
    account_id: str,
    referenced_packs: Iterable[str],
    now: dt.datetime,
    store: GatewayStore,
    object_store: ObjectStore,
    write_slots: asyncio.Semaphore,
) -> None:
    """Keep every pack a new point references locked at least as long as the point.

    Packs written within the last half day are locked long enough already; older
    packs deduplicated into this point get their Object Lock moved later.
    """
    pack_ids = sorted(set(referenced_packs))
    if not pack_ids:
        return
    async with store.transaction() as tx:
        await refuse_reclaimed(tx, account_id, pack_ids)
        stale = await tx.packs_locked_before(account_id, pack_ids, now + LOCK_EXTENSION_SLACK)
    retain_until = now + RETENTION + LOCK_MARGIN

    async def extend(pack: Pack) -> None:
        # The version the pack was written as: a later object on the key must not take its lock.
        async with write_slots:
            await object_store.extend_retention(pack.object_key, retain_until, version_id=pack.version_id)

    await asyncio.gather(*(extend(p) for p in stale))
    if stale:
        async with store.transaction() as tx:
            for pack in stale:
                await tx.set_pack_retention(pack.pack_id, retain_until)


RELOCATE_ATTEMPTS = 4


class Moved(Exception):
    """Leave the commit's transaction: chunks of the point's packs moved since they were located."""


async def refuse_moved(tx: GatewayTx, account_id: str, packs: set[str], epoch: int) -> int:
    """:class:`Moved` when a move or repack of a later epoch than ``epoch`` took chunks out of one
    of ``packs`` (ADR 0057). Holds the shared collection lock from here to the end of the transaction.

    Returns the account's current epoch: ``packs`` hold the chunks they held at ``epoch`` as of it."""
    current = await tx.gc_epoch(account_id)  # takes the shared lock
    if current != epoch and await tx.pack_successors(account_id, sorted(packs), epoch):
        raise Moved
    return current


async def refuse_reclaimed(tx: GatewayTx, account_id: str, pack_ids: Iterable[str]) -> None:
    """FailedPrecondition when garbage collection reclaimed or repacked a pack the point references
    (ADR 0041, 0042).

    Only a backup that learned a chunk was present before its pack was condemned, and committed
    after the pack was reclaimed, gets here; the next backup uploads the chunk again.
    """
    reclaimed = await tx.hold_packs(account_id, sorted(set(pack_ids)))
    if reclaimed:
        raise FailedPrecondition(
            f"{len(reclaimed)} packs holding chunks of this point were reclaimed or repacked while the backup ran"
            f" (first: {reclaimed[0]}); run the backup again, it uploads those chunks anew"
        )
