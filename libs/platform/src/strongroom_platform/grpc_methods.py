"""A service's generated gRPC registration with a per-method table of response serializers.

``register_service(add_to_server, servicer, serializers)`` is the ``register`` callable a
composition root hands ``lifecycle.serve`` / ``serving.serve_listeners``: it runs the generated
``add_<Service>Servicer_to_server`` against a recorder, gives each method named in ``serializers``
that response serializer (every other method keeps the generated one, the message's own
``SerializeToString``), and registers the handlers on the server as the generated code does.

``as_sent`` is the serializer of a method whose servicer yields messages it serialized itself
(the gateway's ``ReadChunks``, ADR 0069): bytes go out unchanged, a message is serialized.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import grpc

__all__ = ["Serializer", "as_sent", "register_service"]

Serializer = Callable[[Any], bytes]
_S = TypeVar("_S")


def as_sent(message: object) -> bytes:
    """Bytes as they are (a message its servicer serialized already); any other message by its own serializer."""
    if isinstance(message, bytes):
        return message
    return cast(bytes, cast(Any, message).SerializeToString())


def register_service(
    add_to_server: Callable[[_S, Any], None], servicer: _S, serializers: Mapping[str, Serializer]
) -> Callable[[grpc.aio.Server], None]:
    """The registration of ``servicer`` through the generated ``add_to_server``, the methods named in
    ``serializers`` (bare method names, e.g. ``"ReadChunks"``) answering through theirs.

    Raises ValueError when registering if a name in ``serializers`` is not a method of the service
    (a renamed method must not silently fall back to the message's serializer).
    """

    def add(server: grpc.aio.Server) -> None:
        recorder = _HandlerRecorder()
        add_to_server(servicer, recorder)
        if recorder.service is None:
            raise ValueError("the generated registration registered no service")
        unknown = sorted(set(serializers) - set(recorder.handlers))
        if unknown:
            raise ValueError(f"{recorder.service} has no method {', '.join(unknown)} to give a serializer")
        handlers = {
            name: handler if name not in serializers else handler._replace(response_serializer=serializers[name])
            for name, handler in recorder.handlers.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(recorder.service, handlers),))
        # As the generated code does (grpcio's own method; its type stubs predate it).
        cast(Any, server).add_registered_method_handlers(recorder.service, handlers)

    return add


class _HandlerRecorder:
    """Stands in for the server while the generated code runs: takes its method handlers."""

    def __init__(self) -> None:
        self.service: str | None = None
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The generic handler wraps the same method handlers as the registered ones (taken below)."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        if self.service is not None:
            raise ValueError(f"one service per registration: {self.service} and {service}")
        self.service, self.handlers = service, dict(handlers)
