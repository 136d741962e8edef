"""Bearer tokens: created once, stored as a SHA-256 hash, resolved to an Actor per request.

A token is 256 random bits, so a plain (unsalted) SHA-256 is the right hash:
no dictionary attack applies, and the lookup stays one indexed equality.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Account, ApiToken, Partner
from models.enums import OperationMethod, Role
from resolvers.actor import Actor

TOKEN_PREFIX = "uh_"


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
        )
    )
    await session.flush()
    return token
