"""Threshold alerts: crossing detection, events and the emails they queue."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from models import QuotaPool


async def evaluate_pool(session: AsyncSession, pool: QuotaPool) -> None:
    """Store BREACHED/RECOVERED events for crossings of `pool` (filled in by the alerts work)."""
    return None
