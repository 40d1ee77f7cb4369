"""The audit trail of mutating operator calls (ADR 0027).

Every call whose rule is ``mutating`` (``auth.policy``) made by an authenticated principal leaves
one ``audit-recorded`` event (who, which accounts, what, when, result) in the serving process's
transactional outbox:

- **an effect is never committed without its record**: :func:`record_effect`, run by
  :func:`strongroom_platform.db.transaction` just before it commits, enqueues the record (result
  ``OK``) in that same transaction when the transaction wrote anything during a mutating call; if
  the enqueue fails, the effect rolls back with it;
- a call that committed nothing (refused, failed, or a no-op) is recorded by the auth interceptor
  through an :class:`AuditSink` in its own small transaction, with the status code and message
  the caller gets; a call that fails after committing an effect gets that second record too.

The interceptor opens a :class:`CallAudit` per mutating call (:func:`begin`); the account checks
(``auth.principal.choose_account`` / ``authorize``) add the accounts they were asked about
(:func:`note_account`), and handlers add the ids of what they create (:func:`note`). Resource ids
come from the request's ``*_id`` / ``*_ids`` fields and from :func:`note`, never from a response,
so a secret a call returns (``CreateToken``'s) is never recorded.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import asyncpg
from google.protobuf.message import Message
from strongroom.events.v1 import events_pb2

from strongroom_platform import outbox
from strongroom_platform.clock import Clock
from strongroom_platform.events import AUDIT_RECORDED, new_meta

if TYPE_CHECKING:
    from strongroom_platform.auth.principal import CallAuth

__all__ = [
    "AuditSink",
    "CallAudit",
    "OutboxAuditSink",
    "SinkIdentity",
    "begin",
    "current",
    "end",
    "note",
    "note_account",
    "record_effect",
    "resource_ids",
]

log = logging.getLogger(__name__)

OK = "OK"
MAX_VALUE_CHARS = 200  # ids are short; a caller's oversized value must not bloat the trail
MAX_RESOURCES = 16
MAX_MESSAGE_CHARS = 1000


class AuditSink(Protocol):
    """Where a process records calls that committed nothing: its own outbox, in a transaction of
    its own (:class:`OutboxAuditSink`), or a list in tests (``testing.InMemoryAuditSink``)."""

    @property
    def producer(self) -> str:
        """The service name in the records' ``meta.producer``."""
        ...

    @property
    def clock(self) -> Clock:
        """The server clock that stamps records."""
        ...

    async def record(self, event: events_pb2.AuditRecorded) -> None:
        """Commit ``event`` (durably, before returning)."""
        ...


def event_key(event: events_pb2.AuditRecorded) -> str:
    """The record's Kafka key: its first account (empty when it names none)."""
    return event.account_ids[0] if event.account_ids else ""


class SinkIdentity:
    """The ``producer`` and ``clock`` half of an :class:`AuditSink`, shared by its implementations."""

    def __init__(self, producer: str, clock: Clock) -> None:
        self._producer = producer
        self._clock = clock

    @property
    def producer(self) -> str:
        return self._producer

    @property
    def clock(self) -> Clock:
        return self._clock


class OutboxAuditSink(SinkIdentity):
    """Records in the service's outbox (``pool`` bound to a schema with ``OUTBOX_DDL``)."""

    def __init__(self, pool: asyncpg.Pool, producer: str, clock: Clock) -> None:
        super().__init__(producer, clock)
        self._pool = pool

    async def record(self, event: events_pb2.AuditRecorded) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # The pool hands out a proxy of the connection; it forwards every call to it.
            await outbox.enqueue(cast(asyncpg.Connection, conn), AUDIT_RECORDED, event_key(event), event)


def _clip(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def resource_ids(request: Message) -> dict[str, str]:
    """The ids a request names: its top-level non-empty ``*_id`` strings and ``*_ids`` lists.

    Only id fields are read, so no secret, path or free text of a request reaches the trail.
    """
    found: dict[str, str] = {}
    for descriptor, value in request.ListFields():
        if descriptor.type != descriptor.TYPE_STRING or len(found) >= MAX_RESOURCES:
            continue
        if descriptor.name.endswith("_ids") and isinstance(value, Iterable) and not isinstance(value, str):
            joined = ",".join(str(v) for v in value)
            if joined:
                found[descriptor.name] = _clip(joined)
        elif descriptor.name.endswith("_id") and isinstance(value, str) and value:
            found[descriptor.name] = _clip(value)
    return found


@dataclass(slots=True)
class CallAudit:
    """What is known of one mutating call while it runs."""

    sink: AuditSink
    method: str
    verb: str
    resources: dict[str, str]
    call: CallAuth | None = None
    accounts: list[str] = field(default_factory=list)
    recorded: int = 0

    def event(self, result_code: str, result_message: str) -> events_pb2.AuditRecorded:
        """The record of this call with the given result, stamped now by the sink's clock."""
        assert self.call is not None, "only authenticated calls are recorded"
        principal = self.call.principal
        accounts = self.accounts or sorted(principal.roles)
        return events_pb2.AuditRecorded(
            meta=new_meta(self.sink.producer, self.sink.clock.now()),
            subject=principal.subject,
            principal_kind=principal.kind.value,
            account_ids=accounts,
            method=self.method,
            verb=self.verb,
            resources=self.resources,
            result_code=result_code,
            result_message=_clip(result_message, MAX_MESSAGE_CHARS),
        )


_CURRENT: contextvars.ContextVar[CallAudit | None] = contextvars.ContextVar("strongroom_call_audit", default=None)


def begin(
    sink: AuditSink, method: str, verb: str, request: Message
) -> tuple[CallAudit, contextvars.Token[CallAudit | None]]:
    """Start auditing the current (mutating) call; pass the token to :func:`end`."""
    audit = CallAudit(sink=sink, method=method, verb=verb, resources=resource_ids(request))
    return audit, _CURRENT.set(audit)


def end(token: contextvars.Token[CallAudit | None]) -> None:
    _CURRENT.reset(token)


def current() -> CallAudit | None:
    """The audit of the mutating call being handled, or None."""
    return _CURRENT.get()


def note_account(account_id: str) -> None:
    """Add an account the current call acts on (or tried to); no-op outside a mutating call."""
    audit = _CURRENT.get()
    if audit is not None and account_id and account_id not in audit.accounts:
        audit.accounts.append(_clip(account_id))


def note(**resources: str) -> None:
    """Add resource ids to the current call's record (what it created, what it confirmed).

    Never pass a secret. No-op outside a mutating call (event handlers, tests of plain handlers).
    """
    audit = _CURRENT.get()
    if audit is None:
        return
    for name, value in resources.items():
        if value and (name in audit.resources or len(audit.resources) < MAX_RESOURCES):
            audit.resources[name] = _clip(value)


async def record_effect(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[Any]) -> None:
    """Enqueue the current call's record in ``conn``'s open transaction if it wrote anything.

    Called by ``db.transaction`` (and every other write path of a mutating call) just before
    commit. Outside an authenticated mutating call, or in a transaction that changed nothing
    (PostgreSQL assigned it no transaction id), it does nothing. Raises whatever the enqueue
    raises: the transaction then rolls back, effect included.
    """
    audit = _CURRENT.get()
    if audit is None or audit.call is None:
        return
    if await conn.fetchval("SELECT pg_current_xact_id_if_assigned()") is None:
        return
    event = audit.event(OK, "")
    await outbox.enqueue(cast(asyncpg.Connection, conn), AUDIT_RECORDED, event_key(event), event)
    audit.recorded += 1
