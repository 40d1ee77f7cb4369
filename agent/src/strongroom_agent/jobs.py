"""One job's life, shared by backup and restore: progress, cancellation, retries and the outcome.

A job's work runs as one task raced against the ``CancelJob`` event; a
progress reporter sends a snapshot of the job's stats every few seconds
meanwhile. Whatever happens, the job ends in one ``JobFinished`` report:
COMPLETE, PARTIAL_COMPLETE (some files failed; see ``file_errors``), FAILED
(the gateway or the agent failed) or CANCELED. Failures raised out of a
``TaskGroup`` arrive as (nested) exception groups; the outcome looks at their
leaves, so a cancellation or a gateway error inside a group reads the same as
one raised on its own.

Gateway calls are retried with capped exponential backoff while the gateway
is UNAVAILABLE or a call ran out of time (``RetryPolicy``); all of them are
idempotent, so a call that timed out after the gateway did its work is
harmless to repeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TypeVar

from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2

from strongroom_agent.gateway_client import GatewayError, StatusCode

log = logging.getLogger(__name__)

T = TypeVar("T")
ProgressCallback = Callable[[common_pb2.JobStats], Awaitable[None]]

MAX_REPORTED_FILE_ERRORS = 100
# Structured per-file errors (``JobFinished.failed_files``, ADR 0030): the first this many, and no
# more than about this much text; ``stats.files_failed`` counts them all.
MAX_REPORTED_FAILED_FILES = 1000
MAX_REPORTED_FAILED_FILES_BYTES = 256 << 10


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff for gateway calls that fail with UNAVAILABLE or DEADLINE_EXCEEDED.

    Both say nothing about the request: the gateway replica was down or restarting, or too busy
    to answer within the call's timeout (a replica killed mid-call, a stalled one). Every gateway
    call is idempotent (a CommitPoint repeated for a job returns the point it made), so a retry
    is safe and the job fails only once the attempts are used up or the gateway refuses outright.
    """

    initial: float = 0.5
    maximum: float = 30.0
    attempts: int = 20  # about eight minutes with the defaults
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    retry_codes: frozenset[StatusCode] = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        delay = self.initial
        for attempt in range(1, self.attempts + 1):
            try:
                return await fn()
            except GatewayError as exc:
                if exc.code not in self.retry_codes or attempt == self.attempts:
                    raise
                log.warning("%s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                await self.sleep(delay)
                delay = min(delay * 2, self.maximum)
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class FileError:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{printable_path(self.path)}: {self.reason}"


def printable_path(path: str) -> str:
    """``path`` as UTF-8 text: a host path's undecodable bytes (``os.fsdecode``'s surrogates) as ``\\xNN``.

    A protobuf string must be UTF-8; a file name that is not would fail the whole job's report.
    """
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def reported_failed_files(errors: list[FileError]) -> list[common_pb2.FileError]:
    """The first per-file errors, bounded in number (``MAX_REPORTED_FAILED_FILES``) and text size."""
    out: list[common_pb2.FileError] = []
    size = 0
    for error in errors[:MAX_REPORTED_FAILED_FILES]:
        path = printable_path(error.path)
        size += len(path.encode()) + len(error.reason.encode())
        if out and size > MAX_REPORTED_FAILED_FILES_BYTES:
            break
        out.append(common_pb2.FileError(path=path, reason=error.reason))
    return out


class JobCanceled(Exception):
    """The job was canceled by a CancelJob command."""


def reason(exc: OSError) -> str:
    """An OS error as reported per file: its message without the errno and path decoration."""
    return exc.strerror or str(exc)


async def report_progress(stats: common_pb2.JobStats, on_progress: ProgressCallback, interval: float) -> None:
    """Send a snapshot of ``stats`` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        snapshot = common_pb2.JobStats()
        snapshot.CopyFrom(stats)
        await on_progress(snapshot)


def job_finished(
    job_id: str,
    status: common_pb2.JobStatus.ValueType,
    stats: common_pb2.JobStats,
    errors: list[FileError],
    error: str = "",
) -> gateway_pb2.JobFinished:
    """The JobFinished report of a backup or restore job; the stats count the failed files.

    The per-file errors travel twice: as ``path: reason`` text in
    ``file_errors`` (the first ``MAX_REPORTED_FILE_ERRORS``, what backups and
    older gateways read) and as path and reason in ``failed_files``.
    """
    stats.files_failed = len(errors)
    return gateway_pb2.JobFinished(
        job_id=job_id,
        status=status,
        error=error,
        stats=stats,
        file_errors=[str(e) for e in errors[:MAX_REPORTED_FILE_ERRORS]],
        failed_files=reported_failed_files(errors),
    )


async def run_job(
    work: Coroutine[object, None, None],
    *,
    job_id: str,
    cancel: asyncio.Event,
    stats: common_pb2.JobStats,
    errors: list[FileError],
    on_progress: ProgressCallback | None,
    progress_interval: float,
    finish: Callable[[], Awaitable[None]],
) -> gateway_pb2.JobFinished:
    """Run ``work`` until it ends or ``cancel`` is set, reporting progress; never raises for job-level failures.

    ``finish`` releases what the work held (threads, descriptors); it is
    awaited once the work has ended or been cancelled, before the outcome.
    """
    task = asyncio.create_task(work)
    canceled = asyncio.create_task(cancel.wait())
    progress = asyncio.create_task(report_progress(stats, on_progress, progress_interval)) if on_progress else None
    try:
        await asyncio.wait({task, canceled}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        failure = None if task.cancelled() else task.exception()
    finally:
        for other in (canceled, progress):
            if other is not None:
                other.cancel()
        await finish()
    return _outcome(job_id, stats, errors, failure, canceled=cancel.is_set())


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _outcome(
    job_id: str,
    stats: common_pb2.JobStats,
    errors: list[FileError],
    failure: BaseException | None,
    *,
    canceled: bool,
) -> gateway_pb2.JobFinished:
    leaves = _leaves(failure) if failure is not None else []
    if canceled or any(isinstance(leaf, JobCanceled) for leaf in leaves):
        return job_finished(job_id, common_pb2.JOB_STATUS_CANCELED, stats, errors)
    if leaves:
        gateway = [leaf for leaf in leaves if isinstance(leaf, GatewayError)]
        if gateway:
            return job_finished(job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, f"gateway error: {gateway[0]}")
        log.error("job %s failed", job_id, exc_info=failure)
        return job_finished(job_id, common_pb2.JOB_STATUS_FAILED, stats, errors, f"internal error: {leaves[0]!r}")
    status = common_pb2.JOB_STATUS_PARTIAL_COMPLETE if errors else common_pb2.JOB_STATUS_COMPLETE
    return job_finished(job_id, status, stats, errors)
