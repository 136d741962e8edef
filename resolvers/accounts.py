"""Linked accounts: linking, basic info, the termination process, the list and the summary."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from models import Account, Partner, QuotaPool
from models import rules as R
from models.enums import (
    AccountStatus,
    AccountType,
    AuditAction,
    CreditControlStatus,
    ErrorCode,
    PaygFreezeStatus,
    PurchaseControl,
)
from models.money import format_money
from resolvers import audit, locks
from resolvers.actor import Actor, Permission
from resolvers.errors import UserError, UserErrors, invalid, not_found
from resolvers.pagination import (
    InvalidArgument,
    Page,
    check_first,
    check_list,
    decode_cursor,
    encode_cursor,
)

Master = aliased(Account, name="master_account")
UID_MAX = 64


# ---------------------------------------------------------------- lookups


async def find(
    session: AsyncSession, actor: Actor, uid: str, *, lock: bool = False, share: bool = False
) -> Account | None:
    """The account with `uid` if the actor may see it; None otherwise (another partner's is nonexistent).

    `lock` locks it FOR NO KEY UPDATE, `share` FOR SHARE (step 3 of the order in `resolvers.locks`).
    """
    query = select(Account).where(Account.uid == uid, actor.account_scope())
    if lock:
        query = locks.for_write(query)
    elif share:
        query = locks.for_share(query)
    return await session.scalar(query)


async def get(
    session: AsyncSession, actor: Actor, uid: str, *field_path: str, lock: bool = False, share: bool = False
) -> Account:
    account = await find(session, actor, uid, lock=lock, share=share)
    if account is None:
        raise not_found("account", uid, *field_path)
    return account


def visible(actor: Actor, account: Account | None) -> bool:
    """Whether `actor` may see `account`: `Actor.sees`, the one Python form of the tenancy rule."""
    return actor.sees(account)


def require_active(account: Account, *field_path: str) -> None:
    """TERMINATED and DELETED accounts take nothing but their next status change."""
    if not R.takes_changes(account.status):
        raise UserErrors.one(
            ErrorCode.ACCOUNT_NOT_ACTIVE,
            f"Account {account.uid} is {account.status.value} and takes no further changes.",
            *field_path,
        )


def check_text(
    errors: list[UserError], value: str | None, name: str, *, max_bytes: int | None = None,
    max_chars: int | None = None,
) -> None:
    if value is None:
        return
    problem = R.text_problem(value, max_bytes=max_bytes, max_chars=max_chars)
    if problem:
        errors.append(UserError(ErrorCode.INVALID_INPUT, f"{name} {problem}.", ("input", name)))


def check_uid(value: str, name: str) -> UserError | None:
    """A UID is an identifier: no whitespace (U+3000 and tabs included) and no control or format character anywhere."""
    if not value or len(value) > UID_MAX or any(_not_in_uid(c) for c in value):
        return UserError(
            ErrorCode.INVALID_INPUT,
            f"{name} must be 1 to {UID_MAX} characters without spaces or control characters.",
            ("input", name),
        )
    return None


def _not_in_uid(char: str) -> bool:
    """Whitespace, or a control (Cc), format (Cf, e.g. zero-width space) or surrogate (Cs) character."""
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs")


def check_email(value: str, *field_path: str) -> UserError | None:
    local, at, domain = value.partition("@")
    # isprintable() is False for every control character (NUL, BEL, ...) and every space but " ".
    if not at or not local or "." not in domain or len(value) > 254 or not value.isprintable() or " " in value:
        return UserError(ErrorCode.INVALID_INPUT, f"{value!r} is not an email address.", field_path or None)
    return None


# ---------------------------------------------------------------- snapshot for audit


def basic_info(account: Account) -> dict[str, Any]:
    return {
        "nickname": account.nickname,
        "businessManager": account.business_manager,
        "remarks": account.remarks,
    }


# ---------------------------------------------------------------- link


async def link_account(
    session: AsyncSession,
    actor: Actor,
    *,
    uid: str,
    account_type: AccountType,
    nickname: str | None,
    email: str | None,
    master_uid: str | None,
    quota_amount_cents: int | None,
) -> Account:
    from resolvers.quota import apply_quota_amount  # quota builds on accounts

    actor.require(Permission.LINK_ACCOUNT)
    errors: list[UserError] = []
    if (problem := check_uid(uid, "uid")) is not None:
        errors.append(problem)
    check_text(errors, nickname, "nickname", max_bytes=R.NICKNAME_MAX_BYTES)
    if email is not None and (problem := check_email(email, "input", "email")) is not None:
        errors.append(problem)
    if quota_amount_cents is not None:
        if (denial := actor.denial(Permission.QUOTA)) is not None:
            errors.append(UserError(ErrorCode.FORBIDDEN, denial, ("input", "quotaAmount")))
        elif quota_amount_cents < 0:
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, "quotaAmount must not be negative.", ("input", "quotaAmount"))
            )
        elif master_uid is not None:
            errors.append(
                UserError(
                    ErrorCode.QUOTA_MANAGED_BY_MASTER,
                    "A sub-account spends from its master's quota.",
                    ("input", "quotaAmount"),
                )
            )
    if errors:
        raise UserErrors(errors)

    master: Account | None = None
    if master_uid is not None:
        master = await find(session, actor, master_uid, lock=True)
        if master is None:
            raise not_found("account", master_uid, "input", "masterUid")
        if master.master_id is not None:
            raise invalid("A sub-account cannot have sub-accounts (one level only).", "input", "masterUid")
        require_active(master, "input", "masterUid")

    if await session.scalar(select(Account.id).where(Account.uid == uid)) is not None:
        raise UserErrors.one(ErrorCode.ALREADY_LINKED, f"UID {uid} is already linked.", "input", "uid")

    if master is not None:
        pool_id = master.pool_id
    else:
        pool = QuotaPool(partner_id=actor.partner_id)
        session.add(pool)
        await session.flush()
        pool_id = pool.id
    account = Account(
        partner_id=actor.partner_id,
        uid=uid,
        account_type=account_type,
        nickname=nickname,
        email=email,
        status=AccountStatus.NORMAL,
        master_id=master.id if master else None,
        pool_id=pool_id,
        payg_freeze=PaygFreezeStatus.NORMAL,
        purchase_control=PurchaseControl.NORMAL,
    )
    session.add(account)
    try:
        await session.flush()
    except IntegrityError:  # a concurrent link of the same UID won the race
        raise UserErrors.one(ErrorCode.ALREADY_LINKED, f"UID {uid} is already linked.", "input", "uid") from None
    audit.record(
        session,
        actor,
        account,
        AuditAction.ACCOUNT_LINKED,
        after={
            "uid": uid,
            "accountType": account_type.value,
            "nickname": nickname,
            "email": email,
            "masterUid": master.uid if master else None,
        },
    )
    if quota_amount_cents is not None:
        await apply_quota_amount(session, actor, account, quota_amount_cents)
    return account


# ---------------------------------------------------------------- basic info


async def update_basic_info(session: AsyncSession, actor: Actor, uid: str, changes: dict[str, str | None]) -> Account:
    """`changes` holds only the fields the input gave (None clears a field)."""
    actor.require(Permission.EDIT_BASIC_INFO)
    errors: list[UserError] = []
    if "businessManager" in changes and (denial := actor.denial(Permission.BUSINESS_MANAGER)) is not None:
        errors.append(UserError(ErrorCode.FORBIDDEN, denial, ("input", "businessManager")))
    check_text(errors, changes.get("nickname"), "nickname", max_bytes=R.NICKNAME_MAX_BYTES)
    check_text(errors, changes.get("businessManager"), "businessManager", max_chars=R.BUSINESS_MANAGER_MAX_CHARS)
    check_text(errors, changes.get("remarks"), "remarks", max_bytes=R.REMARKS_MAX_BYTES)
    if errors:
        raise UserErrors(errors)
    account = await get(session, actor, uid, "input", "uid", lock=True)
    require_active(account, "input", "uid")
    before = basic_info(account)
    if "nickname" in changes:
        account.nickname = changes["nickname"]
    if "businessManager" in changes:
        account.business_manager = changes["businessManager"]
    if "remarks" in changes:
        account.remarks = changes["remarks"]
    old, new = audit.diff(before, basic_info(account))
    if new:
        audit.record(session, actor, account, AuditAction.BASIC_INFO_UPDATED, before=old, after=new)
        await session.flush()
    return account


# ---------------------------------------------------------------- termination process


async def change_status(session: AsyncSession, actor: Actor, uid: str, target: AccountStatus) -> Account:
    actor.require(Permission.CHANGE_STATUS)
    found = await get(session, actor, uid, "input", "uid")
    # The account and, for a master, its sub-accounts (the cascade) in one statement in id order,
    # then the pool: the lock order of resolvers.locks.
    ids = [found.id]
    if found.master_id is None:
        ids += list((await session.scalars(select(Account.id).where(Account.master_id == found.id))).all())
    locked = await locks.lock_accounts(session, ids)
    account = locked[found.id]
    if actor.is_end_user and not (
        account.id == actor.account_id
        and account.status is AccountStatus.TO_BE_CONFIRMED
        and target is AccountStatus.IN_PROCESS
    ):
        raise UserErrors.one(
            ErrorCode.FORBIDDEN,
            "An end user may only confirm the termination of its own account (TO_BE_CONFIRMED → IN_PROCESS).",
            "input",
            "status",
        )
    if not R.can_transition(account.status, target):
        raise UserErrors.one(
            ErrorCode.INVALID_STATUS_TRANSITION,
            f"An account cannot move from {account.status.value} to {target.value}.",
            "input",
            "status",
        )
    if target is AccountStatus.TERMINATED:
        pool = await locks.lock_pool(session, account.pool_id)
        if R.has_outstanding_balance(pool.available_cents, pool.undeducted_cents):
            raise UserErrors.one(
                ErrorCode.OUTSTANDING_BALANCE,
                f"Account {uid} owes {format_money(max(0, -pool.available_cents))} and has "
                f"{format_money(pool.undeducted_cents)} consumed but not deducted; settle it first.",
                "input",
                "status",
            )
    previous = account.status
    account.status = target
    audit.record(
        session, actor, account, AuditAction.ACCOUNT_STATUS_CHANGED,
        before={"accountStatus": previous.value}, after={"accountStatus": target.value},
    )
    if account.master_id is None:
        subs = [row for row in locked.values() if row.master_id == account.id and row.status == previous]
        for sub in sorted(subs, key=lambda row: row.id):
            sub.status = target
            audit.record(
                session, actor, sub, AuditAction.ACCOUNT_STATUS_CHANGED,
                before={"accountStatus": previous.value}, after={"accountStatus": target.value},
                cascade_from=account,
            )
    await session.flush()
    return account


# ---------------------------------------------------------------- list


@dataclass
class EndUserQuery:
    """The `EndUserFilter` input, as plain values."""

    search: str | None = None
    uids: Sequence[str] | None = None
    account_types: Sequence[AccountType] | None = None
    account_statuses: Sequence[AccountStatus] | None = None
    payg_freeze_status: PaygFreezeStatus | None = None
    purchase_control: PurchaseControl | None = None
    credit_control_statuses: Sequence[CreditControlStatus] | None = None
    below_warning_level: bool | None = None
    business_manager: str | None = None
    linked_after: datetime | None = None
    linked_before: datetime | None = None
    include_sub_accounts: bool = True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
            elif isinstance(value, list | tuple):
                out[key] = [str(v) for v in value]
            elif value is not None:
                out[key] = str(value) if not isinstance(value, bool) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EndUserQuery:
        conv: dict[str, Any] = dict(data)
        enums = {
            "account_types": AccountType,
            "account_statuses": AccountStatus,
            "credit_control_statuses": CreditControlStatus,
        }
        for key, enum in enums.items():
            if conv.get(key) is not None:
                conv[key] = [enum(v) for v in conv[key]]
        if conv.get("payg_freeze_status") is not None:
            conv["payg_freeze_status"] = PaygFreezeStatus(conv["payg_freeze_status"])
        if conv.get("purchase_control") is not None:
            conv["purchase_control"] = PurchaseControl(conv["purchase_control"])
        for key in ("linked_after", "linked_before"):
            if conv.get(key) is not None:
                conv[key] = datetime.fromisoformat(conv[key])
        return cls(**conv)


@dataclass
class EndUserSort:
    field: str = "LINKED_AT"
    descending: bool = True


def available_expr() -> ColumnElement[int]:
    return QuotaPool.amount_cents - QuotaPool.deducted_cents - QuotaPool.undeducted_cents


def warning_level_expr() -> ColumnElement[int]:
    # Half-up rounding in integer arithmetic; amounts are never negative.
    # `//` is integer division on every backend (`/` is true division in SQLAlchemy 2: 500.5, not 500).
    return (QuotaPool.amount_cents * QuotaPool.warning_percent + 50) // 100


def below_warning_expr() -> ColumnElement[bool]:
    return and_(QuotaPool.warning_percent.is_not(None), available_expr() < warning_level_expr())


def frozen_expr() -> ColumnElement[bool]:
    # `Master.id IS NOT NULL AND …` keeps the condition two-valued without a master (outer join NULLs),
    # so that its negation (effective NORMAL) holds for standalone accounts too.
    return or_(
        Account.payg_freeze == PaygFreezeStatus.FROZEN,
        and_(Master.id.is_not(None), Master.payg_freeze == PaygFreezeStatus.FROZEN),
    )


def banned_expr() -> ColumnElement[bool]:
    return or_(
        Account.purchase_control == PurchaseControl.BANNED,
        and_(Master.id.is_not(None), Master.purchase_control == PurchaseControl.BANNED),
    )


def joined(query: Select[Any]) -> Select[Any]:
    return query.join(QuotaPool, QuotaPool.id == Account.pool_id).outerjoin(Master, Master.id == Account.master_id)


def counted(actor: Actor, f: EndUserQuery) -> Select[Any]:
    """COUNT of the accounts matching `f`, joining the pool and the master only when a condition reads them.

    The count runs on every list request with totalCount: without a policy or
    quota condition it is a plain indexed count over the partner's accounts.
    """
    query = select(func.count(Account.id))
    if f.credit_control_statuses or f.below_warning_level is not None:
        query = query.join(QuotaPool, QuotaPool.id == Account.pool_id)
    if f.payg_freeze_status is not None or f.purchase_control is not None:
        query = query.outerjoin(Master, Master.id == Account.master_id)
    return query.where(*filter_conditions(actor, f))


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: A search term is a prefix of a UID or part of a nickname or remarks: 200 characters is plenty,
#: and a 100,000-character LIKE pattern is refused by SQLite as "too complex".
MAX_SEARCH_CHARS = 200


def check_search(term: str | None) -> None:
    """BAD_USER_INPUT for a search term no stored text can match: too long, or with control characters."""
    if term is None:
        return
    if len(term) > MAX_SEARCH_CHARS:
        raise InvalidArgument(f"`search` takes at most {MAX_SEARCH_CHARS} characters.")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in term):  # NUL (PostgreSQL refuses it in text) and others
        raise InvalidArgument("`search` must not contain control characters.")


def filter_conditions(actor: Actor, f: EndUserQuery) -> list[ColumnElement[bool]]:
    check_list(f.uids, "uids")
    check_search(f.search)
    conditions: list[ColumnElement[bool]] = [actor.account_scope()]
    if f.search:
        term = _escape_like(f.search.lower())
        conditions.append(
            or_(
                func.lower(Account.uid).like(f"{term}%", escape="\\"),
                func.lower(Account.nickname).like(f"%{term}%", escape="\\"),
                func.lower(Account.remarks).like(f"%{term}%", escape="\\"),
            )
        )
    if f.uids is not None:
        conditions.append(Account.uid.in_(list(f.uids)))
    if f.account_types:
        conditions.append(Account.account_type.in_(list(f.account_types)))
    if f.account_statuses:
        conditions.append(Account.status.in_(list(f.account_statuses)))
    else:
        conditions.append(Account.status != AccountStatus.DELETED)
    if f.payg_freeze_status is not None:
        frozen = frozen_expr()
        conditions.append(frozen if f.payg_freeze_status is PaygFreezeStatus.FROZEN else ~frozen)
    if f.purchase_control is not None:
        banned = banned_expr()
        conditions.append(banned if f.purchase_control is PurchaseControl.BANNED else ~banned)
    if f.credit_control_statuses:
        conditions.append(QuotaPool.credit_control_status.in_(list(f.credit_control_statuses)))
    if f.below_warning_level is not None:
        below = below_warning_expr()
        conditions.append(below if f.below_warning_level else ~below)
    if f.business_manager is not None:
        conditions.append(Account.business_manager == f.business_manager)
    if f.linked_after is not None:
        conditions.append(Account.linked_at >= f.linked_after)
    if f.linked_before is not None:
        conditions.append(Account.linked_at < f.linked_before)
    if not f.include_sub_accounts:
        conditions.append(Account.master_id.is_(None))
    return conditions


def sort_expr(sort_field: str) -> ColumnElement[Any]:
    if sort_field == "LINKED_AT":
        return Account.linked_at
    if sort_field == "UID":
        return Account.uid
    if sort_field == "NICKNAME":
        return func.coalesce(Account.nickname, "")
    if sort_field == "AVAILABLE_QUOTA":
        return available_expr()
    raise InvalidArgument(f"Unknown order field {sort_field}.")


def _cursor_value(sort_field: str, value: Any) -> Any:
    if sort_field == "LINKED_AT":
        return value.isoformat()
    return value


def _parse_cursor_value(sort_field: str, value: Any) -> Any:
    try:
        if sort_field == "LINKED_AT":
            return datetime.fromisoformat(value)
        if sort_field == "AVAILABLE_QUOTA":
            if not isinstance(value, int):
                raise ValueError
            return value
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise InvalidArgument("`after` is not a valid cursor for this order.") from None


def filtered_query(actor: Actor, f: EndUserQuery, sort: EndUserSort) -> Select[Any]:
    """Every account matching the filter, in list order (the export reads the same query)."""
    key = sort_expr(sort.field)
    order = [key.desc(), Account.uid.desc()] if sort.descending else [key.asc(), Account.uid.asc()]
    return joined(select(Account, key.label("sort_key"))).where(*filter_conditions(actor, f)).order_by(*order)


async def list_end_users(
    session: AsyncSession,
    actor: Actor,
    *,
    first: int | None,
    after: str | None,
    f: EndUserQuery,
    sort: EndUserSort,
) -> Page[Account]:
    limit = check_first(first)
    cursor_kind = f"eu:{sort.field}:{'d' if sort.descending else 'a'}"
    position = decode_cursor(after, cursor_kind, 2)
    key = sort_expr(sort.field)
    # The pool and master are joined for filters and sorting anyway; selecting them
    # lets nested fields answer without loading them again.
    query = (
        filtered_query(actor, f, sort)
        .add_columns(QuotaPool, Master, Partner)
        .join(Partner, Partner.id == Account.partner_id)
    )
    if position is not None:
        value, uid = _parse_cursor_value(sort.field, position[0]), position[1]
        if not isinstance(uid, str):
            raise InvalidArgument("`after` is not a valid cursor.")
        if sort.descending:
            query = query.where(or_(key < value, and_(key == value, Account.uid < uid)))
        else:
            query = query.where(or_(key > value, and_(key == value, Account.uid > uid)))
    rows = (await session.execute(query.limit(limit + 1))).all()
    items = [row[0] for row in rows[:limit]]
    cursors = [
        encode_cursor(cursor_kind, [_cursor_value(sort.field, row[1]), row[0].uid]) for row in rows[:limit]
    ]

    async def count() -> int:
        return int(await session.scalar(counted(actor, f)) or 0)

    return Page(items=items, cursors=cursors, has_next=len(rows) > limit, has_previous=position is not None,
                count=count, related=[(row[2], row[3], row[4]) for row in rows[:limit]])


# ---------------------------------------------------------------- summary


@dataclass(frozen=True)
class Summary:
    accounts: int
    frozen: int
    purchase_banned: int
    shutdown: int
    below_warning_level: int
    total_quota_cents: int
    total_available_cents: int
    total_outstanding_cents: int


async def summary(session: AsyncSession, actor: Actor) -> Summary:
    """Portfolio totals over the visible, non-deleted accounts; money over pools (owners only)."""

    def count_if(cond: ColumnElement[bool]) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    owner = Account.master_id.is_(None)
    available = available_expr()
    query = joined(
        select(
            func.count(Account.id),
            count_if(frozen_expr()),
            count_if(banned_expr()),
            count_if(QuotaPool.credit_control_status == CreditControlStatus.SHUTDOWN),
            count_if(below_warning_expr()),
            func.coalesce(func.sum(case((owner, QuotaPool.amount_cents), else_=0)), 0),
            func.coalesce(func.sum(case((owner, available), else_=0)), 0),
            func.coalesce(func.sum(case((and_(owner, available < 0), -available), else_=0)), 0),
        )
    ).where(actor.account_scope(), Account.status != AccountStatus.DELETED)
    row = (await session.execute(query)).one()
    return Summary(*(int(v) for v in row))

