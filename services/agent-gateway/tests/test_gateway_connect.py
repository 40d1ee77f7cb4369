"""Connect: job delivery (queued before and during a session), reports to events, cancel, revocation."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gateway_helpers import AGENT_VERSION, Agent, GatewayHarness, connected_agents, eventually, meta
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import events

TIMEOUT = 5


def hello(*capacities: int) -> gateway_pb2.AgentReport:
    return gateway_pb2.AgentReport(
        hello=gateway_pb2.AgentHello(
            agent_version=AGENT_VERSION,
            hostname="web1",
            filesystems=[
                common_pb2.Filesystem(mount_point=f"/fs{i}", capacity_bytes=c) for i, c in enumerate(capacities)
            ],
        )
    )


async def read(
    call: grpc.aio.StreamStreamCall[gateway_pb2.AgentReport, gateway_pb2.AgentCommand],
) -> gateway_pb2.AgentCommand:
    command = await asyncio.wait_for(call.read(), TIMEOUT)
    assert isinstance(command, gateway_pb2.AgentCommand)
    return command


async def test_jobs_queued_while_offline_are_delivered_on_connect(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-low", common_pb2.BACKUP_PRIORITY_LOW)
    await gw.request_backup(agent, "job-high", common_pb2.BACKUP_PRIORITY_HIGH)
    key = await gw.key_of("acct-a")

    call = gw.stub.Connect(metadata=agent.md)
    await call.write(hello(10, 20))
    first, second = await read(call), await read(call)
    assert first.run_backup.job_id == "job-low"
    assert (first.run_backup.max_read_bytes_per_second, first.run_backup.max_cores) == (10_000_000, 1)
    assert second.run_backup.job_id == "job-high"
    assert (second.run_backup.max_read_bytes_per_second, second.run_backup.max_cores) == (30_000_000, 2)
    repo = first.run_backup.repository
    assert (repo.chunker_min_size, repo.chunker_avg_size, repo.chunker_max_size) == (256 << 10, 1 << 20, 4 << 20)
    assert repo.chunk_id_key == key and len(key) == 32
    assert repo.chunker_seed == gw.store.state.accounts["acct-a"].chunker_seed
    assert gw.store.state.jobs["job-low"].state == "delivered"
    call.cancel()


async def test_job_requested_while_connected_is_pushed_immediately(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    call = gw.stub.Connect(metadata=agent.md)
    await call.write(hello(1))
    await eventually(lambda: gw.sessions.get("i-1") is not None)
    await gw.request_backup(agent, "job-1")
    command = await read(call)
    assert command.run_backup.job_id == "job-1"
    call.cancel()


async def test_jobs_survive_a_reconnect(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    call = gw.stub.Connect(metadata=agent.md)
    assert (await read(call)).run_backup.job_id == "job-1"
    call.cancel()
    # The agent died before finishing: the unfinished job is sent again on the next stream.
    again = gw.stub.Connect(metadata=agent.md)
    assert (await read(again)).run_backup.job_id == "job-1"
    again.cancel()


async def _connected_with_job(gw: GatewayHarness, agent: Agent, job_id: str) -> grpc.aio.StreamStreamCall:  # type: ignore[type-arg]
    await gw.request_backup(agent, job_id)
    call = gw.stub.Connect(metadata=agent.md)
    await call.write(hello(100, 200))
    assert (await read(call)).run_backup.job_id == job_id
    return call


async def test_progress_and_finished_reports_become_job_updated(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    call = await _connected_with_job(gw, agent, "job-1")
    await call.write(
        gateway_pb2.AgentReport(
            progress=gateway_pb2.JobProgress(job_id="job-1", stats=common_pb2.JobStats(files_scanned=7))
        )
    )
    await call.write(
        gateway_pb2.AgentReport(
            finished=gateway_pb2.JobFinished(
                job_id="job-1",
                status=common_pb2.JOB_STATUS_PARTIAL_COMPLETE,
                stats=common_pb2.JobStats(files_scanned=9, files_failed=1),
                file_errors=["etc/shadow: permission denied"],
            )
        )
    )
    await eventually(lambda: len(gw.store.events(events.JOB_UPDATED)) == 2)
    running, finished = gw.store.events(events.JOB_UPDATED)
    assert (running.job_id, running.status, running.stats.files_scanned) == ("job-1", common_pb2.JOB_STATUS_RUNNING, 7)
    assert finished.status == common_pb2.JOB_STATUS_PARTIAL_COMPLETE
    assert list(finished.file_errors) == ["etc/shadow: permission denied"]
    assert finished.instance_id == "i-1" and finished.account_id == "acct-a"
    # The version of the agent's hello travels with its jobs (ADR 0045: versions per instance).
    assert running.agent_version == finished.agent_version == AGENT_VERSION
    assert gw.store.state.jobs["job-1"].state == "finished"
    assert gw.store.state.instances["i-1"].capacity_bytes == 300
    call.cancel()


async def test_reports_on_another_instances_job_are_ignored(gw: GatewayHarness) -> None:
    victim = await gw.enrolled_agent("i-1")
    await gw.request_backup(victim, "victim-job")
    attacker = await gw.enrolled_agent("i-2")
    call = gw.stub.Connect(metadata=attacker.md)
    await call.write(
        gateway_pb2.AgentReport(
            finished=gateway_pb2.JobFinished(job_id="victim-job", status=common_pb2.JOB_STATUS_FAILED)
        )
    )
    await call.write(hello(1))
    await eventually(lambda: gw.store.state.instances["i-2"].capacity_bytes == 1)
    assert gw.store.events(events.JOB_UPDATED) == []
    assert gw.store.state.jobs["victim-job"].state == "queued"
    call.cancel()


async def test_cancel_of_a_delivered_job_sends_cancel_job(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    call = await _connected_with_job(gw, agent, "job-1")
    await gw.deliver(
        events.JOB_CANCEL_REQUESTED,
        events_pb2.JobCancelRequested(meta=meta(), account_id="acct-a", instance_id="i-1", job_id="job-1"),
    )
    command = await read(call)
    assert command.cancel_job.job_id == "job-1"
    [canceling] = gw.store.events(events.JOB_UPDATED)
    assert canceling.status == common_pb2.JOB_STATUS_CANCELING
    call.cancel()


async def test_deactivation_tells_the_agent_to_uninstall_and_ends_the_stream(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    call = await _connected_with_job(gw, agent, "job-1")
    await gw.deliver(
        events.INSTANCE_DEACTIVATED,
        events_pb2.InstanceDeactivated(meta=meta(), account_id="acct-a", instance_id="i-1"),
    )
    command = await read(call)
    assert command.WhichOneof("command") == "uninstall" and "canceled" in command.uninstall.reason
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read(call)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "backup was deactivated for this instance" in (err.value.details() or "")
    [canceled] = gw.store.events(events.JOB_UPDATED)
    assert canceled.status == common_pb2.JOB_STATUS_CANCELED


async def test_connect_without_credential_is_refused(gw: GatewayHarness) -> None:
    call = gw.stub.Connect()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read(call)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_agent_outside_the_version_window_is_refused_with_how_to_upgrade(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    call = gw.stub.Connect(metadata=agent.md)
    # An agent from before versions were checked, or a client that is no agent (the window's
    # arithmetic is tested in test_gateway_agent_versions.py).
    await call.write(gateway_pb2.AgentReport(hello=gateway_pb2.AgentHello(agent_version="", hostname="web1")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read(call)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "apt-get install --only-upgrade strongroom-agent" in (err.value.details() or "")


async def test_an_idle_session_is_its_call_and_its_reader_only(gw: GatewayHarness) -> None:
    # 10,000 idle sessions per process (ADR 0050, session 8): each waits on its wake event in the
    # call's own task, with no waiter task of its own and no generator per interceptor layer.
    before = {id(t): t for t in asyncio.all_tasks()}
    _, streams = await connected_agents(gw, 20)
    await asyncio.sleep(0.1)
    new = [t for t in asyncio.all_tasks() if id(t) not in before]
    waiting = [t for t in new if getattr(t.get_coro(), "__qualname__", "") == "Event.wait"]
    assert waiting == []
    for stream in streams:
        await stream.close()
