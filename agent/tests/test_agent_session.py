"""The Connect loop with fake streams and runners."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from agent_fakes import FakeControlStream
from opentelemetry import trace
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom_agent import host
from strongroom_agent.config import STATE_FILE, remove_state
from strongroom_agent.gateway_client import GatewayError
from strongroom_agent.session import CANCELED_REFUSAL, Backoff, CredentialRejected, Session, UninstallRequested

COMPLETE = common_pb2.JOB_STATUS_COMPLETE


class StreamFactory:
    """client.connect(): hands out prepared streams; once exhausted, streams that fail to connect."""

    def __init__(self) -> None:
        self.streams: list[FakeControlStream] = []
        self.opened: list[FakeControlStream] = []
        self.connected = asyncio.Event()
        self.fail_code = "UNAVAILABLE"

    def add(self) -> FakeControlStream:
        stream = FakeControlStream()
        self.streams.append(stream)
        return stream

    def connect(self) -> FakeControlStream:
        if self.streams:
            stream = self.streams.pop(0)
        else:
            stream = FakeControlStream()
            stream.commands.put_nowait(GatewayError(self.fail_code, "connection refused"))
        self.opened.append(stream)
        self.connected.set()
        return stream


class Runner:
    """A job runner the test controls: it waits for ``release`` or the job's cancel event."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.started_event = asyncio.Event()
        self.trace_ids: dict[str, int] = {}

    def __call__(self, command: Any, cancel: asyncio.Event, on_progress: Callable[[Any], Awaitable[None]]) -> Any:
        job_id = getattr(command, "job_id", "") or command.restore_job_id
        self.started.append(job_id)
        self.started_event.set()
        release = self.release.setdefault(job_id, asyncio.Event())

        async def run() -> gateway_pb2.JobFinished:
            self.trace_ids[job_id] = trace.get_current_span().get_span_context().trace_id
            await on_progress(common_pb2.JobStats(files_scanned=7))
            released = asyncio.ensure_future(release.wait())
            canceled = asyncio.ensure_future(cancel.wait())
            await asyncio.wait({released, canceled}, return_when=asyncio.FIRST_COMPLETED)
            released.cancel()
            canceled.cancel()
            status = common_pb2.JOB_STATUS_CANCELED if cancel.is_set() else COMPLETE
            return gateway_pb2.JobFinished(job_id=job_id, status=status)

        return run()


async def hello() -> gateway_pb2.AgentHello:
    return gateway_pb2.AgentHello(
        agent_version="test", hostname="host-1", filesystems=[common_pb2.Filesystem(mount_point="/")]
    )


def make_session(factory: StreamFactory, backups: Runner, restores: Runner, sleeps: list[float]) -> Session:
    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    return Session(
        factory,  # type: ignore[arg-type]
        hello=hello,
        run_backup=backups,
        run_restore=restores,
        backoff=Backoff(initial=1, maximum=8, healthy_after=1e9),
        sleep=fake_sleep,
        jitter=lambda: 1.0,
    )


def backup_command(job_id: str) -> gateway_pb2.AgentCommand:
    return gateway_pb2.AgentCommand(run_backup=gateway_pb2.RunBackup(job_id=job_id))


async def next_report(stream: FakeControlStream, kind: str) -> Any:
    while True:
        report = await asyncio.wait_for(stream.reports.get(), 5)
        if report.WhichOneof("report") == kind:
            return getattr(report, kind)


@pytest.fixture
async def harness() -> Any:
    factory, backups, restores, sleeps = StreamFactory(), Runner(), Runner(), []
    session = make_session(factory, backups, restores, sleeps)
    stop = asyncio.Event()
    yield factory, backups, restores, sleeps, session, stop
    stop.set()


