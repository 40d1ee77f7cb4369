"""``db.close_pool``: a pool always closes within its bound, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest
from strongroom_platform.db import close_pool, create_pool

pytestmark = pytest.mark.integration


async def test_an_idle_pool_closes_gracefully_at_once(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    pool = await create_pool(pg_dsn, "public", min_size=2, max_size=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    with caplog.at_level(logging.WARNING, logger="strongroom_platform.db"):
        await close_pool(pool, within=5.0)
    assert pool.is_closing()
    assert "terminating" not in caplog.text


async def test_a_connection_never_released_does_not_keep_the_pool_open(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # asyncpg's Pool.close waits without limit for this connection; a process closing its pool this
    # way at shutdown would never exit.
    pool = await create_pool(pg_dsn, "public", min_size=1, max_size=2)
    held = await pool.acquire()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="strongroom_platform.db"):
        await asyncio.wait_for(close_pool(pool, within=0.5), timeout=30)
    assert time.monotonic() - started < 10
    assert pool.is_closing()
    assert "1 connection(s) were in use" in caplog.text
    # The held connection's backend is gone too: the pool's sockets were closed, not left open.
    observer = await asyncpg.connect(pg_dsn)
    try:
        for _ in range(50):
            left = await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'strongroom-public'"
            )
            if left == 0:
                break
            await asyncio.sleep(0.1)
        assert left == 0
    finally:
        await observer.close()
    del held
