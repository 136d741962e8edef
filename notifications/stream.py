"""Follow the stored log: replay rows after an id, then take live rows from the shared feed.

Every subscription is the same loop over an append-only table whose ids
increase in commit order (see notifications.log): rows with ``id > last_seen``
in id order, first read by the subscriber itself (the replay after `afterId`,
in a short event scope of its own), then handed over by the process's shared
`Feed`, which waits on the bus topic (or the resync timeout) and reads each
new batch once for everybody (see notifications.feed). A wake-up carries no
data and can be lost or duplicated freely: nothing is skipped and nothing is
sent twice.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.notifications.feed import FeedFetch
from uidhub.notifications.signals import event_handed_over

if TYPE_CHECKING:
    from uidhub.schema.context import Context

T = TypeVar("T")
DEFAULT_BATCH = 100


Fetch = Callable[[AsyncSession, int, int], Awaitable[Sequence[Any]]]


async def max_id(context: Context, model: Any) -> int:
    """The newest stored id of `model` (0 when empty): where a subscription without afterId starts."""
    async with context.event_scope() as child:
        session = await child.session()
        return int(await session.scalar(select(func.max(model.id))) or 0)


Accept = Callable[["Context", Any], Awaitable[bool]]


async def follow(
    context: Context,
    *,
    key: str,
    topic: str,
    model: Any,
    after_id: int,
    fetch: Fetch,
    feed_fetch: FeedFetch,
    accept: Accept,
    convert: Callable[[Any], T],
    batch: int = DEFAULT_BATCH,
) -> AsyncGenerator[T, None]:
    """Yield `convert(row)` for every row after `after_id`, forever, in id order.

    `fetch` is this subscriber's own query (used to replay after `after_id`
    and to catch up after falling behind); `feed_fetch` reads every row of
    the topic for all subscribers; `accept(child, row)` keeps the rows this
    subscriber may see, against the shared batch's loaders.
    """
    # The feed reads on the background pool: it serves every subscriber, not one request.
    background = context.db.background
    feed = context.runtime.feeds.get(key, background, topic, feed_fetch, model, context.settings.resync_seconds)
    subscriber = await feed.join()
    last_seen = after_id
    try:
        while True:
            subscriber.lagging = False
            while True:  # replay from the database until caught up
                async with context.event_scope() as child:
                    rows = await fetch(await child.session(), last_seen, batch)
                    for row in rows:
                        last_seen = row.id
                        yield convert(row)
                if len(rows) < batch:
                    break
            while not subscriber.lagging:
                held = await subscriber.queue.get()
                try:
                    async with context.shared_scope(held.scope) as child:
                        for row in held.rows:
                            if row.id <= last_seen:
                                continue
                            last_seen = row.id
                            if await accept(child, row):
                                event_handed_over(getattr(row, "occurred_at", None))
                                yield convert(row)
                finally:
                    await held.scope.release()
    finally:
        await feed.leave(subscriber)
