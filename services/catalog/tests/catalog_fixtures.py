"""Builders shared by the catalog's tests."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import asyncpg
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_catalog.migrations import SPEC
from strongroom_catalog.model import EntryRow, PointRecord
from strongroom_catalog.ports import CatalogStore
from strongroom_platform.auth import CallAuth, Principal, Role, operator
from strongroom_platform.clock import utc
from strongroom_platform.db import create_pool
from strongroom_platform.events import new_meta, to_timestamp
from strongroom_platform.manifest import encode_manifest
from strongroom_platform.pg_roles import migrate_schemas
from strongroom_platform.schemas import with_platform
from strongroom_platform.testing import call_for
from strongroom_testing.fixtures import PgLogins

T0 = utc(2026, 1, 1)
DIR = common_pb2.ENTRY_TYPE_DIRECTORY
FILE = common_pb2.ENTRY_TYPE_FILE
SYMLINK = common_pb2.ENTRY_TYPE_SYMLINK


CATALOG = "/strongroom.catalog.v1.CatalogService/"
ADMIN = operator("token:admin-of-acct", {"acct": Role.ADMIN})


def call(method: str, principal: Principal = ADMIN) -> CallAuth:
    """The ``CallAuth`` of ``principal`` (default: an admin of acct) calling the catalog's ``method``."""
    return call_for(CATALOG + method, principal)


def point(
    point_id: str = "p1",
    version_id: str = "v1",
    instance_id: str = "i-1",
    created_at: dt.datetime = T0,
    mount_point: str = "/",
    account_id: str = "acct",
) -> PointRecord:
    return PointRecord(
        point_id=point_id,
        version_id=version_id,
        instance_id=instance_id,
        account_id=account_id,
        mount_point=mount_point,
        device="/dev/vda1",
        fs_type="ext4",
        capacity_bytes=40 << 30,
        manifest_key=f"manifests/{point_id}",
        file_count=3,
        total_bytes=1234,
        created_at=created_at,
        retain_until=created_at + dt.timedelta(days=31),
    )


def row(point_id: str, path: str, type: int = FILE, size: int = 0) -> EntryRow:
    parent, _, name = path.rpartition("/")
    return EntryRow(
        point_id=point_id,
        parent=parent,
        name=name,
        type=type,
        mode=0o644,
        uid=1000,
        gid=1000,
        size=size,
        mtime_ns=1_700_000_000_000_000_000,
        link_target="target" if type == SYMLINK else "",
    )


def file_entry(path: str, type: int = FILE, size: int = 10, link_target: str = "") -> common_pb2.FileEntry:
    return common_pb2.FileEntry(
        path=path,
        type=type,  # type: ignore[arg-type]
        mode=0o755 if type == DIR else 0o644,
        uid=0,
        gid=0,
        size=size,
        mtime_ns=1_700_000_000_123_456_789,
        link_target=link_target,
        chunk_ids=[b"\x01" * 32] if type == FILE else [],
    )


SAMPLE_ENTRIES = [
    file_entry("", DIR),
    file_entry("etc", DIR),
    file_entry("etc/hosts", FILE, 120),
    file_entry("etc/nginx", DIR),
    file_entry("etc/nginx/nginx.conf", FILE, 2048),
    file_entry("home", DIR),
    file_entry("home/a.txt", FILE, 5),
    file_entry("home/link", SYMLINK, 0, "a.txt"),
]


def sample_manifest() -> bytes:
    return encode_manifest(SAMPLE_ENTRIES)


def point_created(
    point_id: str = "p1",
    version_id: str = "v1",
    instance_id: str = "i-1",
    created_at: dt.datetime = T0,
    mount_point: str = "/",
    manifest_key: str | None = None,
) -> events_pb2.PointCreated:
    return events_pb2.PointCreated(
        meta=new_meta("agent-gateway", created_at),
        account_id="acct",
        instance_id=instance_id,
        job_id="job-1",
        version_id=version_id,
        point_id=point_id,
        filesystem=common_pb2.Filesystem(
            mount_point=mount_point, device="/dev/vda1", fs_type="ext4", capacity_bytes=40 << 30
        ),
        version_created_at=to_timestamp(created_at),
        manifest_key=manifest_key if manifest_key is not None else f"manifests/{point_id}",
        file_count=5,
        total_bytes=2173,
        retain_until=to_timestamp(created_at + dt.timedelta(days=31)),
        instance_capacity_bytes=40 << 30,
    )


def settings_changed(
    instance_id: str = "i-1", *, keep_latest: bool, at: dt.datetime = T0
) -> events_pb2.InstanceSettingsChanged:
    """The scheduler's instance-settings-changed event, made at ``at``."""
    return events_pb2.InstanceSettingsChanged(
        meta=new_meta("scheduler", at),
        account_id="acct",
        instance_id=instance_id,
        keep_latest_version=keep_latest,
        priority=common_pb2.BACKUP_PRIORITY_LOW,
        daily_start_minute=60,
    )


async def eventually(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait until ``condition()`` holds (polling: background tasks have no event to await)."""
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def catalog_pool(logins: PgLogins) -> asyncpg.Pool:
    """A pool as the catalog's role on the test database, migrated by the owner (ADR 0031)."""
    await migrate_schemas(logins.owner, with_platform(SPEC))
    return await create_pool(logins.service("catalog"), SPEC.schema)


async def children(repo: CatalogStore, point_id: str, parent: str = "", limit: int = 10_000) -> list[EntryRow]:
    """The entries of directory ``parent`` of the point as the browse index holds them, whichever
    layout it has (ADR 0049), browsable or not."""
    found = await repo.get_point(point_id)
    if found is None or found.tree is None:
        return await repo.list_children(point_id, parent, after="", limit=limit)
    return await repo.tree_children(point_id, found.tree, parent, after="", limit=limit)
