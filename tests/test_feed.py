"""The shared feed batch's session: one subscriber going away never breaks it for the others."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import text

from uidhub.db import Database
from uidhub.notifications.feed import SharedScope

# A query that keeps SQLite / PostgreSQL busy long enough to be cancelled in the middle of it.
SLOW = {
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) SELECT count(*) FROM n"
    ),
    "postgresql": "SELECT count(*) FROM generate_series(1, 3000000)",
}


async def test_a_cancelled_holder_leaves_the_shared_session_usable(db: Database) -> None:
    """A subscriber cancelled while its query runs on the batch's session (a dashboard closing mid-render)
    must not invalidate the connection under the subscribers still rendering that batch."""
    scope = SharedScope(db.shared_session(), holders=2)

    async def render() -> None:
        await scope.session.execute(text(SLOW[db.dialect]))

    leaving = asyncio.create_task(render())
    await asyncio.sleep(0.05)  # the query is running
    leaving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    assert leaving.cancelled(), "the query ended before the cancellation: make SLOW slower"
    await scope.release()  # the leaving subscriber's `finally`

    # The other holder still renders and releases without error.
    assert await scope.session.scalar(text("SELECT 1")) == 1
    await scope.release()
