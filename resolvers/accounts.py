"""Linked accounts: linking, basic info, the termination process, the list and the summary."""

from __future__ import annotations

import functools
import sqlite3
import unicodedata
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Join,
    Select,
    String,
    and_,
    bindparam,
    case,
    column,
    false,
    func,
    or_,
    select,
    table,
    text,
    true,
    tuple_,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, aliased
from sqlalchemy.orm import join as orm_join
from sqlalchemy.sql.visitors import InternalTraversal, replacement_traverse
from sqlalchemy.types import NullType, TypeEngine

from uidhub.db import in_autocommit, invalidate, rows_of
from uidhub.models import Account, AccountListing, QuotaPool
from uidhub.models import rules as R
from uidhub.models.enums import (
    AccountStatus,
    AccountType,
    AuditAction,
    CreditControlStatus,
    ErrorCode,
    PaygFreezeStatus,
    PurchaseControl,
)
from uidhub.models.listing import status_counter, type_counter
from uidhub.models.money import format_money
from uidhub.models.rows import (
    ACCOUNT_WIDTH,
    POLICY_READS,
    POOL_WIDTH,
    AccountLike,
    AccountRow,
    PoolRow,
    account_at,
    account_columns,
    pool_at,
    pool_columns,
)
from uidhub.resolvers import audit, counters, locks
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.errors import UserError, UserErrors, invalid, not_found
from uidhub.resolvers.pagination import (
    InvalidArgument,
    LazyCursors,
    Page,
    check_first,
    check_list,
    decode_cursor,
)
from uidhub.resolvers.pool_amounts import apply_quota_amount

Master = aliased(Account, name="master_account")
UID_MAX = 64


# ---------------------------------------------------------------- lookups


async def find(
    session: AsyncSession, actor: Actor, uid: str, *, lock: bool = False, share: bool = False
) -> Account | None:
    """The account with `uid` if the actor may see it; None otherwise (another partner's is nonexistent).

    `lock` locks it FOR NO KEY UPDATE, `share` FOR SHARE (step 3 of the order in `resolvers.locks`).
    """
    return await session.scalar(_find_statement(actor.partner_id, actor.account_id, lock, share), {"find_uid": uid})


def find_query(
    actor: Actor, uid: str, *, lock: bool = False, share: bool = False
) -> tuple[Select[Any], dict[str, Any]]:
    """`find`'s statement and parameters, for a caller that runs them inside its own statement
    (`idempotency.claim(..., then=...)`): the same tenancy scope, one round trip fewer."""
    return _find_statement(actor.partner_id, actor.account_id, lock, share), {"find_uid": uid}


def found(account: Account | None, uid: str, *field_path: str) -> Account:
    """`account` as `find` returned it, or NOT_FOUND at `field_path` (what `get` raises)."""
    if account is None:
        raise not_found("account", uid, *field_path)
    return account


#: Statements kept per viewer (and filter and order): `page_statement`, `_find_statement`.
PAGE_STATEMENTS = 512


@functools.lru_cache(maxsize=PAGE_STATEMENTS)
def _find_statement(partner_id: int, account_id: int | None, lock: bool, share: bool) -> Select[Any]:
    """`find`'s statement per viewer and lock, the UID a parameter: built once (as `page_statement`), since
    building it cost more CPU than running it on every balance change."""
    query = select(Account).where(Account.uid == bindparam("find_uid"), Actor.scope_of(partner_id, account_id))
    if lock:
        return locks.for_write(query)
    if share:
        return locks.for_share(query)
    return query


async def get(
    session: AsyncSession, actor: Actor, uid: str, *field_path: str, lock: bool = False, share: bool = False
) -> Account:
    return found(await find(session, actor, uid, lock=lock, share=share), uid, *field_path)


def visible(actor: Actor, account: AccountLike | None) -> bool:
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
    errors: list[UserError],
    value: str | None,
    name: str,
    *,
    max_bytes: int | None = None,
    max_chars: int | None = None,
) -> None:
    if value is None:
        return
    problem = R.text_problem(value, max_bytes=max_bytes, max_chars=max_chars)
    if problem:
        errors.append(UserError(ErrorCode.INVALID_INPUT, f"{name} {problem}.", ("input", name)))


def check_uid(value: str, name: str) -> UserError | None:
    """A UID is an identifier: no whitespace (U+3000 and tabs included) and no control or format character anywhere."""
    # Printable ASCII without a space has none of those characters: the per-character test only for the rest.
    plain = value.isascii() and value.isprintable() and " " not in value
    if not value or len(value) > UID_MAX or (not plain and any(_not_in_uid(c) for c in value)):
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


