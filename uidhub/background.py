"""Background services of a server process: the email sender and housekeeping.

They run on `Database.background`, a small pool of their own: a burst of requests cannot starve them of
connections, and they cannot starve requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from notifications.outbox import OutboxSender
from notifications.webhooks import WebhookSender
from resolvers.quota import purge_expired

if TYPE_CHECKING:
    from uidhub.app import AppState

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 3600.0

Stop = Callable[[], Awaitable[None]]


async def start_outbox(state: AppState) -> Stop:
    """Every worker runs a sender; claims (SKIP LOCKED / leases) keep each email to one sender."""
    sender = OutboxSender(state.db.background, state.settings, state.bus)
    sender.start()
    return sender.stop


async def start_webhooks(state: AppState) -> Stop:
    """Every worker runs a webhook sender; endpoint leases (SKIP LOCKED) keep each delivery to one sender."""
    sender = WebhookSender(state.db.background, state.settings, state.bus)
    sender.start()
    return sender.stop


async def start_housekeeping(state: AppState) -> Stop:
    """Purges idempotency keys past their retention (never less than 24 hours)."""

    async def loop() -> None:
        while True:
            try:
                purged = await purge_expired(state.db.background, state.settings)
                if purged:
                    log.info("purged %d expired idempotency keys", purged)
            except Exception:
                log.exception("housekeeping failed; retrying later")
            await asyncio.sleep(HOUSEKEEPING_SECONDS)

    task = asyncio.create_task(loop(), name="uidhub-housekeeping")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
