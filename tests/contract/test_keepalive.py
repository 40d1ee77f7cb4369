"""The agent's keepalive pings are ones the services' gRPC servers accept.

An agent holds one idle ``Connect`` stream and pings it (``grpc.keepalive_time_ms``); a server
that allows fewer pings answers with GOAWAY "too_many_pings" and drops the session, which
bench/fleet.py saw for about 925 of 1,000 idle agents before the servers set their limit.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from strongroom_agent.gateway_client import CHANNEL_OPTIONS
from strongroom_platform import runtime
from strongroom_platform.runtime import MIN_CLIENT_PING_INTERVAL_MS


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
        assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == MIN_CLIENT_PING_INTERVAL_MS
        assert options["grpc.http2.max_ping_strikes"] == 0  # no GOAWAY "too_many_pings" at all
    finally:
        await server.stop(None)
