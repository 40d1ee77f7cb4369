"""Jobs reach their agent at once, on whichever gateway replica holds its session (ADR 0050).

An agent's Connect stream lives on one gateway process, while the job-requested (or cancel, or
revocation) event that concerns it is consumed by whichever replica owns the event's partition.
The consumer therefore ``NOTIFY``s :data:`SESSIONS_CHANNEL` in the transaction that stores the
job (:func:`payload`); every gateway process listens on it over one connection
(``strongroom_platform.pg_listen.Listener``) and wakes or closes the session in memory
(:func:`apply`). Idle sessions cost no database work: nothing polls per session.

What a notification can miss — sent while a process was not listening (its connection lost, or
not yet open) — the **sweep** finds: one query for the unfinished jobs of every connected
instance, compared with what each session already sent (:func:`sessions_to_wake`). It runs when
listening (re)starts and every ``interval`` seconds as a safety net.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextlib import AsyncExitStack

import asyncpg
from strongroom_platform import lifecycle
from strongroom_platform.clock import Clock, sleep_or_event
from strongroom_platform.pg_listen import Listener

from strongroom_gateway.agents import REVOKED_BY_CANCEL
from strongroom_gateway.handlers import SessionEffect
from strongroom_gateway.ports import GatewayStore
from strongroom_gateway.sessions import SESSIONS_CHANNEL, SessionRegistry

__all__ = [
    "MAX_PAYLOAD",
    "SESSIONS_CHANNEL",
    "apply",
    "payloads",
    "sessions_to_wake",
    "start",
    "sweep",
    "sweep_forever",
]

log = logging.getLogger(__name__)

_WAKE = "w"
_DISCONNECT = "d"
# Bytes of one notification's payload: PostgreSQL refuses 8,000 and more.
MAX_PAYLOAD = 7900
# Instances per sweep query (the ANY array); a sweep of 10,000 sessions is 10 queries.
SWEEP_BATCH = 1000


def payloads(origin: str, effects: Iterable[SessionEffect]) -> list[str]:
    """The notifications of ``effects``, from the process whose registry is ``origin``.

    ``<kind>:<origin>:<instance id> <instance id> ...``: one notification per kind for as many
    instances as fit in :data:`MAX_PAYLOAD` bytes (NOTIFY's limit is 8,000), so a burst of 500
    jobs is 3 notifications, not 500 for every listening process to receive and parse. Ids never
    hold a space (``validation.ID_PATTERN``, at most 128 characters); each is named once per kind.
    """
    by_kind: dict[str, dict[str, None]] = {}
    for effect in effects:
        by_kind.setdefault(_DISCONNECT if effect.disconnect else _WAKE, {})[effect.instance_id] = None
    out: list[str] = []
    for kind, ids in by_kind.items():
        head = f"{kind}:{origin}:"
        chunk: list[str] = []
        size = len(head)
        for instance_id in ids:
            if chunk and size + 1 + len(instance_id) > MAX_PAYLOAD:
                out.append(head + " ".join(chunk))
                chunk, size = [], len(head)
            chunk.append(instance_id)
            size += len(instance_id) + (1 if len(chunk) > 1 else 0)
        if chunk:
            out.append(head + " ".join(chunk))
    return out


def apply(sessions: SessionRegistry, notification: str) -> None:
    """Wake or close the sessions the notification names, those this process holds.

    The process that sent it applied the effects itself already (it knows its own ``origin``);
    anything malformed is ignored: the channel is only written by gateways.
    """
    kind, _, rest = notification.partition(":")
    origin, _, instance_ids = rest.partition(":")
    if not instance_ids or origin == sessions.origin:
        return
    for instance_id in instance_ids.split(" "):
        if not instance_id:
            continue
        if kind == _DISCONNECT:
            sessions.disconnect(instance_id, REVOKED_BY_CANCEL)
        elif kind == _WAKE:
            sessions.wake(instance_id)


def sessions_to_wake(sessions: SessionRegistry, unfinished: Iterable[tuple[str, str, bool]]) -> set[str]:
    """Connected instances with a command their session has not sent: a job, or the cancel of one."""
    due: set[str] = set()
    for instance_id, job_id, cancel_requested in unfinished:
        session = sessions.get(instance_id)
        if session is None:
            continue
        key = f"cancel:{job_id}" if cancel_requested else job_id
        if key not in session.sent:
            due.add(instance_id)
    return due


async def sweep(sessions: SessionRegistry, store: GatewayStore) -> int:
    """Wake every connected session with an unsent command; return how many were woken."""
    connected = sessions.connected()
    woken = 0
    for start in range(0, len(connected), SWEEP_BATCH):
        async with store.transaction() as tx:
            unfinished = await tx.unfinished_job_keys(connected[start : start + SWEEP_BATCH])
        for instance_id in sessions_to_wake(sessions, unfinished):
            sessions.wake(instance_id)
            woken += 1
    return woken


async def sweep_forever(
    sessions: SessionRegistry, store: GatewayStore, clock: Clock, *, interval: float, requested: asyncio.Event
) -> None:
    """Sweep every ``interval`` seconds, and at once whenever ``requested`` is set (listening again)."""
    while True:
        requested.clear()
        try:
            woken = await sweep(sessions, store)
            if woken:
                log.info("job sweep woke %d sessions a notification had missed", woken)
        except Exception as exc:  # the database away: the next sweep retries
            log.warning("job sweep failed: %s", exc)
        await sleep_or_event(clock, interval, requested)


def start(
    stack: AsyncExitStack,
    pool: asyncpg.Pool,
    store: GatewayStore,
    sessions: SessionRegistry,
    clock: Clock,
    *,
    sweep_interval: float,
    listen_check_interval: float = 10.0,
) -> Listener:
    """The process's listener on :data:`SESSIONS_CHANNEL` and its sweep, as background tasks of ``stack``.

    A sweep runs each time listening (re)starts — whatever was notified meanwhile is found —
    and every ``sweep_interval`` seconds.
    """
    requested = asyncio.Event()
    listener = Listener(
        pool,
        [SESSIONS_CHANNEL],
        lambda _channel, notification: apply(sessions, notification),
        on_listening=requested.set,
        clock=clock,
        check_interval=listen_check_interval,
    )
    lifecycle.start_task(stack, listener.run(), "session notifications")
    lifecycle.start_task(
        stack, sweep_forever(sessions, store, clock, interval=sweep_interval, requested=requested), "job sweep"
    )
    return listener
