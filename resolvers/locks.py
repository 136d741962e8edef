"""The one lock order of every write transaction, and the helpers that take its locks.

On PostgreSQL two transactions that wait for each other's locks are a
deadlock: one of them is killed (DeadlockDetectedError). Every mutation
therefore takes its locks in this order, each step at most once, and the row
locks before any other write of the transaction:

1. **The idempotency key** (`resolvers.idempotency.claim`, INSERT … ON
   CONFLICT), when the operation has one. First, so that a repeat of a key in
   flight waits on the first transaction's uncommitted key row while holding
   nothing, and then replays its result.
2. **The partner row** (`lock_partner`; only `setAlertEmails` takes it).
3. **Account rows**, ascending id, in one statement (`lock_accounts`,
   `lock_account`). A master is linked before its sub-accounts, so its id is
   below theirs: a freeze of a master (master, then its subs) and a change of
   a sub-account (the master, then the sub) lock in the same order.
4. **The quota pool row** (`lock_pool`, or the atomic balance UPDATE of
   `resolvers.quota.balance_update`, which locks the row it updates).
5. Rows only ever written under their pool's lock (credit alerts).
6. **The log's advisory lock** (`notifications.log.flush_log`): the last
   statement before COMMIT. Its holder only inserts log rows, so it never
   waits for a row lock and no cycle can pass through it.

Rows are locked FOR NO KEY UPDATE, never FOR UPDATE; a row that is only read
to decide (an account whose status a quota change checks) is locked FOR
SHARE. Every inserted audit entry, ledger row, alert event or key row takes
FOR KEY SHARE on the account, pool and partner it references (the foreign
key check), and FOR UPDATE blocks FOR KEY SHARE: that is how the old code
deadlocked (a writer holding an account FOR UPDATE waited for the log lock
while the log lock's holder waited to insert an audit row for that account).
No key column of these tables is ever updated, so NO KEY UPDATE is all a
writer needs, and FOR KEY SHARE never waits for it.

What still fails (a deadlock through a path this order misses, a
serialization failure) is retried whole by `uidhub.db.retry_transaction`.
SQLite serialises write transactions with BEGIN IMMEDIATE; these clauses are
not emitted there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Account, Partner, QuotaPool

S = TypeVar("S", bound=Select[Any])


def for_write(query: S) -> S:
    """`query` locking its rows FOR NO KEY UPDATE (see the module docstring), refreshed from the database."""
    return query.with_for_update(key_share=True).execution_options(populate_existing=True)


def for_share(query: S) -> S:
    """`query` locking its rows FOR SHARE: read to decide, not written; blocks writers of the row until commit."""
    return query.with_for_update(read=True).execution_options(populate_existing=True)


async def lock_accounts(session: AsyncSession, ids: Sequence[int], *, share: bool = False) -> dict[int, Account]:
    """Lock these account rows in ascending id order (one statement) and return them fresh, by id."""
    query = select(Account).where(Account.id.in_(sorted(set(ids)))).order_by(Account.id)
    rows = (await session.scalars(for_share(query) if share else for_write(query))).all()
    return {row.id: row for row in rows}


async def lock_account(session: AsyncSession, account_id: int, *, share: bool = False) -> Account:
    """One account row, locked (step 3 of the order)."""
    account = (await lock_accounts(session, [account_id], share=share)).get(account_id)
    assert account is not None, "a visible account exists"
    return account


async def lock_pool(session: AsyncSession, pool_id: int) -> QuotaPool:
    """The pool row, locked until commit (step 4; SQLite holds the write lock already)."""
    pool = await session.scalar(for_write(select(QuotaPool).where(QuotaPool.id == pool_id)))
    assert pool is not None, "every account has a pool"
    return pool


async def lock_partner(session: AsyncSession, partner_id: int) -> Partner:
    """The partner row, locked until commit (step 2)."""
    partner = await session.scalar(for_write(select(Partner).where(Partner.id == partner_id)))
    assert partner is not None, "a token's partner exists"
    return partner
