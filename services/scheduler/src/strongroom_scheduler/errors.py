"""Errors of scheduler operations; ``grpc_api`` maps each to a gRPC status code."""

from __future__ import annotations


class SchedulerError(Exception):
    """Base class; the message is shown to the operator as is."""


class NotFound(SchedulerError):
    """The named instance or job does not exist (NOT_FOUND)."""


class InvalidArgument(SchedulerError):
    """The request is malformed (INVALID_ARGUMENT)."""


class FailedPrecondition(SchedulerError):
    """The request is valid but the current state does not allow it (FAILED_PRECONDITION)."""
