"""The Connect stream loop: say hello, run the commands the gateway sends, report results.

One backup and one restore may run at a time. A second job of the same kind
is answered at once with FAILED (the gateway schedules; the agent never
queues). Jobs keep running while the stream is down; progress reports are
dropped while disconnected, but a JobFinished is sent again on the next
connection when it could not be written, or when the stream it was written
to ended less than ``REDELIVER_WINDOW_SECONDS`` later (a write to a dying
stream may be lost). The gateway must therefore accept a repeated
JobFinished for a job that already finished. The stream is re-opened with capped
exponential backoff (with jitter) until the agent is stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import random
import socket
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_telemetry.metrics import instruments
from strongroom_telemetry.propagation import context_from_traceparent

from strongroom_agent import __version__, host, memory
from strongroom_agent.backup import cores_for, plan_points, run_backup
from strongroom_agent.backup.native import NativeExtension
from strongroom_agent.config import SPOOL_DIR
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.filesystems import discover_filesystems, filesystem_for_root
from strongroom_agent.gateway_client import ControlStream, GatewayClient, GatewayError
from strongroom_agent.job_limits import JobLimits, job_limits
from strongroom_agent.jobs import ProgressCallback
from strongroom_agent.restore import run_restore

log = logging.getLogger(__name__)

BackupRunner = Callable[[gateway_pb2.RunBackup, asyncio.Event, ProgressCallback], Awaitable[gateway_pb2.JobFinished]]
RestoreRunner = Callable[[gateway_pb2.RunRestore, asyncio.Event, ProgressCallback], Awaitable[gateway_pb2.JobFinished]]
Sleep = Callable[[float], Awaitable[None]]

_AUTH_FAILURES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
SHUTDOWN_GRACE_SECONDS = 10.0
REDELIVER_WINDOW_SECONDS = 60.0
# How many finished jobs the agent remembers, to answer a job sent again with its result.
FINISHED_REMEMBERED = 1000


class CredentialRejected(Exception):
    """The gateway no longer accepts this agent's credential (re-enrollment needed)."""


# How the gateway refuses every call of an instance whose backup was canceled (ADR 0040): an agent
# that was offline when the Uninstall command was sent learns it from this refusal.
CANCELED_REFUSAL = "backup was deactivated for this instance"


class UninstallRequested(Exception):
    """Backup of this instance was canceled (ADR 0040): the agent removes what it installed and exits."""


@dataclass
class _Job:
    job_id: str
    cancel: asyncio.Event
    task: asyncio.Task[None]


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 60.0
    # A stream that stayed up this long resets the delay.
    healthy_after: float = 30.0


