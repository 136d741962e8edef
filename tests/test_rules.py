"""Unit tests of the pure account rules and money (models/rules.py, models/money.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import rules as R
from models.enums import AccountStatus as S
from models.enums import (
    BillingMethod,
    CreditControlStatus,
    PaygFreezeStatus,
    PurchaseControl,
    PurchaseDenialReason,
    ShutdownPolicy,
    StopReason,
)
from models.money import MoneyError, format_money, parse_money, percent_of

ALLOWED = {
    (S.NORMAL, S.TO_BE_CONFIRMED),
    (S.TO_BE_CONFIRMED, S.IN_PROCESS),
    (S.TO_BE_CONFIRMED, S.NORMAL),
    (S.IN_PROCESS, S.TERMINATED),
    (S.TERMINATED, S.DELETED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_transitions(current: S, target: S) -> None:
    assert R.can_transition(current, target) is ((current, target) in ALLOWED)


def test_takes_changes() -> None:
    assert {s for s in S if R.takes_changes(s)} == {S.NORMAL, S.TO_BE_CONFIRMED, S.IN_PROCESS}


@pytest.mark.parametrize(
    ("available", "undeducted", "blocked"),
    [(0, 0, False), (100, 0, False), (-1, 0, True), (100, 1, True), (-5, 5, True)],
)
def test_outstanding_balance(available: int, undeducted: int, blocked: bool) -> None:
    assert R.has_outstanding_balance(available, undeducted) is blocked


@pytest.mark.parametrize(
    ("value", "limits", "ok"),
    [
        ("云" * 50, {"max_bytes": 150}, True),
        ("云" * 51, {"max_bytes": 150}, False),
        ("a" * 150, {"max_bytes": 150}, True),
        ("a" * 149 + "é", {"max_bytes": 150}, False),  # é is 2 bytes
        ("経" * 50, {"max_chars": 50}, True),
        ("経" * 51, {"max_chars": 50}, False),
        ("😀" * 750, {"max_bytes": 3000}, True),
        ("😀" * 750 + "a", {"max_bytes": 3000}, False),
        ("tab\tand\nnewline", {}, True),
        ("  spaces  ", {}, True),
        ("", {"max_bytes": 150}, True),
        ("cr\r", {}, False),
        ("nul\x00", {}, False),
        ("esc\x1b", {}, False),
        ("del\x7f", {}, False),
        ("c1\x85", {}, False),
        ("nbsp\xa0", {}, True),
    ],
)
def test_text_problem(value: str, limits: dict[str, int], ok: bool) -> None:
    problem = R.text_problem(value, **limits)
    assert (problem is None) is ok, problem


# ---------------------------------------------------------------- credit control table of RULES.md

CC = CreditControlStatus


@pytest.mark.parametrize(
    ("policy", "available", "delay", "expected"),
    [
        (ShutdownPolicy.IMMEDIATE_STOP, 0, 0, CC.NORMAL),
        (ShutdownPolicy.IMMEDIATE_STOP, 5, 100, CC.NORMAL),
        (ShutdownPolicy.IMMEDIATE_STOP, -1, 100, CC.SHUTDOWN),
        (ShutdownPolicy.IMMEDIATE_STOP, -500, 100, CC.SHUTDOWN),
        (ShutdownPolicy.DELAY_STOP, 0, 100, CC.NORMAL),
        (ShutdownPolicy.DELAY_STOP, -1, 100, CC.ARREARS_NOT_SHUTDOWN),
        (ShutdownPolicy.DELAY_STOP, -100, 100, CC.ARREARS_NOT_SHUTDOWN),
        (ShutdownPolicy.DELAY_STOP, -101, 100, CC.SHUTDOWN),
        (ShutdownPolicy.DELAY_STOP, -1, 0, CC.SHUTDOWN),
        (ShutdownPolicy.NO_STOP, 0, 0, CC.NORMAL),
        (ShutdownPolicy.NO_STOP, -1, 0, CC.ARREARS_NOT_SHUTDOWN),
        (ShutdownPolicy.NO_STOP, -10**12, 0, CC.ARREARS_NOT_SHUTDOWN),
    ],
)
def test_credit_control_table(policy: ShutdownPolicy, available: int, delay: int, expected: CC) -> None:
    assert R.credit_control_status(policy, available, delay) is expected


def test_effective_settings() -> None:
    F, N = PaygFreezeStatus.FROZEN, PaygFreezeStatus.NORMAL
    assert R.effective_freeze(N, None) is N
    assert R.effective_freeze(F, None) is F
    assert R.effective_freeze(N, F) is F
    assert R.effective_freeze(F, N) is F
    assert R.effective_freeze(N, N) is N
    B, OK = PurchaseControl.BANNED, PurchaseControl.NORMAL
    assert R.effective_purchase_control(OK, None) is OK
    assert R.effective_purchase_control(OK, B) is B
    assert R.effective_purchase_control(B, OK) is B
    view = R.PolicyView(own_freeze=N, own_purchase=OK, master_freeze=F, master_purchase=None,
                        policy=ShutdownPolicy.NO_STOP, delay_credit_cents=0, credit=CC.SHUTDOWN)
    assert view.freeze is F and view.purchase is OK
    assert view.stop_reasons(BillingMethod.PAYG) == [StopReason.PAYG_FREEZE, StopReason.CREDIT_SHUTDOWN]
    assert view.stop_reasons(BillingMethod.SUBSCRIPTION) == []
    assert R.instance_status([]).value == "RUNNING"
    assert R.instance_status([StopReason.PAYG_FREEZE]).value == "STOPPED"


def test_purchase_denials() -> None:
    D = PurchaseDenialReason
    base = {"status": S.NORMAL, "purchase_control": PurchaseControl.NORMAL, "freeze": PaygFreezeStatus.NORMAL,
            "credit": CC.NORMAL, "amount_cents": 100, "available_cents": 100}
    assert R.purchase_denials(billing_method=BillingMethod.SUBSCRIPTION, **base) == []
    assert R.purchase_denials(billing_method=BillingMethod.PAYG, **base) == []
    assert R.purchase_denials(billing_method=BillingMethod.SUBSCRIPTION, **{**base, "amount_cents": 101}) == [
        D.INSUFFICIENT_QUOTA]
    assert R.purchase_denials(billing_method=BillingMethod.PAYG, **{**base, "available_cents": 0}) == [
        D.INSUFFICIENT_QUOTA]
    everything = {**base, "status": S.IN_PROCESS, "purchase_control": PurchaseControl.BANNED,
                  "freeze": PaygFreezeStatus.FROZEN, "credit": CC.SHUTDOWN, "available_cents": -1}
    assert R.purchase_denials(billing_method=BillingMethod.PAYG, **everything) == [
        D.ACCOUNT_NOT_ACTIVE, D.PURCHASE_BANNED, D.PAYG_FROZEN, D.CREDIT_SHUTDOWN, D.INSUFFICIENT_QUOTA]
    assert R.purchase_denials(billing_method=BillingMethod.SUBSCRIPTION, **everything) == [
        D.ACCOUNT_NOT_ACTIVE, D.PURCHASE_BANNED, D.INSUFFICIENT_QUOTA]


# ---------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("value", "cents"),
    [("0", 0), ("0.1", 10), ("0.10", 10), ("12.5", 1250), ("-3.10", -310), (7, 700),
     ("999999999999.99", 99999999999999)],
)
def test_parse_money(value: object, cents: int) -> None:
    assert parse_money(value) == cents


@pytest.mark.parametrize(
    "value", [0.1, 1.0, True, "1e3", "NaN", "Infinity", "1.001", "", "abc", "1,00", "1000000000000", 10**12, None,
              "+1", ".5", "1.", " 1.00 ", "1.00\n"],  # padding is refused (issue 17), not stripped
)
def test_parse_money_refuses(value: object) -> None:
    with pytest.raises(MoneyError):
        parse_money(value)


def test_format_money() -> None:
    assert format_money(0) == "0.00"
    assert format_money(5) == "0.05"
    assert format_money(-310) == "-3.10"
    assert format_money(-5) == "-0.05"
    assert format_money(123456789) == "1234567.89"


@given(st.integers(min_value=-(10**14) + 1, max_value=10**14 - 1))
def test_money_round_trip(cents: int) -> None:
    assert parse_money(format_money(cents)) == cents


@pytest.mark.parametrize(
    ("amount", "percent", "level"),
    [(1000, 50, 500), (999, 50, 500), (997, 50, 499), (1, 50, 1), (1, 49, 0), (100_00, 100, 100_00), (0, 80, 0),
     (333, 33, 110)],
)
def test_percent_of_rounds_half_up(amount: int, percent: int, level: int) -> None:
    assert percent_of(amount, percent) == level


def test_warning_level_rounds_half_up_and_equal_is_not_below() -> None:
    from models.rules import below_warning, warning_level

    assert warning_level(100_005, None) is None
    assert warning_level(1_005, 50) == 503  # 10.05 × 50 % = 5.025 → 5.03
    assert warning_level(1_004, 50) == 502  # 5.02
    assert below_warning(502, 1_004, 50) is False  # exactly at the level is not below
    assert below_warning(501, 1_004, 50) is True
    assert below_warning(-10_000, 0, None) is False  # no warning set: never below
