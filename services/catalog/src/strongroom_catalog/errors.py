"""Failures the catalog's operations report to callers; ``grpc_api`` maps each to a status code."""

from __future__ import annotations


class CatalogError(Exception):
    """Base class; the message is meant for the API caller."""


class InvalidArgument(CatalogError):
    """The request is malformed (INVALID_ARGUMENT)."""


class NotFound(CatalogError):
    """The point, version or directory does not exist (NOT_FOUND)."""


class FailedPrecondition(CatalogError):
    """The request is valid but the state does not allow it yet (FAILED_PRECONDITION)."""
