from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gateway_helpers import GatewayHarness
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform.clock import utc
from strongroom_platform.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(utc(2026, 3, 1, 12, 0))


@pytest.fixture
async def gw(clock: FakeClock) -> AsyncIterator[GatewayHarness]:
    harness = GatewayHarness(clock)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


@pytest.fixture
async def trusted_gw(clock: FakeClock) -> AsyncIterator[GatewayHarness]:
    """A gateway whose store reads trusted time from ``clock`` (garbage collection, repacking and
    retention decide by trusted time, so their tests move it with the clock)."""
    harness = GatewayHarness(clock, store=InMemoryGatewayStore(trusted_clock=clock))
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
