"""Follow the stored log: replay rows after an id, then wait for wake-ups and read again.

Every subscription is the same loop over an append-only table whose ids
increase in commit order (see notifications.log):

1. read at most `batch` rows with ``id > last_seen`` ordered by id, in a short
   event scope (own session and loaders), and yield each converted row inside
   that scope so that nested fields resolve against it;
2. when the read came back short, wait on the bus topic until the next
   wake-up or `resync` seconds, whichever comes first, and read again.

Because the query is always ``id > last_seen``, a wake-up carries no data and
can be lost or duplicated freely: nothing is skipped and nothing is sent
twice. The waiter is registered before the read starts, so a commit that lands
while rows are being read or sent wakes the next wait at once; the resync
timeout only bounds the delay when a wake-up is lost entirely (Redis down, a
message dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from schema.context import Context

T = TypeVar("T")
DEFAULT_BATCH = 100


Fetch = Callable[[AsyncSession, int, int], Awaitable[Sequence[Any]]]


async def max_id(context: Context, model: Any) -> int:
    """The newest stored id of `model` (0 when empty): where a subscription without afterId starts."""
    async with context.event_scope() as child:
        session = await child.session()
        return int(await session.scalar(select(func.max(model.id))) or 0)


def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()


async def follow(
    context: Context,
    *,
    topic: str,
    after_id: int,
    fetch: Fetch,
    convert: Callable[[Any], T],
    batch: int = DEFAULT_BATCH,
    resync: float | None = None,
) -> AsyncIterator[T]:
    """Yield `convert(row)` for every row after `after_id`, forever, in id order.

    `fetch(session, last_seen, limit)` returns rows with ``id > last_seen``
    ordered by id, at most `limit` of them. Closing the generator (the client
    completes the subscription or disconnects) cancels the pending wait, so
    nothing is left behind: no task, no bus topic.
    """
    bus = context.db.bus
    resync_seconds = resync if resync is not None else context.settings.resync_seconds
    last_seen = after_id
    waiter: asyncio.Task[bool] | None = None
    try:
        while True:
            if bus is not None and waiter is None:
                # Registered before the read: a commit during the read wakes the next wait.
                waiter = asyncio.create_task(bus.wait(topic, resync_seconds), name=f"uidhub-wait:{topic}")
            async with context.event_scope() as child:
                rows = await fetch(await child.session(), last_seen, batch)
                for row in rows:
                    last_seen = row.id
                    yield convert(row)
            if len(rows) >= batch:
                continue  # more stored rows: keep reading without waiting
            if waiter is None:
                await asyncio.sleep(resync_seconds)
                continue
            with contextlib.suppress(TimeoutError):
                await waiter
            waiter = None
    finally:
        _cancel(waiter)
