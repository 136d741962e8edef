"""Pure domain rules: no I/O, unit-tested on their own.

Everything the resolvers decide about status transitions, effective policy,
credit control, instance state and purchase decisions is a function here, so
that the rule lives in one place whichever operation or export asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from uidhub.models.enums import (
    AccountStatus,
    BillingMethod,
    CreditControlStatus,
    InstanceStatus,
    PaygFreezeStatus,
    PurchaseControl,
    PurchaseDenialReason,
    ShutdownPolicy,
    StopReason,
)
from uidhub.models.money import percent_of

# ---------------------------------------------------------------- accounts

NICKNAME_MAX_BYTES = 150
BUSINESS_MANAGER_MAX_CHARS = 50
REMARKS_MAX_BYTES = 3000

_TRANSITIONS: dict[AccountStatus, frozenset[AccountStatus]] = {
    AccountStatus.NORMAL: frozenset({AccountStatus.TO_BE_CONFIRMED}),
    AccountStatus.TO_BE_CONFIRMED: frozenset({AccountStatus.IN_PROCESS, AccountStatus.NORMAL}),
    AccountStatus.IN_PROCESS: frozenset({AccountStatus.TERMINATED}),
    AccountStatus.TERMINATED: frozenset({AccountStatus.DELETED}),
    AccountStatus.DELETED: frozenset(),
}

#: Statuses in which quota, consumption and policy changes are still taken.
SETTLING_STATUSES = frozenset({AccountStatus.NORMAL, AccountStatus.TO_BE_CONFIRMED, AccountStatus.IN_PROCESS})


def can_transition(current: AccountStatus, target: AccountStatus) -> bool:
    """Whether the termination process allows moving from `current` to `target`."""
    return target in _TRANSITIONS[current]


def takes_changes(status: AccountStatus) -> bool:
    """TERMINATED and DELETED accounts take nothing but their next status change."""
    return status in SETTLING_STATUSES


def available(amount_cents: int, deducted_cents: int, undeducted_cents: int) -> int:
    """What a pool may still spend: the credit line less what was consumed; negative means money is owed."""
    return amount_cents - deducted_cents - undeducted_cents


def has_outstanding_balance(available_cents: int, undeducted_cents: int) -> bool:
    """Termination is refused while money is owed or consumption is not yet deducted."""
    return available_cents < 0 or undeducted_cents > 0


def text_problem(value: str, *, max_bytes: int | None = None, max_chars: int | None = None) -> str | None:
    """Why a free-text field is invalid, or None. Control characters other than \\n and \\t are refused."""
    # isprintable() is False for every control character: the per-character search only when there may be one.
    for ch in "" if value.isprintable() else value:
        code = ord(ch)
        if (code < 0x20 and ch not in "\n\t") or 0x7F <= code < 0xA0:
            return f"contains a control character (U+{code:04X})"
    if max_bytes is not None and len(value.encode("utf-8")) > max_bytes:
        return f"is longer than {max_bytes} bytes (UTF-8)"
    if max_chars is not None and len(value) > max_chars:
        return f"is longer than {max_chars} characters"
    return None


# ---------------------------------------------------------------- quota warning


def warning_level(amount_cents: int, percent: int | None) -> int | None:
    """amount × percent / 100, rounded half up to cents; None when no warning is set.

    resolvers.accounts.warning_level_expr is the SQL twin used by filters.
    """
    return None if percent is None else percent_of(amount_cents, percent)


def below_warning(available_cents: int, amount_cents: int, percent: int | None) -> bool:
    """Whether available is below the warning level (never, without a warning)."""
    level = warning_level(amount_cents, percent)
    return level is not None and available_cents < level


# ---------------------------------------------------------------- policy


def effective_freeze(own: PaygFreezeStatus, master: PaygFreezeStatus | None) -> PaygFreezeStatus:
    """FROZEN when the account or its master is frozen."""
    if PaygFreezeStatus.FROZEN in (own, master):
        return PaygFreezeStatus.FROZEN
    return PaygFreezeStatus.NORMAL


def effective_purchase_control(own: PurchaseControl, master: PurchaseControl | None) -> PurchaseControl:
    """BANNED when the account or its master is banned."""
    if PurchaseControl.BANNED in (own, master):
        return PurchaseControl.BANNED
    return PurchaseControl.NORMAL


def credit_control_status(policy: ShutdownPolicy, available_cents: int, delay_credit_cents: int) -> CreditControlStatus:
    """The credit control table of RULES.md."""
    if available_cents >= 0:
        return CreditControlStatus.NORMAL
    if policy is ShutdownPolicy.IMMEDIATE_STOP:
        return CreditControlStatus.SHUTDOWN
    if policy is ShutdownPolicy.NO_STOP:
        return CreditControlStatus.ARREARS_NOT_SHUTDOWN
    if available_cents >= -delay_credit_cents:
        return CreditControlStatus.ARREARS_NOT_SHUTDOWN
    return CreditControlStatus.SHUTDOWN


def stop_reasons(
    billing_method: BillingMethod, freeze: PaygFreezeStatus, credit: CreditControlStatus
) -> list[StopReason]:
    """Why an instance is stopped; empty when it runs. Subscriptions always run."""
    if billing_method is not BillingMethod.PAYG:
        return []
    reasons: list[StopReason] = []
    if freeze is PaygFreezeStatus.FROZEN:
        reasons.append(StopReason.PAYG_FREEZE)
    if credit is CreditControlStatus.SHUTDOWN:
        reasons.append(StopReason.CREDIT_SHUTDOWN)
    return reasons


def instance_status(reasons: Iterable[StopReason]) -> InstanceStatus:
    return InstanceStatus.STOPPED if any(True for _ in reasons) else InstanceStatus.RUNNING


def purchase_denials(
    *,
    status: AccountStatus,
    purchase_control: PurchaseControl,
    freeze: PaygFreezeStatus,
    credit: CreditControlStatus,
    billing_method: BillingMethod,
    amount_cents: int,
    available_cents: int,
) -> list[PurchaseDenialReason]:
    """Every reason that denies an order (all that apply, in a stable order); empty when allowed."""
    reasons: list[PurchaseDenialReason] = []
    payg = billing_method is BillingMethod.PAYG
    if status is not AccountStatus.NORMAL:
        reasons.append(PurchaseDenialReason.ACCOUNT_NOT_ACTIVE)
    if purchase_control is PurchaseControl.BANNED:
        reasons.append(PurchaseDenialReason.PURCHASE_BANNED)
    if payg and freeze is PaygFreezeStatus.FROZEN:
        reasons.append(PurchaseDenialReason.PAYG_FROZEN)
    if payg and credit is CreditControlStatus.SHUTDOWN:
        reasons.append(PurchaseDenialReason.CREDIT_SHUTDOWN)
    if (payg and available_cents <= 0) or (not payg and amount_cents > available_cents):
        reasons.append(PurchaseDenialReason.INSUFFICIENT_QUOTA)
    return reasons


# ---------------------------------------------------------------- the state in force


class PolicyView:
    """The policy an account is under: its own settings, its master's, and its pool's.

    Built from rows that are already loaded; every consumer (GraphQL fields,
    order decisions, exports) derives effective values through this one class.
    """

    __slots__ = (
        "credit",
        "delay_credit_cents",
        "master_freeze",
        "master_purchase",
        "own_freeze",
        "own_purchase",
        "policy",
    )

    def __init__(
        self,
        *,
        own_freeze: PaygFreezeStatus,
        own_purchase: PurchaseControl,
        master_freeze: PaygFreezeStatus | None,
        master_purchase: PurchaseControl | None,
        policy: ShutdownPolicy,
        delay_credit_cents: int,
        credit: CreditControlStatus,
    ) -> None:
        self.own_freeze = own_freeze
        self.own_purchase = own_purchase
        self.master_freeze = master_freeze
        self.master_purchase = master_purchase
        self.policy = policy
        self.delay_credit_cents = delay_credit_cents
        self.credit = credit

    @classmethod
    def of(cls, account: Any, master: Any | None, pool: Any) -> PolicyView:
        """From an account row, its master row (None for masters and standalone accounts) and its pool row."""
        return cls(
            own_freeze=account.payg_freeze,
            own_purchase=account.purchase_control,
            master_freeze=master.payg_freeze if master else None,
            master_purchase=master.purchase_control if master else None,
            policy=pool.shutdown_policy,
            delay_credit_cents=pool.delay_credit_cents,
            credit=pool.credit_control_status,
        )

    @property
    def freeze(self) -> PaygFreezeStatus:
        return effective_freeze(self.own_freeze, self.master_freeze)

    @property
    def purchase(self) -> PurchaseControl:
        return effective_purchase_control(self.own_purchase, self.master_purchase)

    def stop_reasons(self, billing_method: BillingMethod) -> list[StopReason]:
        return stop_reasons(billing_method, self.freeze, self.credit)
