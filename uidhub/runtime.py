"""The process's runtime: the one object that holds what every part of the app shares.

Built once by `Runtime.open` (the app, the CLI, a test) and passed explicitly:
the ASGI app keeps it on its state, every GraphQL context and background loop
receives it. Nothing else holds these pieces: the settings, the database (a
view that carries the bus and settings its sessions commit and render with,
see `Database.with_runtime`), the bus that wakes subscribers, and the shared
readers of the log that live subscriptions fan out from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from uidhub.db import Database, PoolConfig
from uidhub.notifications.bus import Bus, make_bus
from uidhub.notifications.feed import Feeds
from uidhub.settings import Settings


@dataclass(frozen=True, eq=False)
class Runtime:
    """Settings, database, bus and live feeds of one process (see the module docstring)."""

    settings: Settings
    db: Database
    bus: Bus
    #: Shared readers of the log for live subscriptions (notifications.feed), one per partner and topic.
    feeds: Feeds = field(default_factory=Feeds)

    @classmethod
    def open(cls, settings: Settings, *, db: Database | None = None, bus: Bus | None = None) -> Runtime:
        """The runtime for `settings`; `db` (e.g. a test's database) is wrapped in a view carrying the bus.

        Nothing connects yet: the bus starts and the pools open when the app starts.
        """
        bus = bus or make_bus(settings.redis_url, publish_timeout=settings.redis_publish_timeout_seconds)
        base = db or Database(
            settings.database_url,
            pool=PoolConfig.from_settings(settings),
            background_pool=PoolConfig.background_from_settings(settings),
            statement_timeout=settings.db_statement_timeout_seconds,
            connect_timeout=settings.db_connect_timeout_seconds,
        )
        return cls(settings=settings, db=base.with_runtime(bus=bus, settings=settings), bus=bus)

    async def close(self) -> None:
        """Let queued wake-ups go out (a CLI command publishes, then exits), then close the pools."""
        try:
            await self.bus.close()
        finally:
            await self.db.dispose()
