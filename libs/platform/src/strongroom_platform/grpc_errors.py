"""One mapping from exceptions to gRPC status, installed on every service's server.

The shape of httpx's ``map_exceptions``: the most specific status a failure allows, decided in
one place (ADR 0021).

- :class:`~strongroom_platform.errors.ServiceError` → its class's ``code`` and its message;
- a NUL character in a text value (PostgreSQL refuses it) → ``INVALID_ARGUMENT``;
- the metadata database unreachable (:func:`~strongroom_platform.outages.database_down`: asyncpg
  connection errors, a refused or reset socket, anywhere in the cause chain) → ``UNAVAILABLE``,
  "the metadata database is unavailable; retry";
- anything else → ``INTERNAL`` with a generic message; the traceback is logged here, and the
  exception's own text (a driver's message may name tables, hosts or values) never reaches the caller.

:class:`ErrorMappingInterceptor` applies the mapping to every method of a server, unary and
streaming alike; :func:`runtime.start_grpc_server` installs it. :func:`map_errors` is the same
mapping as an ``async with`` block, for code that serves calls outside a server built there.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc

from strongroom_platform.errors import ServiceError
from strongroom_platform.outages import database_down

__all__ = [
    "DATABASE_UNAVAILABLE",
    "INTERNAL_ERROR",
    "ErrorMappingInterceptor",
    "ServerInterceptor",
    "map_errors",
    "status_for",
]

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE = "the metadata database is unavailable; retry"
INTERNAL_ERROR = "internal error; the server logged the details"
NUL_IN_TEXT = "a text field contains a NUL character (\\0), which no Strongroom name, id or path may hold"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and the caller-facing message for a call that raised ``exc``."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc)
    if database_down(exc):
        return grpc.StatusCode.UNAVAILABLE, DATABASE_UNAVAILABLE
    if isinstance(exc, asyncpg.exceptions.CharacterNotInRepertoireError):
        # SQLSTATE 22021: protobuf strings are valid UTF-8, so the one byte PostgreSQL text refuses
        # is NUL; found by schemathesis through the REST edge (ADR 0052) on an id in a query.
        return grpc.StatusCode.INVALID_ARGUMENT, NUL_IN_TEXT
    return grpc.StatusCode.INTERNAL, INTERNAL_ERROR


@asynccontextmanager
async def map_errors(context: grpc.aio.ServicerContext[Any, Any], method: str = "") -> AsyncIterator[None]:
    """End the call with :func:`status_for` of an exception raised in the block.

    ``context.abort`` (already a status) and cancellation pass through unchanged.
    """
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        code, message = status_for(exc)
        if code is grpc.StatusCode.INTERNAL and not isinstance(exc, ServiceError):
            log.exception("%s failed", method or "call")
        elif code is grpc.StatusCode.UNAVAILABLE and not isinstance(exc, ServiceError):
            log.warning("%s: database unavailable: %r", method or "call", exc)
        await context.abort(code, message)


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


def _wrap(behavior: Behavior, method: str) -> Behavior:
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with map_errors(context, method):
                async for response in behavior(request, context):
                    yield response

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with map_errors(context, method):
            result = behavior(request, context)
            # grpc.aio also serves plain (non-async) methods; their result is the response itself.
            return await result if inspect.isawaitable(result) else result

    return call


_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # the stubs' class is generic, grpc's own is not
    ServerInterceptor = grpc.aio.ServerInterceptor


class ErrorMappingInterceptor(ServerInterceptor):
    """Applies :func:`map_errors` to every method of the server it is installed on."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return handler
        for kind, factory in _FACTORIES.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return factory(
                    _wrap(behavior, handler_call_details.method),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
