"""How a consumer treats a failing record (ADR 0026): retry what is transient, dead-letter what repeats.

Every consumer adapter (``eventbus_kafka.FaustConsumer``, ``testing.InMemoryConsumer``) runs each
record through :func:`run_record`:

- the handler returns: done;
- it raises :class:`~strongroom_platform.eventbus.PoisonRecord` (undecodable bytes, an
  ``InvalidArgument`` from the handler): dead-letter at once;
- it raises a **transient** failure (:func:`is_transient`: the database, the broker or a peer
  unreachable): retry with backoff, without limit — waiting out an outage loses nothing;
- it raises anything else: a **deterministic** failure — the same record fails the same way.
  Retry with backoff up to ``RetryPolicy.max_attempts`` attempts, then dead-letter it.

Dead-lettering publishes the record unchanged to its dead-letter topic (``TopicSpec``) and an
``alert-raised`` event (:func:`poison_alert`), then moves on: one poisonous record delays the
records behind it by the few seconds of its attempts, never for ever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import grpc
from strongroom.events.v1 import events_pb2

from strongroom_platform.clock import Clock
from strongroom_platform.errors import Unavailable
from strongroom_platform.eventbus import BatchHandler, Handler, PoisonRecord, Record
from strongroom_platform.events import dead_letter_topic, new_meta
from strongroom_platform.outages import database_down

__all__ = [
    "DeadLetterPlan",
    "RetryPolicy",
    "is_transient",
    "plan_dead_letter",
    "poison_alert",
    "run_batch",
    "run_record",
]

log = logging.getLogger(__name__)

MAX_REASON_BYTES = 4096

# Beyond the database (outages.database_down, as grpc_errors answers UNAVAILABLE): any socket
# error, and the pool or connection closing under the handler at shutdown.
_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InterfaceError,
    OSError,  # ConnectionError, TimeoutError, socket errors: the network or a backend is away
    Unavailable,  # a service said "retry" (e.g. restore's CatalogUnavailable)
)
_TRANSIENT_GRPC = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says "not now" (retry without limit) rather than "never" (dead-letter after a few tries).

    Transient: asyncpg's connection errors, ``OSError`` (refused, reset, timed out), the platform's
    ``Unavailable``, and a gRPC peer answering UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED.
    The cause chain is followed, so a wrapped outage stays an outage.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT) or database_down(current):
            return True
        if isinstance(current, grpc.aio.AioRpcError) and current.code() in _TRANSIENT_GRPC:
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff doubling from ``initial`` to ``maximum`` seconds; deterministic failures get ``max_attempts``."""

    initial: float = 0.1
    maximum: float = 30.0
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial <= 0 or self.maximum < self.initial:
            raise ValueError("max_attempts >= 1 and 0 < initial <= maximum")


def describe(exc: BaseException, *, with_type: bool = True) -> str:
    """``Type: message`` for logs and alerts: no NUL, valid UTF-8, at most ``MAX_REASON_BYTES``."""
    text = (f"{type(exc).__name__}: {exc}" if with_type else str(exc)).replace("\x00", "\\x00")
    data = text.encode("utf-8", "backslashreplace")[:MAX_REASON_BYTES]
    return data.decode("utf-8", "ignore")


def poison_alert(
    *, source: str, record: Record, dead_letter_topic: str, reason: str, attempts: int, clock: Clock
) -> events_pb2.AlertRaised:
    """The ``alert-raised`` event for a dead-lettered record."""
    return events_pb2.AlertRaised(
        meta=new_meta(source, clock.now()),
        kind=events_pb2.ALERT_KIND_POISON_RECORD,
        source=source,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        dead_letter_topic=dead_letter_topic,
        reason=reason,
        attempts=attempts,
        record_key=record.key or b"",
    )


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterPlan:
    """What dead-lettering a record publishes: the record to ``topic``, then ``alert`` to ``alert-raised``."""

    topic: str
    alert_key: bytes
    alert: bytes


def plan_dead_letter(*, source: str, record: Record, reason: str, attempts: int, clock: Clock) -> DeadLetterPlan:
    """The dead-letter topic of ``record`` and its serialized ``alert-raised`` event (key: the source topic)."""
    target = dead_letter_topic(record.topic)
    alert = poison_alert(
        source=source, record=record, dead_letter_topic=target, reason=reason, attempts=attempts, clock=clock
    )
    return DeadLetterPlan(target, record.topic.encode(), alert.SerializeToString())


DeadLetter = Callable[[Record, str, int], Awaitable[None]]
"""Publishes the record to its dead-letter topic and raises the alert: (record, reason, attempts)."""


async def run_record(
    handler: Handler,
    record: Record,
    *,
    policy: RetryPolicy,
    dead_letter: DeadLetter,
    pause: Callable[[float], Awaitable[bool]],
) -> bool:
    """Process ``record`` to an outcome: handled or dead-lettered (True), or stopped meanwhile (False).

    ``pause(seconds)`` waits between attempts and returns False when the consumer is stopping (the
    record is then left unacknowledged and delivered again later). A failing dead-letter publish is
    retried like a transient failure.
    """
    delay = policy.initial
    failures = 0
    while True:
        outcome: tuple[str, int] | None = None
        try:
            await handler(record)
            return True
        except PoisonRecord as exc:
            outcome = (describe(exc, with_type=False), 0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_transient(exc):
                log.warning(
                    "%s[%d]@%d: transient failure, retrying in %.1fs: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    delay,
                    describe(exc),
                )
            else:
                failures += 1
                log.exception(
                    "%s[%d]@%d: handler failed (attempt %d of %d)",
                    record.topic,
                    record.partition,
                    record.offset,
                    failures,
                    policy.max_attempts,
                )
                if failures >= policy.max_attempts:
                    outcome = (f"failed {failures} times; last: {describe(exc)}", failures)
        if outcome is not None:
            try:
                await dead_letter(record, *outcome)
                return True
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cannot dead-letter %s@%d; retrying", record.topic, record.offset)
        if not await pause(delay):
            return False
        delay = min(delay * 2, policy.maximum)


async def run_batch(
    handler: Handler,
    records: Sequence[Record],
    *,
    policy: RetryPolicy,
    dead_letter: DeadLetter,
    pause: Callable[[float], Awaitable[bool]],
) -> int:
    """Process one partition's ``records`` in order; return how many of them reached an outcome (a
    prefix: the rest are left unacknowledged because the consumer is stopping).

    A :class:`~strongroom_platform.eventbus.BatchHandler` with more than one record first gets them
    all at once (``handle_batch``: one transaction). If that fails, nothing was applied, and each
    record runs alone through :func:`run_record` — the poison one is dead-lettered by itself, the
    others applied once (their inbox claims were rolled back with the batch). A plain handler, or
    one record, goes straight to :func:`run_record`.
    """
    if len(records) > 1 and isinstance(handler, BatchHandler):
        try:
            await handler.handle_batch(records)
            return len(records)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            first, last = records[0], records[-1]
            log.info(
                "%s[%d]@%d..%d: the batch failed (%s); handling its %d records one at a time",
                first.topic,
                first.partition,
                first.offset,
                last.offset,
                describe(exc),
                len(records),
            )
    for done, record in enumerate(records):
        if not await run_record(handler, record, policy=policy, dead_letter=dead_letter, pause=pause):
            return done
    return len(records)
