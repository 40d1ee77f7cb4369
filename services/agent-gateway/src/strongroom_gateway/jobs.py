"""Job commands and job status events, shared by the event handlers and the agent API."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import Clock
from strongroom_platform.events import JOB_UPDATED, RESTORE_UPDATED, new_meta

from strongroom_gateway.ports import Account, GatewayTx, Job

# A restore's per-file errors passed on in restore-updated (ADR 0030): the first this many and at
# most about this much text (paths and reasons), so the event stays far below Kafka's message limit.
MAX_FAILED_FILES = 1000
MAX_FAILED_FILES_BYTES = 256 << 10


def bounded_failed_files(failed: Iterable[common_pb2.FileError]) -> list[common_pb2.FileError]:
    """The first of an agent's per-file errors, within ``MAX_FAILED_FILES`` and ``MAX_FAILED_FILES_BYTES``."""
    out: list[common_pb2.FileError] = []
    size = 0
    for item in failed:
        size += len(item.path.encode()) + len(item.reason.encode())
        if len(out) >= MAX_FAILED_FILES or (out and size > MAX_FAILED_FILES_BYTES):
            break
        out.append(item)
    return out


PRODUCER = "agent-gateway"

# Chunker parameters every agent uses (docs/formats/chunk-id.md).
CHUNKER_MIN_SIZE = 256 << 10
CHUNKER_AVG_SIZE = 1 << 20
CHUNKER_MAX_SIZE = 4 << 20

# Seed: Low priority = 10 MB/s + 1 core, High = 30 MB/s + 2 cores.
THROTTLE: dict[int, tuple[int, int]] = {
    common_pb2.BACKUP_PRIORITY_UNSPECIFIED: (10_000_000, 1),
    common_pb2.BACKUP_PRIORITY_LOW: (10_000_000, 1),
    common_pb2.BACKUP_PRIORITY_HIGH: (30_000_000, 2),
}

# max_cores of an unthrottled job: more than any host has, so the agent uses all of its cores.
UNTHROTTLED_CORES = 1024

FINAL_STATUSES = frozenset(
    {
        common_pb2.JOB_STATUS_COMPLETE,
        common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
        common_pb2.JOB_STATUS_FAILED,
        common_pb2.JOB_STATUS_CANCELED,
        common_pb2.JOB_STATUS_EXPIRED,
    }
)


def repository_parameters(account: Account) -> gateway_pb2.RepositoryParameters:
    return gateway_pb2.RepositoryParameters(
        chunker_min_size=CHUNKER_MIN_SIZE,
        chunker_avg_size=CHUNKER_AVG_SIZE,
        chunker_max_size=CHUNKER_MAX_SIZE,
        chunk_id_key=account.chunk_id_key,
        chunker_seed=account.chunker_seed,
    )


def run_backup_command(
    job_id: str, priority: common_pb2.BackupPriority.ValueType, roots: Iterable[str]
) -> gateway_pb2.AgentCommand:
    """The stored command of a backup job (repository parameters are added at delivery)."""
    rate, cores = THROTTLE.get(priority, THROTTLE[common_pb2.BACKUP_PRIORITY_LOW])
    return gateway_pb2.AgentCommand(
        run_backup=gateway_pb2.RunBackup(
            job_id=job_id,
            priority=priority,
            max_read_bytes_per_second=rate,
            max_cores=cores,
            roots=list(roots),
        )
    )


def command_for_delivery(job: Job, account: Account, *, unthrottled: bool = False) -> gateway_pb2.AgentCommand:
    """The stored command with the account's repository parameters.

    Backups are marked ``accepts_base_point`` (this gateway synthesizes points
    from a base). ``unthrottled`` (STRONGROOM_GATEWAY_UNTHROTTLED, benchmarks
    only) lifts the read-rate limit and lets the agent use every core.
    """
    command = gateway_pb2.AgentCommand()
    command.ParseFromString(job.command)
    if command.HasField("run_backup"):
        command.run_backup.repository.CopyFrom(repository_parameters(account))
        command.run_backup.accepts_base_point = True
        if unthrottled:
            command.run_backup.max_read_bytes_per_second = 0
            command.run_backup.max_cores = UNTHROTTLED_CORES
    return command


async def emit_job_status(
    tx: GatewayTx,
    job: Job,
    status: common_pb2.JobStatus.ValueType,
    clock: Clock,
    *,
    error: str = "",
    stats: common_pb2.JobStats | None = None,
    file_errors: Iterable[str] = (),
    failed_files: Iterable[common_pb2.FileError] = (),
    agent_version: str = "",
) -> None:
    """Enqueue job-updated (backup) or restore-updated (restore, with ``failed_files``) for ``job``."""
    meta = new_meta(PRODUCER, clock.now())
    if job.kind == "backup":
        updated = events_pb2.JobUpdated(
            meta=meta,
            account_id=job.account_id,
            instance_id=job.instance_id,
            job_id=job.job_id,
            status=status,
            error=error,
            version_id=job.version_id or "",
            file_errors=list(file_errors),
            agent_version=agent_version,
        )
        if stats is not None:
            updated.stats.CopyFrom(stats)
        await tx.enqueue(JOB_UPDATED, job.instance_id, updated)
    else:
        restore = events_pb2.RestoreUpdated(
            meta=meta,
            account_id=job.account_id,
            restore_job_id=job.job_id,
            target_instance_id=job.instance_id,
            status=status,
            error=error,
            failed_files=list(failed_files),
        )
        if stats is not None:
            restore.stats.CopyFrom(stats)
        await tx.enqueue(RESTORE_UPDATED, job.instance_id, restore)


async def finish_job(
    tx: GatewayTx, job: Job, status: common_pb2.JobStatus.ValueType, clock: Clock, *, error: str = ""
) -> Job:
    """Mark the job finished and emit its final status."""
    finished = dataclasses.replace(job, state="finished")
    await tx.update_job(finished)
    await emit_job_status(tx, finished, status, clock, error=error)
    return finished
