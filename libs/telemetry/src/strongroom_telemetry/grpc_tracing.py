"""Trace context across gRPC: a client span per call with ``traceparent`` in its metadata, and a
server span per call continuing it.

:class:`TracingServerInterceptor` is installed on every server by ``strongroom_platform.runtime``;
:func:`client_interceptors` on every channel the platform and the agent open. Health checks and
reflection are not traced (a probe every few seconds would drown the traces that matter).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from strongroom_telemetry.propagation import TRACEPARENT, context_from_metadata, traceparent_of

__all__ = ["TracingServerInterceptor", "client_interceptors", "untraced"]

_UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def untraced(method: str) -> bool:
    """Whether calls of ``method`` (``/package.Service/Method``) go without spans."""
    return method.startswith(_UNTRACED_PREFIXES)


def _attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:  # the stubs' classes are generic, grpc's own are not
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]

_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _end_status(span: trace.Span, context: grpc.aio.ServicerContext[Any, Any], failed: bool) -> None:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
            return
    if failed:
        span.set_status(Status(StatusCode.ERROR))


class TracingServerInterceptor(_ServerInterceptor):
    """A SERVER span around every call, child of the caller's ``traceparent`` when it sent one.

    The span is current while the servicer runs, so the spans, log lines and outbox events of the
    call belong to the caller's trace. It ends with the call's status code.
    """

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("strongroom.grpc", tracer_provider=provider)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or untraced(method):
            return handler
        for kind, factory in _FACTORIES.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                metadata = handler_call_details.invocation_metadata
                return factory(
                    self._wrap(behavior, method, metadata),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _wrap(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        tracer = self._tracer
        attributes = _attributes(method)

        def start() -> Any:
            return tracer.start_as_current_span(
                method.lstrip("/"),
                context=context_from_metadata(metadata),
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )

        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                with start() as span:
                    failed = True
                    try:
                        async for response in behavior(request, context):
                            yield response
                        failed = False
                    finally:
                        _end_status(span, context, failed)

            return stream

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with start() as span:
                failed = True
                try:
                    result = behavior(request, context)
                    response = await result if inspect.isawaitable(result) else result
                    failed = False
                    return response
                finally:
                    _end_status(span, context, failed)

        return call


class _ClientTracing:
    """A CLIENT span per call, ``traceparent`` added to the call's metadata; ends when the call does.

    grpc.aio files an interceptor under the first of the four kinds it is an instance of, so each
    kind gets an object of its own (the subclasses below).
    """

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self._tracer = trace.get_tracer("strongroom.grpc", tracer_provider=provider)
        self._finishing: set[asyncio.Task[None]] = set()

    def _start(self, details: grpc.aio.ClientCallDetails) -> tuple[trace.Span | None, grpc.aio.ClientCallDetails]:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        if untraced(method):
            return None, details
        span = self._tracer.start_span(method.lstrip("/"), kind=SpanKind.CLIENT, attributes=_attributes(method))
        traceparent = traceparent_of(trace.set_span_in_context(span))
        metadata = [(k, v) for k, v in (details.metadata or ()) if k != TRACEPARENT]
        if traceparent is not None:
            metadata.append((TRACEPARENT, traceparent))
        new_details = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )
        return span, new_details

    def _end_with(self, span: trace.Span | None, call: Any) -> Any:
        if span is None:
            return call

        def done(finished: Any) -> None:
            task = asyncio.get_running_loop().create_task(self._finish(span, finished))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

        call.add_done_callback(done)
        return call

    @staticmethod
    async def _finish(span: trace.Span, call: Any) -> None:
        try:
            code = await call.code()
        except Exception:  # the call object could not say; the span still ends
            code = None
        if isinstance(code, grpc.StatusCode):
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()


class _UnaryUnaryTracing(_ClientTracing, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        span, details = self._start(client_call_details)
        return self._end_with(span, await continuation(details, request))


class _UnaryStreamTracing(_ClientTracing, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        span, details = self._start(client_call_details)
        return self._end_with(span, await continuation(details, request))


class _StreamUnaryTracing(_ClientTracing, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        span, details = self._start(client_call_details)
        return self._end_with(span, await continuation(details, request_iterator))


class _StreamStreamTracing(_ClientTracing, _StreamStream):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        span, details = self._start(client_call_details)
        return self._end_with(span, await continuation(details, request_iterator))


def client_interceptors(provider: trace.TracerProvider | None = None) -> list[Any]:
    """The interceptors a channel needs to carry trace context (pass as ``interceptors=``)."""
    return [
        _UnaryUnaryTracing(provider),
        _UnaryStreamTracing(provider),
        _StreamUnaryTracing(provider),
        _StreamStreamTracing(provider),
    ]
