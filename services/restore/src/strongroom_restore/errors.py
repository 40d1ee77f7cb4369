"""Failures the restore service's operations report: the platform's family (ADR 0021) and one of its own."""

from __future__ import annotations

from strongroom_platform.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError, Unavailable

__all__ = ["CatalogUnavailable", "FailedPrecondition", "InvalidArgument", "NotFound", "ServiceError"]


class CatalogUnavailable(Unavailable):
    """The catalog could not be asked about the point (UNAVAILABLE; the caller may retry)."""
