"""Idempotency-Keys shared by two edge processes through PostgreSQL (schema ``api``, ADR 0055)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from google.protobuf.message import Message
from strongroom.scheduler.v1 import scheduler_pb2
from strongroom_api import bootstrap
from strongroom_api.idempotency import Claimed, InProgress, Mismatch, Replay, StoredResponse
from strongroom_api.idempotency_pg import PgIdempotencyStore
from strongroom_api.migrations import ROLE, SPEC
from strongroom_api.settings import Settings
from strongroom_platform.db import create_pool
from strongroom_platform.pg_roles import LoginRefused, login_dsn, migrate_schemas
from strongroom_platform.testing import FakeClock
from strongroom_testing.fixtures import PgLogins
from test_api_edge import FakeServices
from test_api_process import running_edge

pytestmark = pytest.mark.integration

SCOPE, PRINT, OTHER = "a" * 64, "b" * 64, "c" * 64
T0 = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)
TTL, LEASE = dt.timedelta(hours=24), dt.timedelta(seconds=90)


@pytest.fixture
async def api_dsn(pg_logins: PgLogins) -> str:
    password = secrets.token_hex(16)
    await migrate_schemas(pg_logins.owner, [SPEC], passwords={ROLE: password})
    dsn = login_dsn(pg_logins.owner, ROLE, password)
    conn = await asyncpg.connect(dsn)
    try:  # every test starts with no keys (the database is shared by the session's tests)
        await conn.execute("DELETE FROM api.idempotency_keys")
    finally:
        await conn.close()
    return dsn


@pytest.fixture
async def pool(api_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(api_dsn, SPEC.schema, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


async def test_the_store_claims_replays_refuses_and_takes_over_abandoned_claims(pool: asyncpg.Pool) -> None:
    one, two = PgIdempotencyStore(pool, ttl=TTL, lease=LEASE), PgIdempotencyStore(pool, ttl=TTL, lease=LEASE)
    assert await one.claim(SCOPE, "k", PRINT, T0) == Claimed()
    assert await two.claim(SCOPE, "k", PRINT, T0) == InProgress()
    assert await two.claim(SCOPE, "k", OTHER, T0) == Mismatch()
    await one.complete(SCOPE, "k", StoredResponse(200, b'{"job_id": "j-1"}'))
    assert await two.claim(SCOPE, "k", PRINT, T0 + LEASE) == Replay(StoredResponse(200, b'{"job_id": "j-1"}'))
    assert await two.claim("d" * 64, "k", PRINT, T0) == Claimed()  # another credential, another key space
    # released (an outcome that may change on retry): the next request runs
    await two.release("d" * 64, "k")
    assert await one.claim("d" * 64, "k", PRINT, T0) == Claimed()
    # a claim whose edge died is taken over once the lease passed, by the same request only
    assert await one.claim(SCOPE, "dead", PRINT, T0) == Claimed()
    assert await two.claim(SCOPE, "dead", PRINT, T0 + LEASE / 2) == InProgress()
    assert await two.claim(SCOPE, "dead", OTHER, T0 + 2 * LEASE) == Mismatch()
    assert await two.claim(SCOPE, "dead", PRINT, T0 + 2 * LEASE) == Claimed()
    # after the ttl every key is forgotten, answered or not
    assert await one.claim(SCOPE, "k", OTHER, T0 + TTL + LEASE) == Claimed()
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE claimed_at <= $1", T0 + LEASE) == 0


async def test_concurrent_claims_of_one_key_by_many_replicas_give_one_winner(pool: asyncpg.Pool) -> None:
    stores = [PgIdempotencyStore(pool, ttl=TTL, lease=LEASE) for _ in range(8)]
    results = await asyncio.gather(*(s.claim(SCOPE, "race", PRINT, T0) for s in stores))
    assert results.count(Claimed()) == 1 and results.count(InProgress()) == 7


async def test_the_edge_role_is_refused_when_the_schema_is_behind(pg_logins: PgLogins, api_dsn: str) -> None:
    settings = edge_settings(api_dsn)
    owner = await asyncpg.connect(pg_logins.owner)
    try:
        await owner.execute("DELETE FROM api.schema_migrations WHERE version = 1")
        with pytest.raises(LoginRefused, match="schema api is at migration 0"):
            await bootstrap.run(settings, asyncio.Event(), clock=FakeClock(), invoke=FakeServices())
    finally:
        await owner.execute("INSERT INTO api.schema_migrations (version) VALUES (1) ON CONFLICT DO NOTHING")
        await owner.close()


def edge_settings(dsn: str, migrate_dsn: str | None = None) -> Settings:
    environ = {f"STRONGROOM_{name.upper()}_ADDR": "127.0.0.1:1" for name in bootstrap_backends()}
    environ.update(STRONGROOM_INSECURE_PLAINTEXT="1", STRONGROOM_PG_DSN=dsn)
    if migrate_dsn:
        environ["STRONGROOM_PG_MIGRATE_DSN"] = migrate_dsn
    return Settings.from_env(environ)


def bootstrap_backends() -> tuple[str, ...]:
    return ("scheduler", "catalog", "restore", "billing", "gateway")


def edge(settings: Settings, services: FakeServices, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[str]:
    return running_edge(settings, capsys, clock=FakeClock(T0), invoke=services)  # yields host:port


async def test_two_edges_share_keys_one_effect_a_replay_and_422(
    pg_logins: PgLogins, api_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    services = FakeServices()
    jobs = iter(f"j-{n}" for n in range(1, 10))
    release = asyncio.Event()

    async def new_job(_request: Message) -> Message:
        await release.wait()
        return scheduler_pb2.BackupJob(job_id=next(jobs))

    services.answers["RunBackupNow"] = new_job
    headers = {
        "Authorization": "Bearer sr_test_token",
        "Idempotency-Key": "nightly",
        "Content-Type": "application/json",
    }
    path = "/v1/instances/i-1:backupNow"
    async with (
        edge(edge_settings(api_dsn, migrate_dsn=pg_logins.owner), services, capsys) as first_address,
        edge(edge_settings(api_dsn), services, capsys) as second_address,
        aiohttp.ClientSession() as http,
    ):
        first, second = f"http://{first_address}", f"http://{second_address}"
        running = asyncio.create_task(http.post(first + path, headers=headers, data=b"{}"))
        for _ in range(200):  # the first edge has claimed the key and called the service
            if services.calls:
                break
            await asyncio.sleep(0.01)
        async with http.post(second + path, headers=headers, data=b"{}") as meanwhile:
            assert meanwhile.status == 409 and (await meanwhile.json())["error"]["code"] == "ABORTED"
        release.set()
        async with await running as answer:
            assert answer.status == 200 and "Idempotent-Replayed" not in answer.headers
            original = await answer.json()
        async with http.post(second + path, headers=headers, data=b"{}") as again:
            assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
            assert await again.json() == original and original["job_id"] == "j-1"
        async with http.post(second + "/v1/instances/i-2:backupNow", headers=headers, data=b"{}") as other:
            assert other.status == 422
            assert "different request" in json.loads(await other.read())["error"]["message"]
    assert len(services.calls) == 1  # one effect, whichever edge was asked
