"""The export worker: claims queued export tasks fairly across partners and writes their files.

Background work of a server process (started from uidhub.background); the
queries, row shapes and file names it uses are the export operations' own
(resolvers.exports), the writing is notifications.export_writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import ExportTask
from uidhub.models.base import utcnow
from uidhub.models.enums import ExportKind, ExportStatus
from uidhub.notifications import log as event_log
from uidhub.notifications import signals, webhooks
from uidhub.notifications.bus import Wakeup
from uidhub.notifications.export_writer import COLUMNS_BY_KIND, write_export
from uidhub.resolvers.exports import (
    EXTENSIONS,
    FINISHED,
    WAKE_TOPIC,
    adjustment_queries,
    adjustment_row,
    display_file_name,
    end_user_queries,
    end_user_row,
    topic,
)

if TYPE_CHECKING:
    from uidhub.db import Database
    from uidhub.notifications.bus import Bus
    from uidhub.settings import Settings

log = logging.getLogger(__name__)

#: Advisory lock namespace (first key) of running exports on PostgreSQL; the second key is the task id.
RUN_LOCK_KEY = 0x0E_4B
#: Advisory lock (both keys) that serialises claims across workers on PostgreSQL, so that the running counts a
#: claim reads are exact (two workers could otherwise both take a partner's last running place).
CLAIM_LOCK_KEYS = (0x0E_4C, 0)
FETCH_BATCH = 1000
#: Roughly how many progress updates an export writes.
PROGRESS_STEPS = 50
SWEEP_SECONDS = 60.0


#: A task is run at most this many times; a second crash marks it FAILED.
MAX_ATTEMPTS = 2


class ExportFailed(Exception):
    """A failure whose message may be shown to the user as the task's error."""


