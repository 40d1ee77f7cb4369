"""A point's mount point must be a filesystem recorded for the instance at enrollment (issue 9).

A compromised server could otherwise name any absolute path as its mount point, and a later
restore to "the original location" on another server would write there. New filesystems from a
hello wait for an operator's approval.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from gateway_helpers import AGENT_VERSION, Agent, GatewayHarness, dir_entry, meta
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_gateway import filesystems
from strongroom_gateway.errors import NotFound
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.repository import PgGatewayStore
from strongroom_platform import events
from strongroom_platform.testing import FakeClock
from strongroom_testing.fixtures import PgLogins

APPROVAL = "an operator must approve the new filesystem"


async def _hello(gw: GatewayHarness, agent: Agent, *mount_points: str) -> None:
    """Connect, say hello with these filesystems, and wait until the gateway recorded them."""
    call = gw.stub.Connect(metadata=agent.md)
    hello = gateway_pb2.AgentHello(
        agent_version=AGENT_VERSION,
        filesystems=[common_pb2.Filesystem(mount_point=m, capacity_bytes=1 << 30) for m in mount_points],
    )
    await call.write(gateway_pb2.AgentReport(hello=hello))
    for _ in range(500):
        async with gw.store.transaction() as tx:
            known = {f.mount_point for f in await tx.instance_filesystems(agent.instance_id)}
        if set(mount_points) <= known:
            break
        await asyncio.sleep(0.01)
    call.cancel()


async def _refused(gw: GatewayHarness, agent: Agent, job_id: str, mount_point: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.commit(agent, job_id, [dir_entry("")], mount_point=mount_point)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details() or ""
    assert APPROVAL in details
    return details


async def _nothing_committed(gw: GatewayHarness) -> None:
    assert not gw.store.events(events.POINT_CREATED)
    assert [k async for k in gw.objects.list("manifests/")] == []


async def test_a_mount_point_not_recorded_at_enrollment_is_refused(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1", mount_points=["/"])
    await gw.request_backup(agent, "job-1")
    for claimed in ("/etc", "/root/.ssh", "/data"):
        details = await _refused(gw, agent, "job-1", claimed)
        assert "was not recorded for this instance at enrollment" in details
    await _nothing_committed(gw)
    response = await gw.commit(agent, "job-1", [dir_entry("")], mount_point="/")
    assert response.point_id


async def test_a_filesystem_first_seen_in_a_hello_waits_for_an_operator(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1", mount_points=["/"])
    await _hello(gw, agent, "/", "/srv")
    [waiting] = await filesystems.pending(gw.store, "i-1")
    assert waiting.mount_point == "/srv" and not waiting.approved
    assert common_pb2.Filesystem.FromString(waiting.filesystem).capacity_bytes == 1 << 30

    await gw.request_backup(agent, "job-1")
    assert "is pending approval" in await _refused(gw, agent, "job-1", "/srv")
    await _nothing_committed(gw)

    await filesystems.approve(gw.store, "i-1", "/srv", clock=gw.clock)
    assert await filesystems.pending(gw.store, "i-1") == []
    assert (await gw.commit(agent, "job-1", [dir_entry("")], mount_point="/srv")).point_id


async def test_an_agent_enrolled_without_filesystems_gets_its_first_hello_recorded(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1", mount_points=())
    await _hello(gw, agent, "/", "/srv")  # the enrollment set: approved
    await _hello(gw, agent, "/", "/srv", "/etc")  # later claims: pending
    assert [f.mount_point for f in await filesystems.pending(gw.store, "i-1")] == ["/etc"]
    await gw.request_backup(agent, "job-1")
    await _refused(gw, agent, "job-1", "/etc")
    assert (await gw.commit(agent, "job-1", [dir_entry("")], mount_point="/srv")).point_id


async def test_another_instance_s_filesystems_do_not_count(gw: GatewayHarness) -> None:
    await gw.enrolled_agent("i-1", mount_points=["/", "/data"])
    agent = await gw.enrolled_agent("i-2", mount_points=["/"])
    await gw.request_backup(agent, "job-1")
    await _refused(gw, agent, "job-1", "/data")


async def test_an_explicit_root_of_the_job_is_approved_by_the_operator_s_request(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1", mount_points=["/"])
    await gw.deliver(
        events.JOB_REQUESTED,
        events_pb2.JobRequested(
            meta=meta(), account_id="acct-a", instance_id="i-1", job_id="job-1", roots=["/srv/www"]
        ),
    )
    assert (await gw.commit(agent, "job-1", [dir_entry("")], mount_point="/srv/www")).point_id
    await _refused(gw, agent, "job-1", "/srv")  # only the root itself


async def test_approving_a_filesystem_nobody_reported_is_not_found(gw: GatewayHarness) -> None:
    await gw.enrolled_agent("i-1", mount_points=["/"])
    with pytest.raises(NotFound):
        await filesystems.approve(gw.store, "i-1", "/srv", clock=gw.clock)


@pytest.fixture
async def pg_gw(pg_logins: PgLogins, clock: FakeClock) -> AsyncIterator[GatewayHarness]:
    pool = await pg_logins.pool(SPEC)
    harness = GatewayHarness(clock, store=PgGatewayStore(pool))
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
        await pool.close()


@pytest.mark.integration
async def test_recorded_pending_and_approved_filesystems_on_postgresql(pg_gw: GatewayHarness) -> None:
    gw = pg_gw
    agent = await gw.enrolled_agent("i-mp-1", mount_points=["/"])
    await _hello(gw, agent, "/", "/srv")
    await gw.request_backup(agent, "job-mp-1")
    await _refused(gw, agent, "job-mp-1", "/srv")
    await filesystems.approve(gw.store, "i-mp-1", "/srv", clock=gw.clock)
    assert (await gw.commit(agent, "job-mp-1", [dir_entry("")], mount_point="/srv")).point_id
    async with gw.store.transaction() as tx:
        recorded = await tx.instance_filesystems("i-mp-1")
    assert [(f.mount_point, f.approved) for f in recorded] == [("/", True), ("/srv", True)]
    assert recorded[1].approved_at == gw.clock.now()
