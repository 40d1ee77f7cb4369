from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from gateway_helpers import GatewayHarness
from strongroom_gateway.migrations import SPEC
from strongroom_gateway.repository import PgGatewayStore
from strongroom_gateway.testing import InMemoryGatewayStore
from strongroom_platform.clock import utc
from strongroom_platform.testing import FakeClock
from strongroom_testing.fixtures import PgLogins


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
    async with _trusted(clock, manifest_segments=True) as harness:
        yield harness


@pytest.fixture
async def trusted_v1_gw(clock: FakeClock) -> AsyncIterator[GatewayHarness]:
    """``trusted_gw`` writing manifest format version 1 (STRONGROOM_GATEWAY_MANIFEST_SEGMENTS=0): for the
    explicit version 1 tests (test_gateway_manifest_v1.py: a version 1 point is collected, read and
    synthesized from after the default changed); every other test writes the default, version 2."""
    async with _trusted(clock, manifest_segments=False) as harness:
        yield harness


@contextlib.asynccontextmanager
async def _trusted(clock: FakeClock, *, manifest_segments: bool) -> AsyncIterator[GatewayHarness]:
    harness = GatewayHarness(
        clock, store=InMemoryGatewayStore(trusted_clock=clock), manifest_segments=manifest_segments
    )
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


@pytest.fixture(params=["fake", pytest.param("pg", marks=pytest.mark.integration)])
async def capped(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[GatewayHarness]:
    """A gateway whose replica runs one backup at a time (ADR 0053), on the fake store or PostgreSQL."""
    pool = None
    if request.param == "pg":
        logins: PgLogins = request.getfixturevalue("pg_logins")
        pool = await logins.pool(SPEC)
    harness = GatewayHarness(clock, store=None if pool is None else PgGatewayStore(pool), max_running_backups=1)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
        if pool is not None:
            await pool.close()
