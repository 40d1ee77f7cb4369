"""Fault injection over real connections: a TCP proxy a test can cut.

A service under test connects to the proxy instead of its backend (``dsn_via``); ``cut()`` then
closes every proxied connection and the listening socket, so the service sees what it would see
if the backend went away: its open connections reset, and new ones refused. ``reopen()`` brings
the backend back on the same port, as a restarted server would.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

_CHUNK = 64 << 10


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` until :meth:`cut`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
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
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
