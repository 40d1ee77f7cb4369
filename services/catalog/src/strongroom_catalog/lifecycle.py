"""Cancel, reinstate and holds (ADR 0040): append-only rows the reads and the expiry function consult.

- A cancel (``instance-deactivated``) hides every version of the instance at once from every read
  (listing, points, browse, and so restore); the expiry function deletes them (``version-expired``,
  which the storage reclaim consumes) once every point's Object Lock has passed.
- Until then an admin may reinstate them (``ReinstateBackup``): a stolen admin credential cannot
  erase a fleet's backups in one call. The cancel and the reinstatement are both audited.
- A hold (incident or legal) keeps every version of its instance, past the 30 days and past a
  cancel, until it is released.
"""

from __future__ import annotations

import logging
import uuid

from strongroom.catalog.v1 import catalog_pb2
from strongroom.events.v1 import events_pb2
from strongroom_platform import audit, paging
from strongroom_platform.auth import CallAuth, authorize
from strongroom_platform.clock import Clock
from strongroom_platform.eventbus import PoisonRecord
from strongroom_platform.events import INSTANCE_REINSTATED, from_timestamp, new_meta

from strongroom_catalog.errors import FailedPrecondition, InvalidArgument, NotFound
from strongroom_catalog.model import Hold, InstanceState
from strongroom_catalog.ports import CatalogStore, CatalogTx

log = logging.getLogger(__name__)

CANCEL_CONSUMER = "catalog.instance-deactivated"
PRODUCER = "catalog"
HOLD_KINDS = frozenset({catalog_pb2.HOLD_KIND_INCIDENT, catalog_pb2.HOLD_KIND_LEGAL})
MAX_REASON = 1000
MAX_HOLD_PAGE = 1000  # also the default page: a caller from before pages saw every hold


async def handle_instance_deactivated(event: events_pb2.InstanceDeactivated, *, repo: CatalogStore) -> None:
    """Backup of the instance was canceled: hide its versions (a cancellation row). Idempotent."""
    if not event.instance_id or not event.account_id or not event.meta.HasField("occurred_at"):
        raise PoisonRecord(f"instance-deactivated event {event.meta.event_id} lacks instance_id, account_id or time")
    async with repo.transaction() as tx:
        if not await tx.claim_event(CANCEL_CONSUMER, event.meta.event_id):
            return
        state = await tx.instance_state(event.instance_id)
        if state is not None and state.account_id != event.account_id:
            raise PoisonRecord(f"instance {event.instance_id} belongs to another account than {event.account_id!r}")
        await tx.append_cancellation(
            event.instance_id,
            event.account_id,
            canceled=True,
            at=from_timestamp(event.meta.occurred_at),
            event_id=event.meta.event_id,
            subject="",
        )
    log.info("instance %s canceled: its versions are hidden and expire when their locks pass", event.instance_id)


def _require(value: str, what: str) -> str:
    if not value.strip():
        raise InvalidArgument(f"{what} is required")
    return value.strip()


async def _authorized_state(tx: CatalogTx, instance_id: str, *, call: CallAuth) -> InstanceState:
    def not_found() -> NotFound:
        return NotFound(f"instance {instance_id} has no backup versions in the catalog")

    state = await tx.instance_state(_require(instance_id, "instance_id"))
    if state is None:
        raise not_found()
    authorize(state.account_id, not_found, call=call)
    return state


async def reinstate_backup(repo: CatalogStore, clock: Clock, instance_id: str, *, call: CallAuth) -> list[str]:
    """Reinstate a canceled instance's versions that have not expired yet (their locks have not
    passed, or a hold kept them); returns their ids, newest first. ``instance-reinstated`` tells
    the scheduler (the instance returns, PAUSED) and billing (it bills again)."""
    now = clock.now()
    async with repo.transaction() as tx:
        state = await _authorized_state(tx, instance_id, call=call)
        if not state.canceled:
            raise FailedPrecondition(f"backup of instance {state.instance_id} is not canceled; nothing to reinstate")
        if not state.live_version_ids:
            raise FailedPrecondition(
                f"the versions of instance {state.instance_id} were deleted when their Object Lock passed;"
                " nothing is left to reinstate"
            )
        await tx.append_cancellation(
            state.instance_id,
            state.account_id,
            canceled=False,
            at=now,
            event_id=None,
            subject=call.principal.subject,
        )
        await tx.enqueue(
            INSTANCE_REINSTATED,
            state.instance_id,
            events_pb2.InstanceReinstated(
                meta=new_meta(PRODUCER, now),
                account_id=state.account_id,
                instance_id=state.instance_id,
                version_ids=list(state.live_version_ids),
            ),
        )
    audit.note(instance_id=state.instance_id)
    log.info("instance %s reinstated: %d version(s)", state.instance_id, len(state.live_version_ids))
    return list(state.live_version_ids)


async def place_hold(
    repo: CatalogStore, clock: Clock, instance_id: str, kind: int, reason: str, *, call: CallAuth
) -> Hold:
    """Hold every version of the instance (none expires, by age or after a cancel) until released."""
    if kind not in HOLD_KINDS:
        raise InvalidArgument("kind must be HOLD_KIND_INCIDENT or HOLD_KIND_LEGAL")
    reason = reason.strip()
    if not reason:
        raise InvalidArgument("reason is required: say why (incident ticket, case number)")
    if len(reason) > MAX_REASON or "\x00" in reason:
        raise InvalidArgument(f"reason must be at most {MAX_REASON} characters without NUL")
    async with repo.transaction() as tx:
        state = await _authorized_state(tx, instance_id, call=call)
        hold = Hold(
            hold_id=str(uuid.uuid4()),
            instance_id=state.instance_id,
            account_id=state.account_id,
            kind=kind,
            reason=reason,
            placed_by=call.principal.subject,
            placed_at=clock.now(),
        )
        await tx.add_hold(hold)
    audit.note(hold_id=hold.hold_id)
    log.info("hold %s placed on instance %s", hold.hold_id, hold.instance_id)
    return hold


async def release_hold(repo: CatalogStore, clock: Clock, hold_id: str, *, call: CallAuth) -> Hold:
    """Release a hold (idempotent): its instance's versions expire again by the usual rules."""
    hold_id = _require(hold_id, "hold_id")

    def not_found() -> NotFound:
        return NotFound(f"hold {hold_id} not found")

    async with repo.transaction() as tx:
        hold = await tx.get_hold(hold_id)
        if hold is None:
            raise not_found()
        authorize(hold.account_id, not_found, call=call)
        if hold.active:
            await tx.release_hold(hold_id, by=call.principal.subject, at=clock.now())
            released = await tx.get_hold(hold_id)
            assert released is not None
            hold = released
    log.info("hold %s on instance %s released", hold.hold_id, hold.instance_id)
    return hold


async def list_holds(
    repo: CatalogStore,
    instance_id: str,
    include_released: bool,
    *,
    page_size: int = 0,
    page_token: str = "",
    call: CallAuth,
) -> tuple[list[Hold], str]:
    """One page of the instance's holds, oldest first, and the next page's token ("" on the last)."""
    size = paging.page_size(page_size, MAX_HOLD_PAGE, MAX_HOLD_PAGE)
    after = paging.token_position(page_token)
    async with repo.transaction() as tx:
        state = await _authorized_state(tx, instance_id, call=call)
        found = await tx.list_holds(state.instance_id, include_released=include_released, after=after, limit=size + 1)
    return paging.keyset_page(found, size, lambda h: (h.placed_at, h.hold_id))
