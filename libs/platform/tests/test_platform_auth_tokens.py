"""API tokens: issued once, stored hashed, expiring and revocable; fake and PostgreSQL stores alike."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest
from strongroom_platform.auth import InMemoryTokenStore, Role, TokenStore, TokenVerifier, Unauthenticated, new_token
from strongroom_platform.auth.principal import operator
from strongroom_platform.auth.token_api import list_tokens
from strongroom_platform.auth.tokens import parse_token, secret_hash
from strongroom_platform.auth.tokens_pg import AUTH_MIGRATIONS, AUTH_SCHEMA, PgTokenStore
from strongroom_platform.clock import utc
from strongroom_platform.db import create_pool, migrate
from strongroom_platform.errors import InvalidArgument
from strongroom_platform.testing import FakeClock, call_for

DAY = dt.timedelta(days=1)


def test_the_token_string_parses_and_only_its_hash_is_stored() -> None:
    token, record = new_token(
        name="ci", grants={"acme": Role.ADMIN}, created_by="test", now=utc(2026, 12, 1), lifetime=DAY
    )
    parsed = parse_token(token)
    assert parsed is not None and parsed[0] == record.token_id
    assert record.secret_sha256 == secret_hash(parsed[1])
    assert parsed[1] not in repr(record)
    assert record.expires_at == utc(2026, 12, 2)


@pytest.mark.parametrize("lifetime", [dt.timedelta(0), dt.timedelta(days=400)])
def test_lifetimes_are_bounded(lifetime: dt.timedelta) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        new_token(name="x", grants={"a": Role.VIEWER}, created_by="t", now=utc(2026, 1, 1), lifetime=lifetime)


def test_a_token_needs_an_account() -> None:
    with pytest.raises(ValueError, match="at least one account"):
        new_token(name="x", grants={}, created_by="t", now=utc(2026, 1, 1), lifetime=DAY)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TokenStore]:
    """Every token test runs against the fake and the PostgreSQL store alike."""
    if request.param == "memory":
        yield InMemoryTokenStore()
        return
    dsn = request.getfixturevalue("pg_dsn")
    pool: asyncpg.Pool = await create_pool(dsn, AUTH_SCHEMA)
    try:
        await migrate(pool, AUTH_SCHEMA, AUTH_MIGRATIONS)
        yield PgTokenStore(pool)
    finally:
        await pool.close()


async def test_verify_accepts_the_token_and_refuses_every_variation(store: TokenStore) -> None:
    clock = FakeClock(utc(2026, 12, 1))
    token, record = new_token(
        name="ci", grants={"acme": Role.OPERATOR}, created_by="test", now=clock.now(), lifetime=DAY
    )
    await store.insert(record)
    verifier = TokenVerifier(store, clock, cache_seconds=0)
    principal = await verifier.verify(token)
    assert principal.subject == f"token:{record.token_id}"
    assert dict(principal.roles) == {"acme": Role.OPERATOR}
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    unknown_id = "srt_" + "0" * 24 + token[-44:]
    for bad in (flipped, unknown_id, token + "x", "", "Bearer " + token, token.replace("srt_", "srx_")):
        with pytest.raises(Unauthenticated, match="invalid or expired API token"):
            await verifier.verify(bad)


async def test_an_expired_token_is_refused(store: TokenStore) -> None:
    clock = FakeClock(utc(2026, 12, 1))
    token, record = new_token(name="ci", grants={"a": Role.VIEWER}, created_by="t", now=clock.now(), lifetime=DAY)
    await store.insert(record)
    verifier = TokenVerifier(store, clock)
    await verifier.verify(token)
    clock.advance(days=1)
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)


async def test_a_revoked_token_is_refused_once_the_cache_lapses(store: TokenStore) -> None:
    clock = FakeClock(utc(2026, 12, 1))
    token, record = new_token(name="ci", grants={"a": Role.ADMIN}, created_by="t", now=clock.now(), lifetime=DAY)
    await store.insert(record)
    verifier = TokenVerifier(store, clock, cache_seconds=0)
    await verifier.verify(token)
    revoked = await store.revoke(record.token_id, clock.now())
    assert revoked is not None and revoked.revoked_at == clock.now()
    again = await store.revoke(record.token_id, clock.now() + DAY)
    assert again is not None and again.revoked_at == clock.now(), "the first revocation time is kept"
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)
    assert await store.revoke("f" * 24, clock.now()) is None


async def test_tokens_are_listed_per_account_newest_first(store: TokenStore) -> None:
    now = utc(2026, 12, 1)
    _, first = new_token(name="one", grants={"a": Role.VIEWER}, created_by="t", now=now, lifetime=DAY)
    _, second = new_token(
        name="two", grants={"a": Role.ADMIN, "b": Role.VIEWER}, created_by="t", now=now + DAY, lifetime=DAY
    )
    await store.insert(first)
    await store.insert(second)
    assert [r.name for r in await store.list("a")] == ["two", "one"]
    assert [r.name for r in await store.list("b")] == ["two"]
    assert await store.list("c") == []
    fetched = await store.get(second.token_id)
    assert fetched == second


async def test_tokens_are_listed_in_pages_newest_first_ties_by_id_in_byte_order(store: TokenStore) -> None:
    now = utc(2026, 12, 1)
    admin = call_for("/strongroom.auth.v1.TokenService/ListTokens", operator("t", {"a": Role.ADMIN}))
    made = [("old", now), ("tie-1", now + DAY), ("tie-a", now + DAY), ("new", now + 2 * DAY)]
    for name, created_at in made:
        _, record = new_token(name=name, grants={"a": Role.VIEWER}, created_by="t", now=created_at, lifetime=DAY)
        # the tie of creation times is broken by the id ("1..." < "a...")
        record = dataclasses.replace(record, token_id={"tie-1": "1" * 24, "tie-a": "a" * 24}.get(name, record.token_id))
        await store.insert(record)
    pages: list[list[str]] = []
    token = ""
    while True:
        records, token = await list_tokens("a", page_size=3, page_token=token, store=store, call=admin)
        pages.append([r.name for r in records])
        if not token:
            break
    assert pages == [["new", "tie-a", "tie-1"], ["old"]]
    whole, last = await list_tokens("a", store=store, call=admin)
    assert [r.name for r in whole] == ["new", "tie-a", "tie-1", "old"] and last == ""
    with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
        await list_tokens("a", page_token="garbage!", store=store, call=admin)
    with pytest.raises(InvalidArgument, match="page_size must not be negative"):
        await list_tokens("a", page_size=-1, store=store, call=admin)
