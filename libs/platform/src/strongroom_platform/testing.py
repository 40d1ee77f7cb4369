"""In-memory fakes of the platform's ports, for unit tests of every package.

Each fake passes the same contract suite as the real adapter
(``strongroom_testing.contracts``), so a test that passes with a fake
exercises behaviour the real server also has.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from strongroom.events.v1 import events_pb2

from strongroom_platform.audit import SinkIdentity
from strongroom_platform.auth.interceptor import Authenticator, AuthInterceptor
from strongroom_platform.auth.policy import POLICY
from strongroom_platform.auth.principal import CallAuth, Principal, Role
from strongroom_platform.auth.tokens import InMemoryTokenStore, TokenVerifier, new_token
from strongroom_platform.clock import Clock, SystemClock, utc
from strongroom_platform.eventbus import BatchHandler, Handler, Headers, OutgoingRecord, Record
from strongroom_platform.events import ALERT_RAISED, TOPIC_MESSAGES
from strongroom_platform.objectstore import ObjectInfo, ObjectLocked, ObjectNotFound, ObjectVersion
from strongroom_platform.poison import RetryPolicy, plan_dead_letter, run_batch
from strongroom_platform.runtime import start_grpc_server

StateT = TypeVar("StateT")


class FakeClock:
    """A clock that only moves when told to.

    ``sleep`` waits until :meth:`advance` has moved the clock past the wake-up
    time, so code that sleeps in a loop can be driven step by step.
    """

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = start or utc(2026, 1, 1)
        self._changed = asyncio.Event()

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, seconds: float = 0.0, **delta: float) -> dt.datetime:
        """Move the clock forward and wake sleepers whose time has come."""
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self._now += dt.timedelta(seconds=seconds, **delta)
        self._changed.set()
        self._changed = asyncio.Event()
        return self._now

    def set(self, when: dt.datetime) -> None:
        """Jump to ``when`` (must not be earlier than now)."""
        if when < self._now:
            raise ValueError("a clock never goes backwards")
        self.advance((when - self._now).total_seconds())

    async def sleep(self, seconds: float) -> None:
        wake_at = self._now + dt.timedelta(seconds=seconds)
        while self._now < wake_at:
            await self._changed.wait()


@dataclasses.dataclass(slots=True)
class _MemoryVersion:
    version_id: str
    data: bytes | None  # None: a delete marker
    retain_until: dt.datetime | None


class InMemoryObjectStore:
    """ObjectStore fake with Object Lock and versioning semantics; ``clock`` decides when locks expire.

    ``add_delete_marker`` and ``put_new_version`` do what anyone holding the S3 credentials can do
    directly, bypassing the port's checks (a plain DELETE; a PUT over a locked key): tests use them
    to play the attacker.
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self._clock: FakeClock | SystemClock = clock or SystemClock()
        self._versions: dict[str, list[_MemoryVersion]] = {}
        self._next_version = itertools.count(1)

    def _new_version_id(self) -> str:
        return f"v{next(self._next_version):08d}"

    def _current(self, key: str) -> _MemoryVersion | None:
        versions = self._versions.get(key)
        if not versions or versions[-1].data is None:
            return None
        return versions[-1]

    def _version(self, key: str, version_id: str | None) -> _MemoryVersion:
        if version_id is None:
            found = self._current(key)
        else:
            found = next((v for v in self._versions.get(key, ()) if v.version_id == version_id), None)
        if found is None or found.data is None:
            raise ObjectNotFound(key)
        return found

    def _is_locked(self, version: _MemoryVersion | None) -> bool:
        return version is not None and version.retain_until is not None and version.retain_until > self._clock.now()

    async def put(
        self, key: str, data: bytes, *, retain_until: dt.datetime | None = None, new_key: bool = False
    ) -> str:
        if self._is_locked(self._current(key)):
            raise ObjectLocked(key)
        return self.put_new_version(key, data, retain_until=retain_until)

    def put_new_version(self, key: str, data: bytes, *, retain_until: dt.datetime | None = None) -> str:
        """A new current version even over a locked one (what a raw S3 PUT does); returns its id."""
        version = _MemoryVersion(self._new_version_id(), bytes(data), retain_until)
        self._versions.setdefault(key, []).append(version)
        return version.version_id

    def damage(self, key: str, data: bytes) -> None:
        """Replace the current version's bytes in place, keeping its id and lock (a broken disk would)."""
        version = self._version(key, None)
        version.data = bytes(data)

    def clear(self) -> None:
        """Forget every object (benchmarks keep memory flat between rounds)."""
        self._versions.clear()

    def add_delete_marker(self, key: str) -> None:
        """Hide the key from unversioned reads, removing nothing (what a plain S3 DELETE does)."""
        self._versions.setdefault(key, []).append(_MemoryVersion(self._new_version_id(), None, None))

    async def get(
        self, key: str, *, offset: int = 0, length: int | None = None, version_id: str | None = None
    ) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        data = self._version(key, version_id).data
        assert data is not None
        end = len(data) if length is None else offset + length
        return data[offset:end]

    async def stat(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        version = self._version(key, version_id)
        assert version.data is not None
        return ObjectInfo(key=key, size=len(version.data), retain_until=version.retain_until)

    async def delete(self, key: str) -> None:
        if any(self._is_locked(v) for v in self._versions.get(key, ())):
            raise ObjectLocked(key)
        self._versions.pop(key, None)

    async def extend_retention(self, key: str, retain_until: dt.datetime, *, version_id: str | None = None) -> None:
        version = self._version(key, version_id)
        if version.retain_until is None or retain_until > version.retain_until:
            version.retain_until = retain_until

    async def list(self, prefix: str) -> AsyncIterator[str]:
        for key in sorted(self._versions):
            if key.startswith(prefix) and self._current(key) is not None:
                yield key

    async def list_versions(self, prefix: str) -> AsyncIterator[ObjectVersion]:
        for key in sorted(self._versions):
            if key.startswith(prefix):
                for version in list(self._versions[key]):
                    if version.data is not None:
                        yield ObjectVersion(key, version.version_id)


class InMemoryEventBus:
    """EventPublisher plus consumer factory over in-process lists.

    Each topic is one partition. Consumer groups keep committed offsets, so a
    consumer started again for the same group continues after the last record
    its handler finished, exactly as with Kafka.
    """

    def __init__(self) -> None:
        self.topics: dict[str, list[tuple[bytes, bytes]]] = {}
        # Error text of each dead-lettered record, by DLQ topic, parallel to ``topics``
        # (Kafka keeps it in a record header; the value itself stays as published).
        self.dlq_errors: dict[str, list[str]] = {}
        # The headers of each record, by topic, parallel to ``topics``.
        self.headers: dict[str, list[Headers]] = {}
        self._committed: dict[tuple[str, str], int] = {}
        self._appended = asyncio.Condition()

    async def publish(self, topic: str, key: bytes, value: bytes, *, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        async with self._appended:
            self.topics.setdefault(topic, []).append((key, value))
            self.headers.setdefault(topic, []).append(tuple(headers))
            self._appended.notify_all()

    async def publish_batch(self, records: Sequence[OutgoingRecord]) -> list[BaseException | None]:
        for record in records:
            await self.publish(record.topic, record.key, record.value, headers=record.headers)
        return [None] * len(records)

    def consumer(self, group_id: str, handlers: Mapping[str, Handler]) -> InMemoryConsumer:
        return InMemoryConsumer(self, group_id, dict(handlers))

    def committed(self, group_id: str, topic: str) -> int:
        return self._committed.get((group_id, topic), 0)


class InMemoryConsumer:
    """A consumer of :class:`InMemoryEventBus`; see ``EventConsumer``."""

    def __init__(
        self,
        bus: InMemoryEventBus,
        group_id: str,
        handlers: dict[str, Handler],
        *,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        max_batch: int = 500,
    ) -> None:
        self._bus = bus
        self._group = group_id
        self._max_batch = max_batch
        self._handlers = handlers
        # Short pauses: the same outcomes as the Kafka adapter, without its real-time backoff.
        self._policy = policy or RetryPolicy(initial=0.01, maximum=0.05)
        self._clock: Clock = clock or SystemClock()
        self._task: asyncio.Task[None] | None = None

    async def _dead_letter(self, record: Record, reason: str, attempts: int) -> None:
        plan = plan_dead_letter(source=self._group, record=record, reason=reason, attempts=attempts, clock=self._clock)
        self._bus.dlq_errors.setdefault(plan.topic, []).append(reason)
        await self._bus.publish(plan.topic, record.key or b"", record.value)
        await self._bus.publish(ALERT_RAISED, plan.alert_key, plan.alert)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        bus = self._bus
        while True:
            progressed = False
            for topic, handler in self._handlers.items():
                records = bus.topics.get(topic, [])
                position = bus._committed.get((self._group, topic), 0)
                while position < len(records):
                    # Everything pending of the topic as one batch for a BatchHandler, as a partition
                    # worker takes the records it holds (``poison.run_batch``); one by one otherwise.
                    size = self._max_batch if isinstance(handler, BatchHandler) else 1
                    headers = bus.headers.get(topic, [])
                    batch = [
                        Record(
                            topic=topic,
                            partition=0,
                            offset=offset,
                            key=records[offset][0],
                            value=records[offset][1],
                            headers=headers[offset] if offset < len(headers) else (),
                        )
                        for offset in range(position, min(len(records), position + size))
                    ]
                    done = await run_batch(
                        handler, batch, policy=self._policy, dead_letter=self._dead_letter, pause=_pause
                    )
                    position += done
                    bus._committed[(self._group, topic)] = position
                    if done < len(batch):
                        return
                    progressed = True
            if not progressed:
                async with bus._appended:
                    await bus._appended.wait()


async def _pause(seconds: float) -> bool:
    await asyncio.sleep(seconds)
    return True


class InMemoryTransactions(Generic[StateT]):
    """Base of the services' in-memory stores: transactions over one state object.

    Transactions are serialized by a lock (so row locks hold trivially) and an
    exception restores a deep copy of the state taken at the start, so a failed
    transaction leaves no change, outbox row or inbox claim behind, as with
    PostgreSQL. Subclasses wrap :meth:`_transaction_state` in their own
    ``transaction()`` that hands out the service's transaction object.
    """

    def __init__(self, state: StateT) -> None:
        self._state = state
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _transaction_state(self) -> AsyncIterator[StateT]:
        async with self._lock:
            snapshot = copy.deepcopy(self._state)
            try:
                yield self._state
            except BaseException:
                self._state = snapshot
                raise


def claim_once(claimed: set[tuple[str, str]], consumer: str, event_id: str) -> bool:
    """A fake store's ``claim_event`` (see ``strongroom_platform.inbox.claim_event``) over ``claimed``.

    True the first time ``consumer`` claims ``event_id``, False after; an empty
    ``event_id`` raises ValueError, as it does on PostgreSQL.
    """
    if not event_id:
        raise ValueError("event without an event_id cannot be processed idempotently")
    if (consumer, event_id) in claimed:
        return False
    claimed.add((consumer, event_id))
    return True


def record_event(outbox: list[tuple[str, str, Message]], topic: str, key: str, event: Message) -> None:
    """A fake store's ``enqueue`` (see ``strongroom_platform.outbox.enqueue``): append to ``outbox``.

    Raises ValueError, as the real outbox does, when ``event`` is not the
    registered message type of ``topic``. A copy is kept: the real outbox
    serializes the event, so changing it afterwards changes nothing.
    """
    expected = TOPIC_MESSAGES.get(topic)
    if expected is None or not isinstance(event, expected):
        raise ValueError(f"{type(event).__name__} is not the message type of topic {topic!r}")
    outbox.append((topic, key, copy.deepcopy(event)))


def call_for(method: str, principal: Principal) -> CallAuth:
    """The :class:`CallAuth` the auth interceptor sets when ``principal`` calls ``method``.

    ``method`` is the full gRPC name (``/package.Service/Method``); the permission and verb come from
    its rule in ``auth.policy.POLICY``, so handler tests and the table cannot drift (KeyError for a
    method without a rule).
    """
    rule = POLICY[method]
    return CallAuth(principal=principal, method=method, permission=rule.permission, verb=rule.verb)


if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:  # the grpc classes are generic for the type checker only
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor


class _Bearer(_UnaryUnary, _UnaryStream):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._entry)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class InMemoryAuditSink(SinkIdentity):
    """An ``audit.AuditSink`` keeping the records in :attr:`events` (they are committed at once)."""

    def __init__(self, clock: Clock | None = None, producer: str = "test") -> None:
        super().__init__(producer, clock or SystemClock())
        self.events: list[events_pb2.AuditRecorded] = []

    async def record(self, event: events_pb2.AuditRecorded) -> None:
        self.events.append(copy.deepcopy(event))


@contextlib.asynccontextmanager
async def serve_authenticated(
    register: Callable[[grpc.aio.Server], None],
    grants: Mapping[str, Role],
    *,
    audit_sink: InMemoryAuditSink | None = None,
) -> AsyncIterator[grpc.aio.Channel]:
    """Serve ``register`` on 127.0.0.1 behind the auth interceptor; yield a channel whose calls carry
    an API token holding ``grants`` (account → role). Mutating calls are recorded in ``audit_sink``
    (default: a fresh one)."""
    clock = SystemClock()
    store = InMemoryTokenStore()
    token, record = new_token(
        name="test", grants=grants, created_by="test", now=clock.now(), lifetime=dt.timedelta(hours=1)
    )
    await store.insert(record)
    interceptor = AuthInterceptor(
        Authenticator(tokens=TokenVerifier(store, clock)), audit_sink=audit_sink or InMemoryAuditSink(clock)
    )
    server, port = await start_grpc_server("127.0.0.1:0", register, interceptors=[interceptor])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=[_Bearer(token)]) as channel:  # type: ignore[list-item]
            yield channel
    finally:
        await server.stop(None)
