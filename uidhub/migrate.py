"""Bring a database to the latest schema with Alembic (`uidhub migrate`, and `uidhub serve` first)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from uidhub.db import null_pool_engine

MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class Migration:
    """What an upgrade did: the schema revision before (None: no schema yet) and after."""

    before: str | None
    after: str | None

    def describe(self) -> str:
        """One line for the operator: created, upgraded from X to Y, or already current."""
        if self.before is None:
            return f"database schema created at revision {self.after}"
        if self.before == self.after:
            return f"database schema already current (revision {self.after})"
        return f"database schema upgraded from revision {self.before} to {self.after}"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    return config


def _revision_label(heads: tuple[str, ...] | list[str]) -> str | None:
    return ",".join(sorted(heads)) or None


def current_revision(url: str) -> str | None:
    """The revision a database is at (None for an empty one); from a thread without an event loop."""

    async def read() -> str | None:
        engine = null_pool_engine(url)
        try:
            async with engine.connect() as connection:
                heads = await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_heads())
                return _revision_label(heads)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def upgrade_sync(url: str) -> Migration:
    """Run from a thread without an event loop (alembic's env.py runs its own)."""
    config = alembic_config(url)
    before = current_revision(url)
    command.upgrade(config, "head")
    return Migration(before=before, after=_revision_label(ScriptDirectory.from_config(config).get_heads()))


async def upgrade(url: str) -> Migration:
    return await asyncio.to_thread(upgrade_sync, url)
