"""Errors of the gateway: the platform's family (each carries its gRPC status code, ADR 0021).

Messages are shown to the caller, so they never contain secrets.
"""

from __future__ import annotations

from strongroom_platform.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unauthenticated,
)

__all__ = ["FailedPrecondition", "InvalidArgument", "NotFound", "PermissionDenied", "ServiceError", "Unauthenticated"]
