"""The restore service's record: a restore job and its life cycle."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from strongroom.common.v1 import common_pb2

JobStatus = common_pb2.JobStatus

FINISHED: frozenset[int] = frozenset(
    {
        common_pb2.JOB_STATUS_COMPLETE,
        common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
        common_pb2.JOB_STATUS_FAILED,
        common_pb2.JOB_STATUS_CANCELED,
        common_pb2.JOB_STATUS_EXPIRED,
    }
)

# Progress order of the statuses: an update never moves a job to a lower rank.
_RANK: dict[int, int] = {
    common_pb2.JOB_STATUS_CREATED: 0,
    common_pb2.JOB_STATUS_QUEUED: 1,
    common_pb2.JOB_STATUS_RUNNING: 2,
    common_pb2.JOB_STATUS_CANCELING: 3,
} | dict.fromkeys(FINISHED, 4)


def rank(status: int) -> int:
    """Position of ``status`` in the job life cycle (CREATED < QUEUED < RUNNING < CANCELING < finished)."""
    return _RANK[status]


def is_known_status(status: int) -> bool:
    return status in _RANK


def status_name(status: int) -> str:
    """'COMPLETE' for JOB_STATUS_COMPLETE (for messages)."""
    try:
        return common_pb2.JobStatus.Name(common_pb2.JobStatus.ValueType(status)).removeprefix("JOB_STATUS_")
    except ValueError:
        return str(status)


@dataclass(frozen=True, slots=True)
class CatalogPoint:
    """What the restore service needs to know about a backup point (from the catalog)."""

    point_id: str
    instance_id: str
    account_id: str
    mount_point: str
    manifest_key: str


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """What the restore service needs to know about a target instance (from the scheduler).

    ``status`` is a ``scheduler.v1.RunningStatus`` value; ``enrolled``: its agent has enrolled.
    """

    instance_id: str
    account_id: str
    region: str
    status: int
    enrolled: bool


@dataclass(frozen=True, slots=True)
class RestoreJob:
    """A restore of (part of) a backup point to an instance.

    ``updated_at`` is the event time of the last applied ``restore-updated``
    (older updates are stale); ``conflict_policy`` is an ``agent.v1.ConflictPolicy`` value.
    ``failed_files``: (path, reason) of files the agent could not restore, as
    reported (at most 1,000; ``stats.files_failed`` counts them all; ADR 0030).
    """

    restore_job_id: str
    account_id: str
    point_id: str
    source_instance_id: str
    target_instance_id: str
    status: int
    include_paths: tuple[str, ...]
    exclude_paths: tuple[str, ...]
    target_path: str
    conflict_policy: int
    created_at: dt.datetime
    error: str = ""
    stats: common_pb2.JobStats = field(default_factory=common_pb2.JobStats)
    failed_files: tuple[tuple[str, str], ...] = ()
    updated_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED
