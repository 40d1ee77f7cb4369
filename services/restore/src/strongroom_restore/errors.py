"""Failures the restore service's operations report: the platform's family (ADR 0021) and its own."""

from __future__ import annotations

from strongroom_platform.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
    Unavailable,
)

__all__ = [
    "CatalogUnavailable",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "SchedulerUnavailable",
    "ServiceError",
]


class CatalogUnavailable(Unavailable):
    """The catalog could not be asked about the point (UNAVAILABLE; the caller may retry)."""


class SchedulerUnavailable(Unavailable):
    """The scheduler could not be asked about the target instance (UNAVAILABLE; the caller may retry)."""
