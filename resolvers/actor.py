"""Who acts: the operator behind a bearer token, and what its role may do."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from sqlalchemy import ColumnElement, or_

from uidhub.models import Account
from uidhub.models.enums import OperationMethod, PartnerKind, Role
from uidhub.models.rows import AccountLike
from uidhub.resolvers.errors import Forbidden


class Permission(Enum):
    READ = auto()
    LINK_ACCOUNT = auto()
    EDIT_BASIC_INFO = auto()
    CHANGE_STATUS = auto()
    POLICY = auto()
    QUOTA = auto()
    CONSUMPTION = auto()
    REPAY = auto()
    ORDER = auto()
    CREDIT_ALERT = auto()
    ALERT_EMAILS = auto()
    EXPORT = auto()
    WEBHOOKS = auto()
    #: Setting the business manager (basic info beyond nickname and remarks).
    BUSINESS_MANAGER = auto()
    #: Asking whether an order would be allowed (purchaseCheck).
    PURCHASE_CHECK = auto()


_ALL = frozenset(Role)
_EDITORS = frozenset({Role.ADMIN, Role.OPERATOR})

#: The role table of RULES.md. END_USER's own-account limits are applied by `scope`.
ROLE_PERMISSIONS: dict[Permission, frozenset[Role]] = {
    Permission.READ: _ALL,
    Permission.EXPORT: _ALL,
    Permission.LINK_ACCOUNT: _EDITORS,
    Permission.EDIT_BASIC_INFO: _EDITORS,
    Permission.CHANGE_STATUS: _EDITORS | {Role.END_USER},
    Permission.POLICY: _EDITORS,
    Permission.QUOTA: _EDITORS,
    Permission.REPAY: _EDITORS,
    Permission.CONSUMPTION: _EDITORS | {Role.BILLING},
    Permission.ORDER: _EDITORS | {Role.BILLING},
    Permission.CREDIT_ALERT: _EDITORS | {Role.END_USER},
    Permission.ALERT_EMAILS: frozenset({Role.ADMIN}),
    Permission.WEBHOOKS: frozenset({Role.ADMIN}),
    Permission.BUSINESS_MANAGER: _EDITORS,
    Permission.PURCHASE_CHECK: _ALL,
}

#: What an AGENCY partner may not do at all, whatever the role (RULES.md).
AGENCY_FORBIDDEN = frozenset(
    {
        Permission.CHANGE_STATUS,
        Permission.POLICY,
        Permission.QUOTA,
        Permission.REPAY,
        Permission.CONSUMPTION,
        Permission.ORDER,
        Permission.BUSINESS_MANAGER,
    }
)

#: What an AGENCY partner's tokens may not do, END_USER tokens included.
AGENCY_FORBIDDEN_TO_ALL = frozenset({Permission.PURCHASE_CHECK})

AGENCY_RULE = "Agency partners may only link accounts and edit nickname and remarks."
#: Why an agency may not, per permission (AGENCY_RULE otherwise).
_AGENCY_REASONS = {
    Permission.QUOTA: "Agency partners may not set quotas.",
    Permission.BUSINESS_MANAGER: "Agency partners may edit nickname and remarks only.",
    Permission.PURCHASE_CHECK: "Agency partners may not check or place orders.",
    Permission.ORDER: "Agency partners may not check or place orders.",
}


@dataclass(frozen=True)
class Actor:
    partner_id: int
    partner_uid: str
    partner_kind: PartnerKind
    role: Role
    method: OperationMethod
    operator_uid: str
    operator_name: str
    is_ram: bool
    #: The END_USER token's own account; None for every other role.
    account_id: int | None = None
    token_id: int | None = None

    @property
    def is_end_user(self) -> bool:
        return self.role is Role.END_USER

    def can(self, permission: Permission) -> bool:
        return self.role in ROLE_PERMISSIONS[permission] and not self._agency_forbids(permission)

    def _agency_forbids(self, permission: Permission) -> bool:
        """The AGENCY rule of RULES.md, the one place it is decided."""
        if self.partner_kind is not PartnerKind.AGENCY:
            return False
        if permission in AGENCY_FORBIDDEN_TO_ALL:
            return True
        # An agency's own end users still confirm terminations and set their alerts.
        return permission in AGENCY_FORBIDDEN and self.role is not Role.END_USER

    def denial(self, permission: Permission) -> str | None:
        """Why this actor may not use `permission`, for a FORBIDDEN error or userError; None when it may."""
        if self.role not in ROLE_PERMISSIONS[permission]:
            return f"The {self.role.value} role may not perform this operation."
        if self._agency_forbids(permission):
            return _AGENCY_REASONS.get(permission, AGENCY_RULE)
        return None

    def require(self, permission: Permission) -> None:
        reason = self.denial(permission)
        if reason is not None:
            raise Forbidden(reason)

    # The tenancy rule lives in the next two methods and nowhere else: every query,
    # loader, subscription and export that reaches an account goes through one of
    # them (SQL for queries, Python for rows already loaded by id), so the two
    # forms cannot drift apart unnoticed (tests/test_scope_walk.py checks they agree).

    def account_scope(self, entity: Any = Account) -> ColumnElement[bool]:
        """The accounts this actor may see, as SQL over `entity` (Account or an alias of it).

        Its partner's accounts; an END_USER token only its own account and that
        account's sub-accounts (never its master, never a sibling).
        """
        return self.scope_of(self.partner_id, self.account_id, entity)

    @staticmethod
    def scope_of(partner_id: int, account_id: int | None, entity: Any = Account) -> ColumnElement[bool]:
        """`account_scope` of the actor with this partner and (END_USER) account: what statements cached per
        viewer (resolvers.accounts.page_statement) are built from."""
        condition = entity.partner_id == partner_id
        if account_id is not None:
            condition = condition & or_(entity.id == account_id, entity.master_id == account_id)
        return condition

    def sees(self, account: AccountLike | None) -> bool:
        """The Python twin of `account_scope`, for rows reached by id (loaders, node(id:), nested fields)."""
        if account is None or account.partner_id != self.partner_id:
            return False
        return self.account_id is None or self.account_id in (account.id, account.master_id)

    def operator_fields(self) -> dict[str, object]:
        """The operator columns shared by audit entries and quota records."""
        return {
            "operator_uid": self.operator_uid,
            "operator_name": self.operator_name,
            "operator_is_ram": self.is_ram,
            "operator_role": self.role,
        }
