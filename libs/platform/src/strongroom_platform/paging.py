"""Page tokens of the list RPCs (issue 14): keyset positions, opaque to the caller.

A list ordered by (time, key) — ascending or descending, the caller's repository decides — ends a
page with the position of its last row; the next page starts strictly after it. Rows inserted
meanwhile never shift a later page, unlike an offset.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from strongroom_platform.errors import InvalidArgument

T = TypeVar("T")

FORGED = "page_token is not one this service issued; start again without it"


def position_token(at: dt.datetime, key: str) -> str:
    """An opaque page token for a list ordered by (time, key): where the next page starts after."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode()


def token_position(page_token: str) -> tuple[dt.datetime, str] | None:
    """The (time, key) a token of :func:`position_token` names; None for "" (the first page).

    Raises ``InvalidArgument`` for anything else: a caller's typo or a token from another list.
    """
    if not page_token:
        return None
    try:
        when, _, key = base64.urlsafe_b64decode(page_token.encode()).decode().partition("|")
        after = dt.datetime.fromisoformat(when)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument(FORGED) from None
    if after.tzinfo is None or not key:
        raise InvalidArgument(FORGED)
    return after, key


def page_size(requested: int, default: int, maximum: int) -> int:
    """The rows a page holds: ``requested`` (0 = ``default``), at most ``maximum``."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or default, maximum)


def keyset_slice(
    items: Iterable[T],
    position: Callable[[T], tuple[Any, str]],
    after: tuple[Any, str] | None,
    *,
    descending: bool = False,
    limit: int | None = None,
) -> list[T]:
    """What a repository's keyset query returns, for the in-memory fakes: ``items`` ordered by
    ``position`` (an orderable value, then an id compared bytewise as ``COLLATE "C"``), only those
    strictly after ``after`` in that order, at most ``limit`` (None: all)."""

    def key(item: T) -> tuple[Any, bytes]:
        at, ident = position(item)
        return at, ident.encode()

    start = None if after is None else (after[0], after[1].encode())
    found = [i for i in items if start is None or (key(i) < start if descending else key(i) > start)]
    return sorted(found, key=key, reverse=descending)[:limit]


def keyset_page(found: Sequence[T], size: int, position: Callable[[T], tuple[dt.datetime, str]]) -> tuple[list[T], str]:
    """The page of ``found`` — read with ``size + 1`` rows, to tell whether more follow — and the
    next page's token, the ``position`` of its last row ("" on the last page)."""
    page = list(found[:size])
    if len(found) <= size:
        return page, ""
    return page, position_token(*position(page[-1]))
