"""Fixtures that build real databases, a real app and real rows.

`db` runs a test on SQLite and, when UIDHUB_TEST_POSTGRES_URL is set, on
PostgreSQL too. Both are migrated with Alembic once per session; SQLite
tests copy the migrated file, PostgreSQL tests truncate between tests.
Everything that is not a fixture lives in tests/support.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.api import Api, make_api
from tests.support.db import (
    PG_URL,
    in_thread,
    needs_postgres,
    needs_redis,
    pg_admin_exec,
    redis_lock,
    sqlite_url_for,
    truncate_all,
)
from uidhub.db import Database
from uidhub.migrate import upgrade_sync

# ---------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    in_thread(upgrade_sync, f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    if not PG_URL:
        pytest.skip("UIDHUB_TEST_POSTGRES_URL is not set")
    name = f"uidhub_test_{uuid.uuid4().hex[:10]}"
    pg_admin_exec(f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    in_thread(upgrade_sync, url)
    yield url
    pg_admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=needs_postgres)])
async def db(request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty database: SQLite, and PostgreSQL when configured."""
    if request.param == "sqlite":
        database = Database(sqlite_url_for(sqlite_template, tmp_path))
    else:
        database = Database(request.getfixturevalue("pg_database_url"))
        await truncate_all(database)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def sqlite_db(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(sqlite_url_for(sqlite_template, tmp_path))
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def pg_db(pg_database_url: str) -> AsyncIterator[Database]:
    database = Database(pg_database_url)
    await truncate_all(database)
    try:
        yield database
    finally:
        await database.dispose()


# ---------------------------------------------------------------- the shared Redis


@pytest.fixture
def shared_redis() -> Iterator[None]:
    """The Redis at UIDHUB_TEST_REDIS_URL to this test alone (pytest-xdist workers run side by side; see
    redis_lock). Every `needs_redis` test takes it by itself; a test that uses the Redis optionally asks for it."""
    with redis_lock():
        yield


@pytest.fixture(autouse=True)
def _needs_redis_takes_the_shared_redis(request: pytest.FixtureRequest) -> None:
    if needs_redis.mark in request.node.iter_markers("skipif"):
        request.getfixturevalue("shared_redis")


# ---------------------------------------------------------------- apps


@pytest.fixture
async def api(db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    """The app over `db` (both databases), with an ADMIN token of P-MAIN and one of P-OTHER."""
    async for value in make_api(db, tmp_path):
        yield value


@pytest.fixture
async def sqlite_api(sqlite_db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    async for value in make_api(sqlite_db, tmp_path):
        yield value


@pytest.fixture
async def pg_api(pg_db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    """The app over PostgreSQL only, for behaviour that exists only there (advisory locks, several processes)."""
    async for value in make_api(pg_db, tmp_path):
        yield value
