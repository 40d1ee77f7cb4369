"""Billing logic: apply instance and point events (idempotently), compute the overview."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from strongroom.events.v1 import events_pb2
from strongroom_platform import paging
from strongroom_platform.auth import CallAuth, choose_account
from strongroom_platform.clock import Clock
from strongroom_platform.events import from_timestamp

from strongroom_billing import ledger
from strongroom_billing.errors import InvalidArgument
from strongroom_billing.ledger import AccountDay, InstanceCharge, Plan
from strongroom_billing.models import Overview, overview
from strongroom_billing.ports import BillingStore
from strongroom_billing.settings import LedgerSettings

log = logging.getLogger(__name__)

CONSUMER = "billing"
# Inbox keys never change (DEVELOPERS.md): the topics of ADR 0040 have their own.
STATUS_CONSUMER = "billing.instance-status-changed"
REINSTATED_CONSUMER = "billing.instance-reinstated"
DEFAULT_ACCOUNT = "default"
MAX_PLAN_PAGE = 1000  # also the default page: a caller from before pages saw every plan


def _require(value: str, what: str, event: str) -> None:
    if not value:
        raise InvalidArgument(f"{event} without {what}")


async def handle_instance_activated(event: events_pb2.InstanceActivated, store: BillingStore) -> None:
    _require(event.instance_id, "instance_id", "instance-activated")
    async with store.transaction() as tx:
        if await tx.claim_event(CONSUMER, event.meta.event_id):
            await tx.instance_activated(event.account_id or DEFAULT_ACCOUNT, event.instance_id, event.region)


async def handle_instance_deactivated(event: events_pb2.InstanceDeactivated, store: BillingStore) -> None:
    _require(event.instance_id, "instance_id", "instance-deactivated")
    async with store.transaction() as tx:
        if await tx.claim_event(CONSUMER, event.meta.event_id):
            await tx.instance_canceled(
                event.account_id or DEFAULT_ACCOUNT, event.instance_id, from_timestamp(event.meta.occurred_at)
            )


async def handle_instance_status_changed(event: events_pb2.InstanceStatusChanged, store: BillingStore) -> None:
    """The inventory's view of an instance (ADR 0040): registered instances without versions count as
    un-backed-up (released ones do not), and its block devices' capacity wins over the agent's report."""
    _require(event.instance_id, "instance_id", "instance-status-changed")
    _require(event.account_id, "account_id", "instance-status-changed")
    if not event.meta.HasField("occurred_at"):
        raise InvalidArgument("instance-status-changed without meta.occurred_at")
    async with store.transaction() as tx:
        if await tx.claim_event(STATUS_CONSUMER, event.meta.event_id):
            await tx.instance_inventory(
                event.account_id,
                event.instance_id,
                event.region,
                released=event.released,
                capacity_bytes=event.inventory_capacity_bytes,
                as_of=from_timestamp(event.meta.occurred_at),
            )


async def handle_instance_reinstated(event: events_pb2.InstanceReinstated, store: BillingStore) -> None:
    """A canceled instance's versions were reinstated (ADR 0040): billed again from now."""
    _require(event.instance_id, "instance_id", "instance-reinstated")
    _require(event.account_id, "account_id", "instance-reinstated")
    async with store.transaction() as tx:
        if await tx.claim_event(REINSTATED_CONSUMER, event.meta.event_id):
            await tx.instance_reinstated(event.account_id, event.instance_id)


async def handle_point_created(event: events_pb2.PointCreated, store: BillingStore) -> None:
    _require(event.instance_id, "instance_id", "point-created")
    _require(event.version_id, "version_id", "point-created")
    created_at = from_timestamp(
        event.version_created_at if event.HasField("version_created_at") else event.meta.occurred_at
    )
    async with store.transaction() as tx:
        if await tx.claim_event(CONSUMER, event.meta.event_id):
            await tx.point_created(
                event.account_id or DEFAULT_ACCOUNT,
                event.instance_id,
                event.version_id,
                created_at,
                event.instance_capacity_bytes,
            )