class Session:
    def __init__(
        self,
        client: GatewayClient,
        *,
        hello: Callable[[], Awaitable[gateway_pb2.AgentHello]],
        run_backup: BackupRunner,
        run_restore: RestoreRunner,
        backoff: Backoff = Backoff(),
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._client = client
        self._hello = hello
        self._run_backup = run_backup
        self._run_restore = run_restore
        self._backoff = backoff
        self._sleep = sleep
        self._monotonic = monotonic or asyncio.get_running_loop().time
        self._jitter = jitter
        self._stream: ControlStream | None = None
        self._write_lock = asyncio.Lock()
        self._unsent: deque[gateway_pb2.AgentReport] = deque()
        # JobFinished reports written to the current stream: (when, report).
        self._recent: list[tuple[float, gateway_pb2.AgentReport]] = []
        self._backup: _Job | None = None
        self._restore: _Job | None = None
        # The final reports of the last jobs, by job id: a job sent again after it finished (a
        # gateway restarted before it read the report) gets its report again, not a second run.
        self._finished: OrderedDict[str, gateway_pb2.JobFinished] = OrderedDict()
        self._stopping = False
        self.connections = 0

    # --- reporting ---

    async def _write(self, report: gateway_pb2.AgentReport, *, must_deliver: bool) -> None:
        """Send a report on the current stream (queued for the next one if it must be delivered).

        The write runs in its own task and is shielded: the caller may be
        cancelled (a job's progress reporter is cancelled when the job ends), and
        grpc.aio cancels the whole call when a task is cancelled in the middle of
        a write; the control stream, and the job's final report after it, would
        then be lost. Writes still go out one at a time, in order (the lock is
        taken inside the task).
        """
        write = asyncio.ensure_future(self._write_now(report, must_deliver=must_deliver))
        # Retrieved here even when the caller has gone (cancelled): no "never retrieved" warning.
        write.add_done_callback(lambda t: None if t.cancelled() else t.exception())
        await asyncio.shield(write)

    async def _write_now(self, report: gateway_pb2.AgentReport, *, must_deliver: bool) -> None:
        async with self._write_lock:
            stream = self._stream
            if stream is None:
                if must_deliver:
                    self._unsent.append(report)
                return
            try:
                await stream.write(report)
                if must_deliver:
                    now = self._monotonic()
                    self._recent = [(t, r) for t, r in self._recent if now - t < REDELIVER_WINDOW_SECONDS]
                    self._recent.append((now, report))
            except GatewayError as exc:
                log.info("report not sent (%s)", exc)
                if must_deliver:
                    self._unsent.append(report)

    def _progress_callback(self, job_id: str) -> ProgressCallback:
        async def on_progress(stats: common_pb2.JobStats) -> None:
            progress = gateway_pb2.JobProgress(job_id=job_id, stats=stats)
            await self._write(gateway_pb2.AgentReport(progress=progress), must_deliver=False)

        return on_progress

    async def _finish(self, finished: gateway_pb2.JobFinished) -> None:
        self._finished[finished.job_id] = finished
        while len(self._finished) > FINISHED_REMEMBERED:
            self._finished.popitem(last=False)
        await self._write(gateway_pb2.AgentReport(finished=finished), must_deliver=True)

    # --- jobs ---

    async def _job(
        self,
        job_id: str,
        kind: str,
        cancel: asyncio.Event,
        work: Awaitable[gateway_pb2.JobFinished],
        traceparent: str = "",
    ) -> None:
        # One trace per job: its gateway calls, the events they cause and their consumers (ADR 0039),
        # continuing the trace of the call that requested it when the command carries one (ADR 0045).
        tracer = trace.get_tracer("strongroom.agent")
        parent = context_from_traceparent(traceparent) if traceparent else None
        attributes = {"strongroom.job_id": job_id}
        with tracer.start_as_current_span(f"agent.{kind}", context=parent, attributes=attributes) as span:
            try:
                finished = await work
            except Exception as exc:  # a bug: still tell the gateway the job is over
                log.exception("job %s crashed", job_id)
                finished = gateway_pb2.JobFinished(
                    job_id=job_id, status=common_pb2.JOB_STATUS_FAILED, error=f"internal error: {exc!r}"
                )
            if self._stopping and finished.status == common_pb2.JOB_STATUS_CANCELED:
                finished.status = common_pb2.JOB_STATUS_FAILED
                finished.error = "the agent was stopped while the job was running"
            status = common_pb2.JobStatus.Name(finished.status)
            log.info("job %s finished: %s %s", job_id, status, finished.error)
            span.set_attribute("strongroom.job_status", status.removeprefix("JOB_STATUS_"))
            if finished.status == common_pb2.JOB_STATUS_FAILED:
                span.set_status(Status(StatusCode.ERROR, finished.error[:200]))
            instruments().job_finished(kind, status.removeprefix("JOB_STATUS_"), None)
            await self._finish(finished)

    def _start(
        self,
        current: _Job | None,
        job_id: str,
        kind: str,
        runner: Callable[[asyncio.Event], Awaitable[gateway_pb2.JobFinished]],
        traceparent: str = "",
    ) -> _Job | None:
        """Start a job unless one of its kind is running or it already finished here; returns the new
        job (None if refused or answered)."""
        done = self._finished.get(job_id)
        if done is not None:
            log.info("%s job %s was sent again after it finished: reporting its result again", kind, job_id)
            asyncio.get_running_loop().create_task(self._finish(done))
            return None
        if current is not None and not current.task.done():
            if current.job_id != job_id:  # the same id again (e.g. after a reconnect) is already running
                refusal = gateway_pb2.JobFinished(
                    job_id=job_id,
                    status=common_pb2.JOB_STATUS_FAILED,
                    error=f"another {kind} job ({current.job_id}) is running on this instance",
                )
                asyncio.get_running_loop().create_task(self._finish(refusal))
            return None
        log.info("starting %s job %s", kind, job_id)
        cancel = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._job(job_id, kind, cancel, runner(cancel), traceparent))
        return _Job(job_id, cancel, task)

    async def _dispatch(self, command: gateway_pb2.AgentCommand) -> None:
        kind = command.WhichOneof("command")
        if kind == "run_backup":
            backup = command.run_backup
            started = self._start(
                self._backup,
                backup.job_id,
                "backup",
                lambda cancel: self._run_backup(backup, cancel, self._progress_callback(backup.job_id)),
                backup.traceparent,
            )
            self._backup = started or self._backup
        elif kind == "run_restore":
            restore = command.run_restore
            started = self._start(
                self._restore,
                restore.restore_job_id,
                "restore",
                lambda cancel: self._run_restore(restore, cancel, self._progress_callback(restore.restore_job_id)),
                restore.traceparent,
            )
            self._restore = started or self._restore
        elif kind == "cancel_job":
            await self._cancel(command.cancel_job.job_id)
        elif kind == "uninstall":
            raise UninstallRequested(command.uninstall.reason or "backup of this instance was canceled")
        else:
            log.warning("ignoring unknown command %r", kind)

    async def _cancel(self, job_id: str) -> None:
        for job in (self._backup, self._restore):
            if job is not None and job.job_id == job_id and not job.task.done():
                log.info("canceling job %s", job_id)
                job.cancel.set()
                return
        if job_id not in self._finished:
            # Unknown here (e.g. the agent restarted): confirm so the gateway does not wait forever.
            await self._finish(gateway_pb2.JobFinished(job_id=job_id, status=common_pb2.JOB_STATUS_CANCELED))

    def reconnect(self) -> None:
        """End the current control stream; :meth:`run` opens the next one on the client's current
        channel (after a certificate renewal). Running jobs are not touched."""
        if self._stream is not None:
            self._stream.cancel()

    def running_jobs(self) -> list[_Job]:
        return [j for j in (self._backup, self._restore) if j is not None and not j.task.done()]

    # --- the stream ---

    async def _serve_once(self, stop: asyncio.Event) -> None:
        stream = self._client.connect()
        try:
            hello = await self._hello()
            await stream.write(gateway_pb2.AgentReport(hello=hello))
            async with self._write_lock:
                while self._unsent:
                    await stream.write(self._unsent[0])
                    self._recent.append((self._monotonic(), self._unsent.popleft()))
                self._stream = stream
            self.connections += 1
            log.info("connected to the gateway")
            stopped = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    read = asyncio.ensure_future(stream.read())
                    await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    if not read.done():
                        read.cancel()
                        await self._shutdown()  # while the stream is up, so the jobs' final reports go out
                        return
                    command = read.result()
                    if command is None:
                        log.info("the gateway closed the control stream")
                        return
                    await self._dispatch(command)
            finally:
                stopped.cancel()
        finally:
            async with self._write_lock:
                self._stream = None
                now = self._monotonic()
                redeliver = [r for t, r in self._recent if now - t < REDELIVER_WINDOW_SECONDS]
                self._unsent.extendleft(reversed(redeliver))
                self._recent = []
            stream.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises CredentialRejected when the gateway refuses the credential,
        UninstallRequested when backup of the instance was canceled."""
        delay = self._backoff.initial
        try:
            while not stop.is_set():
                started = self._monotonic()
                try:
                    await self._serve_once(stop)
                except GatewayError as exc:
                    if exc.code in _AUTH_FAILURES:
                        if CANCELED_REFUSAL in str(exc):
                            raise UninstallRequested(str(exc)) from exc
                        raise CredentialRejected(str(exc)) from exc
                    log.warning("control stream failed: %s", exc)
                if stop.is_set():
                    break
                if self._monotonic() - started >= self._backoff.healthy_after:
                    delay = self._backoff.initial
                wait = delay * (0.5 + self._jitter() / 2)
                log.info("reconnecting in %.1f s", wait)
                await sleep_or_stop(self._sleep, wait, stop)
                delay = min(delay * 2, self._backoff.maximum)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self._stopping = True
        jobs = self.running_jobs()
        for job in jobs:
            job.cancel.set()
        if jobs:
            await asyncio.wait([j.task for j in jobs], timeout=SHUTDOWN_GRACE_SECONDS)
        for job in jobs:
            job.task.cancel()


async def sleep_or_stop(sleep: Sleep, seconds: float, stop: asyncio.Event) -> None:
    """Sleep ``seconds`` with ``sleep``, or less when ``stop`` is set meanwhile."""
    sleeper = asyncio.ensure_future(sleep(seconds))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        stopped.cancel()


# --- wiring for the real host ---------------------------------------------------------------------------------------


def host_exclusions(state_dir: str) -> LinuxExclusions:
    return LinuxExclusions(extra_dirs=[state_dir])


def make_hello(state_dir: str) -> Callable[[], Awaitable[gateway_pb2.AgentHello]]:
    exclusions = host_exclusions(state_dir)

    async def hello() -> gateway_pb2.AgentHello:
        filesystems = await asyncio.to_thread(
            discover_filesystems, excluded=lambda p: exclusions.excluded(p, is_dir=True)
        )
        return gateway_pb2.AgentHello(agent_version=__version__, hostname=socket.gethostname(), filesystems=filesystems)

    return hello


def make_backup_runner(
    client: GatewayClient, state_dir: str, default_roots: Sequence[str], *, native: NativeExtension | None = None
) -> BackupRunner:
    """The backup jobs' runner; ``native``: small files read (ADR 0080) and the tree walked (ADR 0085) natively."""
    exclusions = host_exclusions(state_dir)
    # One per process, shared by jobs.
    freed = memory.FreedPages(
        memory.TRIM_EVERY_BYTES,
        memory.malloc_trim(),
        floor_bytes=memory.TRIM_FLOOR_BYTES,
        ceiling_bytes=memory.TRIM_CEILING_BYTES,
        resident=memory.resident_bytes,
    )

    async def runner(
        command: gateway_pb2.RunBackup, cancel: asyncio.Event, on_progress: ProgressCallback
    ) -> gateway_pb2.JobFinished:
        roots = list(command.roots) or list(default_roots)
        points, errors = await asyncio.to_thread(
            plan_points,
            roots,
            discover=lambda: discover_filesystems(excluded=lambda p: exclusions.excluded(p, is_dir=True)),
            describe_root=filesystem_for_root,
        )
        # The whole process (event loop and gRPC threads too) stays within the job's cores; the
        # read limit is the job's own throttle, and systemd's per device when systemd runs the agent.
        limits = JobLimits(cores_for(command), command.max_read_bytes_per_second, tuple(p.mount_point for p in points))
        with job_limits(limits):
            return await run_backup(
                command,
                client=client,
                points=points,
                point_errors=errors,
                exclusions=exclusions,
                cancel=cancel,
                on_progress=on_progress,
                spool_dir=os.path.join(state_dir, SPOOL_DIR),
                state_dir=state_dir,
                freed=freed,
                native=native,
            )

    return runner


def make_restore_runner(client: GatewayClient) -> RestoreRunner:
    async def runner(
        command: gateway_pb2.RunRestore, cancel: asyncio.Event, on_progress: ProgressCallback
    ) -> gateway_pb2.JobFinished:
        return await run_restore(command, client=client, cancel=cancel, on_progress=on_progress)

    return runner


def enroll_request(token: str) -> gateway_pb2.EnrollRequest:
    return gateway_pb2.EnrollRequest(
        enrollment_token=token,
        hostname=socket.gethostname(),
        os=platform.system().lower(),
        arch=platform.machine(),
        agent_version=__version__,
        host_id=host.host_id(),
        block_devices=host.block_devices(),
    )
