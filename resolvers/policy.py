"""Shutdown policy, freeze, purchase control and credit control."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from models import QuotaPool


async def recompute_credit_control(session: AsyncSession, pool: QuotaPool) -> None:
    """Apply the credit control table to `pool` (filled in by the policy work)."""
    return None
