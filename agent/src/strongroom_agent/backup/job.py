"""One backup job: its points one after another, on one pool of worker threads, under one read throttle.

The job creates what its points share (``JobContext``): the thread pool of
``max_cores`` threads (each pinned to one of the last CPUs the process may
use), the read throttle of ``max_read_bytes_per_second``, the chunk ids seen
so far. Both limits come from the job command, which the gateway fills from
its priority table. The job's lifecycle, progress and outcome are
``jobs.run_job``'s; a point whose cached chunks the gateway refuses is read
again in full (``commit.BaseRefused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

from strongroom_agent import memory
from strongroom_agent.backup.commit import BaseRefused
from strongroom_agent.backup.context import JobContext, OpenFile
from strongroom_agent.backup.native import NativeExtension
from strongroom_agent.backup.point import PointRun
from strongroom_agent.backup.probe import TRACE_ENV
from strongroom_agent.backup.read import open_for_backup
from strongroom_agent.backup.stages import PipelineLimits, SeenIds
from strongroom_agent.chunking import ChunkParams, InvalidRepositoryParameters
from strongroom_agent.exclusions import Exclusions
from strongroom_agent.gateway_client import GatewayClient
from strongroom_agent.jobs import FileError, ProgressCallback, RetryPolicy, job_finished, run_job
from strongroom_agent.throttle import ReadThrottle, make_throttle

log = logging.getLogger(__name__)


def cores_for(command: gateway_pb2.RunBackup) -> int:
    """Worker threads for a job: the command's max_cores, at most the host's CPUs.

    The gateway's priority table (``THROTTLE``) sets ``max_cores``; the agent
    keeps no table of its own. A command without it (an older gateway) gets one core.
    """
    return max(1, min(command.max_cores or 1, os.cpu_count() or 1))


def _pin_thread(cpus: frozenset[int]) -> None:
    # Best effort: not every platform or container allows changing affinity.
    setaffinity = getattr(os, "sched_setaffinity", None)
    if setaffinity is not None and cpus:
        with contextlib.suppress(OSError):
            setaffinity(0, cpus)


def job_executor(cores: int) -> ThreadPoolExecutor:
    """``cores`` worker threads, each pinned to the last ``cores`` CPUs the process may use."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    allowed = sorted(getaffinity(0)) if getaffinity is not None else []
    cpus = frozenset(allowed[-cores:]) if len(allowed) > cores else frozenset()
    return ThreadPoolExecutor(
        max_workers=cores, thread_name_prefix="strongroom-backup", initializer=_pin_thread, initargs=(cpus,)
    )


async def run_backup(
    command: gateway_pb2.RunBackup,
    *,
    client: GatewayClient,
    points: Sequence[common_pb2.Filesystem],
    exclusions: Exclusions,
    cancel: asyncio.Event,
    point_errors: Sequence[FileError] = (),
    on_progress: ProgressCallback | None = None,
    progress_interval: float = 5.0,
    spool_dir: str | None = None,
    open_file: OpenFile = open_for_backup,
    throttle: ReadThrottle | None = None,
    limits: PipelineLimits | None = None,
    state_dir: str | None = None,
    retry: RetryPolicy | None = None,
    freed: memory.FreedPages | None = None,
    native: NativeExtension | None = None,
) -> gateway_pb2.JobFinished:
    """Back up ``points`` one after another and commit each; never raises for job-level failures.

    Returns COMPLETE, PARTIAL_COMPLETE (some files or roots failed; see
    ``file_errors``), FAILED (the gateway or the parameters failed), or
    CANCELED (``cancel`` was set). ``native`` reads small files through the native
    extension (ADR 0080); it opens files its own way, so it is not used with an
    ``open_file`` other than ``open_for_backup``.
    """
    stats = common_pb2.JobStats()
    errors = list(point_errors)
    try:
        params = ChunkParams.from_proto(command.repository)
    except InvalidRepositoryParameters as exc:
        return job_finished(
            command.job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, f"bad repository parameters: {exc}"
        )
    if not points:
        why = "; ".join(str(e) for e in errors) or "no block-storage filesystem to back up"
        return job_finished(command.job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, why)

    limits = limits or PipelineLimits()
    workers = cores_for(command)
    executor = job_executor(workers)
    ctx = JobContext(
        job_id=command.job_id,
        client=client,
        params=params,
        exclusions=exclusions,
        executor=executor,
        workers=workers,
        throttle=throttle or make_throttle(command.max_read_bytes_per_second),
        open_file=open_file,
        limits=limits,
        spool_dir=spool_dir,
        cancel=cancel,
        stop_threads=threading.Event(),
        stats=stats,
        errors=errors,
        seen=SeenIds(limits.seen_ids),
        retry=retry or RetryPolicy(),
        state_dir=state_dir,
        accepts_base_point=command.accepts_base_point,
        freed=freed,
        trace=os.environ.get(TRACE_ENV) or None,  # diagnostics (bench/backup_timeline.py)
        native=native if open_file is open_for_backup else None,
    )

    async def all_points() -> None:
        for filesystem in points:
            try:
                response = await PointRun(ctx, filesystem).run()
            except BaseRefused as exc:
                log.warning("job %s: cached chunks refused (%s); reading %s in full", command.job_id, exc, filesystem)
                response = await PointRun(ctx, filesystem, use_cache=False).run()
            log.info("job %s: committed point %s of %s", command.job_id, response.point_id, filesystem.mount_point)

    async def stop_threads() -> None:
        ctx.stop_threads.set()
        executor.shutdown(wait=False)

    return await run_job(
        all_points(),
        job_id=command.job_id,
        cancel=cancel,
        stats=stats,
        errors=errors,
        on_progress=on_progress,
        progress_interval=progress_interval,
        finish=stop_threads,
    )
