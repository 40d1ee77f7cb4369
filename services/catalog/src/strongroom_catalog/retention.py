"""Retention: a version expires 30 days after its creation, by the trusted time.

Exception (the seed's "Keep at least one backup version", on by default):
the newest version of an instance with that setting never expires, so an
instance whose backups stopped keeps something to restore from. The setting
is the scheduler's; it arrives as ``instance-settings-changed``
(``handlers.handle_instance_settings_changed``), and the next run, at most
``Settings.retention_interval`` later, honours it. A paused instance's
versions keep expiring unless the setting is on.

The rule runs in the database (``CatalogTx.expire_due_versions``: the ``SECURITY DEFINER``
function ``catalog.expire_due_versions``, the only writer of expiries, ADR 0031), on its trusted
time; this module only asks for it and publishes ``version-expired`` for what it expired.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.events import VERSION_EXPIRED, new_meta

from strongroom_catalog.ports import CatalogStore

log = logging.getLogger(__name__)

RETENTION_PERIOD = dt.timedelta(days=30)
PRODUCER = "catalog"
BATCH = 100  # versions expired per transaction
PRUNE_BATCH = 5000  # index rows deleted per transaction


async def expire_versions(repo: CatalogStore) -> list[str]:
    """Expire every version whose retention has passed; return their ids.

    Each batch is one transaction: the versions are marked expired (hidden from
    ListVersions), their file index is dropped, and one ``version-expired`` per
    version is enqueued. Running it again, or concurrently, expires nothing twice.
    """
    expired: list[str] = []
    while True:
        async with repo.transaction() as tx:
            batch = await tx.expire_due_versions(BATCH)
            for version in batch:
                event = events_pb2.VersionExpired(
                    meta=new_meta(PRODUCER, version.expired_at),
                    account_id=version.account_id,
                    instance_id=version.instance_id,
                    version_id=version.version_id,
                    point_ids=list(version.point_ids),
                )
                await tx.enqueue(VERSION_EXPIRED, version.instance_id, event)
        for version in batch:
            log.info("version %s of instance %s expired", version.version_id, version.instance_id)
        expired.extend(v.version_id for v in batch)
        if len(batch) < BATCH:
            return expired


async def prune_lineages(repo: CatalogStore, *, batch: int = PRUNE_BATCH, lineages: int = 100) -> int:
    """Delete the index rows that only expired points need (ADR 0049), for up to ``lineages``
    lineages whose oldest unpruned point expired; at most ``batch`` rows per transaction, so a run
    never holds a lineage (and its indexing) for long. Returns how many rows were deleted."""
    deleted = 0
    for lineage_id in await repo.prunable_lineages(lineages):
        while True:
            async with repo.transaction() as tx:
                window = await tx.prune_window(lineage_id)
                if window is None:
                    break
                count = await tx.prune_changes(window, batch)
                if not count:
                    await tx.mark_pruned(window)
                    log.info("lineage %d pruned up to point %d", lineage_id, window.upto)
                    break
            deleted += count
    return deleted


async def run_retention(repo: CatalogStore, clock: Clock, *, interval: float) -> None:
    """Run :func:`expire_versions` then :func:`prune_lineages` every ``interval`` seconds until
    cancelled; failures are logged and retried."""
    while True:
        try:
            await expire_versions(repo)
            await prune_lineages(repo)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention run failed; retrying in %.0fs", interval)
        await clock.sleep(interval)
