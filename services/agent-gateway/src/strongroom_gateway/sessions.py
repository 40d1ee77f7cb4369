"""Live agent sessions of this gateway process: one Connect stream per instance.

The registry only wakes sessions; what to send is always read from the
database, so a command is never lost when no session is open or the process
restarts.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

from strongroom_platform.telemetry import Metrics, instruments

SESSIONS_CHANNEL = "gateway_sessions"
"""The ``LISTEN``/``NOTIFY`` channel of session effects, shared by every gateway process (ADR 0050)."""


@dataclass(eq=False)
class Session:
    instance_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Why the session was closed by the gateway ("" while open).
    close_reason: str = ""
    # Job ids (and "cancel:<job id>") already sent on this stream.
    sent: set[str] = field(default_factory=set)
    # Sum of filesystem capacities from the agent's hello.
    capacity_bytes: int = 0
    # The agent's version from its hello (ADR 0045), carried by the job-updated events it causes.
    agent_version: str = ""


class SessionRegistry:
    """The open sessions; their number is the ``strongroom_gateway_sessions`` gauge.

    ``origin`` names this registry (this process) in session notifications, so that a process
    ignores the ones it sent itself (``session_events``).
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._sessions: dict[str, Session] = {}
        self._metrics = metrics or instruments()
        self.origin = secrets.token_hex(8)

    def open(self, instance_id: str) -> Session:
        """Register a new stream; an older stream of the same instance is closed (the agent reconnected)."""
        previous = self._sessions.get(instance_id)
        if previous is not None:
            self._close(previous, "replaced by a newer connection of the same agent")
        session = Session(instance_id)
        self._sessions[instance_id] = session
        self._metrics.gateway_sessions.set(len(self._sessions))
        return session

    def release(self, session: Session) -> None:
        if self._sessions.get(session.instance_id) is session:
            del self._sessions[session.instance_id]
            self._metrics.gateway_sessions.set(len(self._sessions))

    def get(self, instance_id: str) -> Session | None:
        return self._sessions.get(instance_id)

    def wake(self, instance_id: str) -> None:
        session = self._sessions.get(instance_id)
        if session is not None:
            session.wake.set()

    def disconnect(self, instance_id: str, reason: str) -> None:
        session = self._sessions.get(instance_id)
        if session is not None:
            self._close(session, reason)

    def connected(self) -> list[str]:
        return sorted(self._sessions)

    @staticmethod
    def _close(session: Session, reason: str) -> None:
        session.close_reason = reason
        session.closed.set()
        session.wake.set()
