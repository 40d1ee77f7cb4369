"""Console sessions: the API token a user pasted, held in this process's memory (ADR 0054).

The browser holds only a random session id (an HttpOnly, Secure, SameSite=Strict cookie); the token
never goes back to it. Each session has its own CSRF token, which every form POST must carry.
Sessions end at logout, after ``idle`` without a request, or ``lifetime`` after login, whichever
comes first; at most ``max_sessions`` are held (the least recently used goes first).
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Grant:
    account_id: str
    role: str  # "viewer", "operator" or "admin"


@dataclass(slots=True)
class Session:
    session_id: str
    token: str
    subject: str
    grants: tuple[Grant, ...]
    csrf: str
    created_at: dt.datetime
    used_at: dt.datetime
    flash: list[str] = field(default_factory=list)
    account_id: str = ""

    @property
    def authorization(self) -> str:
        return f"Bearer {self.token}"

    def role(self, account_id: str) -> str | None:
        return next((g.role for g in self.grants if g.account_id == account_id), None)

    def can_mutate(self, account_id: str) -> bool:
        """Operators and admins act; viewers read (the services enforce the same, ADR 0024)."""
        return self.role(account_id) in ("operator", "admin")

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class SessionStore:
    """Sessions in memory, bounded in number and time."""

    def __init__(
        self,
        *,
        idle: dt.timedelta = dt.timedelta(hours=1),
        lifetime: dt.timedelta = dt.timedelta(hours=12),
        max_sessions: int = 10_000,
    ) -> None:
        self._idle, self._lifetime, self._max = idle, lifetime, max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, token: str, subject: str, grants: tuple[Grant, ...], now: dt.datetime) -> Session:
        session = Session(
            session_id=secrets.token_urlsafe(32),
            token=token,
            subject=subject,
            grants=grants,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            used_at=now,
            account_id=grants[0].account_id if grants else "",
        )
        self._sessions[session.session_id] = session
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None, now: dt.datetime) -> Session | None:
        """The live session with this id (its idle clock restarts), else None (an expired one is dropped)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if now - session.used_at > self._idle or now - session.created_at > self._lifetime:
            del self._sessions[session_id]
            return None
        session.used_at = now
        self._sessions.move_to_end(session_id)
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)
