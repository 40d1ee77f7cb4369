"""Fault injection over real connections: a TCP proxy a test can cut.

A service under test connects to the proxy instead of its backend (``dsn_via``); ``cut()`` then
closes every proxied connection and the listening socket, so the service sees what it would see
if the backend went away: its open connections reset, and new ones refused. ``reopen()`` brings
the backend back on the same port, as a restarted server would. ``stall_after(n)`` lets ``n`` more
bytes of the backend's answers through and then holds the rest, connections open, as a backend
that hangs mid-answer would, until ``resume()``; ``stall_when(condition)`` holds them from the
moment a condition of the test holds (checked before every piece forwarded), whatever the number
of connections the budget would have been spread over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

_CHUNK = 64 << 10


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` until :meth:`cut`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._budget: int | None = None  # bytes of answers still let through; None: no limit
        self._condition: Callable[[], bool] | None = None  # once true, answers are held
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def reopen(self) -> None:
        """Listen again on the same port after :meth:`cut`."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cut()

    def dsn_via(self, dsn: str) -> str:
        """``dsn`` (a ``postgresql://`` URL) with its host and port replaced by the proxy's."""
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    def stall_after(self, nbytes: int) -> None:
        """Let ``nbytes`` more bytes of the backend's answers through, then hold them until :meth:`resume`."""
        self._budget = nbytes
        if nbytes <= 0:
            self._flowing.clear()

    def stall_when(self, condition: Callable[[], bool]) -> None:
        """Forward the backend's answers while ``condition()`` is false, then hold them until :meth:`resume`.

        ``condition`` is called before every piece is forwarded (at most 64 KiB, on any connection),
        so once it is true no further byte reaches a client: a test can stop a transfer at a point
        the client itself reached (a file partly written), however the client spreads its reads
        over connections. It runs on the event loop: keep it cheap and non-blocking (a ``stat``).
        """
        self._condition = condition

    def resume(self) -> None:
        """Forward everything again."""
        self._budget = None
        self._condition = None
        self._flowing.set()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward the backend's answers, within the budget of :meth:`stall_after`."""
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                while data:
                    await self._flowing.wait()
                    if self._condition is not None and self._condition():
                        self._flowing.clear()
                        continue
                    allowed = len(data) if self._budget is None else min(len(data), self._budget)
                    if self._budget is not None:
                        self._budget -= allowed
                        if self._budget <= 0:
                            self._flowing.clear()
                    if allowed:
                        writer.write(data[:allowed])
                        await writer.drain()
                    data = data[allowed:]
        writer.transport.abort()

    async def cut(self) -> None:
        """Stop listening (new connections are refused) and reset every open connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(_pipe(reader, upstream_writer), self._answer(upstream_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
