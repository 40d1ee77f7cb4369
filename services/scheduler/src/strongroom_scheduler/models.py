"""The scheduler's state: instances (settings, facts about their agent and schedule) and backup jobs.

The running status is derived from facts rather than stored, so no code path
can leave it inconsistent with them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field

from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom.scheduler.v1 import scheduler_pb2

JobStatus = int  # strongroom.common.v1.JobStatus value
Priority = int  # strongroom.common.v1.BackupPriority value
Trigger = int  # strongroom.events.v1.JobRequested.Trigger value

UNFINISHED_JOB_STATUSES: frozenset[int] = frozenset(
    {
        common_pb2.JOB_STATUS_CREATED,
        common_pb2.JOB_STATUS_QUEUED,
        common_pb2.JOB_STATUS_RUNNING,
        common_pb2.JOB_STATUS_CANCELING,
    }
)
FINISHED_JOB_STATUSES: frozenset[int] = frozenset(
    {
        common_pb2.JOB_STATUS_COMPLETE,
        common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
        common_pb2.JOB_STATUS_FAILED,
        common_pb2.JOB_STATUS_CANCELED,
        common_pb2.JOB_STATUS_EXPIRED,
    }
)
SUCCESSFUL_JOB_STATUSES: frozenset[int] = frozenset(
    {common_pb2.JOB_STATUS_COMPLETE, common_pb2.JOB_STATUS_PARTIAL_COMPLETE}
)
PRIORITIES: frozenset[int] = frozenset({common_pb2.BACKUP_PRIORITY_LOW, common_pb2.BACKUP_PRIORITY_HIGH})
TRIGGER_SCHEDULE: Trigger = events_pb2.JobRequested.TRIGGER_SCHEDULE
TRIGGER_MANUAL: Trigger = events_pb2.JobRequested.TRIGGER_MANUAL


def job_status_name(status: JobStatus) -> str:
    """``RUNNING`` for JOB_STATUS_RUNNING, for messages."""
    return common_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")  # type: ignore[arg-type]


def host_taken_message(host_id: str) -> str:
    """Why a second instance of one host identity is refused (the seed: one backup method per instance)."""
    return (
        f"host {host_id} already has an instance in this account (one backup per host): use that instance,"
        " or cancel its backup first"
    )


@dataclass(frozen=True, slots=True)
class BlockDevice:
    """A block device attached to an instance (the billing basis is their total size)."""

    device: str
    size_bytes: int


@dataclass(slots=True)
class Instance:
    """One server of the inventory: registered only (not activated), or with backup activated
    (or canceled). ``activated_at`` is the registration time until backup is activated."""

    instance_id: str
    account_id: str
    name: str
    region: str
    priority: Priority
    daily_start_minute: int
    keep_latest_version: bool
    roots: list[str]
    activated_at: dt.datetime
    token_sha256: str
    token_expires_at: dt.datetime
    next_backup_at: dt.datetime
    last_scheduled_on: dt.date | None = None
    enrolled: bool = False
    hostname: str = ""
    paused: bool = False
    canceled: bool = False
    succeeded_once: bool = False
    backing_up: bool = False
    last_error: str = ""
    # The inventory record (ADR 0040): stable host identity, OS, attached block devices.
    host_id: str = ""
    os: str = ""
    block_devices: list[BlockDevice] = field(default_factory=list)
    # False: registered in the inventory only (NOT_ACTIVATED).
    activated: bool = True
    # The inventory says the instance is gone (STOPPED).
    released: bool = False
    # The agent must enroll before this (activation + the preparation timeout); None: the token's expiry.
    prepare_by: dt.datetime | None = None
    # PREPARATION_FAILED was published (by the preparation sweep) for the current preparation.
    preparation_failure_noted: bool = False
    # The agent's version: at enrollment, then as reported with its backup jobs (ADR 0045).
    agent_version: str = ""
    # The total size of the block devices the agent last reported (0: no report), and the
    # "<inventory>:<reported>" totals of the capacity mismatch last alerted ("" = none outstanding).
    reported_capacity_bytes: int = 0
    capacity_mismatch_noted: str = ""

    @property
    def preparation_deadline(self) -> dt.datetime:
        return self.prepare_by if self.prepare_by is not None else self.token_expires_at

    @property
    def inventory_capacity_bytes(self) -> int:
        return sum(d.size_bytes for d in self.block_devices)

    def status(self, now: dt.datetime) -> int:
        """The seed's running status (a ``scheduler_pb2.RunningStatus`` value) at ``now``."""
        if self.canceled:
            return scheduler_pb2.RUNNING_STATUS_CANCELED
        if self.released:
            return scheduler_pb2.RUNNING_STATUS_STOPPED
        if not self.activated:
            return scheduler_pb2.RUNNING_STATUS_NOT_ACTIVATED
        if self.paused:
            return scheduler_pb2.RUNNING_STATUS_PAUSED
        if not self.enrolled:
            if now >= self.preparation_deadline:
                return scheduler_pb2.RUNNING_STATUS_PREPARATION_FAILED
            return scheduler_pb2.RUNNING_STATUS_PREPARING
        if self.backing_up:
            return scheduler_pb2.RUNNING_STATUS_BACKING_UP
        if self.succeeded_once:
            return scheduler_pb2.RUNNING_STATUS_RUNNING
        return scheduler_pb2.RUNNING_STATUS_READY

    def etag(self, now: dt.datetime) -> str:
        """The version a caller read (``Instance.etag``; REST ETag/If-Match): a digest of every stored
        field and of the status at ``now``, so any change of what the caller saw changes it."""
        state = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(f"{state}|{self.status(now)}".encode()).hexdigest()[:32]

    def status_error(self, now: dt.datetime) -> str:
        """``last_error``, or why preparation failed when the agent never enrolled in time."""
        if self.status(now) == scheduler_pb2.RUNNING_STATUS_PREPARATION_FAILED:
            return (
                f"the backup client did not enroll by {self.preparation_deadline.isoformat(timespec='seconds')}"
                " (installation typically completes within 5 minutes): check that the agent is installed and"
                " can reach the gateway, then issue a new enrollment token"
            )
        if self.status(now) == scheduler_pb2.RUNNING_STATUS_STOPPED:
            return (
                "the inventory says the instance is gone: its jobs stopped;"
                " its versions stay restorable until they expire"
            )
        return self.last_error


@dataclass(slots=True)
class Job:
    """One backup job of an instance."""

    job_id: str
    instance_id: str
    account_id: str
    status: JobStatus
    trigger: Trigger
    priority: Priority
    roots: list[str]
    created_at: dt.datetime
    finished_at: dt.datetime | None = None
    error: str = ""
    stats: common_pb2.JobStats = field(default_factory=common_pb2.JobStats)
    version_id: str = ""
    file_errors: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_JOB_STATUSES
