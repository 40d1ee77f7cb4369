"""Failures the restore service's operations report; ``grpc_api`` maps each to a status code."""

from __future__ import annotations


class RestoreError(Exception):
    """Base class; the message is meant for the API caller."""


class InvalidArgument(RestoreError):
    """The request is malformed (INVALID_ARGUMENT)."""


class NotFound(RestoreError):
    """The restore job or backup point does not exist (NOT_FOUND)."""


class FailedPrecondition(RestoreError):
    """The job's state does not allow the operation (FAILED_PRECONDITION)."""


class CatalogUnavailable(RestoreError):
    """The catalog could not be asked about the point (UNAVAILABLE; the caller may retry)."""
