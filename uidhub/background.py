"""Background work of a server process, started from one list (`STARTERS`) by the app's lifespan.

The email outbox, webhook deliveries, housekeeping, temporary credit reverts, forecast thresholds and the
export worker. They run on `Database.background`, a small pool of their own: a burst of requests cannot
starve them of connections, and they cannot starve requests. Each starter returns its stop function.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from uidhub.db import Database
from uidhub.export_worker import ExportWorker
from uidhub.models import TemporaryCredit
from uidhub.models.base import utcnow
from uidhub.models.enums import TemporaryCreditStatus
from uidhub.notifications.outbox import OutboxSender
from uidhub.notifications.webhooks import WebhookSender
from uidhub.resolvers.quota import purge_expired
from uidhub.resolvers.tempcredit import revert
from uidhub.resolvers.thresholds import evaluate_forecasts
from uidhub.transactions import retry_transaction

if TYPE_CHECKING:
    from uidhub.runtime import Runtime

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 3600.0

Stop = Callable[[], Awaitable[None]]


async def start_outbox(runtime: Runtime) -> Stop:
    """Every worker runs a sender; claims (SKIP LOCKED / leases) keep each email to one sender."""
    sender = OutboxSender(runtime.db.background, runtime.settings, runtime.bus)
    sender.start()
    return sender.stop


async def start_webhooks(runtime: Runtime) -> Stop:
    """Every worker runs a webhook sender; endpoint leases (SKIP LOCKED) keep each delivery to one sender."""
    sender = WebhookSender(runtime.db.background, runtime.settings, runtime.bus)
    sender.start()
    return sender.stop


async def start_housekeeping(runtime: Runtime) -> Stop:
    """Purges idempotency keys past their retention (never less than 24 hours)."""

    async def loop() -> None:
        while True:
            try:
                purged = await purge_expired(runtime.db.background, runtime.settings)
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


async def start_temporary_credits(runtime: Runtime) -> Stop:
    """Reverts lapsed temporary credits: its first pass runs now (those that lapsed while the server was down).

    Every worker runs one; each revert claims its grant under the pool lock, so none is reverted twice.
    """
    worker = TemporaryCreditWorker(runtime.db.background, poll_seconds=runtime.settings.temporary_credit_poll_seconds)
    worker.start()
    return worker.stop


async def start_forecast_alerts(runtime: Runtime) -> Stop:
    """Re-evaluates RUNS_OUT_WITHIN_DAYS thresholds every `forecast_alert_seconds`.

    Every worker runs it: each pool is evaluated under its row lock with guarded crossings
    (resolvers.thresholds.evaluate_forecasts), so a crossing is stored once however many workers look.
    """

    async def loop() -> None:
        while True:
            await asyncio.sleep(runtime.settings.forecast_alert_seconds)
            try:
                stored = await evaluate_forecasts(runtime.db.background)
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


#: Due grants a worker pass reads at a time (each is reverted in its own transaction).
WORKER_BATCH = 100


class TemporaryCreditWorker:
    """Reverts the grants whose end has passed: at start-up at once, then every `poll_seconds`.

    Every server process runs one; `revert` keeps each grant to one of them.
    `clock` is the worker's idea of now (tests move it forward instead of
    waiting).
    """

    def __init__(
        self,
        db: Database,
        *,
        poll_seconds: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
        batch: int = WORKER_BATCH,
    ) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.batch = batch
        self._task: asyncio.Task[None] | None = None

    async def due(self, now: datetime, after: tuple[datetime, int] | None = None) -> list[tuple[datetime, int]]:
        """(ends_at, id) of ACTIVE grants due at `now`, oldest first, after `after` (keyset)."""
        query = select(TemporaryCredit.ends_at, TemporaryCredit.id).where(
            TemporaryCredit.status == TemporaryCreditStatus.ACTIVE, TemporaryCredit.ends_at <= now
        )
        if after is not None:
            query = query.where(
                (TemporaryCredit.ends_at > after[0])
                | ((TemporaryCredit.ends_at == after[0]) & (TemporaryCredit.id > after[1]))
            )
        async with self.db.read() as session:
            rows = await session.execute(query.order_by(TemporaryCredit.ends_at, TemporaryCredit.id).limit(self.batch))
            return [(row[0], row[1]) for row in rows.all()]

    async def revert_one(self, credit_id: int, now: datetime) -> bool:
        """Revert one grant in its own transaction (retried whole after a deadlock); False if already ended."""

        async def attempt() -> bool:
            async with self.db.write() as session:
                return await revert(session, credit_id, None, now) is not None

        return await retry_transaction(attempt, what=f"temporary credit {credit_id} revert")

    async def run_once(self) -> int:
        """One pass over every grant due now; how many this worker reverted."""
        now = self.clock()
        done = 0
        position: tuple[datetime, int] | None = None
        while True:
            due = await self.due(now, position)
            for _ends_at, credit_id in due:
                try:
                    done += int(await self.revert_one(credit_id, now))
                except Exception:  # one grant's failure must not hold back the others; retried next pass
                    log.exception("temporary credit %s: revert failed; retrying next pass", credit_id)
            if len(due) < self.batch:
                return done
            position = due[-1]

    async def _loop(self) -> None:
        while True:
            try:
                reverted = await self.run_once()
                if reverted:
                    log.info("reverted %d temporary credits", reverted)
            except Exception:
                log.exception("temporary credit pass failed; retrying later")
            await asyncio.sleep(self.poll_seconds)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="uidhub-temporary-credits")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def start_export_worker(runtime: Runtime) -> Stop:
    """Recover tasks a crash left RUNNING, then run the worker."""
    worker = ExportWorker(runtime.db.background, runtime.settings, runtime.bus)
    await worker.start()
    return worker.stop


Starter = Callable[["Runtime"], Awaitable[Stop]]

#: Every background loop of a server process, in start order (stopped in reverse).
STARTERS: tuple[Starter, ...] = (
    start_outbox,
    start_webhooks,
    start_housekeeping,
    start_temporary_credits,
    start_forecast_alerts,
    start_export_worker,
)
