"""Entity tags and If-Match (ADR 0055): a write applies only to the resource as the caller read it.

A resource whose message has a top-level string field ``etag`` (``Instance.etag``) carries its
version; its ETag header is that value, and a write whose request has an ``etag`` field takes the
If-Match tag there. The *service* compares it with the stored resource in the transaction that
writes (the row is locked), and answers ABORTED when it differs: the edge makes that 412 and nothing
was changed. A check in the edge followed by the write would be a race (ADR 0052); this is not.
Other responses keep the ETag of their body (SHA-256), for If-None-Match.
"""

from __future__ import annotations

import hashlib
from typing import cast

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from strongroom_api.errors import ApiError, invalid

FIELD = "etag"
HEADER = "If-Match"
STALE = 412


def _descriptor(message: Message) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)  # the upb and the Python descriptor types are one at run time


def etag_field(descriptor: Descriptor) -> bool:
    """Whether messages of ``descriptor`` carry a version in a top-level string ``etag`` field."""
    field = descriptor.fields_by_name.get(FIELD)
    return field is not None and field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated


def versioned(message: Message) -> bool:
    """Whether ``message`` is a resource with a version (a non-empty ``etag``)."""
    return etag_field(_descriptor(message)) and bool(getattr(message, FIELD))


def etag_header(response: Message, body: bytes) -> str:
    """The ETag of an answer: the resource's own etag when it has one, else a digest of the body."""
    if versioned(response):
        return f'"{getattr(response, FIELD)}"'
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches_none(if_none_match: str, etag: str) -> bool:
    """If-None-Match (weak comparison): whether ``etag`` is one of the tags, or the header is ``*``."""
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in candidates or "*" in candidates


def apply_if_match(request: Message, if_match: str | None, operation: str) -> None:
    """Put the If-Match tag into the request's ``etag`` field (``*``: any current version, no tag).

    Refused (400) on an operation whose resource has no version, with several tags, or with a tag
    other than the request's own ``etag`` field; a weak tag never matches (strong comparison): 412.
    """
    if if_match is None:
        return
    value = if_match.strip()
    if value == "*":
        return
    if not etag_field(_descriptor(request)):
        raise invalid(f"{HEADER} is not supported by {operation}: its resource has no etag")
    if "," in value:
        raise invalid(f"{HEADER} takes one entity tag, the ETag of the resource as read")
    if value.startswith("W/"):
        raise ApiError(grpc.StatusCode.ABORTED, f"a weak {HEADER} tag never matches; send the ETag", http_status=STALE)
    if len(value) < 3 or value[0] != '"' or value[-1] != '"' or '"' in value[1:-1]:
        raise invalid(f'{HEADER} must be an entity tag in double quotes, as the ETag header gives it ("...")')
    tag = value[1:-1]
    given = getattr(request, FIELD)
    if given and given != tag:
        raise invalid(f"{HEADER} and the request's etag field name different versions")
    setattr(request, FIELD, tag)


def conditional(request: Message) -> bool:
    """Whether the request names the version it applies to (its ABORTED then means "stale": 412)."""
    return versioned(request)