async def test_hello_first_then_jobs_run_and_report(harness: Any) -> None:
    factory, backups, restores, _sleeps, session, stop = harness
    stream = factory.add()
    task = asyncio.create_task(session.run(stop))
    first = await asyncio.wait_for(stream.reports.get(), 5)
    assert first.WhichOneof("report") == "hello" and first.hello.hostname == "host-1"

    await stream.commands.put(backup_command("b-1"))
    progress = await next_report(stream, "progress")
    assert progress.job_id == "b-1" and progress.stats.files_scanned == 7
    # A restore runs alongside the backup.
    await stream.commands.put(
        gateway_pb2.AgentCommand(run_restore=gateway_pb2.RunRestore(restore_job_id="r-1", point_id="p"))
    )
    progress = await next_report(stream, "progress")
    assert progress.job_id == "r-1"
    backups.release["b-1"].set()
    finished = await next_report(stream, "finished")
    assert (finished.job_id, finished.status) == ("b-1", COMPLETE)
    restores.release["r-1"].set()
    finished = await next_report(stream, "finished")
    assert (finished.job_id, finished.status) == ("r-1", COMPLETE)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert backups.started == ["b-1"] and restores.started == ["r-1"]


async def test_a_job_continues_the_trace_its_command_carries(harness: Any) -> None:
    """The trace of a backup starts at the operator's call (ADR 0045): the job span's parent is the
    command's traceparent; a command without one starts a trace of its own."""
    factory, backups, _restores, _sleeps, session, stop = harness
    stream = factory.add()
    task = asyncio.create_task(session.run(stop))
    await next_report(stream, "hello")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = backup_command("b-1")
    traced.run_backup.traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    await stream.commands.put(traced)
    await next_report(stream, "progress")
    backups.release["b-1"].set()
    await next_report(stream, "finished")
    await stream.commands.put(backup_command("b-2"))
    await next_report(stream, "progress")
    backups.release["b-2"].set()
    await next_report(stream, "finished")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert backups.trace_ids["b-1"] == int(trace_id, 16)
    assert backups.trace_ids["b-2"] != int(trace_id, 16)


async def test_one_backup_at_a_time(harness: Any) -> None:
    factory, backups, _restores, _sleeps, session, stop = harness
    stream = factory.add()
    task = asyncio.create_task(session.run(stop))
    await stream.commands.put(backup_command("b-1"))
    await next_report(stream, "progress")
    await stream.commands.put(backup_command("b-1"))  # repeated: already running, ignored
    await stream.commands.put(backup_command("b-2"))
    refusal = await next_report(stream, "finished")
    assert refusal.job_id == "b-2" and refusal.status == common_pb2.JOB_STATUS_FAILED
    assert "another backup job (b-1) is running" in refusal.error
    backups.release["b-1"].set()
    assert (await next_report(stream, "finished")).job_id == "b-1"
    assert backups.started == ["b-1"]
    stop.set()
    await task


async def test_a_job_sent_again_after_it_finished_gets_its_report_not_a_second_run(harness: Any) -> None:
    """A gateway that restarts before it reads a job's final report sends the job again (seen in
    bench/fleet.py's kill run: 49 of 1,000 jobs ran twice). The agent answers with the report it
    sent, and runs the job once."""
    factory, backups, _restores, _sleeps, session, stop = harness
    stream = factory.add()
    task = asyncio.create_task(session.run(stop))
    await stream.commands.put(backup_command("b-1"))
    await next_report(stream, "progress")
    backups.release["b-1"].set()
    first = await next_report(stream, "finished")
    assert (first.job_id, first.status) == ("b-1", COMPLETE)
    await stream.commands.put(backup_command("b-1"))
    again = await next_report(stream, "finished")
    assert again == first
    # a new job still runs
    await stream.commands.put(backup_command("b-2"))
    await next_report(stream, "progress")
    backups.release["b-2"].set()
    assert (await next_report(stream, "finished")).job_id == "b-2"
    assert backups.started == ["b-1", "b-2"]
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_cancel_job(harness: Any) -> None:
    factory, backups, _restores, _sleeps, session, stop = harness
    stream = factory.add()
    task = asyncio.create_task(session.run(stop))
    await stream.commands.put(backup_command("b-1"))
    await next_report(stream, "progress")
    await stream.commands.put(gateway_pb2.AgentCommand(cancel_job=gateway_pb2.CancelJob(job_id="b-1")))
    finished = await next_report(stream, "finished")
    assert (finished.job_id, finished.status) == ("b-1", common_pb2.JOB_STATUS_CANCELED)
    # Canceling a job this agent does not know is confirmed; a finished one is not reported twice.
    await stream.commands.put(gateway_pb2.AgentCommand(cancel_job=gateway_pb2.CancelJob(job_id="b-1")))
    await stream.commands.put(gateway_pb2.AgentCommand(cancel_job=gateway_pb2.CancelJob(job_id="ghost")))
    finished = await next_report(stream, "finished")
    assert (finished.job_id, finished.status) == ("ghost", common_pb2.JOB_STATUS_CANCELED)
    stop.set()
    await task


