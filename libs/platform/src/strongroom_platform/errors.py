"""The errors a service operation reports to its caller, each carrying its gRPC status code.

One family for every service (ADR 0021): a handler raises ``NotFound("backup job j1 does not
exist")`` and the server's error interceptor (``grpc_errors``) turns it into ``NOT_FOUND`` with
that message. A service's ``errors.py`` re-exports the classes it uses and adds its own
subclasses where a failure needs a name of its own (the restore service's ``CatalogUnavailable``).

The message of a :class:`ServiceError` is shown to the caller as is: it says what went wrong and
what to do, and never carries a secret or a driver's text. Anything that is not a
``ServiceError`` reaches the caller only as a generic ``INTERNAL`` (or ``UNAVAILABLE`` when the
database is down), never with its own message.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = [
    "Aborted",
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceError",
    "Unauthenticated",
    "Unavailable",
]


class ServiceError(Exception):
    """Base class: a failure the caller is told about, with ``code`` as its gRPC status.

    Raise a subclass; the base's code is ``INTERNAL`` so that a bare ``ServiceError`` is never
    mistaken for the caller's fault.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    """The request (or event) is malformed; sending it again cannot succeed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """The named thing does not exist (for this caller)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """The thing the request would create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    """The request is valid but the current state does not allow it; the message says what would."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    """What the request was based on changed meanwhile (a stale etag); read again, then retry."""

    code = grpc.StatusCode.ABORTED


class Unauthenticated(ServiceError):
    """Missing, malformed, unknown, revoked or wrong credential."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """Authenticated, but the resource belongs to someone else."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServiceError):
    """A quota or a bounded resource is used up; retry later or with less."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """Something the operation depends on cannot be reached now; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE
