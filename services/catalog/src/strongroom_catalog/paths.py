"""Point-relative paths as the API accepts them, and the opaque browse page token."""

from __future__ import annotations

import base64
import binascii
import json

from strongroom_catalog.errors import InvalidArgument


def normalize_directory(path: str) -> str:
    """The canonical form of a point-relative directory path ("" = the point's root).

    Accepts '/'-separated relative paths with an optional trailing '/'. Raises
    InvalidArgument for a leading '/', empty segments ('a//b'), '.' or '..'
    segments and NUL characters.
    """
    if path in ("", "/"):
        return ""
    if "\x00" in path:
        raise InvalidArgument("path must not contain NUL characters")
    if path.startswith("/"):
        raise InvalidArgument(
            f"path {path!r} must be relative to the point's mount point, without a leading '/' (e.g. 'etc/nginx')"
        )
    trimmed = path[:-1] if path.endswith("/") else path
    for segment in trimmed.split("/"):
        if segment == "":
            raise InvalidArgument(f"path {path!r} contains an empty segment ('//')")
        if segment in (".", ".."):
            raise InvalidArgument(f"path {path!r} must not contain '.' or '..' segments")
    return trimmed


def encode_page_token(point_id: str, directory: str, after: str) -> str:
    """An opaque token continuing the listing of ``directory`` after the name ``after``."""
    raw = json.dumps({"p": point_id, "d": directory, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, point_id: str, directory: str) -> str:
    """The name to continue after ("" for an empty token).

    Raises InvalidArgument when the token is malformed or was issued for
    another point or directory.
    """
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        valid = isinstance(data, dict) and data.get("p") == point_id and data.get("d") == directory
        after = data.get("a") if valid else None
    except (binascii.Error, ValueError, UnicodeDecodeError):
        after = None
    if not isinstance(after, str) or not after:
        raise InvalidArgument("page_token is malformed or was issued for another point or directory")
    return after
