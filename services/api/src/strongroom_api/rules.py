"""The REST routes, read from the ``google.api.http`` options of the generated descriptors (ADR 0052).

The protos are the one source of truth: a route is an operator RPC plus the HTTP method, path
template and body selector its proto declares. Nothing here names a method; adding an RPC with a
rule adds its route (and its OpenAPI operation), and ``tests`` fail on an operator RPC without one.

Path templates follow ``google/api/http.proto`` restricted to what the protos use: literal
segments, single-segment variables ``{field}`` naming a top-level string field of the request, and
a final ``:verb``.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from strongroom.alerts.v1 import alerts_pb2
from strongroom.audit.v1 import audit_pb2
from strongroom.auth.v1 import auth_pb2
from strongroom.billing.v1 import billing_pb2
from strongroom.catalog.v1 import catalog_pb2
from strongroom.gateway.v1 import verify_pb2
from strongroom.restore.v1 import restore_pb2
from strongroom.scheduler.v1 import scheduler_pb2

# The operator-facing services and the process that serves each (its public gRPC listener). The
# agent-facing and internal services (AgentGatewayService, ManifestService, AgentAdminService,
# VaultService) have no REST face.
OPERATOR_SERVICES: Mapping[str, tuple[ServiceDescriptor, str]] = MappingProxyType(
    {
        "strongroom.scheduler.v1.SchedulerService": (
            scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
            "scheduler",
        ),
        "strongroom.auth.v1.TokenService": (auth_pb2.DESCRIPTOR.services_by_name["TokenService"], "scheduler"),
        "strongroom.audit.v1.AuditService": (audit_pb2.DESCRIPTOR.services_by_name["AuditService"], "scheduler"),
        "strongroom.alerts.v1.AlertService": (alerts_pb2.DESCRIPTOR.services_by_name["AlertService"], "scheduler"),
        "strongroom.catalog.v1.CatalogService": (catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"], "catalog"),
        "strongroom.restore.v1.RestoreService": (restore_pb2.DESCRIPTOR.services_by_name["RestoreService"], "restore"),
        "strongroom.billing.v1.BillingService": (billing_pb2.DESCRIPTOR.services_by_name["BillingService"], "billing"),
        "strongroom.gateway.v1.VerifyService": (verify_pb2.DESCRIPTOR.services_by_name["VerifyService"], "gateway"),
    }
)
BACKENDS: tuple[str, ...] = ("scheduler", "catalog", "restore", "billing", "gateway")
HTTP_METHODS: tuple[str, ...] = ("get", "post", "patch", "put", "delete")

_LITERAL = re.compile(r"^[A-Za-z0-9._~-]+$")
_VARIABLE = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")
_VERB = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


class RuleError(ValueError):
    """A ``google.api.http`` rule this edge cannot serve (found at start-up, never per request)."""


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """``/v1/instances/{instance_id}:pause`` as segments: a literal, or a variable's field name."""

    text: str
    segments: tuple[tuple[bool, str], ...]  # (is_variable, literal text or field name)
    verb: str

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(name for is_variable, name in self.segments if is_variable)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The variables of ``raw_path`` (percent-encoded, as sent), or None when it does not match.

        A variable matches one non-empty segment; its value is percent-decoded after matching, so
        an id may contain any character, ``/`` and ``:`` included, when the client encodes it.
        """
        path = raw_path
        if self.verb:
            suffix = ":" + self.verb
            if not path.endswith(suffix):
                return None
            path = path[: -len(suffix)]
        if not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        # A raw ':' in the last segment is a verb; an id containing ':' arrives encoded (%3A).
        if len(parts) != len(self.segments) or ":" in parts[-1]:
            return None
        values: dict[str, str] = {}
        for part, (is_variable, text) in zip(parts, self.segments, strict=True):
            if is_variable:
                if not part:
                    return None
                values[text] = urllib.parse.unquote(part)
            elif part != text:
                return None
        return values


def parse_template(text: str) -> PathTemplate:
    """Parse a path template; RuleError on anything outside the supported subset."""
    if not text.startswith("/") or text.endswith("/"):
        raise RuleError(f"path template {text!r} must start with '/' and not end with one")
    path, verb = text, ""
    if ":" in text.rsplit("/", 1)[-1]:
        path, verb = text.rsplit(":", 1)
        if not _VERB.match(verb):
            raise RuleError(f"path template {text!r}: the verb {verb!r} must be letters and digits")
    segments: list[tuple[bool, str]] = []
    for part in path[1:].split("/"):
        variable = _VARIABLE.match(part)
        if variable:
            segments.append((True, variable.group(1)))
        elif _LITERAL.match(part):
            segments.append((False, part))
        else:
            raise RuleError(f"path template {text!r}: segment {part!r} is neither a literal nor {{field}}")
    return PathTemplate(text=text, segments=tuple(segments), verb=verb)


@dataclass(frozen=True, slots=True)
class Route:
    """One operator RPC reachable over HTTP."""

    service: str  # full service name, e.g. strongroom.scheduler.v1.SchedulerService
    method: MethodDescriptor
    backend: str  # the process serving it: scheduler, catalog, restore, billing, gateway
    http_method: str  # lower case: get, post, patch, put, delete
    template: PathTemplate
    body: str  # "" (no body), "*" (the whole request) or a top-level field name

    @property
    def grpc_path(self) -> str:
        """``/package.Service/Method``, the gRPC method path (and the authorization table's key)."""
        return f"/{self.service}/{self.method.name}"

    @property
    def operation_id(self) -> str:
        return f"{self.service.rsplit('.', 1)[-1]}_{self.method.name}"


def http_rule(method: MethodDescriptor) -> http_pb2.HttpRule | None:
    """The method's ``google.api.http`` option, or None when it has none."""
    # googleapis' stub types the extension as a plain FieldDescriptor, which types-protobuf refuses.
    options: Any = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule = options.Extensions[annotations_pb2.http]
    assert isinstance(rule, http_pb2.HttpRule)
    return rule


def _route(service: str, method: MethodDescriptor, backend: str, rule: http_pb2.HttpRule) -> Route:
    pattern = rule.WhichOneof("pattern")
    if pattern not in HTTP_METHODS:
        raise RuleError(f"{service}/{method.name}: HTTP pattern {pattern!r} is not supported")
    if rule.additional_bindings or rule.response_body:
        raise RuleError(f"{service}/{method.name}: additional_bindings and response_body are not supported")
    if method.client_streaming or method.server_streaming:
        raise RuleError(f"{service}/{method.name}: streaming methods have no REST route")
    template = parse_template(getattr(rule, pattern))
    fields = method.input_type.fields_by_name
    for name in template.variables:
        field = fields.get(name)
        if field is None or field.type != FieldDescriptor.TYPE_STRING or _repeated(field):
            raise RuleError(f"{service}/{method.name}: path variable {name!r} is not a string field of the request")
    if rule.body not in ("", "*"):
        field = fields.get(rule.body)
        if field is None or field.message_type is None or _repeated(field):
            raise RuleError(f"{service}/{method.name}: body {rule.body!r} is not a message field of the request")
    if pattern in ("get", "delete") and rule.body:
        raise RuleError(f"{service}/{method.name}: {pattern.upper()} takes no body")
    return Route(service, method, backend, pattern, template, rule.body)


def _repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def load_routes(services: Mapping[str, tuple[ServiceDescriptor, str]] = OPERATOR_SERVICES) -> tuple[Route, ...]:
    """Every route of ``services``; RuleError when an RPC lacks a rule or has one this edge cannot
    serve, or two routes claim the same method and path."""
    routes: list[Route] = []
    for name, (descriptor, backend) in services.items():
        for method in descriptor.methods:
            rule = http_rule(method)
            if rule is None:
                raise RuleError(f"{name}/{method.name} has no google.api.http rule: every operator RPC needs one")
            routes.append(_route(name, method, backend, rule))
    _check_unique(routes)
    return tuple(routes)


def _check_unique(routes: Iterable[Route]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for route in routes:
        shape = "/".join("{}" if is_variable else text for is_variable, text in route.template.segments)
        key = (route.http_method, f"{shape}:{route.template.verb}")
        if key in seen:
            verb = route.http_method.upper()
            raise RuleError(f"{route.grpc_path} and {seen[key]} share {verb} {route.template.text}")
        seen[key] = route.grpc_path


@dataclass(frozen=True, slots=True)
class Resolved:
    route: Route
    variables: dict[str, str]


class Router:
    """Finds the route of a request; literal segments win over variables (``/v1/billing/plans``
    before a hypothetical ``/v1/billing/{x}``), which the ordering by literal count gives."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = sorted(
            routes, key=lambda r: (-sum(not v for v, _ in r.template.segments), -len(r.template.verb))
        )

    def resolve(self, http_method: str, raw_path: str) -> Resolved | None | tuple[str, ...]:
        """The matching route, or the HTTP methods the path allows (405), or None (404)."""
        allowed: list[str] = []
        for route in self._routes:
            variables = route.template.match(raw_path)
            if variables is None:
                continue
            if route.http_method == http_method.lower():
                return Resolved(route, variables)
            allowed.append(route.http_method.upper())
        return tuple(sorted(set(allowed))) if allowed else None
