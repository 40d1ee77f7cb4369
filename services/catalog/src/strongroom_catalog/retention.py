"""Retention: a version expires 30 days after its creation.

Exception (the seed's "Keep at least one backup version", on by default):
the newest version of an instance with that setting never expires, so an
instance whose backups stopped keeps something to restore from. The setting
is the scheduler's; it arrives as ``instance-settings-changed``
(``handlers.handle_instance_settings_changed``), and the next run, at most
``Settings.retention_interval`` later, honours it. A paused instance's
versions keep expiring unless the setting is on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.events import VERSION_EXPIRED, new_meta

from strongroom_catalog.model import RetentionCandidate
from strongroom_catalog.ports import CatalogStore

log = logging.getLogger(__name__)

RETENTION_PERIOD = dt.timedelta(days=30)
PRODUCER = "catalog"


def keeps(candidate: RetentionCandidate) -> bool:
    """Whether a version past the retention period is kept anyway (the keep-latest rule)."""
    return candidate.keep_latest and candidate.is_newest


async def expire_versions(repo: CatalogStore, clock: Clock, *, period: dt.timedelta = RETENTION_PERIOD) -> list[str]:
    """Expire every version whose retention has passed; return their ids.

    Each expiry is one transaction: the version is marked expired (hidden from
    ListVersions), its file index is dropped, and ``version-expired`` is
    enqueued. Running it again, or concurrently, expires nothing twice.
    """
    now = clock.now()
    expired: list[str] = []
    for candidate in await repo.retention_candidates(now - period):
        if keeps(candidate):
            continue
        version = candidate.version
        async with repo.transaction() as tx:
            point_ids = await tx.expire_version(version.version_id, now)
            if point_ids is None:
                continue
            event = events_pb2.VersionExpired(
                meta=new_meta(PRODUCER, now),
                account_id=version.account_id,
                instance_id=version.instance_id,
                version_id=version.version_id,
                point_ids=point_ids,
            )
            await tx.enqueue(VERSION_EXPIRED, version.instance_id, event)
        log.info("version %s of instance %s expired", version.version_id, version.instance_id)
        expired.append(version.version_id)
    return expired


async def run_retention(repo: CatalogStore, clock: Clock, *, interval: float) -> None:
    """Run :func:`expire_versions` every ``interval`` seconds until cancelled; failures are logged and retried."""
    while True:
        try:
            await expire_versions(repo, clock)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention run failed; retrying in %.0fs", interval)
        await clock.sleep(interval)
