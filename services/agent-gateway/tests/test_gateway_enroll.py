"""Enrollment and per-call authentication over a real gRPC server."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from gateway_helpers import AGENT_VERSION, GatewayHarness, meta
from strongroom.agent.v1 import gateway_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import events


async def _find_missing(gw: GatewayHarness, md: tuple[tuple[str, str], ...]) -> None:
    await gw.stub.FindMissingChunks(gateway_pb2.FindMissingChunksRequest(job_id="j1", chunk_ids=[]), metadata=md)


async def test_good_token_yields_a_working_credential_and_agent_enrolled(gw: GatewayHarness) -> None:
    token = await gw.activate("i-1", "acct-a")
    response = await gw.stub.Enroll(
        gateway_pb2.EnrollRequest(
            enrollment_token=token, hostname="web1", os="linux", arch="x86_64", agent_version=AGENT_VERSION
        )
    )
    assert response.instance_id == "i-1"
    assert len(response.credential) >= 43 and "." not in response.credential
    stored = gw.store.state.instances["i-1"]
    assert response.credential not in repr(stored) and token not in repr(stored)  # only hashes are kept

    [enrolled] = gw.store.events(events.AGENT_ENROLLED)
    assert (enrolled.instance_id, enrolled.account_id, enrolled.hostname, enrolled.os, enrolled.arch) == (
        "i-1",
        "acct-a",
        "web1",
        "linux",
        "x86_64",
    )
    md = (("authorization", f"Bearer i-1.{response.credential}"),)
    # Authenticated: the call gets past auth and fails only on the unknown job.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _find_missing(gw, md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reused_token_is_refused(gw: GatewayHarness) -> None:
    token = await gw.activate("i-1")
    await gw.stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token=token, agent_version=AGENT_VERSION))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token=token, agent_version=AGENT_VERSION))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "already used" in (err.value.details() or "")
    assert len(gw.store.events(events.AGENT_ENROLLED)) == 1


async def test_expired_token_is_refused(gw: GatewayHarness) -> None:
    token = await gw.activate("i-1", valid_hours=1)
    gw.clock.advance(hours=2)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token=token, agent_version=AGENT_VERSION))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (err.value.details() or "")
    assert gw.store.state.instances["i-1"].credential_sha256 is None


async def test_unknown_token_is_refused(gw: GatewayHarness) -> None:
    await gw.activate("i-1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token="guess"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "i-1.wrong-secret",
        "Bearer i-1.wrong-secret",
        "Bearer i-2.{secret}",
        "Bearer {secret}",
        "Basic i-1.{secret}",
        "Bearer i-1.{secret}x",
    ],
)
async def test_wrong_or_missing_credential_is_unauthenticated(gw: GatewayHarness, authorization: str | None) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.enrolled_agent("i-2")
    secret = agent.credential
    md: tuple[tuple[str, str], ...] = ()
    if authorization is not None:
        md = (("authorization", authorization.format(secret=secret)),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _find_missing(gw, md)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details()


async def test_deactivation_revokes_the_credential(gw: GatewayHarness) -> None:
    agent = await gw.enrolled_agent("i-1")
    await gw.deliver(
        events.INSTANCE_DEACTIVATED,
        events_pb2.InstanceDeactivated(meta=meta(), account_id="acct-a", instance_id="i-1"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _find_missing(gw, agent.md)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reactivation_issues_a_new_token_that_enrolls(gw: GatewayHarness) -> None:
    first = await gw.enrolled_agent("i-1")
    await gw.deliver(
        events.INSTANCE_DEACTIVATED,
        events_pb2.InstanceDeactivated(meta=meta(), account_id="acct-a", instance_id="i-1"),
    )
    gw.clock.advance(dt.timedelta(days=1).total_seconds())
    second = await gw.enrolled_agent("i-1")
    assert second.credential != first.credential
    with pytest.raises(grpc.aio.AioRpcError):
        await _find_missing(gw, first.md)


async def test_an_old_agent_is_refused_and_its_token_stays_valid(gw: GatewayHarness) -> None:
    token = await gw.activate("i-1", "acct-a")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gw.stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token=token, agent_version="unknown"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "upgrade it on the host" in (err.value.details() or "")
    assert not gw.store.events(events.AGENT_ENROLLED)
    # The upgraded agent enrolls with the same token.
    response = await gw.stub.Enroll(gateway_pb2.EnrollRequest(enrollment_token=token, agent_version=AGENT_VERSION))
    assert response.instance_id == "i-1"
