"""End users (linked accounts): the type, the list, the summary, and their mutations."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account
from uidhub.models.enums import (
    AccountStatus,
    AccountType,
    AuditAction,
    BillingMethod,
    CreditControlStatus,
    PaygFreezeStatus,
    PurchaseControl,
)
from uidhub.models.rows import AccountLike, AccountRow, PoolLike
from uidhub.models.rules import PolicyView
from uidhub.resolvers import accounts as ops
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.audit import CURSOR_KIND as AUDIT_CURSOR
from uidhub.resolvers.pagination import Page, check_first, check_list, decode_id_cursor, page_of_rows
from uidhub.schema.audit import AuditEntryConnection
from uidhub.schema.common import INPUT_ARG, Node, PageInfo, UserError, mutate, to_global_id
from uidhub.schema.context import Info
from uidhub.schema.dataloaders import MISSING, peek
from uidhub.schema.partners import Partner
from uidhub.schema.policy import Instance, ShutdownPolicyState, load_policy_view
from uidhub.schema.quota import Quota
from uidhub.schema.registry import register_node
from uidhub.schema.scalars import Money

ARG_FIRST = strawberry.argument(description="Page size, at most 100.")
ARG_AFTER = strawberry.argument(description="Cursor of the last item seen (pageInfo.endCursor).")


@strawberry.type(description="The end user's own available credit alert.")
class CreditAlert:
    enabled: bool = strawberry.field(description="Whether the alert is on.")
    threshold: Money = strawberry.field(description="Alert when available falls below this amount.")
    email: str = strawberry.field(description="Where the alert email goes.")


async def _then(awaitable: Awaitable[Any], then: Callable[[Any], Any]) -> Any:
    return then(await awaitable)


def shown(row: AccountLike | None) -> EndUser | None:
    """The EndUser of a row that came through the viewer's scope (`Context.accounts`), or None."""
    return EndUser.of(row) if row is not None else None


async def scoped_end_user(info: Info, account_id: int | None) -> EndUser | None:
    """A nullable EndUser field: the account if the viewer may see it, else null (as if it did not exist)."""
    if account_id is None:
        return None
    return shown(await info.context.accounts.load(account_id))


async def required_end_user(info: Info, account_id: int) -> EndUser:
    """A non-null EndUser field: the account if the viewer may see it, else its limited view (`EndUser.limited`)."""
    row = await info.context.accounts.load(account_id)
    if row is not None:
        return EndUser.of(row)
    hidden = await info.context.loaders.account_row.load(account_id)
    if hidden is None:  # rows are never deleted; a guard, not a path
        raise LookupError(f"account {account_id} is missing")
    return EndUser.limited(hidden)


#: EndUser's plain fields and the account column each shows. `EndUser.of` copies these, and the compiled read
#: path (uidhub.compiled, its row plans) reads the same columns from a list's rows: one mapping for both.
END_USER_COLUMNS = {
    "uid": "uid",
    "account_type": "account_type",
    "nickname": "nickname",
    "business_manager": "business_manager",
    "remarks": "remarks",
    "email": "email",
    "account_status": "status",
    "linked_at": "linked_at",
}


def end_user_id(account_id: int) -> strawberry.ID:
    """EndUser.id: the account's global id."""
    return to_global_id("EndUser", account_id)


def quota_of(row: AccountLike, pool: PoolLike, pool_owner: int | None = None) -> Quota:
    """EndUser.quota: the pool the account spends from, owned by its master when it has one."""
    return Quota.of(pool, pool_owner or row.master_id or row.id)


def policy_of(row: AccountLike, master: AccountLike | None, pool: PoolLike) -> ShutdownPolicyState:
    """EndUser.policy: the account's own settings and the policy in force (its master's and its pool's)."""
    return ShutdownPolicyState.of(PolicyView.of(row, master, pool))


def visible_sub_accounts(actor: Actor, master: AccountLike, rows: Sequence[AccountRow]) -> list[AccountRow]:
    """EndUser.subAccounts: a master's sub-accounts the viewer may see; none for a sub-account."""
    if master.master_id is not None:
        return []
    return [r for r in rows if actor.sees(r)]


