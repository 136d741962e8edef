"""Bearer tokens: created once, stored as a SHA-256 hash, resolved to an Actor per request.

A token is 256 random bits, so a plain (unsalted) SHA-256 is the right hash:
no dictionary attack applies, and the lookup stays one indexed equality.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from uidhub.models import Account, ApiToken, Partner
from uidhub.models.base import utcnow
from uidhub.models.enums import OperationMethod, Role
from uidhub.resolvers.actor import Actor

TOKEN_PREFIX = "uh_"
#: Characters of a token kept in clear (`ApiToken.prefix`): "uh_" and 8 random characters (48 bits),
#: enough to tell tokens apart in `uidhub list-tokens`, far too few to guess the rest.
PREFIX_LENGTH = len(TOKEN_PREFIX) + 8
#: Shortest prefix `revoke-token --prefix` accepts.
MIN_PREFIX_LENGTH = len(TOKEN_PREFIX) + 4
#: Bus topic published after a revocation commits: servers re-check their open websockets at once.
REVOKED_TOPIC = "tokens:revoked"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def bearer(value: str | None) -> str | None:
    """The token of an `Authorization: Bearer …` value, or None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(session: AsyncSession, token: str | None) -> Actor | None:
    """The actor behind a token; None for a missing, unknown or revoked one."""
    if not token or len(token) > 200:
        return None
    row = (
        await session.execute(
            select(ApiToken, Partner)
            .join(Partner, Partner.id == ApiToken.partner_id)
            .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
        )
    ).first()
    if row is None:
        return None
    api_token, partner = row
    return Actor(
        partner_id=partner.id,
        partner_uid=partner.uid,
        partner_kind=partner.kind,
        role=api_token.role,
        method=api_token.method,
        operator_uid=api_token.operator_uid,
        operator_name=api_token.operator_name,
        is_ram=api_token.is_ram,
        account_id=api_token.account_id,
        token_id=api_token.id,
    )


class ActorCache:
    """Token hash → Actor for `ttl` seconds, so that a request does not pay a session and a query to authenticate.

    Revocation is honoured at once in the revoking process (`revoke_token` forgets the
    token in every cache of the process when its transaction commits), at once in every
    worker reached by the revocation's Redis wake-up (uidhub.tokenwatch clears the cache on
    each pass), and within `ttl` seconds everywhere else. Only valid tokens are kept (an
    unknown one is looked up every time); at most `size` of them, the oldest dropped first.
    A ttl of 0 switches the cache off.
    """

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: dict[str, tuple[float, Actor]] = {}
        _CACHES.add(self)

    def get(self, token_hash: str) -> Actor | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._entries.pop(token_hash, None)
            return None
        return entry[1]

    def put(self, token_hash: str, actor: Actor) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.size:  # dicts keep insertion order: the first key is the oldest
            self._entries.pop(next(iter(self._entries)))
        self._entries[token_hash] = (time.monotonic() + self.ttl, actor)

    def forget(self, token_hash: str) -> None:
        self._entries.pop(token_hash, None)

    def clear(self) -> None:
        self._entries.clear()


#: Every ActorCache of this process, for `revoke_token` to reach.
_CACHES: weakref.WeakSet[ActorCache] = weakref.WeakSet()


async def authenticate_cached(
    session_factory: Callable[[], AbstractAsyncContextManager[AsyncSession]], cache: ActorCache, token: str | None
) -> Actor | None:
    """`authenticate` through `cache`; `session_factory()` opens a read session only on a miss."""
    if not token or len(token) > 200:
        return None
    key = hash_token(token)
    actor = cache.get(key)
    if actor is not None:
        return actor
    async with session_factory() as session:
        actor = await authenticate(session, token)
    if actor is not None:
        cache.put(key, actor)
    return actor


async def create_token(
    session: AsyncSession,
    *,
    partner: Partner,
    role: Role,
    method: OperationMethod = OperationMethod.PLATFORM,
    operator_uid: str | None = None,
    operator_name: str | None = None,
    is_ram: bool = False,
    account: Account | None = None,
) -> str:
    """Create a token and return it in clear, the only time it is ever shown."""
    if method is OperationMethod.SYSTEM:
        raise ValueError("SYSTEM is not a token method")
    if role is Role.END_USER and account is None:
        raise ValueError("an END_USER token needs --account")
    if role is not Role.END_USER and account is not None:
        raise ValueError("--account is only for END_USER tokens")
    if account is not None and account.partner_id != partner.id:
        raise ValueError("that account is not linked to this partner")
    token = new_token()
    session.add(
        ApiToken(
            partner_id=partner.id,
            token_hash=hash_token(token),
            role=role,
            method=method,
            operator_uid=operator_uid or (account.uid if account else partner.uid),
            operator_name=operator_name or (account.nickname or account.uid if account else partner.name),
            is_ram=is_ram,
            account_id=account.id if account else None,
            prefix=token[:PREFIX_LENGTH],
        )
    )
    await session.flush()
    return token


