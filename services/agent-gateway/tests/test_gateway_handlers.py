"""Consumed events: idempotency, ordering across topics, cancellation, poison records."""

from __future__ import annotations

import pytest
from gateway_helpers import GatewayHarness, meta
from strongroom.agent.v1 import gateway_pb2
from strongroom.common.v1 import common_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import events
from strongroom_platform.eventbus import PoisonRecord, Record


async def test_redelivered_job_requested_is_applied_once(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    event = events_pb2.JobRequested(meta=meta(), account_id="acct-a", instance_id="i-1", job_id="job-1")
    await gw.deliver(events.JOB_REQUESTED, event)
    await gw.deliver(events.JOB_REQUESTED, event)
    assert list(gw.store.state.jobs) == ["job-1"]
    assert agent.instance_id == "i-1"


async def test_job_requested_before_activation_waits_for_the_agent(gw: GatewayHarness) -> None:
    await gw.deliver(
        events.JOB_REQUESTED,
        events_pb2.JobRequested(meta=meta(), account_id="acct-a", instance_id="i-1", job_id="job-1"),
    )
    assert gw.store.state.jobs["job-1"].state == "queued"
    await gw.enrolled_agent("i-1")
    assert gw.store.state.jobs["job-1"].state == "queued"


async def test_cancel_of_a_queued_job_finishes_it_canceled(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_backup(agent, "job-1")
    cancel = events_pb2.JobCancelRequested(meta=meta(), account_id="acct-a", instance_id="i-1", job_id="job-1")
    await gw.deliver(events.JOB_CANCEL_REQUESTED, cancel)
    assert gw.store.state.jobs["job-1"].state == "finished"
    [update] = gw.store.events(events.JOB_UPDATED)
    assert (update.job_id, update.status) == ("job-1", common_pb2.JOB_STATUS_CANCELED)


async def test_cancel_overtaking_its_request_suppresses_the_job(gw: GatewayHarness) -> None:
    await gw.enrolled_agent("i-1")
    await gw.deliver(
        events.JOB_CANCEL_REQUESTED,
        events_pb2.JobCancelRequested(meta=meta(), account_id="acct-a", instance_id="i-1", job_id="job-1"),
    )
    await gw.deliver(
        events.JOB_REQUESTED,
        events_pb2.JobRequested(meta=meta(), account_id="acct-a", instance_id="i-1", job_id="job-1"),
    )
    assert gw.store.state.jobs["job-1"].state == "finished"
    assert [u.status for u in gw.store.events(events.JOB_UPDATED)] == [common_pb2.JOB_STATUS_CANCELED]


async def test_restore_cancel_emits_restore_updated(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.request_restore(agent, "r-1", "p-1")
    await gw.deliver(
        events.RESTORE_CANCEL_REQUESTED,
        events_pb2.RestoreCancelRequested(
            meta=meta(), account_id="acct-a", restore_job_id="r-1", target_instance_id="i-1"
        ),
    )
    [update] = gw.store.events(events.RESTORE_UPDATED)
    assert (update.restore_job_id, update.status) == ("r-1", common_pb2.JOB_STATUS_CANCELED)
    assert gw.store.events(events.JOB_UPDATED) == []


async def test_job_for_a_deactivated_instance_fails_at_once(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.deliver(
        events.INSTANCE_DEACTIVATED, events_pb2.InstanceDeactivated(meta=meta(), account_id="acct-a", instance_id="i-1")
    )
    await gw.request_backup(agent, "job-1")
    [update] = gw.store.events(events.JOB_UPDATED)
    assert update.status == common_pb2.JOB_STATUS_FAILED


async def test_instance_cannot_move_to_another_account(gw: GatewayHarness) -> None:
    await gw.activate("i-1", "acct-a")
    with pytest.raises(PoisonRecord):
        await gw.activate("i-1", "acct-b")
    assert gw.store.state.instances["i-1"].account_id == "acct-a"


async def test_job_naming_another_account_is_poison(gw: GatewayHarness) -> None:
    await gw.activate("i-1", "acct-a")
    with pytest.raises(PoisonRecord):
        await gw.deliver(
            events.JOB_REQUESTED,
            events_pb2.JobRequested(meta=meta(), account_id="acct-b", instance_id="i-1", job_id="job-1"),
        )
    assert gw.store.state.jobs == {}


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xff not protobuf",
        events_pb2.JobRequested(account_id="a", instance_id="i", job_id="j").SerializeToString(),  # no event id
    ],
)
async def test_undecodable_events_are_poison(gw: GatewayHarness, value: bytes) -> None:
    with pytest.raises(PoisonRecord):
        await gw.handlers[events.JOB_REQUESTED](Record(events.JOB_REQUESTED, 0, 0, b"k", value))


async def test_account_key_is_created_once_and_kept(gw: GatewayHarness) -> None:
    await gw.activate("i-1", "acct-a")
    key = await gw.key_of("acct-a")
    await gw.activate("i-2", "acct-a")
    assert await gw.key_of("acct-a") == key and len(key) == 32


async def test_failed_handler_rolls_back_its_claim(gw: GatewayHarness) -> None:
    await gw.activate("i-1", "acct-a")
    event = events_pb2.JobRequested(meta=meta(), account_id="acct-b", instance_id="i-1", job_id="job-1")
    with pytest.raises(PoisonRecord):
        await gw.deliver(events.JOB_REQUESTED, event)
    assert ("agent-gateway", event.meta.event_id) not in gw.store.state.processed


async def test_a_queued_job_carries_the_trace_of_its_request(gw: GatewayHarness) -> None:
    """job-requested's traceparent reaches the agent in the command (ADR 0045): the consumer's span
    continues the record's trace, and the stored command names it."""
    await gw.enrolled_agent("i-1")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    event = events_pb2.JobRequested(meta=meta(), account_id="acct-a", instance_id="i-1", job_id="job-1")
    headers = (("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01".encode()),)
    await gw.handlers[events.JOB_REQUESTED](
        Record(events.JOB_REQUESTED, 0, 1, b"k", event.SerializeToString(), headers)
    )
    command = gateway_pb2.AgentCommand.FromString(gw.store.state.jobs["job-1"].command)
    assert command.run_backup.traceparent.split("-")[1] == trace_id
    # Without a trace (an older scheduler), the command carries none, or (when this process traces)
    # the gateway's own new trace: never another job's.
    untraced = events_pb2.JobRequested(meta=meta(), account_id="acct-a", instance_id="i-1", job_id="job-2")
    await gw.deliver(events.JOB_REQUESTED, untraced)
    second = gateway_pb2.AgentCommand.FromString(gw.store.state.jobs["job-2"].command).run_backup.traceparent
    assert second == "" or second.split("-")[1] != trace_id
