"""The one error body of the REST edge, and how gRPC status codes become HTTP statuses.

Every failure, the edge's own (bad JSON, unknown path) and the backends' (a gRPC status), leaves
as ``{"error": {"code": "<gRPC code name>", "message": "..."}}`` with the HTTP status of
``google/rpc/code.proto``'s mapping; nothing else ever reaches the client (a raw exception becomes
INTERNAL with a generic message, logged with its traceback).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import grpc

# The HTTP mapping documented in google/rpc/code.proto (and used by grpc-gateway and ESP).
HTTP_STATUS: Mapping[grpc.StatusCode, int] = MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DATA_LOSS: 500,
    }
)


class ApiError(Exception):
    """A failure with its gRPC code and a message for the caller; ``http_status`` overrides the
    code's mapping where HTTP has a more precise status (405, 413, 415)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status if http_status is not None else HTTP_STATUS.get(code, 500)
        self.headers: Mapping[str, str] = headers or {}


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def error_body(code: grpc.StatusCode, message: str) -> dict[str, Any]:
    """``{"error": {"code": "NOT_FOUND", "message": "..."}}``."""
    return {"error": {"code": code.name, "message": message}}


def from_rpc_error(error: grpc.aio.AioRpcError) -> ApiError:
    """A backend's status as the edge's error: same code, same message (the services write their
    messages for the caller, ADR 0021); a transport failure without details reads as unavailable."""
    code = error.code()
    details = error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        details = "the service is unavailable; try again shortly"
    elif code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS) and not details:
        details = "internal error"
    return ApiError(code, details or code.name.lower().replace("_", " "))
