"""Validation of the paths of a restore request."""

from __future__ import annotations

import re

from strongroom_restore.errors import InvalidArgument

_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")


def relative_path(path: str, field: str) -> str:
    """A point-relative include/exclude path in canonical form (one trailing '/' dropped).

    Raises InvalidArgument for an empty or absolute path, '..' or '.' or empty
    segments, and NUL characters.
    """
    if not path:
        raise InvalidArgument(f"{field}: empty path")
    if "\x00" in path:
        raise InvalidArgument(f"{field}: path {path!r} contains a NUL character")
    if path.startswith("/"):
        raise InvalidArgument(
            f"{field}: path {path!r} must be relative to the point's mount point, without a leading '/'"
        )
    trimmed = path[:-1] if path.endswith("/") else path
    for segment in trimmed.split("/"):
        if segment == "..":
            raise InvalidArgument(f"{field}: path {path!r} must not contain '..'")
        if segment in ("", "."):
            raise InvalidArgument(f"{field}: path {path!r} contains an empty or '.' segment")
    return trimmed


def target_path(path: str) -> str:
    """The absolute directory on the target ("" = original location).

    POSIX ('/srv/restore') or Windows ('D:\\restore') absolute paths; no '..'.
    """
    if not path:
        return ""
    if "\x00" in path:
        raise InvalidArgument("target_path contains a NUL character")
    if not (path.startswith("/") or _WINDOWS_ABSOLUTE.match(path)):
        raise InvalidArgument(f"target_path {path!r} must be an absolute directory (e.g. '/srv/restore')")
    if ".." in re.split(r"[\\/]", path):
        raise InvalidArgument(f"target_path {path!r} must not contain '..'")
    return path
