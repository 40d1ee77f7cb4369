"""The OpenAPI 3.1 document of the REST edge, generated from the same descriptors it routes by.

Paths and operations come from the ``google.api.http`` rules (``rules.load_routes``), schemas from
the request and response message types (proto3 JSON mapping: 64-bit integers as strings, enums by
name, timestamps as RFC 3339), and each operation's summary and required role from the
authorization table (``strongroom_platform.auth.POLICY``). ``make openapi`` writes it to
``docs/api/openapi.yaml`` (``python -m strongroom_api.openapi <file>``); a test fails when the
committed file differs. The running edge serves the same document at ``/openapi.yaml``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from strongroom_platform.auth import POLICY
from strongroom_platform.auth.principal import Permission

from strongroom_api import idempotency, preconditions
from strongroom_api.rules import Route, load_routes

TITLE = "Strongroom operator API"
VERSION = "v1"
ERROR = "Error"
_ROLE = {Permission.READ: "viewer", Permission.OPERATE: "operator", Permission.ADMIN: "admin"}
_F = FieldDescriptor
_INT32 = {_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32}
_UINT32 = {_F.TYPE_UINT32, _F.TYPE_FIXED32}
_INT64 = {_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64}
_UINT64 = {_F.TYPE_UINT64, _F.TYPE_FIXED64}
# Well-known types have their own JSON forms (proto3 JSON mapping).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.Empty": {"type": "object"},
}


def is_required(field: FieldDescriptor) -> bool:
    """The field carries ``(google.api.field_behavior) = REQUIRED``: the service refuses a request without it."""
    options: Any = field.GetOptions()  # googleapis' stub types the extension loosely (see rules.http_rule)
    return field_behavior_pb2.REQUIRED in options.Extensions[field_behavior_pb2.field_behavior]


def schema_name(full_name: str) -> str:
    """``strongroom.scheduler.v1.Instance`` → ``scheduler.v1.Instance``."""
    return full_name.removeprefix("strongroom.")


def _ref(full_name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{schema_name(full_name)}"}


class _Schemas:
    """Collects the component schemas reachable from the routes' messages."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = schema_name(descriptor.full_name)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder first: messages may refer to themselves
            self.schemas[name] = self.object(descriptor)
        return _ref(descriptor.full_name)

    def object(self, descriptor: Descriptor, without: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The object schema of ``descriptor``'s fields but ``without`` (those a path carries)."""
        fields = [field for field in descriptor.fields if field.name not in without]
        properties = {field.name: self.field(field) for field in fields}
        for field in fields:
            if is_required(field) and field.type == _F.TYPE_STRING:
                properties[field.name] = {**properties[field.name], "minLength": 1}
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        required = [field.name for field in fields if is_required(field)]
        if required:
            schema["required"] = required
        return schema

    def enum(self, descriptor: EnumDescriptor) -> dict[str, Any]:
        name = schema_name(descriptor.full_name)
        if name not in self.schemas:
            self.schemas[name] = {"type": "string", "enum": [value.name for value in descriptor.values]}
        return _ref(descriptor.full_name)

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        kind = field.type
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        if kind == _F.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == _F.TYPE_STRING:
            return {"type": "string"}
        if kind == _F.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
            return {"type": "number"}
        if kind in _INT32:
            return {"type": "integer", "format": "int32"}
        if kind in _UINT32:
            return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295}
        if kind in _INT64:
            return {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
        if kind in _UINT64:
            return {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
        raise ValueError(f"field {field.full_name}: type {kind} has no JSON schema here")

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)


def _query_parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    if route.body == "*":
        return []
    taken = set(route.template.variables) | ({route.body} if route.body else set())
    parameters = []
    for field in route.method.input_type.fields:
        if field.name in taken:
            continue
        if field.message_type is not None and field.message_type.full_name not in _WELL_KNOWN:
            continue  # only scalars, enums and timestamps travel in the query
        parameter: dict[str, Any] = {"name": field.name, "in": "query", "required": is_required(field)}
        parameter["schema"] = schemas.field(field)
        if parameter["required"] and field.type == _F.TYPE_STRING:
            parameter["schema"] = {**parameter["schema"], "minLength": 1}  # an empty value is no value
        if field.is_repeated:
            parameter["explode"] = True
        parameters.append(parameter)
    return parameters


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    rule = POLICY[route.grpc_path]
    role = _ROLE[rule.permission] if rule.permission is not None else "any caller"
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "tags": [route.service.rsplit(".", 1)[-1]],
        "summary": rule.verb[:1].upper() + rule.verb[1:],
        "description": (
            f"gRPC `{route.grpc_path}`. Needs the {role} role (or a higher one) on the account."
            + (" Recorded in the audit trail." if rule.mutating else "")
        ),
    }
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.template.variables
    ]
    parameters += _query_parameters(route, schemas)
    if route.http_method != "get":
        parameters.append(
            {
                "name": idempotency.HEADER,
                "in": "header",
                "required": False,
                "description": "Retries with the same key get the first answer instead of acting twice (24 h).",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": idempotency.MAX_KEY_LENGTH,
                    "pattern": "^[!-~]+$",
                },
            }
        )
    if route.http_method != "get" and preconditions.etag_field(route.method.input_type):
        parameters.append(
            {
                "name": preconditions.HEADER,
                "in": "header",
                "required": False,
                "description": (
                    "The ETag of the resource as read: the call changes nothing and answers 412 unless the "
                    "resource is still that version (checked by the service in the writing transaction)."
                ),
                "schema": {"type": "string", "pattern": '^(\\*|"[^"]+")$'},
            }
        )
    if parameters:
        operation["parameters"] = parameters
    if route.body:
        if route.body == "*":
            # the path carries its fields, the body the others; the edge refuses unknown fields
            body = schemas.object(route.method.input_type, frozenset(route.template.variables))
            body["additionalProperties"] = False
        else:
            body_type = route.method.input_type.fields_by_name[route.body].message_type
            assert body_type is not None  # rules.load_routes checked the body names a message field
            body = schemas.message(body_type)
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": schemas.message(route.method.output_type)}},
        }
    }
    if route.http_method == "get" or preconditions.etag_field(route.method.output_type):
        responses["200"]["headers"] = {"ETag": {"schema": {"type": "string"}}}
    if route.http_method == "get":
        responses["304"] = {"description": "Not modified (If-None-Match matched the ETag)"}
    if route.http_method != "get" and preconditions.etag_field(route.method.input_type):
        responses["412"] = {
            "description": "If-Match (or etag) named a version the resource no longer has; nothing was changed",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR}"}}},
        }
    responses["default"] = {
        "description": "An error: the gRPC status code and a message for the caller",
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR}"}}},
    }
    operation["responses"] = responses
    return operation


