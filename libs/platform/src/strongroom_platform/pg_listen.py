"""A PostgreSQL ``LISTEN`` that survives the loss of its connection (ADR 0050).

One connection per process listens on a few channels and hands every notification to a
callback; the callers fan it out in memory (the outbox relay wakes itself, the gateway wakes
the agent session of the notified instance). A listening connection can die with the database,
a failover or a network cut, and asyncpg then says nothing more: :class:`Listener` notices
(the connection's termination callback, or a ``SELECT 1`` every ``check_interval`` seconds that
fails or takes longer than ``check_timeout``), takes a new connection, listens again and calls
``on_listening`` — the caller's sweep for whatever was notified while nobody listened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import asyncpg

from strongroom_platform.clock import Clock, sleep_or_event

__all__ = ["Listener"]

log = logging.getLogger(__name__)

# What a lost or unreachable database raises (the pool, the connection, the network).
_LOST: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
)


class Listener:
    """Listens on ``channels`` over one connection taken from ``pool``, re-listening after it is lost.

    Args:
        pool: where the listening connection comes from (it is held while listening).
        channels: the ``LISTEN`` channels.
        on_notify: called with (channel, payload) for every notification, on the event loop.
        on_listening: called each time listening (re)starts — first start included — so the caller
            can sweep for what it may have missed.
        clock: for the checks and the retry pause.
        check_interval: seconds between liveness checks of the connection.
        check_timeout: a check slower than this counts as a lost connection.
        retry_interval: seconds between attempts to listen again.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        channels: Sequence[str],
        on_notify: Callable[[str, str], None],
        *,
        on_listening: Callable[[], None],
        clock: Clock,
        check_interval: float = 10.0,
        check_timeout: float = 5.0,
        retry_interval: float = 1.0,
    ) -> None:
        if not channels:
            raise ValueError("a listener needs at least one channel")
        self._pool = pool
        self._channels = tuple(channels)
        self._on_notify = on_notify
        self._on_listening = on_listening
        self._clock = clock
        self._check_interval = check_interval
        self._check_timeout = check_timeout
        self._retry_interval = retry_interval
        self.sessions = 0
        """How many times listening started (1 + reconnections); for tests and logs."""

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: object) -> None:
        self._on_notify(channel, str(payload))

    async def run(self) -> None:
        """Listen until cancelled, taking a new connection whenever the current one is lost."""
        while True:
            try:
                await self._listen_once()
            except _LOST as exc:
                log.warning("listening on %s failed, retrying: %s", ",".join(self._channels), exc)
            await self._clock.sleep(self._retry_interval)

    async def _listen_once(self) -> None:
        async with self._pool.acquire() as conn:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            try:
                for channel in self._channels:
                    await conn.add_listener(channel, self._deliver)
                self.sessions += 1
                if self.sessions > 1:
                    log.info("listening on %s again", ",".join(self._channels))
                self._on_listening()
                while not lost.is_set():
                    await sleep_or_event(self._clock, self._check_interval, lost)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=self._check_timeout)
                log.warning("the connection listening on %s was lost", ",".join(self._channels))
            finally:
                # On a dead connection there is nothing left to remove; the pool discards it.
                for channel in self._channels:
                    with contextlib.suppress(*_LOST):
                        await conn.remove_listener(channel, self._deliver)
