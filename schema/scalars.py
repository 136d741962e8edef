"""The Money and DateTime scalars.

Money travels as a decimal string with exactly two fraction digits and is
integer cents everywhere inside; a GraphQL float literal is refused before
any resolver runs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NewType

import orjson
import strawberry
from graphql import IntValueNode, StringValueNode, ValueNode

from uidhub.models.money import MoneyError, format_money, parse_money


def _parse_money_literal(node: ValueNode, _variables: Any = None) -> int:
    if isinstance(node, StringValueNode):
        return parse_money(node.value)
    if isinstance(node, IntValueNode):
        return parse_money(int(node.value))
    raise MoneyError('money must be a decimal string such as "12.50" (or an integer), not a float')


def _serialize_money(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("Money is integer cents inside uidhub")
    return format_money(value)


#: Integer cents inside; the Money scalar on the wire.
Money = NewType("Money", int)

MONEY_DEFINITION = strawberry.scalar(
    name="Money",
    description=(
        'USD as a decimal string with exactly two fraction digits ("1250.00", "-3.10"). '
        "Input: a string (or an integer) with at most two fraction digits and below 10^12; "
        "floats, exponents, NaN and Infinity are refused."
    ),
    serialize=_serialize_money,
    parse_value=parse_money,
    parse_literal=_parse_money_literal,
    # A decimal string in XML Schema's lexical form, restricted as the description says.
    specified_by_url="https://www.w3.org/TR/xmlschema11-2/#decimal",
)

#: Instants a DateTime may name: years 1..9999 with a day to spare at both ends, so that shifting by
#: any UTC offset (display time zone, an export's file name) can never leave Python's datetime range.
MIN_DATETIME = datetime(1, 1, 1, tzinfo=UTC) + timedelta(days=1)
MAX_DATETIME = datetime(9999, 12, 31, tzinfo=UTC) - timedelta(days=1)
_MAX_DATETIME_CHARS = 64


def _parse_datetime(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an ISO-8601 string")
    if len(value) > _MAX_DATETIME_CHARS:
        raise ValueError("DateTime is an ISO-8601 string of at most 64 characters")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO-8601 date-time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset: add one, e.g. 2026-01-31T08:00:00+08:00")
    try:
        instant = parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0 in UTC
        instant = None
    if instant is None or not MIN_DATETIME <= instant <= MAX_DATETIME:
        span = f"{MIN_DATETIME:%Y-%m-%d} to {MAX_DATETIME:%Y-%m-%d} UTC"
        raise ValueError(f"{value!r} is out of range: DateTime covers {span}")
    return instant


def _parse_datetime_literal(node: ValueNode, _variables: Any = None) -> datetime:
    if not isinstance(node, StringValueNode):
        raise ValueError("DateTime must be an ISO-8601 string")
    return _parse_datetime(node.value)


def _serialize_datetime(value: datetime) -> str:
    """ISO 8601 with the offset, as `isoformat()` writes it (a naive value is UTC; stored values are UTC).

    The common case, a UTC or naive value (what both databases return), is written by orjson: the same
    characters (tests/test_scalars.py checks them against `isoformat` over the whole range) at a quarter of
    the cost, which was the largest single Python cost of a list page showing `linkedAt`.
    """
    if value.tzinfo is None or value.tzinfo is UTC:
        return orjson.dumps(value, option=orjson.OPT_NAIVE_UTC)[1:-1].decode()
    return value.isoformat()


DATETIME_DEFINITION = strawberry.scalar(
    name="DateTime",
    description=(
        "ISO-8601 date-time with an explicit UTC offset; output is UTC. "
        "Input instants lie between 0001-01-02 and 9999-12-30 UTC."
    ),
    specified_by_url="https://datatracker.ietf.org/doc/html/rfc3339#section-5.6",
    serialize=_serialize_datetime,
    parse_value=_parse_datetime,
    parse_literal=_parse_datetime_literal,
)

#: For StrawberryConfig.scalar_map (the non-deprecated way to declare scalars).
SCALAR_MAP: dict[object, Any] = {Money: MONEY_DEFINITION, datetime: DATETIME_DEFINITION}
