"""Read-only rows of `accounts` and `quota_pools`, for the list queries.

A list page of 100 accounts used to build 300 ORM entities (account, pool,
master) per request: identity map, instance state and instrumented attributes
cost more CPU than the rest of the page. The list only reads these rows, so it
selects their columns and keeps them as named tuples with the same attribute
names as the mapped classes: every consumer (`EndUser.of`, `Quota.of`,
`PolicyView.of`, `Actor.sees`) reads them exactly as it reads an entity.

The fields are the tables' columns in table order; tests/test_rows.py keeps
them equal to the mapped classes' columns, so a new column cannot be missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeAlias

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import null

from uidhub.models import rules
from uidhub.models.enums import (
    AccountStatus,
    AccountType,
    CreditControlStatus,
    PaygFreezeStatus,
    PurchaseControl,
    ShutdownPolicy,
)
from uidhub.models.tables import Account, QuotaPool


class AccountRow(NamedTuple):
    """An `accounts` row as the list read it."""

    id: int
    partner_id: int
    uid: str
    account_type: AccountType
    nickname: str | None
    business_manager: str | None
    remarks: str | None
    email: str | None
    status: AccountStatus
    linked_at: datetime
    master_id: int | None
    pool_id: int
    payg_freeze: PaygFreezeStatus
    purchase_control: PurchaseControl
    updated_at: datetime


class PoolRow(NamedTuple):
    """A `quota_pools` row as the list read it."""

    id: int
    partner_id: int
    amount_cents: int
    deducted_cents: int
    undeducted_cents: int
    quota_created: bool
    warning_percent: int | None
    warning_below: bool
    shutdown_policy: ShutdownPolicy
    delay_credit_cents: int
    credit_control_status: CreditControlStatus
    updated_at: datetime
    alert_rules: int

    @property
    def available_cents(self) -> int:
        return rules.available(self.amount_cents, self.deducted_cents, self.undeducted_cents)


#: An account as the read path hands it around: an entity (loaded by id, or in a write) or a list's row.
AccountLike: TypeAlias = Account | AccountRow
PoolLike: TypeAlias = QuotaPool | PoolRow


#: What every AccountRow of a narrowed read (`account_columns(reads=...)`) still carries: its identity, and
#: what tenancy (`Actor.sees`), grouping by master and the list's cursor read.
ACCOUNT_KEYS = frozenset({"id", "partner_id", "uid", "master_id"})
#: What a policy reads of an account and of its master (rules.PolicyView.of).
POLICY_READS = frozenset({"payg_freeze", "purchase_control"})
#: What nothing of the read path shows: left out of narrowed reads.
UNREAD = frozenset({"updated_at", "alert_rules"})


def account_columns(entity: Any = Account, reads: frozenset[str] | None = None) -> list[Any]:
    """The columns to select for an AccountRow, over `entity` (Account or an alias of it), in field order.

    `reads` narrows them for a caller that reads only these fields (and ACCOUNT_KEYS): the others are
    selected as NULL, so the row keeps its shape and positions while the database sends, and the driver
    decodes, nothing for them (a timestamp costs the driver more than the rest of a row). Such rows must
    not reach a loader or an ordinary resolver, which may read any field.
    """
    if reads is None:
        return [getattr(entity, name) for name in AccountRow._fields]
    keep = reads | ACCOUNT_KEYS
    return [getattr(entity, name) if name in keep else _absent(entity, name) for name in AccountRow._fields]


def pool_columns(narrow: bool = False) -> list[Any]:
    """The columns to select for a PoolRow, in field order; `narrow`: without what nothing shows (UNREAD)."""
    return [
        _absent(QuotaPool, name) if narrow and name in UNREAD else getattr(QuotaPool, name) for name in PoolRow._fields
    ]


def _absent(entity: Any, name: str) -> Any:
    """A NULL in place of `entity.name`, labelled after it (several entities' NULLs never collide)."""
    inspected = sa_inspect(entity)
    owner = inspected.name if inspected.is_aliased_class else inspected.class_.__name__
    return null().label(f"absent_{owner}_{name}")


ACCOUNT_WIDTH = len(AccountRow._fields)
POOL_WIDTH = len(PoolRow._fields)


def account_at(values: Sequence[Any], start: int) -> AccountRow | None:
    """The AccountRow in `values[start:]` (selected by `account_columns`), or None for an outer join's NULLs."""
    if values[start] is None:
        return None
    return AccountRow._make(values[start : start + ACCOUNT_WIDTH])


def pool_at(values: Sequence[Any], start: int) -> PoolRow | None:
    """The PoolRow in `values[start:]` (selected by `pool_columns`), or None for an outer join's NULLs."""
    if values[start] is None:
        return None
    return PoolRow._make(values[start : start + POOL_WIDTH])
