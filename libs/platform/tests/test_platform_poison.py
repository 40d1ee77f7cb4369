"""Which failures a consumer waits out and which it dead-letters (ADR 0026)."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from strongroom.events.v1 import events_pb2
from strongroom_platform.errors import InvalidArgument, Unavailable
from strongroom_platform.eventbus import Record
from strongroom_platform.poison import describe, is_transient, plan_dead_letter
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