def build_document(routes: Sequence[Route] | None = None) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (default: every operator route)."""
    routes = load_routes() if routes is None else routes
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes, key=lambda r: (r.template.text, r.http_method)):
        paths.setdefault(route.template.text, {})[route.http_method] = _operation(route, schemas)
    schemas.schemas[ERROR] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": [code.name for code in grpc.StatusCode]},
                    "message": {"type": "string"},
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": (
                "Every operator capability of Strongroom over HTTPS and JSON, transcoded to the gRPC "
                "services (ADR 0052). Authenticate with `Authorization: Bearer <API token or OIDC token>`; "
                "the services authorize each call by the token's role on the account. Lists with "
                "`page_token` return `next_page_token` (empty on the last page). Errors are "
                '`{"error": {"code", "message"}}`.'
            ),
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(schemas.schemas.items())),
        },
    }


def to_yaml(document: dict[str, Any]) -> str:
    header = "# Generated by `make openapi` from the protos' google.api.http rules; do not edit.\n"
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=110)


def main(argv: list[str]) -> int:
    """``python -m strongroom_api.openapi FILE`` writes the document to FILE (``-``: stdout)."""
    if len(argv) != 1:
        print("usage: python -m strongroom_api.openapi FILE", file=sys.stderr)
        return 2
    text = to_yaml(build_document())
    if argv[0] == "-":
        sys.stdout.write(text)
    else:
        Path(argv[0]).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
