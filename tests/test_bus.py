"""Wake-ups between worker passes (notifications.bus.Wakeup)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.db import REDIS_URL, needs_redis
from uidhub.notifications.bus import CHANNEL, Bus, RedisBus, Wakeup


async def test_a_publish_during_the_pass_ends_the_next_wait_at_once() -> None:
    bus = Bus()
    wakeup = Wakeup(bus, "topic", timeout=30)
    wakeup.listen()
    await asyncio.sleep(0)  # the listener is registered; the pass runs now
    await bus.publish("topic")
    await asyncio.wait_for(wakeup.wait(), 1)  # not the 30 s timeout


async def test_without_a_publish_the_wait_lasts_the_timeout() -> None:
    wakeup = Wakeup(Bus(), "topic", timeout=0.05)
    wakeup.listen()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wakeup.wait()
    assert loop.time() - started >= 0.04  # (the loop may fire a timer a clock tick early)


async def test_a_cancelled_wait_leaves_no_listener_behind() -> None:
    bus = Bus()
    wakeup = Wakeup(bus, "topic", timeout=30)
    wakeup.listen()
    waiting = asyncio.create_task(wakeup.wait())
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await asyncio.sleep(0)
    assert bus.topic_count == 0


async def test_run_passes_goes_again_while_more_is_due_and_survives_a_failing_pass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pass reporting more work runs again without waiting; a pass that raises is logged and retried."""
    bus = Bus()
    wakeup = Wakeup(bus, "topic", timeout=30)
    outcomes: list[bool | Exception] = [True, True, RuntimeError("database restarting"), False]
    passes = 0
    done = asyncio.Event()

    async def one_pass() -> bool:
        nonlocal passes
        passes += 1
        outcome = outcomes.pop(0) if outcomes else False
        if not outcomes:
            done.set()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    loop = asyncio.create_task(wakeup.run_passes(one_pass, "test"))
    await asyncio.sleep(0.05)
    assert passes == 3 and wakeup.waiting  # two "more" passes at once, then the failure waits
    await bus.publish("topic")
    await asyncio.wait_for(done.wait(), 1)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    assert passes == 4
    assert "test pass failed" in caplog.text
    assert bus.topic_count == 0 and not wakeup.waiting


async def test_without_a_bus_it_is_a_sleep() -> None:
    wakeup = Wakeup(None, "topic", timeout=0.05)
    wakeup.listen()
    await asyncio.wait_for(wakeup.wait(), 1)


@needs_redis
async def test_a_wake_up_published_right_before_close_still_goes_out() -> None:
    """`uidhub revoke-token` publishes and exits at once: closing the bus must not cancel its wake-up."""
    import redis.asyncio as redis

    assert REDIS_URL is not None
    listener = redis.from_url(REDIS_URL)
    pubsub = listener.pubsub()
    try:
        await pubsub.subscribe(CHANNEL)
        await pubsub.get_message(timeout=2)  # the subscription's confirmation
        bus = RedisBus(REDIS_URL)
        await bus.publish("test-drain")
        await bus.close()
        message = None
        async with asyncio.timeout(5):  # a hang guard
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert message["data"] == b"test-drain"
    finally:
        await pubsub.aclose()
        await listener.aclose()
