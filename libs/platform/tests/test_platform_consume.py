"""The consume step: decode, call the handler, poison what can never apply."""

from __future__ import annotations

import pytest
from strongroom.events.v1 import events_pb2
from strongroom_platform.clock import utc
from strongroom_platform.consume import consume
from strongroom_platform.errors import InvalidArgument, Unavailable
from strongroom_platform.eventbus import PoisonRecord, Record
from strongroom_platform.events import new_meta


def _record(value: bytes) -> Record:
    return Record(topic="instance-activated", partition=0, offset=7, key=b"i1", value=value)


EVENT = events_pb2.InstanceActivated(meta=new_meta("scheduler", utc(2026, 1, 1)), instance_id="i1")


async def test_the_handler_gets_the_decoded_event() -> None:
    seen: list[events_pb2.InstanceActivated] = []

    async def handle(event: events_pb2.InstanceActivated) -> None:
        seen.append(event)

    await consume(events_pb2.InstanceActivated, handle)(_record(EVENT.SerializeToString()))
    assert seen == [EVENT]


async def test_bad_bytes_are_poison_and_never_reach_the_handler() -> None:
    async def handle(event: events_pb2.InstanceActivated) -> None:
        raise AssertionError("must not be called")

    step = consume(events_pb2.InstanceActivated, handle)
    with pytest.raises(PoisonRecord, match="cannot decode"):
        await step(_record(b"\x01garbage"))
    with pytest.raises(PoisonRecord, match="without meta.event_id"):
        await step(_record(events_pb2.InstanceActivated(instance_id="i1").SerializeToString()))


async def test_an_invalid_event_is_poison_and_other_failures_are_retried() -> None:
    async def invalid(event: events_pb2.InstanceActivated) -> None:
        raise InvalidArgument("instance-activated without account_id")

    async def down(event: events_pb2.InstanceActivated) -> None:
        raise Unavailable("database down")

    with pytest.raises(PoisonRecord, match="instance-activated@7: instance-activated without account_id"):
        await consume(events_pb2.InstanceActivated, invalid)(_record(EVENT.SerializeToString()))
    with pytest.raises(Unavailable):  # not PoisonRecord: the consumer retries it
        await consume(events_pb2.InstanceActivated, down)(_record(EVENT.SerializeToString()))
