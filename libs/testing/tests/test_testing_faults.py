"""The fault-injecting TCP proxy: a stall lets a budget of the backend's answers through (or forwards
them until a condition holds), holds the rest with the connection open, and ``resume`` delivers it
(ADR 0057's mid-write restore test)."""

from __future__ import annotations

import asyncio

from strongroom_testing.faults import TcpProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_a_stall_holds_the_answers_after_the_budget_until_resumed() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with TcpProxy("127.0.0.1", port) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"  # no stall: everything flows

            proxy.stall_after(3)
            writer.write(b"0123456789")
            assert await reader.readexactly(3) == b"012"
            try:
                held = await asyncio.wait_for(reader.read(10), 0.3)
            except TimeoutError:
                held = b""
            assert held == b"", "bytes passed the stall"

            proxy.resume()
            assert await asyncio.wait_for(reader.readexactly(7), 5) == b"3456789"
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def _nothing_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(10), seconds)
    except TimeoutError:
        return b""


async def test_a_conditional_stall_holds_every_connection_once_the_condition_holds() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with TcpProxy("127.0.0.1", port) as proxy:
            one = await asyncio.open_connection("127.0.0.1", proxy.port)
            two = await asyncio.open_connection("127.0.0.1", proxy.port)
            received: list[bytes] = []
            proxy.stall_when(lambda: b"stop" in b"".join(received))
            for reader, writer in (one, two):
                writer.write(b"go")
                received.append(await reader.readexactly(2))  # false: both connections flow
            one[1].write(b"stop")
            received.append(await one[0].readexactly(4))  # checked before forwarding: still false
            # now true: nothing more on either connection, however little each has had
            one[1].write(b"x")
            two[1].write(b"y")
            assert await _nothing_within(one[0], 0.3) == b""
            assert await _nothing_within(two[0], 0.1) == b"", "bytes passed the stall"
            proxy.resume()
            assert await asyncio.wait_for(one[0].readexactly(1), 5) == b"x"
            assert await asyncio.wait_for(two[0].readexactly(1), 5) == b"y"
            for _, writer in (one, two):
                writer.close()
    finally:
        server.close()
        await server.wait_closed()
