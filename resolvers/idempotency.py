"""Idempotency keys: a repeat returns the first result; the same key with other input is a conflict.

The key row is inserted *before* the operation's change, in the same
transaction, with INSERT … ON CONFLICT DO NOTHING. On PostgreSQL a second
transaction inserting the same key waits on the first one's uncommitted row
and then finds it; on SQLite write transactions are serialised already. So
fifty concurrent repeats of one key apply the change exactly once.

The claim is the first lock of the order in `resolvers.locks`: a repeat
arriving while the first call is in flight waits on the key row holding no
other lock, then answers the first call's stored result. Should the first
transaction fail and roll back (its key row goes with it), one waiting repeat
takes the key and applies the change, and the first call's retry
(`schema.common.mutate`) replays that result: every call answers the same.
"""

from __future__ import annotations

import functools
import hashlib
import json
import typing
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, Table, bindparam, delete, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from uidhub.models import IdempotencyRecord
from uidhub.models.base import utcnow
from uidhub.models.enums import ErrorCode
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.errors import UserErrors

KEY_MAX = 200


def request_hash(operation: str, request: dict[str, Any]) -> str:
    canonical = json.dumps([operation, request], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: A statement that follows a new claim (one ORM entity, e.g. `accounts.find_query`'s) and its parameters.
Then = tuple[Select[Any], dict[str, Any]]


@dataclass
class Claim:
    """`replay` holds the first result when this is a repeat; otherwise call `complete` with the result.

    `found` is what the claim's `then` statement returned (None on a repeat, or when it found nothing).
    """

    record_id: int | None
    replay: dict[str, Any] | None
    found: Any = None

    @property
    def is_repeat(self) -> bool:
        return self.replay is not None


@functools.cache
def _claim_statement(postgres: bool) -> Any:
    """The claiming INSERT … ON CONFLICT DO NOTHING RETURNING id, built once per dialect (values are parameters)."""
    insert = pg_insert if postgres else sqlite_insert
    # The Core table, not the entity: an ORM-enabled INSERT goes through the bulk-persistence machinery, which
    # was a tenth of a balance change's CPU for one row whose only output is its id.
    table = typing.cast(Table, IdempotencyRecord.__table__)
    values = {name: bindparam(name, type_=table.c[name].type) for name in CLAIM_COLUMNS}
    return (
        insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["partner_id", "key"])
        .returning(table.c.id)
    )


@functools.lru_cache(maxsize=512)
def _claim_then_statement(then: Select[Any]) -> Select[Any]:
    """PostgreSQL: the claim and the statement that follows it as one statement (one round trip, not two).

    `WITH claim AS (INSERT … ON CONFLICT DO NOTHING RETURNING id) SELECT claim.id, found.* FROM claim LEFT JOIN
    LATERAL (then) found ON true`: the lateral side runs once per row of `claim`, so only after the key was
    inserted, and not at all on a repeat (no row) — the lock order of `resolvers.locks` holds (the key first,
    then whatever `then` locks, e.g. the account FOR SHARE). Cached per `then` statement (those are cached
    per viewer themselves).
    """
    claim_ = _claim_statement(True).cte("claim")
    found = then.subquery("found").lateral()
    entity = aliased(then.column_descriptions[0]["entity"], found)
    return (
        select(claim_.c.id, entity)
        .select_from(claim_)
        .outerjoin(found, true())
        .execution_options(populate_existing=True)  # a locking read: the rows as now, not as the session holds them
    )


#: What a claim writes: the key, what it is for, and an empty result until `complete` stores it.
CLAIM_COLUMNS = ("partner_id", "key", "operation", "request_hash", "response", "created_at")


async def claim(
    session: AsyncSession,
    actor: Actor,
    key: str,
    operation: str,
    request: dict[str, Any],
    *field: str,
    then: Then | None = None,
) -> Claim:
    """Reserve `key` for this operation and input, or return the stored first result.

    `then` runs right after a new claim, in the same transaction, and its entity lands in `Claim.found`: on
    PostgreSQL in the claim's own statement (`_claim_then_statement`), elsewhere as the next one.
    """
    if not key or len(key) > KEY_MAX:
        raise UserErrors.one(ErrorCode.INVALID_INPUT, f"idempotencyKey must be 1 to {KEY_MAX} characters.", *field)
    digest = request_hash(operation, request)
    postgres = session.get_bind().dialect.name == "postgresql"
    values = {
        "partner_id": actor.partner_id,
        "key": key,
        "operation": operation,
        "request_hash": digest,
        "response": {},
        "created_at": utcnow(),
    }
    if then is not None and postgres:
        row = (await session.execute(_claim_then_statement(then[0]), {**values, **then[1]})).first()
        if row is not None:
            return Claim(record_id=row[0], replay=None, found=row[1])
    else:
        inserted = await session.scalar(_claim_statement(postgres), values)
        if inserted is not None:
            found = await session.scalar(then[0], then[1]) if then is not None else None
            return Claim(record_id=inserted, replay=None, found=found)
    existing = await session.scalar(
        select(IdempotencyRecord).where(IdempotencyRecord.partner_id == actor.partner_id, IdempotencyRecord.key == key)
    )
    assert existing is not None
    if existing.request_hash != digest:
        raise UserErrors.one(
            ErrorCode.IDEMPOTENCY_CONFLICT,
            "This idempotency key was used before with a different input.",
            *field,
        )
    return Claim(record_id=None, replay=dict(existing.response))


async def complete(session: AsyncSession, claim_: Claim, response: dict[str, Any]) -> None:
    """Store the first result under the claimed key (same transaction as the change)."""
    if claim_.record_id is not None:
        await session.execute(
            update(IdempotencyRecord).where(IdempotencyRecord.id == claim_.record_id).values(response=response)
        )


async def purge(session: AsyncSession, older_than: timedelta) -> int:
    """Delete keys older than `older_than` (kept at least 24 hours)."""
    if older_than < timedelta(hours=24):
        raise ValueError("idempotency keys are kept at least 24 hours")
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.created_at < utcnow() - older_than)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
