"""Failures billing reports: the platform's family (each carries its gRPC status code, ADR 0021)."""

from __future__ import annotations

from strongroom_platform.errors import InvalidArgument, NotFound, PermissionDenied, ServiceError

__all__ = ["InvalidArgument", "NotFound", "PermissionDenied", "ServiceError"]
