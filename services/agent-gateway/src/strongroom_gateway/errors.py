"""Domain errors of the gateway; ``grpc_api`` maps each to its gRPC status code."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class; the message is shown to the caller, so it never contains secrets."""


class InvalidArgument(GatewayError):
    """The request is malformed or its data does not verify."""


class NotFound(GatewayError):
    """The named job, point or chunk does not exist for this agent."""


class FailedPrecondition(GatewayError):
    """The request is well-formed but the system is not in a state that allows it."""


class Unauthenticated(GatewayError):
    """Missing, malformed, unknown, revoked or wrong credential or enrollment token."""


class PermissionDenied(GatewayError):
    """Authenticated, but the resource belongs to another instance or job."""