@strawberry.type(description="A linked end-user account (UID).")
class EndUser(Node):
    uid: str = strawberry.field(description="The account UID.")
    account_type: AccountType = strawberry.field(description="End user, enterprise or reseller.")
    nickname: str | None = strawberry.field(description="At most 150 bytes (UTF-8).")
    business_manager: str | None = strawberry.field(
        description="At most 50 characters. Not editable by AGENCY partners."
    )
    remarks: str | None = strawberry.field(description="At most 3000 bytes (UTF-8).")
    email: str | None = strawberry.field(description="Contact email given when linking.")
    account_status: AccountStatus = strawberry.field(description="Where the account is in the termination process.")
    linked_at: datetime = strawberry.field(description="When the account was linked to the partner.")
    _row: strawberry.Private[AccountLike]
    #: The limited view's pool owner (its placeholder row has id 0): `quota.account` stays limited, not missing.
    _pool_owner: strawberry.Private[int | None] = None

    @classmethod
    def of(cls, row: AccountLike) -> EndUser:
        # Plain attributes, copied once: a resolver function per scalar field costs
        # strawberry's resolver machinery on every one of thousands of fields in a list.
        return cls(
            id=end_user_id(row.id),
            _row=row,
            **{name: getattr(row, column) for name, column in END_USER_COLUMNS.items()},
        )

    @classmethod
    def limited(cls, row: AccountLike) -> EndUser:
        """What a viewer gets for an account outside its scope where the field cannot be null.

        `Quota.account` of a sub-account's pool is its master; an END_USER token
        of the sub-account may not see the master, so it gets a placeholder
        built from a row that holds none of the master's data: empty UID, no
        nickname, email, remarks or business manager, id 0 (node(id:) finds
        nothing), and nested fields that find nothing (no sub-accounts,
        instances, audit entries or credit alert, master null). Kept: the type,
        status, link time, own freeze and purchase settings and the pool, which
        the sub-account's own effective state already reflects.
        """
        view = cls.of(
            Account(
                id=0,
                partner_id=row.partner_id,
                uid="",
                account_type=row.account_type,
                nickname=None,
                business_manager=None,
                remarks=None,
                email=None,
                status=row.status,
                linked_at=row.linked_at,
                master_id=None,
                pool_id=row.pool_id,
                payg_freeze=row.payg_freeze,
                purchase_control=row.purchase_control,
            )
        )
        view._pool_owner = row.master_id or row.id
        return view

    # The next fields are plain functions that answer at once from rows the loaders
    # already hold (a list query primes pools and masters) and return an awaitable
    # only when something must still be loaded: an async resolver would cost an
    # asyncio task per field per row.

    @strawberry.field(description="The partner the account is linked to.")
    def partner(self, info: Info) -> Partner:
        loader = info.context.loaders.partner
        row = peek(loader, self._row.partner_id)
        if row is not MISSING:
            return Partner.of(row)
        return _then(loader.load(self._row.partner_id), Partner.of)  # type: ignore[return-value]

    @strawberry.field(description="The master account when this is a financial trusteeship sub-account.")
    def master(self, info: Info) -> EndUser | None:
        if self._row.master_id is None:
            return None
        accounts = info.context.accounts  # null when the master is outside the viewer's scope
        row = accounts.peek(self._row.master_id)
        if row is not MISSING:
            return shown(row)
        return _then(accounts.load(self._row.master_id), shown)  # type: ignore[return-value]

    @strawberry.field(description="Financial trusteeship sub-accounts spending from this account's pool.")
    async def sub_accounts(self, info: Info) -> list[EndUser]:
        if self._row.master_id is not None:
            return []
        rows = await info.context.loaders.sub_accounts.load(self._row.id)
        return [EndUser.of(r) for r in visible_sub_accounts(info.context.require_actor(), self._row, rows)]

    @strawberry.field(description="Own settings and the shutdown policy in force.")
    def policy(self, info: Info) -> ShutdownPolicyState:
        loaders = info.context.loaders
        pool = peek(loaders.pool, self._row.pool_id)
        master = peek(loaders.account_row, self._row.master_id) if self._row.master_id is not None else None
        if pool is not MISSING and master is not MISSING:
            return policy_of(self._row, master, pool)
        return _then(load_policy_view(info, self._row), ShutdownPolicyState.of)  # type: ignore[return-value]

    @strawberry.field(description="The quota pool this account spends from: a sub-account shares its master's.")
    def quota(self, info: Info) -> Quota:
        loader = info.context.loaders.pool
        pool = peek(loader, self._row.pool_id)
        if pool is not MISSING:
            return quota_of(self._row, pool, self._pool_owner)
        return _then(  # type: ignore[return-value]
            loader.load(self._row.pool_id), lambda p: quota_of(self._row, p, self._pool_owner)
        )

    @strawberry.field(description="The account's instances, newest first.")
    async def instances(
        self,
        info: Info,
        billing_method: Annotated[BillingMethod | None, strawberry.argument(description="Only this kind.")] = None,
    ) -> list[Instance]:
        rows = await info.context.loaders.instances.load(self._row.id)
        view = await load_policy_view(info, self._row)
        return [Instance.of(r, view) for r in rows if billing_method is None or r.billing_method is billing_method]

    @strawberry.field(description="The end user's own available credit alert.")
    async def credit_alert(self, info: Info) -> CreditAlert | None:
        row = await info.context.loaders.credit_alert.load(self._row.id)
        if row is None:
            return None
        return CreditAlert(enabled=row.enabled, threshold=Money(row.threshold_cents), email=row.email)

    @strawberry.field(description="This account's audit entries, newest first.")
    async def audit_entries(
        self,
        info: Info,
        first: Annotated[int | None, ARG_FIRST] = 20,
        after: Annotated[str | None, ARG_AFTER] = None,
        actions: Annotated[list[AuditAction] | None, strawberry.argument(description="Only these actions.")] = None,
    ) -> AuditEntryConnection:
        limit = check_first(first)
        check_list(actions, "actions")
        after_id = decode_id_cursor(after, AUDIT_CURSOR)
        rows, total = await info.context.loaders.audit_page.load(
            (self._row.id, limit, after_id, tuple(sorted(set(actions or []))))
        )
        return await AuditEntryConnection.of(page_of_rows(rows, limit, after_id, AUDIT_CURSOR, total))


