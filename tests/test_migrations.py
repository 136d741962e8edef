"""Alembic head applied to an empty database matches the models exactly, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from uidhub.db import Database
from uidhub.migrate import upgrade
from uidhub.models import Base
from uidhub.models.listing import TRIGRAM_INDEXES, include_in_schema_compare


def _diff(connection: Any) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "compare_server_default": False, "include_object": include_in_schema_compare},
    )
    return compare_metadata(context, Base.metadata)


def _tables(connection: Any) -> dict[str, set[str]]:
    inspector = inspect(connection)
    names = [t for t in inspector.get_table_names() if not t.startswith("account_search")]  # SQLite FTS5
    return {t: {c["name"] for c in inspector.get_columns(t)} for t in names}


async def test_head_matches_models(db: Database) -> None:
    """`db` is already migrated to head (fixture): SQLite from the template, PostgreSQL per session."""
    async with db.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
        tables = await conn.run_sync(_tables)
    assert diff == [], diff
    expected = {t.name: {c.name for c in t.columns} for t in Base.metadata.sorted_tables}
    assert {k: v for k, v in tables.items() if k != "alembic_version"} == expected


async def test_upgrade_is_idempotent(db: Database) -> None:
    await upgrade(db.url)
    await upgrade(db.url)
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_trigram_indexes_have_a_small_pending_list(pg_db: Database) -> None:
    """0007: every search reads a trigram index's whole pending list, so it is bounded to 256 kB (32 pages)
    instead of the server's 4 MB."""
    query = text("SELECT relname, reloptions FROM pg_class WHERE relname = ANY(:names)")
    async with pg_db.engine.connect() as conn:
        options = dict((await conn.execute(query, {"names": list(TRIGRAM_INDEXES)})).all())
    assert options == {name: ["gin_pending_list_limit=256"] for name in TRIGRAM_INDEXES}