async def handle_version_expired(event: events_pb2.VersionExpired, store: BillingStore) -> None:
    _require(event.instance_id, "instance_id", "version-expired")
    _require(event.version_id, "version_id", "version-expired")
    async with store.transaction() as tx:
        if await tx.claim_event(CONSUMER, event.meta.event_id):
            await tx.version_expired(
                event.account_id or DEFAULT_ACCOUNT,
                event.instance_id,
                event.version_id,
                from_timestamp(event.meta.occurred_at),
            )


async def get_overview(store: BillingStore, account_id: str, region: str, *, call: CallAuth) -> Overview:
    """The seed's overview of one region, or of all regions (with the free quota) when ``region`` is empty.

    Of the account ``choose_account(account_id)`` picks (ADR 0024): empty = the credential's only one.
    """
    account = choose_account(account_id.strip(), call=call)
    if region != region.strip():
        raise InvalidArgument(f"region must not have surrounding spaces, got {region!r}")
    async with store.transaction() as tx:
        usage = await tx.usage(account, region)
    return overview(usage, all_regions=not region)


# -- the daily ledger (ADR 0036) --

MAX_LEDGER_DAYS = 366
DEFAULT_LEDGER_DAYS = 31
# Instance rows a ledger page holds at most (about 1 MB: well inside gRPC's 4 MiB message).
MAX_LEDGER_INSTANCE_ROWS = 10_000


async def close_ledger_days(store: BillingStore, clock: Clock, settings: LedgerSettings) -> list[dt.date]:
    """Close every day that has ended (plus the grace) and is not closed yet, oldest first; return them.

    Each day is one transaction: its per-instance charges, per-account rows and plan draws are
    written together or not at all, and a day closed by another replica is skipped.
    """
    async with store.transaction() as tx:
        last_closed, earliest = await tx.ledger_frontier()
    due = ledger.days_to_close(last_closed, earliest, clock.now(), settings.zone, settings.grace)
    closed: list[dt.date] = []
    for day in due:
        async with store.transaction() as tx:
            charges = await tx.charges_at(ledger.day_end(day, settings.zone))
            rows = ledger.close_day(day, charges, await tx.plan_balances(day), settings.price_per_gib_day)
            if await tx.close_day(day, rows, charges, clock.now()):
                closed.append(day)
    if closed:
        log.info("ledger: closed %d day(s), %s to %s", len(closed), closed[0], closed[-1])
    return closed


