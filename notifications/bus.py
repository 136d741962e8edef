"""Wake-ups for subscribers, in process or across processes through Redis.

The bus carries topic names, never data: subscribers read the stored log.
A lost message (Redis restarting, a slow consumer) therefore delays a
subscriber at most until its next resync poll and loses nothing.

So the Redis publish is fire-and-forget: `RedisBus.publish` wakes this
process's waiters at once and hands the topics to a publisher task, which
sends them after the caller has moved on, each round bounded by a short
timeout. A mutation's answer never waits for Redis: a hung (SIGSTOPped) or
absent Redis costs it nothing, the wake-ups for other processes are dropped
with a warning, and their subscribers catch up at their resync poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

CHANNEL = "uidhub:events"


class Bus:
    """In-process wake-ups: one asyncio.Event per topic, replaced on every publish."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def _fire(self, topic: str) -> None:
        event = self._events.pop(topic, None)
        if event is not None:
            event.set()

    async def publish(self, *topics: str) -> None:
        for topic in topics:
            self._fire(topic)

    async def wait(self, topic: str, timeout: float) -> bool:
        """Wait for the next publish of `topic`, at most `timeout` seconds; True when woken."""
        event = self._events.get(topic)
        if event is None:
            event = self._events[topic] = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            # Drop an event nobody waits on any more so topics do not pile up.
            if not event.is_set() and self._events.get(topic) is event and not _has_waiters(event):
                self._events.pop(topic, None)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def topic_count(self) -> int:
        return len(self._events)


def _has_waiters(event: asyncio.Event) -> bool:
    return bool(getattr(event, "_waiters", None))


class Wakeup:
    """The wait between two passes of a worker loop: a publish of `topic`, or `timeout` seconds.

    `run_passes` listens before each pass and waits after it, so that a
    publish made while the pass runs (a row committed after the pass read)
    ends the wait at once instead of leaving the row for the next poll.
    Without a bus the wait is a plain sleep.
    """

    def __init__(self, bus: Bus | None, topic: str, timeout: float) -> None:
        self.bus = bus
        self.topic = topic
        self.timeout = timeout
        #: True while the loop waits between passes (no pass in flight).
        self.waiting = False
        self._task: asyncio.Task[bool] | None = None

    async def run_passes(self, one_pass: Callable[[], Awaitable[bool]], what: str) -> None:
        """Run `one_pass` until cancelled: again at once while it returns True (more is due), else after the wait.

        An error in a pass (the database restarting) is logged and retried
        after the wait rather than ending the loop.
        """
        try:
            while True:
                self.listen()
                try:
                    more = await one_pass()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s pass failed; retrying in %.1fs", what, self.timeout)
                    more = False
                if more:
                    await asyncio.sleep(0)  # go again, but let others run
                    continue
                self.waiting = True
                try:
                    await self.wait()
                finally:
                    self.waiting = False
        finally:
            self.close()

    def listen(self) -> None:
        if self.bus is not None and self._task is None:
            self._task = asyncio.create_task(self.bus.wait(self.topic, self.timeout), name=f"uidhub-wait:{self.topic}")

    async def wait(self) -> None:
        task, self._task = self._task, None
        if task is None:
            await asyncio.sleep(self.timeout)
            return
        try:
            await task
        finally:
            task.cancel()  # when the wait itself was cancelled

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


#: How long one round of wake-up publishes may take before it is dropped.
PUBLISH_TIMEOUT_SECONDS = 0.5


class RedisBus(Bus):
    """Publishes through Redis (in the background, see the module docstring) and fires local waiters
    for messages from any process."""

    def __init__(self, url: str, *, publish_timeout: float = PUBLISH_TIMEOUT_SECONDS) -> None:
        super().__init__()
        import redis.asyncio as redis

        self._url = url
        self._redis = redis.from_url(url)
        # Its own client, whose sockets give up as fast as the publish round does: the listener's
        # connection blocks on reads for as long as no message comes and must not time out.
        self._publisher_redis = redis.from_url(
            url, socket_timeout=publish_timeout, socket_connect_timeout=publish_timeout
        )
        self._publish_timeout = publish_timeout
        self._listener: asyncio.Task[None] | None = None
        #: Topics waiting to be sent; a set, so a Redis that hangs for long costs memory per topic, not per commit.
        self._outgoing: set[str] = set()
        self._has_outgoing = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._failing = False
        #: Set while nothing is queued or being sent (what `close` waits for).
        self._idle = asyncio.Event()
        self._idle.set()

    async def publish(self, *topics: str) -> None:
        """Wake local waiters now; queue the Redis publish for the publisher task and return at once."""
        await super().publish(*topics)
        if not topics:
            return
        self._outgoing.update(topics)
        self._idle.clear()
        self._has_outgoing.set()
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish_loop(), name="uidhub-redis-publisher")

    async def _publish_loop(self) -> None:
        while True:
            await self._has_outgoing.wait()
            self._has_outgoing.clear()
            topics, self._outgoing = sorted(self._outgoing), set()
            try:
                async with asyncio.timeout(self._publish_timeout):
                    async with self._publisher_redis.pipeline(transaction=False) as pipe:
                        for topic in topics:
                            pipe.publish(CHANNEL, topic)
                        await pipe.execute()
                if self._failing:
                    log.warning("redis publish works again")
                    self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # subscribers resync by polling; nothing is lost
                if not self._failing:  # once per outage, not once per commit
                    log.warning("redis publish failed (%s); other processes' subscribers fall back to polling",
                                exc or type(exc).__name__)
                self._failing = True
            finally:
                if not self._outgoing:
                    self._idle.set()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="uidhub-redis-listener")

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        self._fire(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("redis listener lost its connection (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def _drain(self) -> None:
        """Let queued wake-ups go out, for at most one publish round.

        A process that publishes and then exits (`uidhub revoke-token` waking
        the servers' websocket checks) would otherwise cancel its own wake-up.
        """
        if self._publisher is None or self._publisher.done():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._publish_timeout):
                await self._idle.wait()

    async def close(self) -> None:
        await self._drain()
        for task in (self._listener, self._publisher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._redis.aclose()
        await self._publisher_redis.aclose()


def make_bus(redis_url: str | None, *, publish_timeout: float = PUBLISH_TIMEOUT_SECONDS) -> Bus:
    return RedisBus(redis_url, publish_timeout=publish_timeout) if redis_url else Bus()
