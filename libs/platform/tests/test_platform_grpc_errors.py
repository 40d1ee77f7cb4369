"""One error mapping for every gRPC server: ``strongroom_platform.grpc_errors``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from strongroom_platform import errors
from strongroom_platform.grpc_errors import DATABASE_UNAVAILABLE, INTERNAL_ERROR, ServerInterceptor, status_for
from strongroom_platform.runtime import start_grpc_server

Context = grpc.aio.ServicerContext[Any, Any]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.ServiceError, grpc.StatusCode.INTERNAL),
    ],
)
def test_a_service_error_keeps_its_message_under_its_code(error: type[errors.ServiceError], code: Any) -> None:
    assert status_for(error("job j1 is still RUNNING; wait for it")) == (code, "job j1 is still RUNNING; wait for it")


def test_a_service_subclass_inherits_the_code_of_its_family() -> None:
    class CatalogUnavailable(errors.Unavailable):
        pass

    assert status_for(CatalogUnavailable("catalog down"))[0] == grpc.StatusCode.UNAVAILABLE


def test_a_nul_character_in_text_is_the_callers_error() -> None:
    refused = asyncpg.exceptions.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00')
    code, message = status_for(refused)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NUL" in message and "UTF8" not in message


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.PostgresConnectionError("connection to db.internal:5432 lost"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_the_database_down_is_unavailable_without_the_driver_text(exc: Exception) -> None:
    assert status_for(exc) == (grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UndefinedTableError('relation "secret_table" does not exist'),
        KeyError("api-key-123"),
        RuntimeError("boom"),
        FileNotFoundError(2, "No such file", "/srv/data"),
    ],
)
def test_anything_else_is_internal_with_a_generic_message(exc: Exception) -> None:
    assert status_for(exc) == (grpc.StatusCode.INTERNAL, INTERNAL_ERROR)


# A real server: the interceptor installed by start_grpc_server maps what servicers raise.


async def _unary(request: bytes, context: Context) -> bytes:
    if request == b"missing":
        raise errors.NotFound("point p1 does not exist")
    if request == b"abort":
        await context.abort(grpc.StatusCode.ABORTED, "session replaced")
    if request == b"driver":
        raise asyncpg.exceptions.UndefinedTableError('relation "secret_table" does not exist')
    if request == b"db-down":
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    return b"ok:" + request


async def _stream(request: bytes, context: Context) -> AsyncIterator[bytes]:
    yield b"first"
    raise RuntimeError(f"secret {request.decode()}")


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("probe.Probe", handlers),))


class _RejectAll(ServerInterceptor):
    """An authentication-like interceptor that refuses every call by raising a ServiceError."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        async def refuse(request: bytes, context: Context) -> bytes:
            raise errors.Unauthenticated("missing credential")

        return grpc.unary_unary_rpc_method_handler(refuse)


async def _call(server: grpc.aio.Server, port: int, method: str, request: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(f"/probe.Probe/{method}")(request)
    return info.value


async def test_the_server_maps_unary_failures_and_leaves_aborts_alone(caplog: pytest.LogCaptureFixture) -> None:
    server, port = await start_grpc_server("127.0.0.1:0", _register)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary("/probe.Probe/Unary")(b"x") == b"ok:x"
        missing = await _call(server, port, "Unary", b"missing")
        assert (missing.code(), missing.details()) == (grpc.StatusCode.NOT_FOUND, "point p1 does not exist")
        aborted = await _call(server, port, "Unary", b"abort")
        assert (aborted.code(), aborted.details()) == (grpc.StatusCode.ABORTED, "session replaced")
        down = await _call(server, port, "Unary", b"db-down")
        assert (down.code(), down.details()) == (grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE)
        with caplog.at_level(logging.ERROR, logger="strongroom_platform.grpc_errors"):
            driver = await _call(server, port, "Unary", b"driver")
        assert (driver.code(), driver.details()) == (grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
        assert "secret_table" in caplog.text  # the operator sees the cause in the server's log
    finally:
        await server.stop(None)


async def test_the_server_maps_a_failure_in_the_middle_of_a_stream(caplog: pytest.LogCaptureFixture) -> None:
    server, port = await start_grpc_server("127.0.0.1:0", _register)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/probe.Probe/Stream")(b"token-42")
            received = []
            with (
                caplog.at_level(logging.ERROR, logger="strongroom_platform.grpc_errors"),
                pytest.raises(grpc.aio.AioRpcError) as info,
            ):
                async for message in call:
                    received.append(message)
        assert received == [b"first"]
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
        assert "token-42" in caplog.text and "Traceback" in caplog.text
    finally:
        await server.stop(None)


async def test_an_added_interceptor_runs_inside_the_error_mapping() -> None:
    server, port = await start_grpc_server("127.0.0.1:0", _register, interceptors=[_RejectAll()])
    try:
        refused = await _call(server, port, "Unary", b"x")
        assert (refused.code(), refused.details()) == (grpc.StatusCode.UNAUTHENTICATED, "missing credential")
    finally:
        await server.stop(None)
