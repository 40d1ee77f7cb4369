"""Time as an injected dependency, so schedules and retention are testable in seconds."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    """Source of the current time.

    Implementations return timezone-aware UTC datetimes. ``sleep`` may return
    early when the clock is advanced (fakes) but never returns before the
    requested wall time has passed on a real clock.
    """

    def now(self) -> dt.datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: wall time from the OS, sleeping with asyncio."""

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(time.time(), tz=dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def sleep_or_event(clock: Clock, seconds: float, event: asyncio.Event) -> None:
    """Wait until ``event`` is set or ``seconds`` of ``clock``'s time have passed, whichever comes first."""
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waiter.cancel()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    """Shorthand for a timezone-aware UTC datetime (mostly for tests)."""
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
