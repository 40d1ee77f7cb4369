"""The agent's keepalive pings are ones the services' gRPC servers accept.

An agent holds one idle ``Connect`` stream and pings it (``grpc.keepalive_time_ms``); a server
that allows fewer pings counts each one as a strike and at the third answers with GOAWAY
"too_many_pings", dropping the session and every call on the connection, which bench/fleet.py saw
for most of 1,000 agents. The servers' minimum interval was once set under a key gRPC does not know
(``grpc.http2.min_recv_ping_interval_without_data_ms``: the macro's name, not its string), so gRPC's
5 min default stayed in force; the last test runs a real server and a busy agent's pings against it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from strongroom_agent.gateway_client import CHANNEL_OPTIONS
from strongroom_platform import runtime
from strongroom_platform.runtime import MIN_CLIENT_PING_INTERVAL_MS

# gRPC's name for the server's minimum interval (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)
MIN_RECV_PING_INTERVAL = "grpc.http2.min_ping_interval_without_data_ms"


def test_the_agents_ping_interval_is_one_the_servers_allow() -> None:
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.keepalive_time_ms"] >= MIN_CLIENT_PING_INTERVAL_MS


async def test_a_started_server_carries_the_ping_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[tuple[str, Any]]] = []
    real_server = grpc.aio.server

    def spy(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        seen.append(list(kwargs.get("options") or []))
        return real_server(*args, **kwargs)

    monkeypatch.setattr(runtime.grpc.aio, "server", spy)
    server, port = await runtime.start_grpc_server("127.0.0.1:0", lambda _server: None)
    try:
        assert port > 0
        options = dict(seen[0])
        assert options["grpc.keepalive_permit_without_calls"] == 1
        assert options[MIN_RECV_PING_INTERVAL] == MIN_CLIENT_PING_INTERVAL_MS
        assert "grpc.http2.max_ping_strikes" not in options  # gRPC's limit of strikes holds
    finally:
        await server.stop(None)


async def _echo(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def _upload(request: bytes, context: object) -> bytes:
    return b"ok"


def _register(server: grpc.aio.Server) -> None:
    methods = {
        "Connect": grpc.stream_stream_rpc_method_handler(_echo),
        "Upload": grpc.unary_unary_rpc_method_handler(_upload),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Agent", methods),))


async def test_a_busy_agent_is_not_dropped_for_its_keepalive_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server as the services start it, with gRPC's limit of two strikes, and an agent's channel
    with a control stream open: a burst of calls, an idle spell in which only keepalive pings flow,
    another burst. Time is scaled down 20 times (the server's minimum 1 s, the agent's keepalive
    1.5 s: the agent's 30 s against 20 s; gRPC pings no more than once a second whatever a client
    asks), and the client may ping without sending data as often as it likes
    (``max_pings_without_data`` 0; an agent's default throttles it), so the idle spell brings five
    pings. With the server's minimum left at gRPC's 5 min (the misspelt key) the fourth of them is
    the third strike: GOAWAY "too_many_pings", and the stream fails UNAVAILABLE."""
    scale = 20
    monkeypatch.setattr(runtime, "MIN_CLIENT_PING_INTERVAL_MS", MIN_CLIENT_PING_INTERVAL_MS // scale)
    agent = dict(CHANNEL_OPTIONS)
    keepalive_ms = int(agent["grpc.keepalive_time_ms"]) // scale
    # one entry per key: gRPC takes the first of repeated ones
    options = {**agent, "grpc.keepalive_time_ms": keepalive_ms, "grpc.http2.max_pings_without_data": 0}
    server, port = await runtime.start_grpc_server("127.0.0.1:0", _register)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=list(options.items())) as channel:
            upload = channel.unary_unary("/test.Agent/Upload")
            outgoing: asyncio.Queue[bytes] = asyncio.Queue()

            async def messages() -> AsyncIterator[bytes]:
                while True:
                    yield await outgoing.get()

            control = channel.stream_stream("/test.Agent/Connect")(messages())
            for _ in range(3):  # a burst of calls
                assert await upload(b"x" * (64 << 10), timeout=10) == b"ok"
            await outgoing.put(b"progress")
            assert await asyncio.wait_for(control.read(), 10) == b"progress"
            await asyncio.sleep(5.5 * keepalive_ms / 1000)  # idle: five keepalive pings
            for _ in range(3):
                assert await upload(b"x" * (64 << 10), timeout=10) == b"ok"
            # still the same session: the stream answers, the channel never lost its connection
            await outgoing.put(b"still here")
            assert await asyncio.wait_for(control.read(), 10) == b"still here"
            assert channel.get_state() is grpc.ChannelConnectivity.READY
            control.cancel()
    finally:
        await server.stop(None)
