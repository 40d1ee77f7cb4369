"""A client-streaming call the gateway ends early keeps a retryable status (grpc/grpc#36066).

grpc.aio's client can report such a call as INTERNAL "Internal error from Core",
losing the gateway's own status. Before the agent mapped it, a database outage
during a backup of small upload messages failed the job instead of retrying it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from strongroom.agent.v1 import gateway_pb2, gateway_pb2_grpc
from strongroom_agent.gateway_client import GatewayError, GrpcGatewayClient, open_channel
from strongroom_agent.transport import GatewayTrust

OUTAGE = "the metadata database is unavailable; retry"


class FailsAfterTheFirstMessage(gateway_pb2_grpc.AgentGatewayServiceServicer):
    """A gateway whose database went away: it reads one request, then answers UNAVAILABLE."""

    async def UploadChunks(self, request_iterator: Any, context: Any) -> gateway_pb2.UploadChunksResponse:
        async for _request in request_iterator:
            await context.abort(grpc.StatusCode.UNAVAILABLE, OUTAGE)
        return gateway_pb2.UploadChunksResponse()

    async def CommitPoint(self, request_iterator: Any, context: Any) -> gateway_pb2.CommitPointResponse:
        async for request in request_iterator:
            if request.header.job_id == "hold":  # a gateway that takes its time: the caller gives up first
                await asyncio.sleep(60)
            await context.abort(grpc.StatusCode.UNAVAILABLE, OUTAGE)
        return gateway_pb2.CommitPointResponse()


@pytest.fixture
async def address() -> AsyncIterator[str]:
    server = grpc.aio.server()
    gateway_pb2_grpc.add_AgentGatewayServiceServicer_to_server(FailsAfterTheFirstMessage(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_uploads_ended_early_by_the_gateway_are_retryable_every_time(address: str) -> None:
    # 64 messages of 64 KiB per call: about one call in ten lost its status to the client
    # before the mapping (measured 5 of 40), so 100 calls show it with near certainty.
    chunk = gateway_pb2.UploadedChunk(chunk_id=b"i" * 32, raw_length=64 << 10, payload=b"p" * (64 << 10))
    message = gateway_pb2.UploadChunkRequest(job_id="job", chunks=[chunk]).SerializeToString()
    codes: collections.Counter[str] = collections.Counter()
    async with open_channel(address, GatewayTrust(plaintext=True)) as channel:
        client = GrpcGatewayClient(channel, "instance", "credential")
        for _ in range(100):
            with pytest.raises(GatewayError) as caught:
                await client.upload_chunks([message] * 64)
            codes[caught.value.code] += 1
    assert codes == {"UNAVAILABLE": 100}


async def commit_requests(job_id: str) -> AsyncIterator[gateway_pb2.CommitPointRequest]:
    for _ in range(8):
        yield gateway_pb2.CommitPointRequest(header=gateway_pb2.PointHeader(job_id=job_id))


async def test_a_commit_ended_early_by_the_gateway_is_retryable(address: str) -> None:
    # The agent streams a commit from an async iterator (the spooled manifest): a refusal mid-stream
    # must reach RetryPolicy as UNAVAILABLE, masked or not.
    async with open_channel(address, GatewayTrust(plaintext=True)) as channel:
        client = GrpcGatewayClient(channel, "instance", "credential")
        for _ in range(20):
            with pytest.raises(GatewayError) as caught:
                await client.commit_point(commit_requests("job"))
            assert caught.value.code == "UNAVAILABLE"


async def test_cancelling_a_commit_still_cancels_it(address: str) -> None:
    async with open_channel(address, GatewayTrust(plaintext=True)) as channel:
        client = GrpcGatewayClient(channel, "instance", "credential")
        commit = asyncio.create_task(client.commit_point(commit_requests("hold")))
        await asyncio.sleep(0.2)
        commit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await commit
        assert commit.cancelled()


def test_only_the_clients_own_internal_text_is_mapped() -> None:
    def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)

    lost = GatewayError.from_streaming_rpc(rpc_error(grpc.StatusCode.INTERNAL, "Internal error from Core"))
    assert lost.code == "UNAVAILABLE"
    assert "lost its status" in lost.details
    # The gateway's own INTERNAL (a bug or a refusal it reports so) is not retried.
    own = GatewayError.from_streaming_rpc(rpc_error(grpc.StatusCode.INTERNAL, "internal error (reference 7f3a)"))
    assert (own.code, own.details) == ("INTERNAL", "internal error (reference 7f3a)")
    denied = GatewayError.from_streaming_rpc(rpc_error(grpc.StatusCode.PERMISSION_DENIED, "not your job"))
    assert denied.code == "PERMISSION_DENIED"
