"""Strongroom API tokens: issued once, stored hashed, with expiry and revocation (ADR 0024).

Wire form: ``srt_<id>_<secret>``; ``id`` is 24 hex digits (12 random bytes, the lookup key),
``secret`` 43 URL-safe base64 characters (32 random bytes). Only SHA-256 of the secret is stored,
compared in constant time (ADR 0009).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from strongroom_platform.auth.principal import Principal, Role, operator
from strongroom_platform.clock import Clock
from strongroom_platform.errors import Unauthenticated
from strongroom_platform.paging import keyset_slice

TOKEN_PREFIX = "srt_"
MAX_TOKEN_LIFETIME = dt.timedelta(days=366)
_TOKEN_RE = re.compile(r"^srt_([0-9a-f]{24})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What is stored of one token: never the secret itself."""

    token_id: str
    secret_sha256: str
    name: str
    grants: Mapping[str, Role]
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None = None

    def active(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


class TokenStore(Protocol):
    """Where token records live (``auth.api_tokens``; an in-memory fake in tests)."""

    async def insert(self, record: TokenRecord) -> None:
        """Store a new token; the id is new (random), so no conflict is expected."""
        ...

    async def get(self, token_id: str) -> TokenRecord | None:
        """The record of ``token_id``, or None."""
        ...

    async def list(
        self, account_id: str, *, after: tuple[dt.datetime, str] | None = None, limit: int | None = None
    ) -> list[TokenRecord]:
        """Tokens holding a grant on ``account_id``, newest first by (created_at, token_id bytewise);
        ``after``: strictly older than that position; at most ``limit`` (None: all)."""
        ...

    async def revoke(self, token_id: str, at: dt.datetime) -> TokenRecord | None:
        """Mark revoked (keeps the first revocation time); None when there is no such token."""
        ...


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(
    *,
    name: str,
    grants: Mapping[str, Role],
    created_by: str,
    now: dt.datetime,
    lifetime: dt.timedelta,
) -> tuple[str, TokenRecord]:
    """A fresh token (the string to show once) and the record to store."""
    if not grants:
        raise ValueError("a token needs at least one account grant")
    if lifetime <= dt.timedelta(0) or lifetime > MAX_TOKEN_LIFETIME:
        raise ValueError(f"token lifetime must be between 1 second and {MAX_TOKEN_LIFETIME.days} days")
    token_id = secrets.token_hex(12)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    record = TokenRecord(
        token_id=token_id,
        secret_sha256=secret_hash(secret),
        name=name,
        grants=dict(grants),
        created_by=created_by,
        created_at=now,
        expires_at=now + lifetime,
    )
    return f"{TOKEN_PREFIX}{token_id}_{secret}", record


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token string, else None."""
    match = _TOKEN_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


_INVALID = "invalid or expired API token"
# Compared against when the id is unknown, so unknown ids and wrong secrets cost the same.
_DUMMY_HASH = secret_hash("strongroom-no-such-token")


class TokenVerifier:
    """Turns a bearer token into a :class:`Principal`, caching good answers for ``cache_seconds``.

    The cache bounds how long a revoked token keeps working in this process (ADR 0024: 5 s).
    Refusals are not cached, so a token used right after creation works at once.
    """

    def __init__(self, store: TokenStore, clock: Clock, *, cache_seconds: float = 5.0) -> None:
        self._store = store
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, TokenRecord]] = {}

    async def verify(self, token: str) -> Principal:
        parsed = parse_token(token)
        if parsed is None:
            raise Unauthenticated(_INVALID)
        token_id, secret = parsed
        record = await self._record(token_id)
        expected = record.secret_sha256 if record is not None else _DUMMY_HASH
        if not hmac.compare_digest(expected, secret_hash(secret)) or record is None:
            raise Unauthenticated(_INVALID)
        if not record.active(self._clock.now()):
            self._cache.pop(token_id, None)
            raise Unauthenticated(_INVALID)
        return operator(f"token:{token_id}", record.grants)

    async def _record(self, token_id: str) -> TokenRecord | None:
        now = time.monotonic()
        cached = self._cache.get(token_id)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        record = await self._store.get(token_id)
        if record is not None:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token_id] = (now, record)
        return record


class InMemoryTokenStore:
    """The :class:`TokenStore` fake; same contract as the PostgreSQL one."""

    def __init__(self) -> None:
        self._records: dict[str, TokenRecord] = {}

    async def insert(self, record: TokenRecord) -> None:
        if record.token_id in self._records:
            raise ValueError(f"token {record.token_id} exists")
        self._records[record.token_id] = record

    async def get(self, token_id: str) -> TokenRecord | None:
        return self._records.get(token_id)

    async def list(
        self, account_id: str, *, after: tuple[dt.datetime, str] | None = None, limit: int | None = None
    ) -> list[TokenRecord]:
        mine = (r for r in self._records.values() if account_id in r.grants)
        return keyset_slice(mine, lambda r: (r.created_at, r.token_id), after, descending=True, limit=limit)

    async def revoke(self, token_id: str, at: dt.datetime) -> TokenRecord | None:
        record = self._records.get(token_id)
        if record is None:
            return None
        if record.revoked_at is None:
            record = replace(record, revoked_at=at)
            self._records[token_id] = record
        return record
