"""Which failures a consumer waits out and which it dead-letters (ADR 0026)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import grpc
import pytest
from strongroom.events.v1 import events_pb2
from strongroom_platform.errors import InvalidArgument, Unavailable
from strongroom_platform.eventbus import Record
from strongroom_platform.poison import RetryPolicy, describe, is_transient, plan_dead_letter, run_batch
from strongroom_platform.testing import FakeClock


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="peer")


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError("refused"),
        TimeoutError(),
        asyncpg.exceptions.CannotConnectNowError("starting up"),
        asyncpg.exceptions.AdminShutdownError("shutdown"),
        asyncpg.exceptions.TooManyConnectionsError("full"),
        asyncpg.exceptions.InterfaceError("pool is closing"),
        Unavailable("the catalog is unavailable; retry"),
        _rpc_error(grpc.StatusCode.UNAVAILABLE),
        _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_outages_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        ValueError("bad"),
        KeyError("missing"),
        InvalidArgument("never applies"),
        _rpc_error(grpc.StatusCode.INVALID_ARGUMENT),
        _rpc_error(grpc.StatusCode.INTERNAL),
    ],
)
def test_everything_else_is_deterministic(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_a_wrapped_outage_stays_an_outage() -> None:
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as inner:
            raise RuntimeError("indexing failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_reasons_carry_no_nul_and_are_bounded() -> None:
    text = describe(ValueError("a\x00b" + "x" * 10_000))
    assert text.startswith("ValueError: a\\x00b") and "\x00" not in text
    assert len(text.encode()) <= 4096


def test_the_dead_letter_plan_names_the_registered_dlq_and_the_alert() -> None:
    record = Record("point-created", 0, 41, b"i-1", b"\x00bytes")
    plan = plan_dead_letter(source="catalog", record=record, reason="failed 5 times", attempts=5, clock=FakeClock())
    assert (plan.topic, plan.alert_key) == ("point-created.dlq", b"point-created")
    alert = events_pb2.AlertRaised.FromString(plan.alert)
    assert (alert.kind, alert.source, alert.offset, alert.attempts) == (
        events_pb2.ALERT_KIND_POISON_RECORD,
        "catalog",
        41,
        5,
    )
    assert alert.record_key == b"i-1" and alert.meta.event_id


class _AllOrNothing:
    """A batch handler whose batch fails when any record is b"bad" (a rolled-back transaction)."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self.batches: list[int] = []

    async def __call__(self, record: Record) -> None:
        if record.value == b"bad":
            raise ConnectionResetError("the database went away")  # transient: retried until stopped
        self.applied.append(record.value)

    async def handle_batch(self, records: Sequence[Record]) -> None:
        self.batches.append(len(records))
        if any(r.value == b"bad" for r in records):
            raise ConnectionResetError("the database went away")
        self.applied.extend(r.value for r in records)


def _batch(*values: bytes) -> list[Record]:
    return [Record("t", 0, offset, b"k", value) for offset, value in enumerate(values)]


async def _never(record: Record, reason: str, attempts: int) -> None:
    raise AssertionError("nothing here is dead-lettered")


async def test_a_batch_applies_at_once_and_a_failed_one_runs_record_by_record_up_to_a_stop() -> None:
    handler = _AllOrNothing()
    policy = RetryPolicy(initial=0.001, maximum=0.001)

    async def go_on(_seconds: float) -> bool:
        return True

    assert await run_batch(handler, _batch(b"a", b"b"), policy=policy, dead_letter=_never, pause=go_on) == 2
    assert handler.batches == [2] and handler.applied == [b"a", b"b"]

    pauses = 0

    async def stop_after_three(_seconds: float) -> bool:
        nonlocal pauses
        pauses += 1
        return pauses < 3  # the consumer stops while "bad" is still being retried

    done = await run_batch(
        handler, _batch(b"c", b"bad", b"d"), policy=policy, dead_letter=_never, pause=stop_after_three
    )
    assert done == 1  # "c" is handled and may be acknowledged; "bad" and "d" are delivered again
    assert handler.batches == [2, 3] and handler.applied == [b"a", b"b", b"c"]
