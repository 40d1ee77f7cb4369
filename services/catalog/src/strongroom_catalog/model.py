"""The catalog's records: versions, their points, and the indexed entries of a point."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TreePlace:
    """Where a point indexed for browsing by lineage (ADR 0049) reads its entries: the rows of
    ``lineage_id`` with ``floor <= seq <= self.seq``, the newest per (parent, name)."""

    lineage_id: int
    seq: int
    floor: int


@dataclass(frozen=True, slots=True)
class PointRecord:
    """One backup point: one filesystem of an instance in one backup version.

    ``created_at`` is the creation time of the point's version (server time).
    ``browsable`` turns true once the file index of the point is complete;
    ``index_error`` says why it never will (the manifest was missing or unreadable).
    """

    point_id: str
    version_id: str
    instance_id: str
    account_id: str
    mount_point: str
    device: str
    fs_type: str
    capacity_bytes: int
    manifest_key: str
    file_count: int
    total_bytes: int
    created_at: dt.datetime
    retain_until: dt.datetime | None
    browsable: bool = False
    index_error: str | None = None
    expired: bool = False
    # Backup of its instance was canceled (ADR 0040): hidden from every read until reinstated.
    canceled: bool = False
    # Browsed from its lineage's tree_changes (ADR 0049); None: from entries (indexed before).
    tree: TreePlace | None = None


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A backup version: the points of one backup of an instance, newest point data first."""

    version_id: str
    instance_id: str
    account_id: str
    created_at: dt.datetime
    expired_at: dt.datetime | None
    points: tuple[PointRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One indexed manifest entry, stored as (parent directory, name) for browsing.

    ``parent`` is the point-relative path of the directory holding the entry
    ("" for the root of the point); ``type`` is a ``common_pb2.EntryType`` value.
    """

    point_id: str
    parent: str
    name: str
    type: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    link_target: str

    @property
    def path(self) -> str:
        return f"{self.parent}/{self.name}" if self.parent else self.name


@dataclass(frozen=True, slots=True)
class TreeChange:
    """What entry ``parent``/``name`` of a lineage became at point ``seq`` (ADR 0049); ``type``
    REMOVED (0): it is gone from that point on."""

    lineage_id: int
    seq: int
    parent: str
    name: str
    type: int
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    link_target: str

    def entry(self, point_id: str) -> EntryRow:
        return EntryRow(
            point_id=point_id,
            parent=self.parent,
            name=self.name,
            type=self.type,
            mode=self.mode,
            uid=self.uid,
            gid=self.gid,
            size=self.size,
            mtime_ns=self.mtime_ns,
            link_target=self.link_target,
        )


@dataclass(frozen=True, slots=True)
class PruneWindow:
    """Rows of a lineage to prune (ADR 0049): every point before ``upto`` expired, and ``after`` was
    the previous prune's ``upto``. ``floor``: the first point of the run of deltas point ``upto``
    reads (browse rows before it serve no live point). ``everything``: no point of the lineage is
    live (``upto`` is past its newest), so no row serves any point."""

    lineage_id: int
    after: int
    upto: int
    floor: int
    everything: bool = False


@dataclass(frozen=True, slots=True)
class ExpiredVersion:
    """A version the retention rule just expired (at ``expired_at``, trusted time), with its points."""

    version_id: str
    instance_id: str
    account_id: str
    expired_at: dt.datetime
    point_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InstanceState:
    """What cancel, reinstate and holds need to know of an instance (ADR 0040).

    ``account_id`` from its versions (or its cancellation rows); ``canceled`` from its newest
    cancellation row; ``live_version_ids`` its versions not expired, newest first.
    """

    instance_id: str
    account_id: str
    canceled: bool
    live_version_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Hold:
    """An incident or legal hold on an instance's versions: none of them expires while it is active."""

    hold_id: str
    instance_id: str
    account_id: str
    kind: int  # catalog_pb2.HoldKind value
    reason: str
    placed_by: str
    placed_at: dt.datetime
    released_by: str = ""
    released_at: dt.datetime | None = None

    @property
    def active(self) -> bool:
        return self.released_at is None


# --- the search index (ADR 0043) -------------------------------------------------------------
# A lineage is one filesystem (mount point) of one instance; its indexed points are numbered
# 1, 2, ... (seq) in the order they were indexed, and each is indexed as the delta from the one
# before: a SearchChange per path that appeared, changed or disappeared.

REMOVED = 0  # SearchChange.type of a tombstone: the path is absent from seq on


@dataclass(frozen=True, slots=True)
class Lineage:
    lineage_id: int
    instance_id: str
    account_id: str
    mount_point: str


@dataclass(frozen=True, slots=True)
class SearchState:
    """A path as it is in a lineage's newest indexed point (``type`` never ``REMOVED``)."""

    path: str
    type: int
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class SearchChange:
    """What ``path`` (point-relative) became in point ``seq`` of its lineage; ``type`` REMOVED: it is gone."""

    lineage_id: int
    path: str
    seq: int
    type: int
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


@dataclass(frozen=True, slots=True)
class LineagePoint:
    """Point ``seq`` of a lineage, with its state (expired, canceled) as the reads see it."""

    lineage_id: int
    seq: int
    point: PointRecord


@dataclass(frozen=True, slots=True)
class NameQuery:
    """Which names a search matches: ``exact`` (byte for byte) or ``regex`` (anchored, POSIX ARE
    syntax that Python's ``re`` reads alike), case-insensitively with ``ignore_case`` (ASCII letters,
    as PostgreSQL folds case under the "C" collation). ``prefix``: the literal start every match
    has (up to case), "" when the pattern starts with a wildcard; an index range, not a filter."""

    exact: str | None = None
    regex: str | None = None
    ignore_case: bool = False
    prefix: str = ""


@dataclass(frozen=True, slots=True, order=True)
class PathKey:
    """A path of a lineage; search pages are ordered by it."""

    lineage_id: int
    path: str


@dataclass(frozen=True, slots=True)
class FileVersion:
    """A live version holding the file, as it was in that version."""

    version_id: str
    point_id: str
    created_at: dt.datetime
    type: int
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class FileHit:
    """A path of an instance's filesystem and the live versions holding it, newest first."""

    instance_id: str
    account_id: str
    mount_point: str
    path: str  # relative to mount_point
    versions: tuple[FileVersion, ...]

    @property
    def full_path(self) -> str:
        return self.mount_point.rstrip("/") + "/" + self.path
