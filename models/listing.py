"""What the account list reads at scale: one listing row per account, and per-partner counters.

`account_listing` holds, next to each account's keys, the values the list
filters and sorts on that live elsewhere: its pool's available amount, quota,
credit control and warning side, and its effective (master-inherited) freeze
and purchase control. `partner_account_counters` holds what `summary` and an
unfiltered, one-flag, one-status or one-type `totalCount` report.

Neither is written from Python. Database triggers created by migration
0004_scale (uidhub/migrations/versions/0004_scale.py) keep both in step with every
write to `accounts` and `quota_pools`, inside the statement that makes the
write: no write path can forget them, and they commit or roll back with it.
The listing is a table of its own rather than columns on `accounts` so that
a pool update refreshing its accounts' listing rows never waits for the
account row locks that `placeOrder` and the policy operations take before
they lock the pool (accounts → pool is the lock order; pool → listing never
crosses it).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from uidhub.models.base import Base, BigId, UTCDateTime
from uidhub.models.enums import AccountStatus, AccountType, CreditControlStatus
from uidhub.models.tables import enum_col


def _keyset(name: str, key: str, where: str | None = None, sqlite_where: str | None = None) -> Index:
    """An index serving one list order: the partner, the sort key and the `uid` tie-breaker of the keyset cursor.

    `where` makes it partial (PostgreSQL spelling; `sqlite_where` when SQLite spells it
    differently: a boolean column reads `frozen = 1` there, which is what the query renders).
    """
    kwargs: dict[str, object] = {}
    if where is not None:
        kwargs = {"postgresql_where": text(where), "sqlite_where": text(sqlite_where or where)}
    return Index(name, "partner_id", key, "uid", **kwargs)  # type: ignore[arg-type]


#: Orders of `endUsers` and the listing column each sorts on.
ORDER_KEYS = {"LINKED_AT": "linked_at", "UID": None, "NICKNAME": "nickname_key", "AVAILABLE_QUOTA": "available_cents"}

#: Boolean listing columns a filter can ask for, each with a partial index in the default order.
FLAG_COLUMNS = ("frozen", "banned", "shutdown", "below_warning")


class AccountListing(Base):
    """One row per account (trigger-maintained; see the module docstring)."""

    __tablename__ = "account_listing"
    __table_args__ = (
        Index("ix_account_listing_pool", "pool_id"),
        _keyset("ix_account_listing_linked", "linked_at"),
        Index("ix_account_listing_uid", "partner_id", "uid"),
        _keyset("ix_account_listing_nickname", "nickname_key"),
        _keyset("ix_account_listing_available", "available_cents"),
        # includeSubAccounts: false by available quota (the list page's default) and by link time. By UID and
        # nickname, masters walk the index above and skip sub-accounts: each index here costs every write.
        _keyset("ix_account_listing_owner_available", "available_cents", "master_id IS NULL"),
        _keyset("ix_account_listing_owner_linked", "linked_at", "master_id IS NULL"),
        # One account type in the default order.
        Index("ix_account_listing_type", "partner_id", "account_type", "linked_at", "uid"),
        # The flag filters in the default order.
        *(_keyset(f"ix_account_listing_{flag}", "linked_at", flag, f"{flag} = 1") for flag in FLAG_COLUMNS),
    )

    account_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    partner_id: Mapped[int] = mapped_column(BigId)
    pool_id: Mapped[int] = mapped_column(BigId)
    master_id: Mapped[int | None] = mapped_column(BigId)
    uid: Mapped[str] = mapped_column(String(64))
    account_type: Mapped[AccountType] = mapped_column(enum_col(AccountType))
    status: Mapped[AccountStatus] = mapped_column(enum_col(AccountStatus))
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: coalesce(nickname, ''): the NICKNAME order (accounts without one first).
    nickname_key: Mapped[str] = mapped_column(String(150))
    #: The pool's amount − deducted − undeducted (the master's pool for a sub-account).
    available_cents: Mapped[int] = mapped_column(BigInteger)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    credit_control_status: Mapped[CreditControlStatus] = mapped_column(enum_col(CreditControlStatus))
    shutdown: Mapped[bool] = mapped_column(Boolean)
    below_warning: Mapped[bool] = mapped_column(Boolean)
    #: Effective PAYG freeze / purchase ban: the account's own or its master's.
    frozen: Mapped[bool] = mapped_column(Boolean)
    banned: Mapped[bool] = mapped_column(Boolean)


class PartnerAccountCounters(Base):
    """Per-partner totals over the partner's non-deleted accounts (trigger-maintained).

    The totals of a partner are the SUM of its rows. SQLite keeps one row per
    partner (writers are serialised anyway). PostgreSQL appends one delta row
    per statement that moves a total, so that concurrent writers never queue on
    one hot row (nor deadlock through it); readers fold the deltas back into one
    row now and then (resolvers.listing.compact_counters).
    """

    __tablename__ = "partner_account_counters"
    __table_args__ = (Index("ix_partner_account_counters_partner", "partner_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(BigId)
    accounts: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Masters and standalone accounts (the count of includeSubAccounts: false).
    owners: Mapped[int] = mapped_column(BigInteger, default=0)
    frozen: Mapped[int] = mapped_column(BigInteger, default=0)
    banned: Mapped[int] = mapped_column(BigInteger, default=0)
    shutdown: Mapped[int] = mapped_column(BigInteger, default=0)
    below_warning: Mapped[int] = mapped_column(BigInteger, default=0)
    total_quota_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    total_available_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    total_outstanding_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    # Per status (DELETED included) and per type (non-deleted only, as the list shows them): the totalCount of
    # exactly one `accountStatuses` or `accountTypes` filter (migration 0005_status_type_counters).
    status_normal: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    status_to_be_confirmed: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    status_in_process: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    status_terminated: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    status_deleted: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    type_end_user: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    type_enterprise: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    type_reseller: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


def status_counter(status: AccountStatus) -> str:
    """The counters column of one account status."""
    return f"status_{status.value.lower()}"


def type_counter(account_type: AccountType) -> str:
    """The counters column of one account type."""
    return f"type_{account_type.value.lower()}"


# Search indexes on PostgreSQL: pg_trgm GIN indexes on accounts.uid, nickname and remarks, and a
# varchar_pattern_ops index on uid for prefixes. SQLite searches through the FTS5 table `account_search`.
# Migration 0004_scale creates them with raw DDL (the extension must exist first), so they are not part of
# this metadata: `Base.metadata.create_all` stays usable on a database without pg_trgm.
#: The trigram GIN indexes (whose pending lists an import merges: uidhub.import_accounts.flush_search_pending).
TRIGRAM_INDEXES = ("ix_accounts_nickname_trgm", "ix_accounts_remarks_trgm", "ix_accounts_uid_trgm")
POSTGRES_ONLY_INDEXES = frozenset({*TRIGRAM_INDEXES, "ix_accounts_uid_pattern"})


def include_in_schema_compare(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic `include_object`: leave out what the models cannot describe on both databases.

    The FTS5 table `account_search` and its shadow tables exist on SQLite only, and the trigram and
    pattern indexes on PostgreSQL only; migration 0004_scale creates both with raw DDL.
    """
    if type_ == "table" and name is not None and name.startswith("account_search"):
        return False
    return not (type_ == "index" and name in POSTGRES_ONLY_INDEXES)
