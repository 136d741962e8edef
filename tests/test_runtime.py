"""The one runtime object: what its database view carries, and what a database opened without one does."""

from __future__ import annotations

import asyncio
from pathlib import Path

from uidhub.db import Database
from uidhub.notifications import log
from uidhub.resolvers import crossing
from uidhub.runtime import Runtime
from uidhub.settings import Settings


async def test_the_runtime_database_is_a_view_that_carries_bus_and_settings(
    sqlite_db: Database, tmp_path: Path
) -> None:
    settings = Settings(database_url=sqlite_db.url, export_dir=str(tmp_path / "exports"), display_timezone="+09:00")
    runtime = Runtime.open(settings, db=sqlite_db)
    db = runtime.db
    assert db is not sqlite_db and db.engine is sqlite_db.engine  # the same pool, not a second one
    assert (db.bus, db.settings) == (runtime.bus, settings)
    assert (sqlite_db.bus, sqlite_db.settings) == (None, None)  # the test's database itself is left as it was
    assert db.background is not db and db.background.engine is sqlite_db.background.engine
    assert (db.background.bus, db.background.settings) == (runtime.bus, settings)
    async with db.read() as session:
        assert Database.of(session) is db
        assert crossing._settings(session) is settings  # alert emails render with the runtime's settings
    async with sqlite_db.read() as session:
        assert crossing._settings(session) is crossing._default_settings()


async def test_a_commit_wakes_the_runtime_bus_and_a_plain_database_wakes_nobody(
    sqlite_db: Database, tmp_path: Path
) -> None:
    runtime = Runtime.open(Settings(database_url=sqlite_db.url, export_dir=str(tmp_path / "exports")), db=sqlite_db)
    waiter = asyncio.create_task(runtime.bus.wait("accounts:1", timeout=10))  # 10 s: a hang guard only
    await asyncio.sleep(0)
    async with sqlite_db.write() as session:
        log.add_topic(session, "accounts:1")
    await asyncio.sleep(0.05)
    assert not waiter.done()
    async with runtime.db.write() as session:
        log.add_topic(session, "accounts:1")
    assert await waiter
