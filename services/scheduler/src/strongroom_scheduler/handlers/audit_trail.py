"""The audit trail (ADR 0027): keeping every service's audit records and listing them to admins.

Contract: ``handle_audit_recorded`` keeps each record once (by event id) in the append-only
table; a record without method, subject or result goes to the DLQ. ``list_audit_events`` pages
newest first.
"""

from __future__ import annotations

import datetime as dt

from strongroom.events.v1 import events_pb2
from strongroom_platform import paging
from strongroom_platform.auth import CallAuth, choose_account
from strongroom_platform.events import from_timestamp
from strongroom_platform.paging import token_position

from strongroom_scheduler.errors import InvalidArgument
from strongroom_scheduler.handlers.common import AUDIT_CONSUMER, Deps
from strongroom_scheduler.ports import AuditQuery

DEFAULT_AUDIT_PAGE = 100
MAX_AUDIT_PAGE = 1000


async def list_audit_events(
    deps: Deps,
    account_id: str,
    *,
    page_size: int,
    page_token: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    subject: str,
    call: CallAuth,
) -> tuple[list[events_pb2.AuditRecorded], str]:
    """One page of the audit trail of ``choose_account(account_id)`` (admins), newest first, and the
    token of the next page ("" on the last)."""
    account = choose_account(account_id.strip(), call=call)
    limit = paging.page_size(page_size, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE)
    if since is not None and until is not None and since >= until:
        raise InvalidArgument("since must be before until")
    query = AuditQuery(
        account_id=account,
        limit=limit + 1,
        since=since,
        until=until,
        subject=subject.strip(),
        after=token_position(page_token),
    )
    async with deps.store.transaction() as tx:
        events = await tx.list_audit_events(query)
    return paging.keyset_page(events, limit, lambda e: (from_timestamp(e.meta.occurred_at), e.meta.event_id))


async def handle_audit_recorded(event: events_pb2.AuditRecorded, deps: Deps) -> None:
    """Keep one audit record (any service's) in the append-only table. Idempotent by event id."""
    if not event.method or not event.subject or not event.result_code:
        raise InvalidArgument(f"audit record {event.meta.event_id} lacks its method, subject or result")
    async with deps.store.transaction() as tx:
        if not await tx.claim_event(AUDIT_CONSUMER, event.meta.event_id):
            return
        await tx.insert_audit_event(event)
