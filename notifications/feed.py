"""One reader of the stored log per topic and process, shared by every subscriber.

Without it, each subscription reads the log on every wake-up and resolves its
event's nested fields against a session of its own: a thousand subscribers of
one partner cost a thousand identical queries per event and queue on the
connection pool. A `Feed` reads each new batch once, in one session, and
hands the same rows and the same session (with its DataLoader cache) to every
subscriber; each subscriber only filters and renders.

Correctness rests on the same rule as `notifications.stream`: rows are read by
``id > position`` and ids follow commit order. A subscriber joins the feed
first, then replays ``id > afterId`` from the database by itself until it is
caught up, then takes the feed's batches, skipping ids it has already sent.
Every row is either committed before the replay read (the replay has it) or
after the join (the feed reads it later), so there is no gap, and the id check
removes duplicates. A subscriber that falls too far behind (its queue is full)
is switched back to replaying from the database: memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.notifications.bus import Wakeup

log = logging.getLogger(__name__)

FeedFetch = Callable[[AsyncSession, int, int], Awaitable[Sequence[Any]]]

FEED_BATCH = 500
QUEUE_BATCHES = 256


class SharedScope:
    """A session (and, once asked for, DataLoaders) shared by the subscribers of one batch.

    Closed when the last subscriber holding the batch releases it.
    """

    def __init__(self, session: AsyncSession, holders: int) -> None:
        self.session = session
        self.loaders: Any = None
        #: Subscription results computed once per (row, selection, viewer scope): schema.execution.
        self.results: dict[Any, Any] = {}
        self._holders = holders

    async def release(self) -> None:
        self._holders -= 1
        if self._holders <= 0:
            await self.session.close()
        elif self.session.in_transaction():
            # Hand the connection back while slower subscribers still hold the batch:
            # rows stay loaded (expire_on_commit=False) and a later load starts a new read.
            await self.session.commit()


@dataclass
class Batch:
    rows: Sequence[Any]
    scope: SharedScope


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[Batch] = field(default_factory=lambda: asyncio.Queue(QUEUE_BATCHES))
    #: Set when a batch could not be queued: the subscriber must replay from the database.
    lagging: bool = False


class Feed:
    """Reads `fetch(session, position, limit)` after every wake-up of `topic` and queues it to subscribers."""

    def __init__(self, db: Any, topic: str, fetch: FeedFetch, model: Any, resync: float) -> None:
        self.db = db
        self.topic = topic
        self.fetch = fetch
        self.model = model
        self.resync = resync
        self.position = 0
        self._wakeup = Wakeup(db.bus, topic, resync)
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    @property
    def idle(self) -> bool:
        """True while the feed waits for a wake-up: no read is in flight."""
        return self._wakeup.waiting

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def join(self) -> Subscriber:
        async with self._starting:
            if self._task is None or self._task.done():
                async with self.db.session() as session:
                    self.position = int(await session.scalar(select(func.max(self.model.id))) or 0)
                self._task = asyncio.create_task(self._run(), name=f"uidhub-feed:{self.topic}")
            subscriber = Subscriber()
            self._subscribers.add(subscriber)
            return subscriber

    async def leave(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        while not subscriber.queue.empty():
            await subscriber.queue.get_nowait().scope.release()
        if not self._subscribers and self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async def one_pass() -> bool:
            return await self._read_once() >= FEED_BATCH  # a full batch: read on at once

        await self._wakeup.run_passes(one_pass, f"feed {self.topic}")

    async def _read_once(self) -> int:
        session = self.db.shared_session()
        try:
            rows = await self.fetch(session, self.position, FEED_BATCH)
            if session.in_transaction():
                await session.commit()  # no connection is held while the batch waits in queues
        except BaseException:  # also the feed stopping (its last subscriber left) in the middle of a read
            await session.close()
            raise
        subscribers = list(self._subscribers)
        if not rows or not subscribers:
            await session.close()
            if rows:
                self.position = rows[-1].id
            return len(rows)
        self.position = rows[-1].id
        scope = SharedScope(session, holders=len(subscribers))
        for subscriber in subscribers:
            try:
                subscriber.queue.put_nowait(Batch(rows, scope))
            except asyncio.QueueFull:
                subscriber.lagging = True
                await scope.release()
        return len(rows)


class Feeds:
    """The process's feeds, one per key (what is read, for which partner), created on first use."""

    def __init__(self) -> None:
        self._feeds: dict[str, Feed] = {}

    def get(self, key: str, db: Any, topic: str, fetch: FeedFetch, model: Any, resync: float) -> Feed:
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed(db, topic, fetch, model, resync)
        return feed

    @property
    def running(self) -> int:
        return sum(1 for feed in self._feeds.values() if feed.subscriber_count)
