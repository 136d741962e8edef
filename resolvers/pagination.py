"""Relay pagination: limits, opaque cursors and keyset pages.

Cursors are keyset positions (the sort values of the last row seen), never
offsets: a page stays correct while rows are inserted before it, and the
database seeks with an index instead of skipping rows.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")

MAX_FIRST = 100
MAX_INPUT_LIST = 100
#: The largest BIGINT: ids and integer cursor values past it are refused before they reach the database.
MAX_ID = 2**63 - 1


class InvalidArgument(Exception):
    """A request the API refuses as a GraphQL error (not a business-rule userError)."""

    def __init__(self, message: str, code: str = "BAD_USER_INPUT") -> None:
        super().__init__(message)
        self.extensions = {"code": code}


def check_first(first: int | None) -> int:
    if first is None:
        return 20
    if first < 0:
        raise InvalidArgument("`first` must not be negative.")
    if first > MAX_FIRST:
        raise InvalidArgument(f"`first` is at most {MAX_FIRST}.")
    return first


def check_list(values: Sequence[Any] | None, name: str) -> None:
    if values is not None and len(values) > MAX_INPUT_LIST:
        raise InvalidArgument(f"`{name}` takes at most {MAX_INPUT_LIST} items.")


def encode_cursor(kind: str, values: Sequence[Any]) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: str, arity: int) -> list[Any] | None:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("`after` is not a valid cursor.") from None
    if not isinstance(data, list) or len(data) != arity + 1 or data[0] != kind:
        raise InvalidArgument("`after` is not a valid cursor for this list.")
    if not all(_storable(value) for value in data[1:]):
        raise InvalidArgument("`after` is not a valid cursor.")
    return data[1:]


def _storable(value: Any) -> bool:
    """A cursor value the database can compare: a BIGINT, or text without NUL or lone surrogates.

    Cursors are opaque but come from the client: a forged one must be a clear error, not a
    driver error (an int past BIGINT, a NUL in PostgreSQL text).
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -MAX_ID - 1 <= value <= MAX_ID
    if isinstance(value, str):
        return len(value) <= 1000 and "\x00" not in value and is_valid_unicode(value)
    return value is None


def is_valid_unicode(value: str) -> bool:
    """False for text with a lone UTF-16 surrogate ("\\ud800" in JSON), which no database can store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode_id_cursor(cursor: str | None, kind: str) -> int | None:
    values = decode_cursor(cursor, kind, 1)
    if values is None:
        return None
    if not isinstance(values[0], int):
        raise InvalidArgument("`after` is not a valid cursor for this list.")
    return values[0]


class LazyCursors(Sequence[str]):
    """A page's cursors, each built and encoded when first read.

    Encoding one costs a JSON dump and a base64 per row; the compiled read path
    (uidhub.compiled) answers a list that selects no `cursor` without paying it,
    and PageInfo reads only the last one, while ordinary execution, reading them
    all, gets the same strings. `value_of(i)` gives the i-th row's cursor values.
    """

    def __init__(self, kind: str, count: int, value_of: Callable[[int], list[Any]]) -> None:
        self._kind = kind
        self._value_of = value_of
        self._encoded: list[str | None] = [None] * count

    def __len__(self) -> int:
        return len(self._encoded)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self._encoded)  # value_of sees the page's own positions, never a negative one
        encoded = self._encoded[index]
        if encoded is None:
            encoded = self._encoded[index] = encode_cursor(self._kind, self._value_of(index))
        return encoded


@dataclass
class Page(Generic[T]):
    """One page of a connection. `count` runs the COUNT only if totalCount is asked for."""

    items: list[T]
    cursors: Sequence[str]
    has_next: bool
    has_previous: bool
    count: Callable[[], Awaitable[int]] = field(repr=False)
    #: Rows the page's query joined anyway (e.g. each account's pool and master), for callers to reuse.
    related: list[tuple[Any, ...]] = field(default_factory=list, repr=False)


def page_of_rows(rows: Sequence[Any], limit: int, after_id: int | None, cursor_kind: str, total: int) -> Page[Any]:
    """A page from `limit + 1` newest-first rows fetched elsewhere (e.g. by a DataLoader) and a known total."""

    async def count() -> int:
        return total

    items = list(rows[:limit])
    return Page(
        items=items,
        cursors=[encode_cursor(cursor_kind, [r.id]) for r in items],
        has_next=len(rows) > limit,
        has_previous=after_id is not None,
        count=count,
    )


async def newest_first(
    session: AsyncSession,
    model: Any,
    conditions: Sequence[ColumnElement[bool]],
    *,
    first: int | None,
    after: str | None,
    cursor_kind: str,
) -> Page[Any]:
    """A page of `model` rows matching `conditions`, newest first, keyset on the id.

    Every log-like list (audit entries, alert events, notifications, quota
    records, export tasks) pages this way: ids increase in commit order, so
    "newest first" is "highest id first", and the cursor is the last id seen.
    """
    limit = check_first(first)
    after_id = decode_id_cursor(after, cursor_kind)
    page_conditions = [*conditions, model.id < after_id] if after_id is not None else list(conditions)
    rows = list(
        (await session.scalars(select(model).where(*page_conditions).order_by(model.id.desc()).limit(limit + 1))).all()
    )

    async def count() -> int:
        return int(await session.scalar(select(func.count()).select_from(model).where(*conditions)) or 0)

    return Page(
        items=rows[:limit],
        cursors=[encode_cursor(cursor_kind, [r.id]) for r in rows[:limit]],
        has_next=len(rows) > limit,
        has_previous=after_id is not None,
        count=count,
    )