# ---------------------------------------------------------------- listing and revoking


class TokenLookupError(ValueError):
    """No token, or more than one, matches what was asked for (the message says which)."""


@dataclass(frozen=True)
class TokenRow:
    """What `uidhub list-tokens` shows of a token: everything but its secret (of which only the hash is kept)."""

    id: int
    prefix: str | None
    partner_uid: str
    role: Role
    method: OperationMethod
    operator_uid: str
    operator_name: str
    is_ram: bool
    account_uid: str | None
    created_at: datetime
    revoked_at: datetime | None


async def list_tokens(
    session: AsyncSession, *, partner_uid: str | None = None, active_only: bool = False
) -> list[TokenRow]:
    """Every token (of one partner), oldest first."""
    owner = aliased(Account)
    query = (
        select(ApiToken, Partner.uid, owner.uid)
        .join(Partner, Partner.id == ApiToken.partner_id)
        .outerjoin(owner, owner.id == ApiToken.account_id)
        .order_by(ApiToken.id)
    )
    if partner_uid is not None:
        query = query.where(Partner.uid == partner_uid)
    if active_only:
        query = query.where(ApiToken.revoked_at.is_(None))
    return [
        TokenRow(
            id=t.id,
            prefix=t.prefix,
            partner_uid=p_uid,
            role=t.role,
            method=t.method,
            operator_uid=t.operator_uid,
            operator_name=t.operator_name,
            is_ram=t.is_ram,
            account_uid=a_uid,
            created_at=t.created_at,
            revoked_at=t.revoked_at,
        )
        for t, p_uid, a_uid in (await session.execute(query)).all()
    ]


async def find_token(session: AsyncSession, *, token_id: int | None = None, prefix: str | None = None) -> ApiToken:
    """The one token with this id, or whose prefix starts with `prefix` (a whole token is accepted too).

    A prefix matching several tokens is refused rather than guessed: revoke by id then.
    """
    if (token_id is None) == (prefix is None):
        raise TokenLookupError("give a token id or a prefix")
    if token_id is not None:
        found = await session.get(ApiToken, token_id, with_for_update=True)
        if found is None:
            raise TokenLookupError(f"no token with id {token_id}")
        return found
    assert prefix is not None
    value = prefix.strip()
    if len(value) > PREFIX_LENGTH:  # a whole token, pasted: its hash finds it exactly
        rows: Sequence[ApiToken] = (
            await session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(value)).with_for_update())
        ).all()
    elif len(value) < MIN_PREFIX_LENGTH or not value.startswith(TOKEN_PREFIX):
        raise TokenLookupError(
            f"a token prefix starts with {TOKEN_PREFIX!r} and has {MIN_PREFIX_LENGTH} to {PREFIX_LENGTH} characters"
        )
    else:
        # substr, not LIKE: "_" is both a LIKE wildcard and a character of tokens.
        rows = (
            await session.scalars(
                select(ApiToken)
                .where(func.substr(ApiToken.prefix, 1, len(value)) == value)
                .order_by(ApiToken.id)
                .with_for_update()
            )
        ).all()
    if not rows:
        raise TokenLookupError(f"no token with prefix {value[:PREFIX_LENGTH]!r}")
    if len(rows) > 1:
        ids = ", ".join(str(r.id) for r in rows)
        raise TokenLookupError(f"prefix {value!r} matches {len(rows)} tokens (ids {ids}); revoke by --id")
    return rows[0]


async def revoke_token(
    session: AsyncSession, *, token_id: int | None = None, prefix: str | None = None
) -> tuple[ApiToken, bool]:
    """Revoke a token: (the token, True) when this call revoked it, (token, False) when it already was.

    `authenticate` refuses a revoked token from the next request on; the caller publishes
    `REVOKED_TOPIC` after the commit so that servers close its open websockets (uidhub.tokenwatch).
    """
    token = await find_token(session, token_id=token_id, prefix=prefix)
    if token.revoked_at is not None:
        return token, False
    token.revoked_at = utcnow()
    await session.flush()
    revoked_hash = token.token_hash

    def forget(_session: Any) -> None:
        for cache in list(_CACHES):
            cache.forget(revoked_hash)

    # After the commit, not now: a request authenticating meanwhile would cache the still-valid row again.
    event.listen(session.sync_session, "after_commit", forget, once=True)
    return token, True
