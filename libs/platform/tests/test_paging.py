from __future__ import annotations

import base64

import pytest
from strongroom_platform.clock import utc
from strongroom_platform.errors import InvalidArgument
from strongroom_platform.paging import keyset_page, keyset_slice, page_size, position_token, token_position


def test_a_position_round_trips_and_the_first_page_has_none() -> None:
    at = utc(2026, 3, 1, 12, 30)
    assert token_position(position_token(at, "id|with|bars")) == (at, "id|with|bars")
    assert token_position("") is None


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",  # not base64
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not text
        base64.urlsafe_b64encode(b"yesterday|x").decode(),  # not a time
        base64.urlsafe_b64encode(b"2026-03-01T12:30:00|x").decode(),  # a time without a zone
        base64.urlsafe_b64encode(b"2026-03-01T12:30:00+00:00|").decode(),  # no key
    ],
)
def test_anything_else_is_refused_with_what_to_do(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token is not one this service issued; start again without it"):
        token_position(token)


def test_page_size_defaults_and_caps() -> None:
    assert (page_size(0, 50, 1000), page_size(7, 50, 1000), page_size(5000, 50, 1000)) == (50, 7, 1000)
    with pytest.raises(InvalidArgument, match="page_size must not be negative"):
        page_size(-1, 50, 1000)


def test_keyset_page_tells_the_last_page_by_the_extra_row() -> None:
    at = utc(2026, 3, 1)
    rows = [(at, "a"), (at, "b"), (at, "c")]
    assert keyset_page(rows, 3, lambda r: r) == (rows, "")  # no extra row: the last page
    page, token = keyset_page(rows, 2, lambda r: r)
    assert page == rows[:2] and token_position(token) == (at, "b")
    assert keyset_page([], 2, lambda r: r) == ([], "")


def test_keyset_slice_orders_ids_bytewise_and_starts_strictly_after() -> None:
    at, later = utc(2026, 3, 1), utc(2026, 3, 2)
    rows = [(later, "x"), (at, "b"), (at, "B"), (at, "\u00e9"), (at, "a")]
    assert keyset_slice(rows, lambda r: r, None) == [(at, "B"), (at, "a"), (at, "b"), (at, "\u00e9"), (later, "x")]
    assert keyset_slice(rows, lambda r: r, (at, "a"), limit=2) == [(at, "b"), (at, "\u00e9")]
    assert keyset_slice(rows, lambda r: r, (at, "b"), descending=True) == [(at, "a"), (at, "B")]
    assert keyset_slice(rows, lambda r: r, (later, "x")) == []