def link_input_errors(
    actor: Actor,
    *,
    uid: str,
    nickname: str | None,
    email: str | None,
    master_uid: str | None,
    quota_amount_cents: int | None,
) -> list[UserError]:
    """What is wrong with a link request before the database is read (linkAccount and import-accounts)."""
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
    return errors


def master_problem(master: Account | None, master_uid: str) -> UserError | None:
    """Why `master` (the actor's account named `master_uid`, or None) cannot take a new sub-account."""
    try:
        if master is None:
            raise not_found("account", master_uid, "input", "masterUid")
        if master.master_id is not None:
            raise invalid("A sub-account cannot have sub-accounts (one level only).", "input", "masterUid")
        require_active(master, "input", "masterUid")
    except UserErrors as exc:
        return exc.errors[0]
    return None


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

    actor.require(Permission.LINK_ACCOUNT)
    errors = link_input_errors(
        actor, uid=uid, nickname=nickname, email=email, master_uid=master_uid, quota_amount_cents=quota_amount_cents
    )
    if errors:
        raise UserErrors(errors)

    master: Account | None = None
    if master_uid is not None:
        master = await find(session, actor, master_uid, lock=True)
        if (problem := master_problem(master, master_uid)) is not None:
            raise UserErrors([problem])

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
        session,
        actor,
        account,
        AuditAction.ACCOUNT_STATUS_CHANGED,
        before={"accountStatus": previous.value},
        after={"accountStatus": target.value},
    )
    if account.master_id is None:
        subs = [row for row in locked.values() if row.master_id == account.id and row.status == previous]
        for sub in sorted(subs, key=lambda row: row.id):
            sub.status = target
            audit.record(
                session,
                actor,
                sub,
                AuditAction.ACCOUNT_STATUS_CHANGED,
                before={"accountStatus": previous.value},
                after={"accountStatus": target.value},
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


# The list reads `account_listing` (models.listing): one trigger-maintained row per account carrying the
# pool's and the master's values the filters and orders need, indexed per order with the partner and the
# `uid` tie-breaker. Every order walks an index and stops after the page; `after` seeks with a row-value
# comparison on the same index, so a deep page costs what the first does.

L = AccountListing

#: Search terms this long or longer go through the trigram indexes; shorter ones scan (see `SearchMatch`).
TRIGRAM_MIN = 3


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _scan_binds(term: str) -> tuple[BindParameter[str], BindParameter[str]]:
    like = _escape_like(term.lower())
    return bindparam(None, f"{like}%", String()), bindparam(None, f"%{like}%", String())


def _scan_condition(
    prefix: BindParameter[Any], nickname: BindParameter[Any], remarks: BindParameter[Any], fold: bool = True
) -> ColumnElement[bool]:
    """UID prefix or nickname/remarks substring, case-insensitive: the reference semantics of `search`.

    `fold=False` (SQLite) compares the columns as they are: SQLite's LIKE already ignores ASCII case and its
    `lower()` folds nothing else, so `x LIKE p` is `lower(x) LIKE p` there, without a new string per row
    (for 11,111 matches at 1M, the narrowing went from 20–22 ms to 12–13 ms).
    """

    def folded(column: Any) -> Any:
        return func.lower(column) if fold else column

    return or_(
        folded(Account.uid).like(prefix, escape="\\"),
        folded(Account.nickname).like(nickname, escape="\\"),
        folded(Account.remarks).like(remarks, escape="\\"),
    )


class SearchMatch(ColumnElement[bool]):
    """`search` through the database's indexes, with the same results as `_scan_condition`.

    PostgreSQL: the UID prefix as ranges of a `varchar_pattern_ops` index (one per case spelling, see
    `case_variants`; ILIKE through a pg_trgm index past MAX_PREFIX_VARIANTS), nickname and remarks by
    ILIKE through pg_trgm GIN indexes. SQLite: the ids the FTS5 trigram table `account_search` matches
    (a superset: the term anywhere in any of the three columns), narrowed by `_scan_condition` to exactly
    its semantics. Terms shorter than `TRIGRAM_MIN` have no trigram: they use `_scan_condition` alone,
    which walks the partner's rows in list order (cheap when a 1–2 character term matches often, as it
    almost always does; a full scan of the partner when it matches nothing).

    Cacheable: the term's values are bind parameters built here and listed in `_traverse_internals`, so
    SQLAlchemy's compiled cache keys a statement on the term's *shape* (short or not, how many UID case
    spellings) and substitutes a new term's values on a cache hit. Before, the class opted out of caching
    and every search request compiled its whole statement again (about 10 ms of a 30 ms request).
    """

    # The key: the shape (what `_compile_search` renders depends on it), the table matched and the binds (their
    # values are extracted per statement, not keyed).
    _traverse_internals = [
        ("shape", InternalTraversal.dp_plain_obj),
        ("on_accounts", InternalTraversal.dp_boolean),
        ("binds", InternalTraversal.dp_clauseelement_tuple),
    ]
    # Untyped on purpose: a Boolean-typed element would be rendered `(…) = 1` on SQLite, which hides the
    # `account_id IN (…)` term from its planner.
    type = cast("TypeEngine[bool]", NullType())

    def __init__(self, term: str, on_accounts: bool = False) -> None:
        self.term = term
        # SQLite: match `accounts.id` rather than the listing's `account_id` (a query without the listing).
        self.on_accounts = on_accounts
        prefix, substring = _scan_binds(term)
        # The scan's binds (short terms, and SQLite's narrowing), one per use so that no dialect renders a bind twice.
        scan = (prefix, substring, bindparam(None, substring.value, String()))
        if len(term) < TRIGRAM_MIN:
            self.shape: tuple[Any, ...] = ("scan",)
            self.binds: tuple[BindParameter[Any], ...] = scan
            return
        like = _escape_like(term)
        variants = case_variants(term)
        # PostgreSQL's UID prefix: one literal_execute pattern per spelling (rendered inline at execution, so
        # the planner sees constant prefixes, see `_uid_prefix_pg`), or one ILIKE pattern past the limit.
        uid: tuple[BindParameter[str], ...] = (
            (bindparam(None, f"{like}%", String()),)
            if variants is None
            else tuple(bindparam(None, f"{_escape_like(v)}%", String(), literal_execute=True) for v in variants)
        )
        self.shape = ("index", variants is None, len(uid))
        phrase = bindparam(None, '"' + term.replace('"', '""') + '"', String())
        substrings = (bindparam(None, f"%{like}%", String()), bindparam(None, f"%{like}%", String()))
        self.binds = (*scan, phrase, *substrings, *uid)


@compiles(SearchMatch)
def _compile_search(element: SearchMatch, compiler: Any, **kw: Any) -> str:
    binds = element.binds
    scan = _scan_condition(binds[0], binds[1], binds[2], fold=compiler.dialect.name != "sqlite")
    if element.shape[0] == "scan":
        return f"({compiler.process(scan, **kw)})"
    phrase, nickname, remarks, *uid = binds[3:]
    if compiler.dialect.name == "postgresql":
        # The substrings first: PostgreSQL evaluates an OR in the order written, once per row the bitmaps
        # return (and again as a filter), and a common term's matches are nickname matches, which then cost one
        # ILIKE each instead of the up to 16 LIKEs of the UID spellings first (a third of the scan at 11,111
        # matches).
        expr = or_(
            Account.nickname.ilike(nickname, escape="\\"),
            Account.remarks.ilike(remarks, escape="\\"),
            _uid_prefix_pg(uid, trigram=element.shape[1]),
        )
        return f"({compiler.process(expr, **kw)})"
    fts = table("account_search", column("rowid"), column("account_search"))
    candidates = select(fts.c.rowid).where(fts.c.account_search.op("MATCH")(phrase))
    matched = Account.id if element.on_accounts else L.account_id
    return f"({compiler.process(and_(matched.in_(candidates), scan), **kw)})"


#: Case variants of a UID prefix searched through the pattern index before falling back to the trigram index.
MAX_PREFIX_VARIANTS = 16


def case_variants(term: str) -> list[str] | None:
    """Every ASCII upper/lower spelling of `term`, or None when there are too many or it is not ASCII.

    A case-insensitive prefix is then a handful of case-sensitive prefixes, each a range of the
    `varchar_pattern_ops` index on `accounts.uid` (PostgreSQL): exact, and O(log n + matches).
    """
    if not term.isascii():
        return None
    variants = [""]
    for ch in term:
        spellings = sorted({ch.lower(), ch.upper()})
        if len(variants) * len(spellings) > MAX_PREFIX_VARIANTS:
            return None
        variants = [v + c for v in variants for c in spellings]
    return variants


def _uid_prefix_pg(patterns: Sequence[BindParameter[str]], trigram: bool) -> ColumnElement[bool]:
    """A case-insensitive UID prefix on PostgreSQL, from `SearchMatch`'s binds."""
    if trigram:
        return Account.uid.ilike(patterns[0], escape="\\")  # the trigram index
    # Inlined patterns (literal_execute): the planner sees a constant prefix on every execution, which is what
    # lets it turn LIKE into an index range even under a generic prepared-statement plan. (No ESCAPE clause:
    # backslash is LIKE's default escape, and a constant pattern is what the planner needs.)
    return or_(*(Account.uid.like(pattern) for pattern in patterns))


def _flag(column: ColumnElement[bool] | InstrumentedAttribute[bool], value: bool) -> ColumnElement[bool]:
    # `= true` / `= 1`, never `IS TRUE`: the partial indexes' predicates are spelled that way.
    return column == (true() if value else false())


def needs_account(actor: Actor, f: EndUserQuery) -> bool:
    """Whether the conditions read `accounts` (the rest live on the listing row)."""
    return bool(actor.account_id is not None or f.search or f.business_manager is not None)


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


def filter_conditions(actor: Actor | _Viewer, f: EndUserQuery) -> list[ColumnElement[bool]]:
    check_list(f.uids, "uids")
    check_search(f.search)
    conditions: list[ColumnElement[bool]] = [L.partner_id == actor.partner_id]
    if actor.account_id is not None:
        conditions.append(actor.account_scope())
    if f.search:
        conditions.append(SearchMatch(f.search))
    if f.uids is not None:
        conditions.append(L.uid.in_(list(f.uids)))
    if f.account_types:
        conditions.append(L.account_type.in_(list(f.account_types)))
    if f.account_statuses:
        conditions.append(L.status.in_(list(f.account_statuses)))
    else:
        conditions.append(L.status != AccountStatus.DELETED)
    if f.payg_freeze_status is not None:
        conditions.append(_flag(L.frozen, f.payg_freeze_status is PaygFreezeStatus.FROZEN))
    if f.purchase_control is not None:
        conditions.append(_flag(L.banned, f.purchase_control is PurchaseControl.BANNED))
    if f.credit_control_statuses:
        statuses = set(f.credit_control_statuses)
        conditions.append(L.credit_control_status.in_(sorted(statuses)))
        if statuses == {CreditControlStatus.SHUTDOWN}:
            conditions.append(_flag(L.shutdown, True))  # implied; lets the partial index serve it
    if f.below_warning_level is not None:
        conditions.append(_flag(L.below_warning, f.below_warning_level))
    if f.business_manager is not None:
        conditions.append(Account.business_manager == f.business_manager)
    if f.linked_after is not None:
        conditions.append(L.linked_at >= f.linked_after)
    if f.linked_before is not None:
        conditions.append(L.linked_at < f.linked_before)
    if not f.include_sub_accounts:
        conditions.append(L.master_id.is_(None))
    return conditions


def counted(actor: Actor, f: EndUserQuery) -> Select[Any]:
    """COUNT of the accounts matching `f` over the listing, joining `accounts` only when a condition reads it."""
    query = select(func.count()).select_from(L)
    if needs_account(actor, f):
        query = query.join(Account, Account.id == L.account_id)
    return query.where(*filter_conditions(actor, f))


def counter_shape(actor: Actor, f: EndUserQuery) -> tuple[tuple[str, ...], str | None] | None:
    """(counters to add, counter to subtract) answering the count of `f` from the partner's counters, or None.

    Unfiltered, masters only, one effective flag (freeze, ban, credit SHUTDOWN, below warning) either way,
    or one dimension of statuses (`accountStatuses`) or of types (`accountTypes`) alone. Every other
    combination (two of these at once, masters only with a filter, search, uids, businessManager, link-time
    ranges, an END_USER's own view) is an exact COUNT over the listing: see the README's "Large partners".
    """
    if actor.account_id is not None or f.search or f.uids is not None:
        return None
    if f.business_manager is not None or f.linked_after is not None or f.linked_before is not None:
        return None
    flags: list[tuple[str, bool]] = []
    if f.payg_freeze_status is not None:
        flags.append(("frozen", f.payg_freeze_status is PaygFreezeStatus.FROZEN))
    if f.purchase_control is not None:
        flags.append(("banned", f.purchase_control is PurchaseControl.BANNED))
    if f.credit_control_statuses:
        statuses = set(f.credit_control_statuses)
        if statuses == {CreditControlStatus.SHUTDOWN}:
            flags.append(("shutdown", True))
        elif statuses == {CreditControlStatus.NORMAL, CreditControlStatus.ARREARS_NOT_SHUTDOWN}:
            flags.append(("shutdown", False))
        elif statuses != set(CreditControlStatus):
            return None
    if f.below_warning_level is not None:
        flags.append(("below_warning", f.below_warning_level))
    dimensions = len(flags) + bool(f.account_statuses) + bool(f.account_types) + (not f.include_sub_accounts)
    if dimensions > 1:
        return None
    if f.account_statuses:
        return tuple(status_counter(s) for s in sorted(set(f.account_statuses))), None
    if f.account_types:
        return tuple(type_counter(t) for t in sorted(set(f.account_types))), None
    if not f.include_sub_accounts:
        return ("owners",), None
    if not flags:
        return ("accounts",), None
    name, value = flags[0]
    return ((name,), None) if value else (("accounts",), name)


@asynccontextmanager
async def _search_indexes(session: AsyncSession, f: EndUserQuery) -> AsyncIterator[None]:
    """On PostgreSQL, keep a search on its trigram and pattern indexes for the statements inside.

    The planner prices a bitmap OR of three GIN scans above a sequential scan of `accounts` up to a few
    hundred thousand rows; the scan then costs O(accounts) on every keystroke of a search box, where the
    indexes cost O(matches). Every other statement of a list request is an index lookup anyway. In a
    transaction the setting is SET LOCAL (it ends with the transaction); a session without one
    (`Database.session(autocommit=True)`) sets it for the connection and resets it after the statements,
    and a connection whose reset did not happen is invalidated rather than handed to the next request.
    """
    if not (f.search and len(f.search) >= TRIGRAM_MIN and session.get_bind().dialect.name == "postgresql"):
        yield
        return
    if not in_autocommit(session):
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        yield
        return
    await session.execute(text("SET enable_seqscan = off"))
    reset = False
    try:
        yield
        await session.execute(text("RESET enable_seqscan"))
        reset = True
    finally:
        if not reset:
            await invalidate(session)


async def count_matching(session: AsyncSession, actor: Actor, f: EndUserQuery) -> int:
    """totalCount: from the maintained counters when they answer the shape, else an indexed COUNT."""
    shape = counter_shape(actor, f)
    if shape is None:
        async with _search_indexes(session, f):
            return int(await session.scalar(counted(actor, f)) or 0)
    values = await counters.totals(session, actor.partner_id)
    plus, minus = shape
    return sum(getattr(values, name) for name in plus) - (getattr(values, minus) if minus else 0)


def sort_expr(sort_field: str) -> ColumnElement[Any] | InstrumentedAttribute[Any]:
    if sort_field == "LINKED_AT":
        return L.linked_at
    if sort_field == "UID":
        return L.uid
    if sort_field == "NICKNAME":
        return L.nickname_key
    if sort_field == "AVAILABLE_QUOTA":
        return L.available_cents
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
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError
            return value
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise InvalidArgument("`after` is not a valid cursor for this order.") from None


def _order(sort: EndUserSort, key: Any = None, uid_key: Any = None) -> list[ColumnElement[Any]]:
    """The list order; `key`/`uid_key` replace the listing's sort and uid columns (a search's candidates)."""
    uid_col = L.uid if uid_key is None else uid_key
    keys = [uid_col] if sort.field == "UID" else [sort_expr(sort.field) if key is None else key, uid_col]
    return [k.desc() for k in keys] if sort.descending else [k.asc() for k in keys]


def _after(sort: EndUserSort, value: Any, uid: str, key: Any = None, uid_key: Any = None) -> ColumnElement[bool]:
    """Rows after the cursor: one row-value comparison, which both databases seek with the order's index."""
    uid_col = L.uid if uid_key is None else uid_key
    if sort.field == "UID":
        return uid_col < uid if sort.descending else uid_col > uid
    key = sort_expr(sort.field) if key is None else key
    left = tuple_(key, uid_col)
    right = tuple_(bindparam(None, value, type_=key.type), bindparam(None, uid, type_=L.uid.type))
    return left < right if sort.descending else left > right


@functools.cache
def _listed() -> Join:
    """The listing joined to its accounts, pools and masters: what every list query reads FROM.

    Built once (SQLAlchemy spends ~60 µs on these three ORM joins): a list request's statement
    is this plus its columns, conditions, order and limit.
    """
    return (
        orm_join(L, Account, Account.id == L.account_id)
        .join(QuotaPool, QuotaPool.id == L.pool_id)
        .outerjoin(Master, Master.id == L.master_id)
    )


@functools.cache
def _listed_accounts() -> Join:
    """The listing joined to its accounts only: enough FROM for a page that shows nothing of pools or masters.

    Every filter condition, order and cursor reads the listing and the account alone (the listing carries the
    pool's and master's values they need), and every account has a pool, so leaving the two joins out changes
    no row: it only spares the database two index lookups per row.
    """
    return orm_join(L, Account, Account.id == L.account_id)


@functools.cache
def _page_select(sort_field: str, related: bool, reads: frozenset[str] | None = None) -> Select[Any]:
    """A list page's columns (`_page_columns`) over `_listed` (`_listed_accounts` when not `related`), per
    order and shape; built once each."""
    columns = _page_columns(sort_expr(sort_field).label("sort_key"), related, reads)
    return select(*columns).select_from(_listed() if related else _listed_accounts())


def filtered_query(actor: Actor, f: EndUserQuery, sort: EndUserSort) -> Select[Any]:
    """Every account matching the filter, in list order (the export reads the same query)."""
    key = sort_expr(sort.field)
    return (
        select(Account, key.label("sort_key"))
        .select_from(_listed())
        .where(*filter_conditions(actor, f))
        .order_by(*_order(sort))
    )


#: A PostgreSQL trigram search matching at most this many accounts is listed from its matches (see
#: `candidates_query`). Walking an order's index instead visits about page × accounts / matches rows when
#: the matches are spread evenly, and far more when they cluster (a nickname "Customer 77…" matches one run of
#: link order): the candidates cost O(matches) whatever their spread, ~100 ms for 20,000 of them on the bench
#: machine, and past this many matches a walk finds a page within ~page × accounts / 20,000 rows on average.
SEARCH_CANDIDATES_MAX = 20_000


#: Listing columns and their twins in `accounts`: the triggers of migration 0004_scale copy them in the same
#: statement, so a condition or order reads the same values from either.
ACCOUNT_TWINS: dict[str, Any] = {
    "account_id": Account.id,
    "partner_id": Account.partner_id,
    "pool_id": Account.pool_id,
    "master_id": Account.master_id,
    "uid": Account.uid,
    "account_type": Account.account_type,
    "status": Account.status,
    "linked_at": Account.linked_at,
    "nickname_key": func.coalesce(Account.nickname, ""),
}


def _on_accounts(expressions: Sequence[Any]) -> list[Any] | None:
    """`expressions` with every listing column replaced by its `accounts` twin, or None when one reads a column
    only the listing has (a pool's amounts, an effective freeze or ban)."""
    listing = cast(Any, L.__table__)
    missing = False

    def twin(element: Any, **_kw: Any) -> Any:
        nonlocal missing
        if isinstance(element, SearchMatch):
            return SearchMatch(element.term, on_accounts=True)
        if getattr(element, "table", None) is listing:
            if element.name not in ACCOUNT_TWINS:
                missing = True
                return None
            return ACCOUNT_TWINS[element.name].expression
        return None

    out: list[Any] = []
    for expression in expressions:
        element: ColumnElement[Any] = expression.expression if hasattr(expression, "expression") else expression
        out.append(replacement_traverse(element, {}, twin))
    return None if missing else out


def _trigram_search(session: AsyncSession, f: EndUserQuery) -> bool:
    """A search listed from its candidates (`candidates_query`): a term with trigrams, on PostgreSQL, and on
    SQLite from 3.35 (`AS MATERIALIZED`)."""
    if not f.search or len(f.search) < TRIGRAM_MIN:
        return False
    return session.get_bind().dialect.name == "postgresql" or sqlite3.sqlite_version_info >= (3, 35, 0)


def candidates_query(
    actor: Actor,
    f: EndUserQuery,
    sort: EndUserSort,
    limit: int,
    after: tuple[Any, str] | None,
    related: bool = True,
    reads: frozenset[str] | None = None,
) -> Select[Any]:
    """A search's count and page in one statement, from its matches (PostgreSQL, and SQLite's FTS5 search).

    The matches (at most SEARCH_CANDIDATES_MAX + 1 of them: a MATERIALIZED CTE, filled through the trigram
    and pattern indexes or the FTS5 table for a selective term, by a bounded walk for a common one) are
    counted, and sorted and
    cut to the page on their own keys before they are joined to their accounts, pools and masters. Every row
    carries the count first; a page with no rows is one row of count and NULLs. When the count is at most
    SEARCH_CANDIDATES_MAX it is the exact totalCount and the rows are the page; past it, the caller walks the
    order's index instead.

    Sorting the CTE's columns is what keeps the planner from walking an order's index and testing every
    row against the search (which it prices as if the matches were spread evenly through the order).
    """
    key = sort_expr(sort.field)
    conditions = filter_conditions(actor, f)
    on_accounts = _on_accounts([key, *conditions])
    if on_accounts is not None:
        # Every condition and the sort key read columns `accounts` has too: the matches come from the rows the
        # search's recheck reads anyway, with no listing lookup per match (three quarters of a common term's
        # cost at a million accounts).
        account_key, *account_conditions = on_accounts
        candidates = select(Account.id.label("account_id"), account_key.label("sort_key"), Account.uid.label("uid"))
        candidates = candidates.where(*account_conditions)
    else:
        candidates = (
            select(L.account_id.label("account_id"), key.label("sort_key"), L.uid.label("uid"))
            .select_from(L)
            .join(Account, Account.id == L.account_id)
            .where(*conditions)
        )
    matches = candidates.limit(SEARCH_CANDIDATES_MAX + 1).cte("search_matches").prefix_with("MATERIALIZED")
    total = select(func.count().label("matched")).select_from(matches).subquery("search_total")
    page = select(matches).order_by(*_order(sort, matches.c.sort_key, matches.c.uid)).limit(limit)
    if after is not None:
        page = page.where(_after(sort, after[0], after[1], matches.c.sort_key, matches.c.uid))
    rows = page.subquery("search_page")
    return (
        select(total.c.matched, *_page_columns(rows.c.sort_key, related, reads))
        .select_from(total)
        .outerjoin(rows, true())
        .outerjoin(Account, Account.id == rows.c.account_id)
        .outerjoin(QuotaPool, QuotaPool.id == Account.pool_id)
        .outerjoin(Master, Master.id == Account.master_id)
        .order_by(*_order(sort, rows.c.sort_key, rows.c.uid))
    )


def _page_columns(sort_key: Any, related: bool = True, reads: frozenset[str] | None = None) -> list[Any]:
    """A list row: the account, its sort key, and (`related`) its pool and its master, as columns (models.rows).

    `reads` (see `list_end_users`) narrows the account to those fields, the master to what a policy reads
    of it and the pool to what is shown.
    """
    columns = [*account_columns(Account, reads), sort_key]
    if not related:
        return columns
    narrow = reads is not None
    return [*columns, *pool_columns(narrow), *account_columns(Master, POLICY_READS if narrow else None)]


def _page_row(values: Sequence[Any]) -> tuple[AccountRow, Any, PoolRow | None, AccountRow | None]:
    """(account, sort key, pool, master or None) of a row selected by `_page_columns`; no pool when not related."""
    account = account_at(values, 0)
    assert account is not None  # the page's own rows: never NULL
    if len(values) == ACCOUNT_WIDTH + 1:
        return account, values[ACCOUNT_WIDTH], None, None
    pool = pool_at(values, ACCOUNT_WIDTH + 1)
    assert pool is not None  # an inner join
    return account, values[ACCOUNT_WIDTH], pool, account_at(values, ACCOUNT_WIDTH + 1 + POOL_WIDTH)


#: The masters-only partial index of each order that has one (models.listing).
OWNER_INDEXES = {
    "LINKED_AT": "ix_account_listing_owner_linked",
    "AVAILABLE_QUOTA": "ix_account_listing_owner_available",
}


def _owner_index(f: EndUserQuery, sort_field: str) -> str | None:
    """The masters-only partial index SQLite must walk for `f` (includeSubAccounts: false), or None.

    Why: SQLite's planner walks the full (partner, order, uid) index and skips sub-accounts rather than take
    the partial index of the same order, whatever the statistics say. When the newest accounts are sub-accounts
    (a partner that linked its masters first, then their sub-accounts: the bench's 1M data) a page walked
    every one of them: 41–47 ms at a million accounts against 0.4 ms through the partial index. PostgreSQL
    picks the partial index itself (the hint is SQLite's only). Left to the planner when another condition
    has an index of its own (a flag, account types, UIDs, a search) or the order has no masters-only index.
    """
    if f.include_sub_accounts or sort_field not in OWNER_INDEXES:
        return None
    flagged = (
        f.payg_freeze_status is PaygFreezeStatus.FROZEN
        or f.purchase_control is PurchaseControl.BANNED
        or bool(f.credit_control_statuses)
        or f.below_warning_level is True
    )
    if flagged or f.account_types or f.uids is not None or f.search:
        return None
    return OWNER_INDEXES[sort_field]


def query_key(f: EndUserQuery) -> tuple[Any, ...]:
    """`f` as a hashable value (its sequences as tuples): a key of `page_statement`'s cache."""
    return tuple(tuple(v) if isinstance(v, list | tuple) else v for v in vars(f).values())


@functools.lru_cache(maxsize=PAGE_STATEMENTS)
def page_statement(
    partner_id: int, account_id: int | None, f_key: tuple[Any, ...], sort_field: str, descending: bool
) -> Any:
    """The page statements of one (viewer, filter, order), as a function of (related, reads, cursor, limit).

    Building a list statement (conditions, order, SQLAlchemy's cache key over ~40 columns) cost more CPU than
    running it. The same viewer asking the same first page again -- a dashboard's refresh, another page
    size -- gets the same statement object back, whose cache key SQLAlchemy has memoized: one dictionary
    lookup to its compiled form. A page after a cursor reuses the conditions and the order and adds its
    cursor to a new statement, which is not kept (a cursor is rarely asked twice, and a deep-paging client
    must not fill memory with them). Conditions are `filter_conditions` itself (tenancy included): nothing
    about scope is decided here.
    """
    f = EndUserQuery(*f_key)
    sort = EndUserSort(field=sort_field, descending=descending)
    conditions = filter_conditions(_Viewer(partner_id, account_id), f)
    order = _order(sort)

    owner_index = _owner_index(f, sort_field)

    def page_select(related: bool, reads: frozenset[str] | None) -> Select[Any]:
        query = _page_select(sort_field, related, reads)
        return query if owner_index is None else query.with_hint(L, f"INDEXED BY {owner_index}", "sqlite")

    @functools.lru_cache(maxsize=16)
    def first_page(related: bool, reads: frozenset[str] | None, limit: int) -> Select[Any]:
        # The pool and master are joined anyway; selecting them lets nested fields answer without loading them
        # again. Plain rows, not entities: see models.rows.
        return page_select(related, reads).where(*conditions).order_by(*order).limit(limit)

    def statement(
        related: bool, reads: frozenset[str] | None, start: tuple[Any, str] | None, limit: int
    ) -> Select[Any]:
        if start is None:
            return first_page(related, reads, limit)
        query = page_select(related, reads).where(*conditions, _after(sort, *start))
        return query.order_by(*order).limit(limit)

    return statement


@dataclass(frozen=True)
class _Viewer:
    """What `filter_conditions` reads of an Actor (its tenancy), so that a cached statement depends on nothing else."""

    partner_id: int
    account_id: int | None

    def account_scope(self, entity: Any = Account) -> ColumnElement[bool]:
        return Actor.scope_of(self.partner_id, self.account_id, entity)


async def list_end_users(
    session: AsyncSession,
    actor: Actor,
    *,
    first: int | None,
    after: str | None,
    f: EndUserQuery,
    sort: EndUserSort,
    related: bool = True,
    reads: frozenset[str] | None = None,
) -> Page[AccountLike]:
    """One page of the viewer's accounts matching `f`, in `sort` order, after the cursor `after`.

    `related=False` leaves each account's pool and master out (`Page.related` then holds Nones): the compiled
    read path asks for that when the query selects nothing of them. `reads` (the compiled read path's row
    plans) names the AccountRow fields the caller reads of the page's accounts: the others come back as None
    (models.rows.account_columns), and such rows must not be handed to loaders or ordinary resolvers.
    """
    limit = check_first(first)
    cursor_kind = f"eu:{sort.field}:{'d' if sort.descending else 'a'}"
    position = decode_cursor(after, cursor_kind, 2)
    start: tuple[Any, str] | None = None
    if position is not None:
        value, uid = _parse_cursor_value(sort.field, position[0]), position[1]
        if not isinstance(uid, str):
            raise InvalidArgument("`after` is not a valid cursor.")
        start = (value, uid)
    matched: int | None = None
    rows: Sequence[Any] | None = None
    async with _search_indexes(session, f):
        if _trigram_search(session, f):
            found = await rows_of(session, candidates_query(actor, f, sort, limit + 1, start, related, reads))
            if int(found[0][0]) <= SEARCH_CANDIDATES_MAX:
                matched = int(found[0][0])
                rows = [row[1:] for row in found if row[1] is not None]
        if rows is None:
            query = page_statement(actor.partner_id, actor.account_id, query_key(f), sort.field, sort.descending)
            rows = await rows_of(session, query(related, reads, start, limit + 1))
    page = [_page_row(row) for row in rows[: limit + 1]]
    items: list[AccountLike] = [account for account, _, _, _ in page[:limit]]
    field = sort.field
    cursors = LazyCursors(cursor_kind, len(items), lambda i: [_cursor_value(field, page[i][1]), items[i].uid])

    async def count() -> int:
        if matched is not None:
            return matched  # counted with the page, exactly
        return await count_matching(session, actor, f)

    return Page(
        items=items,
        cursors=cursors,
        has_next=len(rows) > limit,
        has_previous=position is not None,
        count=count,
        related=[(pool, master) for _, _, pool, master in page[:limit]],
    )


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
    """Portfolio totals over the visible, non-deleted accounts; money over pools (owners only).

    A partner-wide actor reads the counters the database maintains (one small indexed SUM, whatever the
    number of accounts); an END_USER sees its own account and its subs, a handful of rows: aggregated.
    """
    if actor.account_id is not None:
        return await aggregate_summary(session, actor)
    t = await counters.totals(session, actor.partner_id)
    return Summary(
        t.accounts,
        t.frozen,
        t.banned,
        t.shutdown,
        t.below_warning,
        t.total_quota_cents,
        t.total_available_cents,
        t.total_outstanding_cents,
    )


async def aggregate_summary(session: AsyncSession, actor: Actor) -> Summary:
    """The summary aggregated from the rows themselves: the definition the counters must always equal."""

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