def _day(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(f"{what} must be a date YYYY-MM-DD, got {text!r}") from None


@dataclass(frozen=True, slots=True)
class LedgerView:
    days: list[AccountDay]
    instances: dict[dt.date, list[InstanceCharge]]
    next_page_token: str = ""  # empty on the last page


# A page ends after a whole day ("day") or inside one, after an instance row ("in:<instance id>").
_DAY_DONE = "day"
_INSIDE_DAY = "in:"


def _ledger_token(day: dt.date, key: str) -> str:
    return paging.position_token(dt.datetime.combine(day, dt.time(), dt.UTC), key)


def _ledger_position(page_token: str) -> tuple[dt.date, str | None] | None:
    """(the day to start with, the instance row to start after in it) of a ledger page token."""
    position = paging.token_position(page_token)
    if position is None:
        return None
    at, key = position
    if at.utcoffset() != dt.timedelta(0) or at.time() != dt.time():
        raise InvalidArgument(paging.FORGED)
    if key == _DAY_DONE:
        return at.date() + dt.timedelta(days=1), None
    if key.startswith(_INSIDE_DAY) and len(key) > len(_INSIDE_DAY):
        return at.date(), key[len(_INSIDE_DAY) :]
    raise InvalidArgument(paging.FORGED)


async def list_ledger(
    store: BillingStore,
    account_id: str,
    from_day: str,
    to_day: str,
    include_instances: bool,
    *,
    page_size: int = 0,
    page_token: str = "",
    call: CallAuth,
) -> LedgerView:
    """One page of the account's ledger over ``from_day``..``to_day`` (default: the last 31 closed
    days), oldest day first: ``page_size`` days (0: all of them), and with ``include_instances`` at most
    ``MAX_LEDGER_INSTANCE_ROWS`` instance rows; a day cut there comes again on the next page."""
    account = choose_account(account_id.strip(), call=call)
    size = paging.page_size(page_size, MAX_LEDGER_DAYS, MAX_LEDGER_DAYS)
    position = _ledger_position(page_token)
    async with store.transaction() as tx:
        if to_day:
            last = _day(to_day, "to_day")
        else:
            closed = await tx.last_closed_day()
            if closed is None:
                return LedgerView([], {})
            last = closed
        first = _day(from_day, "from_day") if from_day else last - dt.timedelta(days=DEFAULT_LEDGER_DAYS - 1)
        if first > last:
            raise InvalidArgument(f"from_day {first} is after to_day {last}")
        if (last - first).days + 1 > MAX_LEDGER_DAYS:
            raise InvalidArgument(f"at most {MAX_LEDGER_DAYS} days per request, asked for {(last - first).days + 1}")
        # a position before the range (its default start moved on as days closed) starts at the range
        start, resume_after = position if position is not None and position[0] >= first else (first, None)
        if start > last:
            return LedgerView([], {})
        found = await tx.ledger(account, start, last)
        days = found[:size]
        token = _ledger_token(days[-1].day, _DAY_DONE) if len(found) > size else ""
        by_day: dict[dt.date, list[InstanceCharge]] = {}
        if include_instances and days:
            after = (start, resume_after) if resume_after is not None else None
            rows = await tx.ledger_instances(
                account, start, days[-1].day, after=after, limit=MAX_LEDGER_INSTANCE_ROWS + 1
            )
            if len(rows) > MAX_LEDGER_INSTANCE_ROWS:
                rows = rows[:MAX_LEDGER_INSTANCE_ROWS]
                cut_day, cut = rows[-1]
                days = [d for d in days if d.day <= cut_day]
                token = _ledger_token(cut_day, _INSIDE_DAY + cut.instance_id)
            for day, charge in rows:
                by_day.setdefault(day, []).append(charge)
    return LedgerView(days, by_day, token)


async def list_plans(
    store: BillingStore, account_id: str, *, page_size: int = 0, page_token: str = "", call: CallAuth
) -> tuple[list[Plan], str]:
    """One page of the account's plans by end date, and the next page's token ("" on the last)."""
    account = choose_account(account_id.strip(), call=call)
    size = paging.page_size(page_size, MAX_PLAN_PAGE, MAX_PLAN_PAGE)
    position = paging.token_position(page_token)
    after = None if position is None else (position[0].date(), position[1])
    async with store.transaction() as tx:
        found = await tx.plans(account, after=after, limit=size + 1)
    return paging.keyset_page(found, size, lambda p: (dt.datetime.combine(p.ends_on, dt.time(), dt.UTC), p.plan_id))


async def create_plan(
    store: BillingStore,
    clock: Clock,
    account_id: str,
    gib_days: str,
    starts_on: str,
    ends_on: str,
    *,
    call: CallAuth,
) -> Plan:
    """A new resource plan of ``gib_days`` prepaid GiB-days, usable from ``starts_on`` to ``ends_on``."""
    account = choose_account(account_id.strip(), call=call)
    try:
        amount = Decimal(gib_days.strip())
    except InvalidOperation:
        raise InvalidArgument(f"gib_days must be a decimal number, got {gib_days!r}") from None
    if not amount.is_finite() or amount <= 0 or amount > Decimal("1e15"):
        raise InvalidArgument(f"gib_days must be positive and at most 1e15, got {gib_days!r}")
    if ledger.money(amount) != amount:
        raise InvalidArgument(f"gib_days has at most 4 decimal places, got {gib_days!r}")
    first, last = _day(starts_on, "starts_on"), _day(ends_on, "ends_on")
    if last < first:
        raise InvalidArgument(f"ends_on {last} is before starts_on {first}")
    if (last - first).days > 3660:
        raise InvalidArgument("a plan lasts at most ten years")
    plan = Plan(
        plan_id=str(uuid.uuid4()),
        account_id=account,
        gib_days=ledger.money(amount),
        starts_on=first,
        ends_on=last,
        created_at=clock.now(),
    )
    async with store.transaction() as tx:
        await tx.add_plan(plan)
    return plan