async def test_reconnects_with_capped_exponential_backoff(harness: Any) -> None:
    factory, _backups, _restores, sleeps, session, stop = harness
    task = asyncio.create_task(session.run(stop))
    while len(factory.opened) < 7:
        factory.connected.clear()
        await asyncio.wait_for(factory.connected.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert sleeps[:6] == [1, 2, 4, 8, 8, 8]


async def test_finished_report_survives_a_disconnect(harness: Any) -> None:
    factory, backups, _restores, _sleeps, session, stop = harness
    first = factory.add()
    second = factory.add()
    task = asyncio.create_task(session.run(stop))
    await first.commands.put(backup_command("b-1"))
    await next_report(first, "progress")
    first.cancel()  # writes now fail
    await first.commands.put(GatewayError("UNAVAILABLE", "gateway restarted"))
    await asyncio.wait_for(second.reports.get(), 5)  # hello on the new stream
    backups.release["b-1"].set()
    finished = await next_report(second, "finished")
    assert (finished.job_id, finished.status) == ("b-1", COMPLETE)
    stop.set()
    await task


async def test_finished_while_disconnected_is_sent_after_hello(harness: Any) -> None:
    factory, backups, _restores, _sleeps, session, stop = harness
    first = factory.add()
    task = asyncio.create_task(session.run(stop))
    await first.commands.put(backup_command("b-1"))
    await next_report(first, "progress")
    await first.commands.put(None)  # the gateway closes the stream
    await asyncio.sleep(0.01)
    backups.release["b-1"].set()
    await asyncio.sleep(0.01)
    second = factory.add()
    reports = [await asyncio.wait_for(second.reports.get(), 5) for _ in range(2)]
    assert [r.WhichOneof("report") for r in reports] == ["hello", "finished"]
    assert reports[1].finished.job_id == "b-1"
    stop.set()
    await task


async def test_rejected_credential_stops_the_loop(harness: Any) -> None:
    factory, _backups, _restores, _sleeps, session, stop = harness
    factory.fail_code = "UNAUTHENTICATED"
    with pytest.raises(CredentialRejected):
        await asyncio.wait_for(session.run(stop), 5)


async def test_stop_cancels_running_jobs_and_reports_them_failed(harness: Any) -> None:
    factory, _backups, _restores, _sleeps, session, stop = harness
    stream = factory.add()
    task = asyncio.create_task(session.run(stop))
    await stream.commands.put(backup_command("b-1"))
    await next_report(stream, "progress")
    stop.set()
    finished = await next_report(stream, "finished")
    assert (finished.job_id, finished.status) == ("b-1", common_pb2.JOB_STATUS_FAILED)
    assert finished.error == "the agent was stopped while the job was running"
    await asyncio.wait_for(task, 5)
    assert session.running_jobs() == []


class GrpcLikeStream(FakeControlStream):
    """Like grpc.aio: a task cancelled in the middle of a write cancels the whole call."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.writing = asyncio.Event()

    async def write(self, report: gateway_pb2.AgentReport) -> None:
        if self.canceled:
            raise GatewayError("UNAVAILABLE", "control stream closed: RPC already finished.")
        self.writing.set()
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.canceled = True
            raise
        await self.reports.put(report)


async def test_a_progress_report_cancelled_mid_write_keeps_the_stream_and_the_final_report(harness: Any) -> None:
    factory, _backups, restores, _sleeps, _session, stop = harness
    stream = GrpcLikeStream()
    factory.streams.append(stream)

    def interrupted_progress(command: Any, cancel: asyncio.Event, on_progress: Callable[[Any], Awaitable[None]]) -> Any:
        async def run() -> gateway_pb2.JobFinished:
            stream.gate.clear()
            stream.writing.clear()
            reporter = asyncio.create_task(on_progress(common_pb2.JobStats(files_scanned=3)))
            await stream.writing.wait()
            reporter.cancel()  # as a job's progress reporter is cancelled when the job ends
            await asyncio.gather(reporter, return_exceptions=True)
            stream.gate.set()
            return gateway_pb2.JobFinished(job_id=command.job_id, status=COMPLETE)

        return run()

    session = make_session(factory, interrupted_progress, restores, [])  # type: ignore[arg-type]
    task = asyncio.create_task(session.run(stop))
    assert (await asyncio.wait_for(stream.reports.get(), 5)).WhichOneof("report") == "hello"
    await stream.commands.put(backup_command("b-1"))
    finished = await next_report(stream, "finished")
    assert (finished.job_id, finished.status) == ("b-1", COMPLETE)
    assert not stream.canceled
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_an_uninstall_command_ends_the_session(harness: Any) -> None:
    factory, _backups, _restores, _sleeps, session, stop = harness
    stream = factory.add()
    await stream.commands.put(
        gateway_pb2.AgentCommand(uninstall=gateway_pb2.Uninstall(reason="backup of this instance was canceled"))
    )
    with pytest.raises(UninstallRequested, match="canceled"):
        await asyncio.wait_for(session.run(stop), 5)


async def test_the_refusal_of_a_canceled_instance_is_an_uninstall(harness: Any) -> None:
    factory, _backups, _restores, _sleeps, session, stop = harness
    stream = factory.add()
    await stream.commands.put(GatewayError("UNAUTHENTICATED", f"agent certificate revoked: {CANCELED_REFUSAL}"))
    with pytest.raises(UninstallRequested):
        await asyncio.wait_for(session.run(stop), 5)


def test_remove_state_removes_only_an_agent_state_directory(tmp_path: Path) -> None:
    state_dir = tmp_path / "agent"
    state_dir.mkdir()
    (state_dir / "spool").mkdir()
    (state_dir / STATE_FILE).write_text("{}")
    elsewhere = tmp_path / "not-the-agent"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    assert not remove_state(str(elsewhere))
    assert (elsewhere / "keep").exists()
    assert remove_state(str(state_dir))
    assert not state_dir.exists()


def test_host_identity_and_block_devices(tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    assert host.host_id((str(tmp_path / "missing"), str(machine_id))) == "machine-id:0123456789abcdef0123456789abcdef"
    assert host.host_id((str(tmp_path / "missing"),)) == ""
    for name, sectors in (("vda", 83886080), ("loop0", 100), ("nvme0n1", 2048)):
        (tmp_path / "block" / name).mkdir(parents=True)
        (tmp_path / "block" / name / "size").write_text(f"{sectors}\n")
    found = [(d.device, d.size_bytes) for d in host.block_devices(str(tmp_path / "block"))]
    assert found == [("/dev/nvme0n1", 1 << 20), ("/dev/vda", 40 << 30)]
