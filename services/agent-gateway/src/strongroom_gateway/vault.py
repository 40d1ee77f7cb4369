"""Disaster-recovery records in the bucket: instances and points (ADR 0032; keys: ``keys.AccountKeys``).

What the bucket must hold so that ``strongroom-admin rebuild --from-bucket`` can rebuild the
control plane from it and the master key alone (docs/formats/vault-records.md):

- an **instance record** per change of an instance (enrollment, a filesystem recorded or
  approved): id, account, region, name, host and its filesystems;
- a **point record** per committed point: instance, job, version, times, mount point, manifest
  key and version id, retention — the facts the manifest object does not carry.

Every record is Object-Locked and sealed with the account's data key. A point's records outlive
it: before a point locked until ``T`` is recorded, its account's key record and its instance's
latest record are locked at least until ``T`` (:meth:`Vault.keep_for_point`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from strongroom_platform.clock import Clock
from strongroom_platform.objectstore import ObjectStore

from strongroom_gateway import vault_format
from strongroom_gateway.keys import VAULT_LOCK, VAULT_LOCK_STEP, AccountKeys
from strongroom_gateway.ports import GatewayStore, Point

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Latest:
    key: str
    locked_until: dt.datetime | None


class Vault:
    """Writes the instance and point records, and keeps them locked as long as the points need them."""

    def __init__(self, store: GatewayStore, objects: ObjectStore, keys: AccountKeys, clock: Clock) -> None:
        self._store = store
        self._objects = objects
        self._keys = keys
        self._clock = clock
        self._instances: dict[str, _Latest] = {}

    async def record_instance(self, instance_id: str) -> None:
        """Write a new record of the instance as the database has it now."""
        async with self._store.transaction() as tx:
            instance = await tx.get_instance(instance_id)
            filesystems = await tx.instance_filesystems(instance_id)
        if instance is None:
            return
        data_key = await self._keys.data_key(instance.account_id)
        now = self._clock.now()
        until = now + VAULT_LOCK
        await self._keys.keep_locked(instance.account_id, until)
        key = vault_format.instance_record_key(instance.account_id, instance_id, now)
        data = vault_format.seal_instance_record(data_key, instance, filesystems, now)
        await self._objects.put(key, data, retain_until=until)
        self._instances[instance_id] = _Latest(key, until)

    async def record_instance_quietly(self, instance_id: str) -> None:
        """:meth:`record_instance` after a change that has committed: a failure is logged, not raised
        (the next commit of a point of the instance writes the record if it is still missing)."""
        try:
            await self.record_instance(instance_id)
        except Exception:
            log.exception("the disaster-recovery record of instance %s could not be written; retried at its next point")

    async def keep_for_point(self, account_id: str, instance_id: str, until: dt.datetime) -> None:
        """Before a point locked until ``until`` is committed: the account's key record and the
        instance's latest record exist and are locked at least that long."""
        await self._keys.keep_locked(account_id, until)
        latest = self._instances.get(instance_id)
        if latest is None:
            found = None
            async for key in self._objects.list(f"{vault_format.INSTANCES_PREFIX}{account_id}/{instance_id}/"):
                found = key  # names sort by time of writing: the last is the newest
            if found is None:
                await self.record_instance(instance_id)
                return
            latest = self._instances[instance_id] = _Latest(found, (await self._objects.stat(found)).retain_until)
        if latest.locked_until is None or latest.locked_until < until:
            target = until + VAULT_LOCK_STEP
            await self._objects.extend_retention(latest.key, target)
            latest.locked_until = target

    async def write_point(self, point: Point, version_created_at: dt.datetime) -> None:
        """The point's record, locked like its manifest; before the point is recorded in the database."""
        data_key = await self._keys.data_key(point.account_id)
        data = vault_format.seal_point_record(data_key, point, version_created_at)
        await self._objects.put(
            vault_format.point_record_key(point.account_id, point.point_id), data, retain_until=point.retain_until
        )
