"""Contract suite of the event bus port (EventPublisher + EventConsumer).

Subclass :class:`EventBusContract` and provide a ``bus`` fixture returning a
:class:`BusHarness`: a publisher, a way to build consumers, and a way to read
back what landed on a topic (for the dead-letter checks). Topic and group names
are unique per test (fixtures ``topic`` and ``group``), so a shared broker is
fine.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import pytest
from strongroom_platform.eventbus import EventConsumer, EventPublisher, Handler, PoisonRecord, Record

__all__ = ["DELIVERY_TIMEOUT", "MAX_DETERMINISTIC_ATTEMPTS", "BusHarness", "EventBusContract", "wait_for"]

MAX_DETERMINISTIC_ATTEMPTS = 5
"""Attempts a consumer gives a record that fails the same way before dead-lettering it (``RetryPolicy``)."""

DELIVERY_TIMEOUT = 60.0
"""Seconds a test waits for records to arrive (a consumer group join on a real broker takes a few)."""


class BusHarness(Protocol):
    """What the suite needs from an event bus implementation."""

    @property
    def publisher(self) -> EventPublisher:
        """A started publisher."""
        ...

    def consumer(self, group_id: str, handlers: Mapping[str, Handler]) -> EventConsumer:
        """A new, not yet started consumer."""
        ...

    async def create_topics(self, topics: Sequence[str]) -> None:
        """Make sure the topics exist (a no-op where topics need no creation)."""
        ...

    async def read_topic(self, topic: str, count: int, within: float) -> list[tuple[bytes | None, bytes]]:
        """The first ``count`` records of ``topic`` as (key, value), waiting up to ``within`` seconds."""
        ...


async def wait_for(condition: Callable[[], bool], what: str, within: float = DELIVERY_TIMEOUT) -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


class _Recorder:
    """A handler that records what it processed; ``fail`` decides per attempt what to raise."""

    def __init__(self, fail: Callable[[Record, int], BaseException | None] | None = None) -> None:
        self.handled: list[Record] = []
        self.attempts: dict[bytes, int] = {}
        self._fail = fail

    async def __call__(self, record: Record) -> None:
        attempt = self.attempts.get(record.value, 0) + 1
        self.attempts[record.value] = attempt
        if self._fail is not None:
            error = self._fail(record, attempt)
            if error is not None:
                raise error
        self.handled.append(record)

    @property
    def values(self) -> list[bytes]:
        return [r.value for r in self.handled]


class _BatchRecorder(_Recorder):
    """A :class:`~strongroom_platform.eventbus.BatchHandler`: a batch applies all its records or none
    (as one transaction would), and fails whole when ``fail`` refuses any of them."""

    def __init__(self, fail: Callable[[Record, int], BaseException | None] | None = None) -> None:
        super().__init__(fail)
        self.batch_sizes: list[int] = []

    async def handle_batch(self, records: Sequence[Record]) -> None:
        self.batch_sizes.append(len(records))
        if self._fail is not None:
            for record in records:
                error = self._fail(record, 0)
                if error is not None:
                    raise error
        self.handled.extend(records)


class EventBusContract:
    """Behaviour every event bus adapter pair must have."""

    @pytest.fixture
    def bus(self) -> BusHarness:
        raise NotImplementedError("a contract subclass provides the bus fixture")

    @pytest.fixture
    def topic(self) -> str:
        return f"contract-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def group(self) -> str:
        return f"contract-group-{uuid.uuid4().hex[:12]}"

    @staticmethod
    async def _publish(bus: BusHarness, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            await bus.publisher.publish(topic, key, value)

    @staticmethod
    async def _run(consumer: EventConsumer, until: Callable[[], Awaitable[None]]) -> None:
        await consumer.start()
        try:
            await until()
        finally:
            await consumer.stop()

    async def test_records_are_delivered_in_order_per_key(self, bus: BusHarness, topic: str, group: str) -> None:
        await bus.create_topics([topic])
        records = [(f"k{i % 3}".encode(), f"v{i}".encode()) for i in range(12)]
        await self._publish(bus, topic, records[:6])  # a backlog before the consumer starts ...
        recorder = _Recorder()
        consumer = bus.consumer(group, {topic: recorder})

        async def until() -> None:
            await wait_for(lambda: len(recorder.handled) >= 6, "the backlog")
            await self._publish(bus, topic, records[6:])  # ... and records arriving while it runs
            await wait_for(lambda: len(recorder.handled) >= 12, "all 12 records")

        await self._run(consumer, until)
        assert len(recorder.handled) == 12
        for key in {k for k, _ in records}:
            assert [r.value for r in recorder.handled if r.key == key] == [v for k, v in records if k == key]
        for r in recorder.handled:
            assert r.topic == topic
        offsets = [(r.partition, r.offset) for r in recorder.handled]
        assert len(set(offsets)) == 12
        for partition in {p for p, _ in offsets}:
            in_partition = [o for p, o in offsets if p == partition]
            assert in_partition == sorted(in_partition)

    async def test_restarted_consumer_skips_what_its_group_handled(
        self, bus: BusHarness, topic: str, group: str
    ) -> None:
        await bus.create_topics([topic])
        await self._publish(bus, topic, [(b"k", b"one"), (b"k", b"two"), (b"k", b"three")])
        first = _Recorder()

        async def first_three() -> None:
            await wait_for(lambda: len(first.handled) >= 3, "the first three records")

        await self._run(bus.consumer(group, {topic: first}), first_three)
        assert first.values == [b"one", b"two", b"three"]

        await self._publish(bus, topic, [(b"k", b"four"), (b"k", b"five")])
        second = _Recorder()

        async def next_two() -> None:
            await wait_for(lambda: len(second.handled) >= 2, "the two new records")

        await self._run(bus.consumer(group, {topic: second}), next_two)
        # Same key, so same partition and order: a redelivered "three" would come first.
        assert second.values == [b"four", b"five"]

        other = _Recorder()  # another group reads everything from the start
        await self._run(
            bus.consumer(f"{group}-other", {topic: other}),
            lambda: wait_for(lambda: len(other.handled) >= 5, "all five records in another group"),
        )
        assert other.values == [b"one", b"two", b"three", b"four", b"five"]

    async def test_transient_failures_are_retried_without_loss(self, bus: BusHarness, topic: str, group: str) -> None:
        await bus.create_topics([topic])

        def fail(record: Record, attempt: int) -> BaseException | None:
            return RuntimeError("database unavailable") if record.value == b"b" and attempt <= 2 else None

        recorder = _Recorder(fail)
        await self._publish(bus, topic, [(b"k", b"a"), (b"k", b"b"), (b"k", b"c")])
        await self._run(
            bus.consumer(group, {topic: recorder}),
            lambda: wait_for(lambda: len(recorder.handled) >= 3, "three handled records"),
        )
        assert recorder.values == [b"a", b"b", b"c"]  # "c" waited for "b"
        assert recorder.attempts == {b"a": 1, b"b": 3, b"c": 1}

    async def test_record_failing_at_stop_is_delivered_again(self, bus: BusHarness, topic: str, group: str) -> None:
        await bus.create_topics([topic])
        await self._publish(bus, topic, [(b"k", b"ok"), (b"k", b"stuck"), (b"k", b"after")])
        # A transient failure (the database is away): retried until the consumer stops, never dead-lettered.
        broken = _Recorder(lambda r, _: ConnectionRefusedError("still down") if r.value == b"stuck" else None)
        await self._run(
            bus.consumer(group, {topic: broken}),
            lambda: wait_for(lambda: broken.attempts.get(b"stuck", 0) >= 2, "retries of the failing record"),
        )
        assert broken.values == [b"ok"], broken.values

        healthy = _Recorder()
        await self._run(
            bus.consumer(group, {topic: healthy}),
            lambda: wait_for(lambda: len(healthy.handled) >= 2, "the records left unhandled"),
        )
        assert healthy.values == [b"stuck", b"after"]

    async def test_poison_record_goes_to_dlq_and_the_next_is_processed(
        self, bus: BusHarness, topic: str, group: str
    ) -> None:
        dlq = f"{topic}.dlq"
        await bus.create_topics([topic, dlq])

        def fail(record: Record, attempt: int) -> BaseException | None:
            return PoisonRecord("cannot decode") if record.value == b"garbage" else None

        recorder = _Recorder(fail)
        await self._publish(bus, topic, [(b"k1", b"good-1"), (b"k2", b"garbage"), (b"k1", b"good-2")])
        await self._run(
            bus.consumer(group, {topic: recorder}),
            lambda: wait_for(lambda: len(recorder.handled) >= 2, "the two good records"),
        )
        assert recorder.values == [b"good-1", b"good-2"]
        assert recorder.attempts[b"garbage"] == 1  # poison is not retried
        assert await bus.read_topic(dlq, 1, DELIVERY_TIMEOUT) == [(b"k2", b"garbage")]

    async def test_a_record_failing_the_same_way_is_dead_lettered_after_bounded_attempts(
        self, bus: BusHarness, topic: str, group: str
    ) -> None:
        dlq = f"{topic}.dlq"
        await bus.create_topics([topic, dlq])

        def fail(record: Record, attempt: int) -> BaseException | None:
            return ValueError("a NUL byte the database cannot store") if record.value == b"poison" else None

        recorder = _Recorder(fail)
        await self._publish(bus, topic, [(b"k1", b"poison"), (b"k2", b"good")])
        await self._run(
            bus.consumer(group, {topic: recorder}),
            lambda: wait_for(lambda: recorder.values == [b"good"], "the record after the poisonous one"),
        )
        assert 1 < recorder.attempts[b"poison"] <= MAX_DETERMINISTIC_ATTEMPTS
        assert await bus.read_topic(dlq, 1, DELIVERY_TIMEOUT) == [(b"k1", b"poison")]

    async def test_transient_failures_are_never_dead_lettered(self, bus: BusHarness, topic: str, group: str) -> None:
        await bus.create_topics([topic])
        outage = MAX_DETERMINISTIC_ATTEMPTS + 3

        def fail(record: Record, attempt: int) -> BaseException | None:
            return ConnectionResetError("database restarting") if attempt <= outage else None

        recorder = _Recorder(fail)
        await self._publish(bus, topic, [(b"k", b"waits")])
        await self._run(
            bus.consumer(group, {topic: recorder}),
            lambda: wait_for(lambda: recorder.values == [b"waits"], "the record after the outage"),
        )
        assert recorder.attempts[b"waits"] == outage + 1

    async def test_one_consumer_serves_several_topics(self, bus: BusHarness, topic: str, group: str) -> None:
        other_topic = f"{topic}-b"
        await bus.create_topics([topic, other_topic])
        first, second = _Recorder(), _Recorder()
        await self._publish(bus, topic, [(b"k", b"t1-a"), (b"k", b"t1-b")])
        await self._publish(bus, other_topic, [(b"k", b"t2-a")])
        await self._run(
            bus.consumer(group, {topic: first, other_topic: second}),
            lambda: wait_for(lambda: len(first.handled) >= 2 and len(second.handled) >= 1, "records of both topics"),
        )
        assert first.values == [b"t1-a", b"t1-b"]
        assert second.values == [b"t2-a"]
        assert {r.topic for r in second.handled} == {other_topic}

    async def test_a_batch_handler_gets_the_held_records_together_and_a_poison_one_alone_goes_to_the_dlq(
        self, bus: BusHarness, topic: str, group: str
    ) -> None:
        dlq = f"{topic}.dlq"
        await bus.create_topics([topic, dlq])

        def fail(record: Record, attempt: int) -> BaseException | None:
            return PoisonRecord("cannot decode") if record.value == b"garbage" else None

        recorder = _BatchRecorder(fail)
        good = [f"good-{i}".encode() for i in range(12)]
        # A backlog of one key (one partition) before the consumer starts: its worker holds it all.
        await self._publish(bus, topic, [(b"k", v) for v in good[:6]] + [(b"k", b"garbage")])
        await self._publish(bus, topic, [(b"k", v) for v in good[6:]])
        await self._run(
            bus.consumer(group, {topic: recorder}),
            lambda: wait_for(lambda: len(recorder.handled) >= 12, "the twelve good records"),
        )
        assert recorder.values == good  # each once, in order: the failed batch applied none
        assert recorder.attempts.get(b"garbage") == 1  # alone, once: poison is not retried
        assert max(recorder.batch_sizes) > 1, recorder.batch_sizes
        assert await bus.read_topic(dlq, 1, DELIVERY_TIMEOUT) == [(b"k", b"garbage")]
