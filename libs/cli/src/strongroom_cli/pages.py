"""Following the pages of a list RPC (issue 14): every list the CLI prints is read to its end."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol, TypeVar

# The largest page the services serve (each list's page_size caps at 1000).
MAX_PAGE = 1000


class Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


P = TypeVar("P", bound=Page)
T = TypeVar("T")


async def every_page(
    fetch: Callable[[str, int], Awaitable[P]], items: Callable[[P], Iterable[T]], *, limit: int = 0
) -> list[T]:
    """The items of every page, in order: ``fetch(page_token, page_size)`` reads one page. With a
    ``limit`` (0 = none) reading stops once that many are in, and no page asks for more."""
    found: list[T] = []
    token = ""
    while True:
        page = await fetch(token, min(limit - len(found), MAX_PAGE) if limit else MAX_PAGE)
        found += items(page)
        token = page.next_page_token
        if not token or (limit and len(found) >= limit):
            return found[:limit] if limit else found
