"""Money as integer cents: parsing and formatting without ever touching a float."""

from __future__ import annotations

import re
from decimal import Decimal

MAX_CENTS = 10**14  # amounts are < 10^12 dollars
#: ASCII digits only (re.ASCII): `\d` would also take "１２" or "١٢"; fullmatch, so no padding or trailing newline.
_PATTERN = re.compile(r"(-?)(\d{1,12})(?:\.(\d{1,2}))?", re.ASCII)
_TOO_LARGE = re.compile(r"-?\d{13,}(?:\.\d*)?", re.ASCII)


class MoneyError(ValueError):
    """A value that is not a valid amount of money."""


def parse_money(value: object) -> int:
    """Parse a decimal string or an integer into cents.

    Floats are refused outright: `0.1` has no exact binary form, and the
    contract says money is never a binary float. Exponents, NaN, Infinity,
    more than two fraction digits and magnitudes of 10^12 or more are refused,
    and so are non-ASCII digits and surrounding whitespace: the text must be
    exactly `-?[0-9]+(.[0-9]{1,2})?`.
    """
    if isinstance(value, bool | float):
        raise MoneyError("money must be a decimal string such as \"12.50\", not a float")
    if isinstance(value, int):
        if abs(value) >= 10**12:
            raise MoneyError("money must be below 10^12")
        return value * 100
    if not isinstance(value, str):
        raise MoneyError("money must be a decimal string such as \"12.50\"")
    match = _PATTERN.fullmatch(value)
    if match is None:
        if _TOO_LARGE.fullmatch(value):
            raise MoneyError("money must be below 10^12")
        raise MoneyError(
            f"{value[:40]!r} is not an amount of money: use a decimal string with at most two fraction digits"
        )
    sign, whole, frac = match.groups()
    cents = int(whole) * 100 + int((frac or "0").ljust(2, "0"))
    return -cents if sign else cents


def format_money(cents: int) -> str:
    """Cents as a decimal string with exactly two fraction digits ("-3.10")."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def cents_to_decimal(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def percent_of(amount_cents: int, percent: int) -> int:
    """amount × percent / 100, rounded half up to cents, in integer arithmetic."""
    numerator = amount_cents * percent
    quotient, remainder = divmod(abs(numerator), 100)
    if remainder * 2 >= 100:
        quotient += 1
    return quotient if numerator >= 0 else -quotient