@strawberry.type(description="An edge of an EndUserConnection.")
class EndUserEdge:
    cursor: str = strawberry.field(description="Pass as `after` to continue after this account.")
    node: EndUser = strawberry.field(description="The account.")


@strawberry.type(description="A page of end users.")
class EndUserConnection:
    edges: list[EndUserEdge] = strawberry.field(description="This page's accounts.")
    page_info: PageInfo = strawberry.field(description="Paging state.")
    _page: strawberry.Private[Page[AccountLike]]

    @strawberry.field(description="Accounts matching the filter, over all pages.")
    async def total_count(self) -> int:
        return await self._page.count()


@strawberry.input(description="Which accounts to list. Every condition given must hold.")
class EndUserFilter:
    search: str | None = strawberry.field(
        default=None, description="Matches a UID prefix, or a substring of nickname or remarks (case-insensitive)."
    )
    uids: list[str] | None = strawberry.field(default=None, description="Exactly these UIDs (at most 100).")
    account_types: list[AccountType] | None = strawberry.field(default=None, description="Any of these types.")
    account_statuses: list[AccountStatus] | None = strawberry.field(
        default=None, description="Any of these statuses; DELETED accounts are listed only when asked for."
    )
    payg_freeze_status: PaygFreezeStatus | None = strawberry.field(
        default=None, description="Effective status, master included."
    )
    purchase_control: PurchaseControl | None = strawberry.field(
        default=None, description="Effective status, master included."
    )
    credit_control_statuses: list[CreditControlStatus] | None = strawberry.field(
        default=None, description="Any of these credit control statuses."
    )
    below_warning_level: bool | None = strawberry.field(
        default=None, description="Accounts whose pool's available is below its warning level (or not)."
    )
    business_manager: str | None = strawberry.field(default=None, description="Exactly this business manager.")
    linked_after: datetime | None = strawberry.field(default=None, description="Linked at or after this time.")
    linked_before: datetime | None = strawberry.field(default=None, description="Linked before this time.")
    include_sub_accounts: bool | None = strawberry.field(
        default=True, description="False lists master and standalone accounts only."
    )

    def to_query(self) -> ops.EndUserQuery:
        return ops.EndUserQuery(
            search=self.search,
            uids=self.uids,
            account_types=self.account_types,
            account_statuses=self.account_statuses,
            payg_freeze_status=self.payg_freeze_status,
            purchase_control=self.purchase_control,
            credit_control_statuses=self.credit_control_statuses,
            below_warning_level=self.below_warning_level,
            business_manager=self.business_manager,
            linked_after=self.linked_after,
            linked_before=self.linked_before,
            include_sub_accounts=self.include_sub_accounts is not False,
        )