class ExportWorker:
    """Claims PENDING tasks one at a time and writes their files.

    `run_once()` does one task (tests drive it directly); `start()` runs the loop in a task until `stop()`.
    `before_rows` is a test seam: awaited inside the read transaction after the snapshot is taken (the count has
    run) and before the rows are fetched.
    """

    def __init__(self, db: Database, settings: Settings, bus: Bus | None = None) -> None:
        self.db = db
        self.settings = settings
        self.bus = bus
        self.export_dir = Path(settings.export_dir)
        self.before_rows: Callable[[ExportTask], Awaitable[None]] | None = None
        self.fetch_batch = FETCH_BATCH
        self.max_running_per_partner = settings.export_max_running_per_partner
        #: The partner whose task this worker claimed last: the round-robin continues after it.
        self._last_partner: int | None = None
        self._task: asyncio.Task[None] | None = None

    # -- claiming and bookkeeping ----------------------------------------------

    async def recover(self) -> int:
        """Re-queue (once) or fail the tasks a crashed worker left RUNNING; returns how many were touched."""
        touched = 0
        async with self.db.write() as session:
            rows = (
                await session.scalars(
                    select(ExportTask).where(ExportTask.status == ExportStatus.RUNNING).order_by(ExportTask.id)
                )
            ).all()
            for task in rows:
                if self.db.is_postgres:
                    free = await session.scalar(
                        text("SELECT pg_try_advisory_xact_lock(:k, :id)"), {"k": RUN_LOCK_KEY, "id": task.id}
                    )
                    if not free:  # a live worker is exporting it right now
                        continue
                touched += 1
                if task.attempts < MAX_ATTEMPTS:
                    task.status = ExportStatus.PENDING
                    task.progress = 0.0
                    task.started_at = None
                else:
                    task.status = ExportStatus.FAILED
                    task.error = f"The export was interrupted {task.attempts} times (server restart) and was given up."
                    task.finished_at = utcnow()
                self._discard_file(task)
                event_log.add_topic(session, topic(task.id))
            if touched:
                event_log.add_topic(session, WAKE_TOPIC)
        if touched:
            log.warning("export recovery: %d task(s) left RUNNING by a previous process handled", touched)
        return touched

    async def claim(self) -> int | None:
        """Take the next task in fair order (see the module's Fairness) and mark it RUNNING; None when none may run."""
        async with self.db.write() as session:
            if self.db.is_postgres:
                await session.execute(
                    text("SELECT pg_advisory_xact_lock(:k1, :k2)"), {"k1": CLAIM_LOCK_KEYS[0], "k2": CLAIM_LOCK_KEYS[1]}
                )
            task = None
            for candidate in await self._candidates(session):
                query = select(ExportTask).where(ExportTask.id == candidate, ExportTask.status == ExportStatus.PENDING)
                if self.db.is_postgres:
                    query = query.with_for_update(skip_locked=True)
                task = await session.scalar(query)
                if task is not None:
                    break  # None: another worker took it meanwhile; try the next partner's
            if task is None:
                return None
            self._last_partner = task.partner_id
            task.status = ExportStatus.RUNNING
            task.started_at = utcnow()
            task.attempts = task.attempts + 1
            task.progress = 0.0
            task.error = None
            event_log.add_topic(session, topic(task.id))
            return task.id

    async def _candidates(self, session: AsyncSession) -> list[int]:
        """The oldest PENDING task of each partner that may start one, in the order they should be tried.

        Fewer running tasks first, then round-robin: partners after the one served last (by id, wrapping around).
        Two grouped queries whatever the queue length; they read the (status, partner_id, id) index.
        """
        oldest = await session.execute(
            select(ExportTask.partner_id, func.min(ExportTask.id))
            .where(ExportTask.status == ExportStatus.PENDING)
            .group_by(ExportTask.partner_id)
        )
        first_pending: dict[int, int] = {partner: task_id for partner, task_id in oldest.all()}
        if not first_pending:
            return []
        counted = await session.execute(
            select(ExportTask.partner_id, func.count())
            .where(ExportTask.status == ExportStatus.RUNNING, ExportTask.partner_id.in_(sorted(first_pending)))
            .group_by(ExportTask.partner_id)
        )
        running: dict[int, int] = {partner: int(count) for partner, count in counted.all()}
        last = self._last_partner

        def turn(partner: int) -> tuple[int, int, int]:
            after_last = last is None or partner > last
            return (running.get(partner, 0), 0 if after_last else 1, partner)

        allowed = [p for p in first_pending if running.get(p, 0) < self.max_running_per_partner]
        return [first_pending[p] for p in sorted(allowed, key=turn)]

    async def _update(self, task_id: int, **values: Any) -> None:
        async with self.db.write() as session:
            await session.execute(update(ExportTask).where(ExportTask.id == task_id).values(**values))
            event_log.add_topic(session, topic(task_id))
            if values.get("status") in FINISHED:
                # The EXPORT_FINISHED webhook commits with the task's final state.
                task = await session.get(ExportTask, task_id, populate_existing=True)
                if task is not None:
                    await webhooks.queue_export_finished(session, task)

    @staticmethod
    def _discard_file(task: ExportTask) -> None:
        if task.file_path:
            with contextlib.suppress(OSError):
                os.unlink(task.file_path)
            task.file_path = None

    # -- running ---------------------------------------------------------------

    async def run_once(self) -> bool:
        """Claim and run one task; False when none was pending."""
        task_id = await self.claim()
        if task_id is None:
            return False
        await self.run_task(task_id)
        return True

    async def run_task(self, task_id: int) -> None:
        async with self.db.read() as session:
            task = await session.get(ExportTask, task_id)
        assert task is not None
        self.export_dir.mkdir(parents=True, exist_ok=True)
        final = self.export_dir / f"{task.id}-{task.kind.value.lower().replace('_', '-')}.{EXTENSIONS[task.format]}"
        partial = final.with_name(final.name + ".part")
        try:
            count = await self._write(task, partial)
            os.replace(partial, final)
        except asyncio.CancelledError:
            # Shutting down: give the attempt back and leave the task for the next start.
            with contextlib.suppress(OSError):
                partial.unlink()
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._update(
                        task_id,
                        status=ExportStatus.PENDING,
                        progress=0.0,
                        started_at=None,
                        attempts=max(0, task.attempts - 1),
                    )
                )
            raise
        except Exception as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            if isinstance(exc, ExportFailed):
                message = str(exc)
            else:
                log.exception("export task %d failed", task_id)
                message = f"The export failed because of an internal error ({type(exc).__name__}); please retry."
            await self._update(task_id, status=ExportStatus.FAILED, error=message, finished_at=utcnow(), file_path=None)
            signals.export_finished(ExportStatus.FAILED.value, task.started_at)
            return
        now = utcnow()
        await self._update(
            task_id,
            status=ExportStatus.SUCCEEDED,
            progress=1.0,
            row_count=count,
            file_name=display_file_name(task, self.settings.tz, now),
            file_path=str(final.resolve()),
            finished_at=now,
            expires_at=now + timedelta(hours=self.settings.export_ttl_hours),
            error=None,
        )
        signals.export_finished(ExportStatus.SUCCEEDED.value, task.started_at)

    async def _write(self, task: ExportTask, path: Path) -> int:
        if task.kind is ExportKind.END_USERS:
            count_query, rows_query = end_user_queries(task)
            convert: Callable[[Any], dict[str, Any]] = end_user_row
        else:
            count_query, rows_query = adjustment_queries(task)
            convert = adjustment_row
        async with self.db.session() as session:
            if self.db.is_postgres:
                # One snapshot for the count and every row, taken at the transaction's first statement.
                await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
                await session.execute(text("SELECT pg_advisory_xact_lock(:k, :id)"), {"k": RUN_LOCK_KEY, "id": task.id})
            total = int(await session.scalar(count_query) or 0)
            if self.before_rows is not None:
                await self.before_rows(task)
            every = max(1, math.ceil(total / PROGRESS_STEPS))

            async def progress(done: int) -> None:
                await self._update(task.id, progress=min(0.99, done / total) if total else 0.0)

            async def rows() -> AsyncIterator[dict[str, Any]]:
                result = await session.stream(rows_query.execution_options(yield_per=self.fetch_batch))
                # One await (greenlet switch, driver round trip) per batch, not per row.
                async for batch in result.partitions():
                    for row in batch:
                        yield convert(row)

            count = await write_export(
                path,
                task.format,
                COLUMNS_BY_KIND[task.kind],
                task.language,
                self.settings.tz,
                task.kind,
                rows(),
                progress=progress,
                progress_every=every,
            )
            await session.rollback()
        return count

    # -- expiry ----------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete expired files; their tasks keep their history but lose the download. Returns files removed."""
        removed = 0
        async with self.db.write() as session:
            expired = (
                await session.scalars(
                    select(ExportTask).where(ExportTask.file_path.is_not(None), ExportTask.expires_at <= utcnow())
                )
            ).all()
            for task in expired:
                self._discard_file(task)
                event_log.add_topic(session, topic(task.id))
                removed += 1
        return removed

    # -- the loop ----------------------------------------------------------------

    async def run_forever(self) -> None:
        last_sweep = -math.inf
        loop = asyncio.get_running_loop()

        async def one_pass() -> bool:
            nonlocal last_sweep
            if loop.time() - last_sweep >= SWEEP_SECONDS:
                last_sweep = loop.time()
                await self.sweep()
            return await self.run_once()

        # A task started while a pass runs is picked up at once (see Wakeup).
        await Wakeup(self.bus, WAKE_TOPIC, self.settings.sender_poll_seconds).run_passes(one_pass, "export worker")

    async def start(self) -> None:
        try:
            await self.recover()
        except Exception:
            log.exception("export recovery failed; the worker starts anyway")
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run_forever(), name="uidhub-export-worker")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
