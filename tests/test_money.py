"""The Money scalar: decimal strings out, strict parsing in, integer cents end to end."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.support.accounts import link
from tests.support.api import Api
from tests.support.quota import SET_AMOUNT, quota, snapshot
from uidhub.models.money import MoneyError, format_money, parse_money, percent_of

LITERAL = 'mutation {{ setQuotaAmount(input: {{uid: "U1", amount: {}}}) {{ quota {{ amount }} }} }}'
VARIABLE = 'mutation($a: Money!) { setQuotaAmount(input: {uid: "U1", amount: $a}) { quota { amount } } }'


@pytest.mark.parametrize(
    "literal",
    [
        "1.5",
        "0.1",
        "1e3",
        '"1e3"',
        '"NaN"',
        '"Infinity"',
        '"-Infinity"',
        '"1.234"',
        '"1000000000000"',
        "1000000000000",
        '"1,5"',
        '" "',
        "true",
        '"0x10"',
        '"1."',
        '".5"',
    ],
)
async def test_bad_literal_is_a_validation_error_naming_the_argument(api: Api, literal: str) -> None:
    await link(api, "U1", quotaAmount="5.00")
    before = await snapshot(api)
    body = await api.gql(LITERAL.format(literal), errors=True)
    assert body["data"] is None
    (error,) = body["errors"]
    assert "input.amount" in error["message"], error
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "Internal server error" not in error["message"]
    assert await snapshot(api) == before


@pytest.mark.parametrize(
    "value", [1.5, 0.1, 100.0, "1e3", "NaN", "Infinity", "1.234", "1000000000000", 10**12, True, None, [1], {"a": 1}]
)
async def test_bad_variable_is_a_validation_error_naming_the_variable(api: Api, value: object) -> None:
    await link(api, "U1", quotaAmount="5.00")
    before = await snapshot(api)
    body = await api.gql(VARIABLE, {"a": value}, errors=True)
    assert body["data"] is None
    (error,) = body["errors"]
    assert "$a" in error["message"], error
    assert await snapshot(api) == before


async def test_bad_value_inside_an_input_variable_names_the_field(api: Api) -> None:
    await link(api, "U1", quotaAmount="5.00")
    body = await api.gql(SET_AMOUNT, {"i": {"uid": "U1", "amount": 2.5}}, errors=True)
    assert body["data"] is None
    assert "amount" in body["errors"][0]["message"] and "$i" in body["errors"][0]["message"]


@pytest.mark.parametrize(
    ("literal", "out"),
    [
        ("7", "7.00"),
        ('"7"', "7.00"),
        ('"7.5"', "7.50"),
        ('"0.05"', "0.05"),
        ('"999999999999.99"', "999999999999.99"),
        ("999999999999", "999999999999.00"),
        ('"0"', "0.00"),
        ('"00012.30"', "12.30"),
    ],
)
async def test_accepted_values_come_back_with_two_decimals(api: Api, literal: str, out: str) -> None:
    await link(api, "U1")
    data = await api.gql(LITERAL.format(literal))
    assert data["setQuotaAmount"]["quota"]["amount"] == out
    assert (await quota(api, "U1"))["amount"] == out


async def test_integer_and_string_variables(api: Api) -> None:
    await link(api, "U1")
    assert (await api.gql(VARIABLE, {"a": 12}))["setQuotaAmount"]["quota"]["amount"] == "12.00"
    assert (await api.gql(VARIABLE, {"a": "12.3"}))["setQuotaAmount"]["quota"]["amount"] == "12.30"


async def test_a_thousand_times_ten_cents_is_exactly_one_hundred(api: Api) -> None:
    """Over the GraphQL API (20 requests of 50 aliased mutations, each its own transaction)."""
    await link(api, "U1", quotaAmount="100.00")
    for batch in range(20):
        fields = " ".join(
            f'm{i}: recordConsumption(input: {{uid: "U1", amount: "0.10", idempotencyKey: "k{batch}-{i}"}}) '
            "{ userErrors { code } }"
            for i in range(50)
        )
        data = await api.gql(f"mutation {{ {fields} }}")
        assert all(v["userErrors"] == [] for v in data.values())
    q = await quota(api, "U1")
    assert q["consumedUndeducted"] == "100.00"
    assert q["available"] == "0.00"
    assert q["outstandingAmount"] == "0.00"
    # The same sum in binary floats is not exact: this is what the scalar protects against.
    assert sum([0.10] * 1000) != 100.0


def test_parse_and_format_round_trip() -> None:
    for cents in (0, 1, 10, 99, 100, 12345, -310, 10**14 - 1):
        assert parse_money(format_money(cents)) == cents
    assert format_money(-310) == "-3.10"
    assert parse_money("-3.1") == -310
    with pytest.raises(MoneyError):
        parse_money(0.1)
    with pytest.raises(MoneyError):
        parse_money(Decimal("1.00"))


@pytest.mark.parametrize(
    ("amount", "percent", "level"),
    [
        (1000, 15, 150),
        (1, 50, 1),
        (3, 50, 2),
        (5, 10, 1),
        (4, 10, 0),
        (99999, 33, 33000),
        (10**14 - 1, 100, 10**14 - 1),
    ],
)
def test_percent_of_rounds_half_up(amount: int, percent: int, level: int) -> None:
    assert percent_of(amount, percent) == level
    exact = Decimal(amount) * percent / 100
    assert level == int(exact.quantize(Decimal(1), rounding="ROUND_HALF_UP"))


@pytest.mark.parametrize("text", ["１２.５０", "١٢", " 12.50", "12.50\n", "12.50 ", "\t12", "१२.००", "12.5０"])
def test_only_ascii_digits_without_padding_are_money(text: str) -> None:
    """`\\d` in Python's re matches every Unicode digit and `$` matches before a final newline: both refused."""
    with pytest.raises(MoneyError):
        parse_money(text)


@pytest.mark.parametrize(
    ("text", "cents"), [("12.50", 1250), ("-3.1", -310), ("0", 0), ("999999999999.99", 99999999999999)]
)
def test_plain_ascii_money_still_parses(text: str, cents: int) -> None:
    assert parse_money(text) == cents