@strawberry.enum(description="What to sort end users by.")
class EndUserOrderField(Enum):
    LINKED_AT = strawberry.enum_value("LINKED_AT", description="Link time.")
    UID = strawberry.enum_value("UID", description="Account UID.")
    NICKNAME = strawberry.enum_value("NICKNAME", description="Nickname (accounts without one first).")
    AVAILABLE_QUOTA = strawberry.enum_value("AVAILABLE_QUOTA", description="Available quota of the account's pool.")


@strawberry.enum(description="Sort direction.")
class OrderDirection(Enum):
    ASC = strawberry.enum_value("ASC", description="Smallest first.")
    DESC = strawberry.enum_value("DESC", description="Largest first.")


@strawberry.input(description="Sort order of `endUsers`; ties are broken by UID in the same direction.")
class EndUserOrder:
    field: EndUserOrderField = strawberry.field(description="What to sort by.")
    direction: OrderDirection = strawberry.field(default=OrderDirection.ASC, description="Which way.")


@strawberry.type(description="Totals over the viewer's visible accounts (DELETED ones excluded).")
class PortfolioSummary:
    accounts: int = strawberry.field(description="Accounts.")
    frozen: int = strawberry.field(description="Accounts effectively PAYG-frozen.")
    purchase_banned: int = strawberry.field(description="Accounts effectively purchase-banned.")
    shutdown: int = strawberry.field(description="Accounts under credit control SHUTDOWN.")
    below_warning_level: int = strawberry.field(description="Accounts whose pool is below its warning level.")
    total_quota: Money = strawberry.field(description="Sum of quota amounts over pools.")
    total_available: Money = strawberry.field(description="Sum of available over pools.")
    total_outstanding: Money = strawberry.field(description="Sum of outstanding amounts over pools.")


# ---------------------------------------------------------------- inputs and payloads


@strawberry.type(description="Result of a mutation on one account.")
class EndUserPayload:
    end_user: EndUser | None = strawberry.field(description="The account after the change; null on errors.")
    user_errors: list[UserError] = strawberry.field(description="Why nothing changed; empty on success.")


def end_user_errors(errors: list[UserError]) -> EndUserPayload:
    return EndUserPayload(end_user=None, user_errors=errors)


@strawberry.input(description="Link a UID to the viewer's partner.")
class LinkAccountInput:
    uid: str = strawberry.field(description="The UID to link.")
    account_type: AccountType = strawberry.field(default=AccountType.END_USER, description="Kind of account.")
    nickname: str | None = strawberry.field(default=None, description="At most 150 bytes (UTF-8).")
    email: str | None = strawberry.field(default=None, description="Contact email.")
    master_uid: str | None = strawberry.field(
        default=None, description="Makes this a financial trusteeship sub-account of that master."
    )
    quota_amount: Money | None = strawberry.field(
        default=None, description="Initial quota amount: recorded as QUOTA_CREATE."
    )


@strawberry.input(description="Edit basic info; fields left out are unchanged, null clears a field.")
class UpdateBasicInfoInput:
    uid: str = strawberry.field(description="The account.")
    nickname: str | None = strawberry.field(default=strawberry.UNSET, description="At most 150 bytes (UTF-8).")
    business_manager: str | None = strawberry.field(
        default=strawberry.UNSET, description="At most 50 characters; not for AGENCY partners."
    )
    remarks: str | None = strawberry.field(default=strawberry.UNSET, description="At most 3000 bytes (UTF-8).")


@strawberry.input(description="Move an account along the termination process.")
class ChangeAccountStatusInput:
    uid: str = strawberry.field(description="The account (a master's change cascades to its sub-accounts).")
    status: AccountStatus = strawberry.field(description="The next status.")


# ---------------------------------------------------------------- root fields


async def end_user_page(
    info: Info,
    first: int | None,
    after: str | None,
    filter: EndUserFilter | None,
    order_by: EndUserOrder | None,
    related: bool = True,
    reads: frozenset[str] | None = None,
) -> Page[AccountLike]:
    """The page `endUsers` shows for these arguments; the compiled read path (uidhub.compiled) calls it too,
    with `related=False` when it selects nothing of the accounts' pools and masters and `reads` naming what
    it reads of the accounts (resolvers.accounts.list_end_users)."""
    sort = (
        ops.EndUserSort(field=order_by.field.name, descending=order_by.direction is OrderDirection.DESC)
        if order_by
        else ops.EndUserSort()
    )
    return await ops.list_end_users(
        await info.context.session(),
        info.context.require_actor(),
        first=first,
        after=after,
        f=filter.to_query() if filter else ops.EndUserQuery(),
        sort=sort,
        related=related,
        reads=reads,
    )


