"""HTTP request → protobuf request message, protobuf response → JSON (proto3 JSON mapping).

Field names are the protos' own (``instance_id``, ``page_token``); path variables, the body (the
whole request for ``body: "*"``, or one field) and query parameters (every other field, nested
fields as ``a.b``, repeated ones by repeating the parameter) fill the request as
``google/api/http.proto`` describes. Responses print every field, zero values included, enums by
name and 64-bit integers as strings (the proto3 JSON mapping, which the OpenAPI document states).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from strongroom_api.errors import invalid
from strongroom_api.rules import Route

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
MAX_DEPTH = 32


def message_class(descriptor: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}``. InvalidArgument otherwise."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise invalid("the request body must be UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise invalid(f"the request body is not valid JSON: {exc.msg} at {where}") from None
    if not isinstance(value, dict):
        raise invalid(f"the request body must be a JSON object, not {type(value).__name__}")
    return value


def _field_path(descriptor: Descriptor, dotted: str) -> list[FieldDescriptor]:
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for name in dotted.split("."):
        if current is None:
            raise invalid(f"query parameter {dotted!r}: {fields[-1].name!r} has no fields")
        field = current.fields_by_name.get(name)
        if field is None:
            raise invalid(f"unknown query parameter {dotted!r}; the request has no such field")
        fields.append(field)
        is_value_type = field.message_type is not None and field.message_type.full_name.startswith("google.protobuf.")
        current = None if field.message_type is None or is_value_type else field.message_type
    return fields


def _scalar(field: FieldDescriptor, dotted: str, text: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise invalid(f"query parameter {dotted!r} must be true or false, got {text!r}")
    if field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
        raise invalid(f"query parameter {dotted!r} is a message: send it in a JSON body")
    if field.enum_type is not None and text not in field.enum_type.values_by_name:
        names = ", ".join(field.enum_type.values_by_name)
        raise invalid(f"query parameter {dotted!r} must be one of {names}; got {text!r}")
    return text  # the JSON mapping parses numbers, enums, timestamps and bytes from strings


def query_dict(descriptor: Descriptor, query: Sequence[tuple[str, str]], excluded: set[str]) -> dict[str, Any]:
    """Query parameters as the JSON form of the request (nested by ``.``); ``excluded`` names the
    top-level fields that come from the path or the body (a parameter naming one is refused)."""
    result: dict[str, Any] = {}
    for dotted, text in query:
        fields = _field_path(descriptor, dotted)
        if fields[0].name in excluded:
            raise invalid(f"query parameter {dotted!r} is set by the path or the body, not the query")
        target = result
        for field in fields[:-1]:
            if field.is_repeated:
                raise invalid(f"query parameter {dotted!r} goes through a repeated field: use a JSON body")
            target = target.setdefault(field.name, {})
        leaf = fields[-1]
        value = _scalar(leaf, dotted, text)
        if leaf.is_repeated:
            target.setdefault(leaf.name, []).append(value)
        elif leaf.name in target:
            raise invalid(f"query parameter {dotted!r} is given more than once")
        else:
            target[leaf.name] = value
    return result


def _enum_names_only(js: Any, descriptor: Descriptor, where: str, depth: int = 0) -> None:
    """Enums by name, as the OpenAPI document says: the proto3 JSON parser also takes numbers,
    which would make the document's enum lists a lie (and accept values no name stands for)."""
    if not isinstance(js, dict) or depth > MAX_DEPTH:
        return
    for name, value in js.items():
        field = descriptor.fields_by_name.get(name) or next((f for f in descriptor.fields if f.json_name == name), None)
        if field is None:
            continue  # json_format names the unknown field
        values = value if field.is_repeated and isinstance(value, list) else [value]
        if field.enum_type is not None:
            for item in values:
                if item is not None and item not in field.enum_type.values_by_name:
                    names = ", ".join(field.enum_type.values_by_name)
                    raise invalid(f"{where}: {field.name} must be one of {names}; got {item!r}")
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in values:
                _enum_names_only(item, field.message_type, where, depth + 1)


def _parse(js: dict[str, Any], message: Message, where: str) -> None:
    _enum_names_only(js, cast(Descriptor, message.DESCRIPTOR), where)
    try:
        json_format.ParseDict(js, message, max_recursion_depth=MAX_DEPTH)
    except json_format.ParseError as exc:
        # The message names the field; the list of available fields json_format appends is noise.
        text = str(exc).split("\n", 1)[0]
        raise invalid(f"{where}: {text}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise invalid(f"{where}: {exc}") from None


def build_request(route: Route, variables: dict[str, str], query: Sequence[tuple[str, str]], body: bytes) -> Message:
    """The RPC's request message from the path variables, query and JSON body; InvalidArgument
    (a clear message naming the field) for anything that does not fit the request type."""
    descriptor = route.method.input_type
    message = message_class(descriptor)()
    if route.body == "*":
        js = parse_json_object(body)
        for name, value in variables.items():
            if name in js and js[name] != value:
                raise invalid(f"{name} is {value!r} in the path but {js[name]!r} in the body")
        _parse(js, message, "request body")
        if query:
            operation = f"{route.http_method.upper()} {route.template.text}"
            raise invalid(f"{operation} takes its fields in the JSON body, not the query")
    elif route.body:
        _parse(parse_json_object(body), getattr(message, route.body), f"request body ({route.body})")
    elif body.strip():
        raise invalid(f"{route.http_method.upper()} {route.template.text} takes no request body")
    if query and route.body != "*":
        excluded = set(variables) | ({route.body} if route.body else set())
        _parse(query_dict(descriptor, query, excluded), message, "query")
    for name, value in variables.items():
        setattr(message, name, value)
    return message


def render(message: Message) -> bytes:
    """The response as JSON: every field, proto field names, enums by name."""
    js = json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return json.dumps(js, ensure_ascii=False, separators=(",", ":")).encode()
