"""Polling for a condition in asynchronous tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["eventually"]

T = TypeVar("T")


async def eventually(what: str, probe: Callable[[], Awaitable[T | None]], within: float = 120.0) -> T:
    """The first truthy result of ``probe()``, polled every 0.3 s; AssertionError naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)
