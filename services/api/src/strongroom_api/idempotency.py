"""Idempotency keys for mutations (ADR 0052): a retried POST/PATCH/DELETE with the same
``Idempotency-Key`` gets the first answer back instead of acting twice.

A key belongs to the credential that sent it (``scope``: a hash of the bearer token, never the
token), so one caller cannot replay or probe another's keys. The first request claims the key with
a fingerprint of itself; the same key with another request is refused (422), a second request
while the first is still running is refused (409), and one after it finished gets the stored
answer. Answers whose outcome is unknown or may change on retry (5xx, 401, 403, 429) release the
key instead, so the retry runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
_UNSTORED = frozenset({401, 403, 429})


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Claimed:
    """The key is new: run the request, then ``complete`` or ``release`` it."""


@dataclass(frozen=True, slots=True)
class Replay:
    response: StoredResponse


@dataclass(frozen=True, slots=True)
class InProgress:
    pass


@dataclass(frozen=True, slots=True)
class Mismatch:
    pass


ClaimResult = Claimed | Replay | InProgress | Mismatch


class IdempotencyStore(Protocol):
    """Where claimed keys and their answers live (the port; :class:`MemoryIdempotencyStore` here)."""

    async def claim(self, scope: str, key: str, fingerprint: str, now: dt.datetime) -> ClaimResult: ...

    async def complete(self, scope: str, key: str, response: StoredResponse) -> None: ...

    async def release(self, scope: str, key: str) -> None: ...


def scope_of(authorization: str) -> str:
    """The key space of one credential: SHA-256 of the ``Authorization`` value."""
    return hashlib.sha256(authorization.encode()).hexdigest()


def fingerprint(http_method: str, raw_path: str, query: str, body: bytes, if_match: str = "") -> str:
    """What makes two requests "the same request" for one key (a write's If-Match is part of it)."""
    digest = hashlib.sha256()
    parts = (http_method.upper().encode(), raw_path.encode(), query.encode())
    for part in (*parts, *((if_match.encode(),) if if_match else ())):
        digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(body)
    return digest.hexdigest()


def check_key(key: str) -> str | None:
    """None when ``key`` is usable, else why not (1-255 printable ASCII characters)."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " < ch <= "~" for ch in key):
        return f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters without spaces"
    return None


def stored(status: int) -> bool:
    """Whether an answer with this status is kept for replays (else the key is released)."""
    return status < 500 and status not in _UNSTORED


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    claimed_at: dt.datetime
    response: StoredResponse | None = None


class MemoryIdempotencyStore:
    """Keys in this process's memory for ``ttl``, at most ``max_keys`` (the oldest go first).

    One edge process, or several behind a load balancer with session affinity by credential:
    keys do not survive a restart and are not shared between processes (ADR 0052 says why that
    is the chosen trade-off and what a shared store would need).
    """

    def __init__(self, *, ttl: dt.timedelta = dt.timedelta(hours=24), max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._ttl = ttl
        self._max = max_keys
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, scope: str, key: str, fingerprint: str, now: dt.datetime) -> ClaimResult:
        self._expire(now)
        entry = self._entries.get((scope, key))
        if entry is not None:
            if entry.fingerprint != fingerprint:
                return Mismatch()
            return InProgress() if entry.response is None else Replay(entry.response)
        self._entries[(scope, key)] = _Entry(fingerprint, now)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return Claimed()

    async def complete(self, scope: str, key: str, response: StoredResponse) -> None:
        entry = self._entries.get((scope, key))
        if entry is not None:
            entry.response = response

    async def release(self, scope: str, key: str) -> None:
        self._entries.pop((scope, key), None)

    def _expire(self, now: dt.datetime) -> None:
        while self._entries:
            first = next(iter(self._entries.values()))
            if now - first.claimed_at < self._ttl:
                break
            self._entries.popitem(last=False)
