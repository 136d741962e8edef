"""Background services of a server process: the email sender, housekeeping and temporary credit reverts.

They run on `Database.background`, a small pool of their own: a burst of requests cannot starve them of
connections, and they cannot starve requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from uidhub.notifications.outbox import OutboxSender
from uidhub.notifications.webhooks import WebhookSender
from uidhub.resolvers.quota import purge_expired
from uidhub.resolvers.tempcredit import TemporaryCreditWorker
from uidhub.resolvers.thresholds import evaluate_forecasts

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


async def start_temporary_credits(state: AppState) -> Stop:
    """Reverts lapsed temporary credits: its first pass runs now (those that lapsed while the server was down).

    Every worker runs one; each revert claims its grant under the pool lock, so none is reverted twice.
    """
    worker = TemporaryCreditWorker(state.db.background, poll_seconds=state.settings.temporary_credit_poll_seconds)
    worker.start()
    return worker.stop


async def start_forecast_alerts(state: AppState) -> Stop:
    """Re-evaluates RUNS_OUT_WITHIN_DAYS thresholds every `forecast_alert_seconds`.

    Every worker runs it: each pool is evaluated under its row lock with guarded crossings
    (resolvers.thresholds.evaluate_forecasts), so a crossing is stored once however many workers look.
    """

    async def loop() -> None:
        while True:
            await asyncio.sleep(state.settings.forecast_alert_seconds)
            try:
                stored = await evaluate_forecasts(state.db.background)
                if stored:
                    log.info("forecast pass stored %d alert events", stored)
            except Exception:
                log.exception("forecast pass failed; retrying later")

    task = asyncio.create_task(loop(), name="uidhub-forecast-alerts")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