@strawberry.type
class AccountQueries:
    @strawberry.field(description="One account by UID; null when it does not exist or is not visible to you.")
    async def end_user(
        self, info: Info, uid: Annotated[str, strawberry.argument(description="The UID.")]
    ) -> EndUser | None:
        session = await info.context.session()
        row = await ops.find(session, info.context.require_actor(), uid)
        return EndUser.of(row) if row else None

    @strawberry.field(description="Your accounts, filtered and sorted (default LINKED_AT descending, then UID).")
    async def end_users(
        self,
        info: Info,
        first: Annotated[int | None, ARG_FIRST] = 20,
        after: Annotated[str | None, ARG_AFTER] = None,
        filter: Annotated[EndUserFilter | None, strawberry.argument(description="Which accounts.")] = None,
        order_by: Annotated[EndUserOrder | None, strawberry.argument(description="Sort order.")] = None,
    ) -> EndUserConnection:
        page = await end_user_page(info, first=first, after=after, filter=filter, order_by=order_by)
        loaders = info.context.loaders
        loaders.prime_accounts(page.items)
        # Not the partner: `EndUser.partner` loads it (once, batched) only when a query selects it.
        loaders.prime_related([pool for pool, _ in page.related], [master for _, master in page.related])
        return EndUserConnection(
            edges=[EndUserEdge(cursor=c, node=EndUser.of(r)) for r, c in zip(page.items, page.cursors, strict=True)],
            page_info=PageInfo.of(page),
            _page=page,
        )

    @strawberry.field(description="Totals over your accounts.")
    async def summary(self, info: Info) -> PortfolioSummary:
        session = await info.context.session()
        s = await ops.summary(session, info.context.require_actor())
        return PortfolioSummary(
            accounts=s.accounts,
            frozen=s.frozen,
            purchase_banned=s.purchase_banned,
            shutdown=s.shutdown,
            below_warning_level=s.below_warning_level,
            total_quota=Money(s.total_quota_cents),
            total_available=Money(s.total_available_cents),
            total_outstanding=Money(s.total_outstanding_cents),
        )


@strawberry.type
class AccountMutations:
    @strawberry.mutation(description="Link a UID (optionally as a sub-account of a master, with an initial quota).")
    async def link_account(self, info: Info, input: Annotated[LinkAccountInput, INPUT_ARG]) -> EndUserPayload:
        async def op(session: AsyncSession, actor: Actor) -> EndUserPayload:
            row = await ops.link_account(
                session,
                actor,
                uid=input.uid,
                account_type=input.account_type,
                nickname=input.nickname,
                email=input.email,
                master_uid=input.master_uid,
                quota_amount_cents=input.quota_amount,
            )
            return EndUserPayload(end_user=EndUser.of(row), user_errors=[])

        return await mutate(info, op, end_user_errors)

    @strawberry.mutation(description="Edit nickname, business manager and remarks.")
    async def update_basic_info(self, info: Info, input: Annotated[UpdateBasicInfoInput, INPUT_ARG]) -> EndUserPayload:
        changes = {
            name: value
            for name, value in (
                ("nickname", input.nickname),
                ("businessManager", input.business_manager),
                ("remarks", input.remarks),
            )
            if value is not strawberry.UNSET
        }

        async def op(session: AsyncSession, actor: Actor) -> EndUserPayload:
            row = await ops.update_basic_info(session, actor, input.uid, changes)
            return EndUserPayload(end_user=EndUser.of(row), user_errors=[])

        return await mutate(info, op, end_user_errors)

    @strawberry.mutation(description="Move an account along the termination process (cascades to sub-accounts).")
    async def change_account_status(
        self, info: Info, input: Annotated[ChangeAccountStatusInput, INPUT_ARG]
    ) -> EndUserPayload:
        async def op(session: AsyncSession, actor: Actor) -> EndUserPayload:
            row = await ops.change_status(session, actor, input.uid, input.status)
            return EndUserPayload(end_user=EndUser.of(row), user_errors=[])

        return await mutate(info, op, end_user_errors)


# ---------------------------------------------------------------- node(id:)


async def _resolve_end_user(info: Info, pk: int) -> EndUser | None:
    actor = info.context.require_actor()
    session = await info.context.session()
    row = await session.get(Account, pk)
    return EndUser.of(row) if row is not None and ops.visible(actor, row) else None


register_node("EndUser", _resolve_end_user)
