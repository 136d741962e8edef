"""Database helpers: the configured servers, skip markers, copying SQLite, truncating, counting statements."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from uidhub.db import Database
from uidhub.models import Base

PG_URL = os.environ.get("UIDHUB_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("UIDHUB_TEST_REDIS_URL")

needs_postgres = pytest.mark.skipif(not PG_URL, reason="UIDHUB_TEST_POSTGRES_URL is not set")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="UIDHUB_TEST_REDIS_URL is not set")


@contextlib.contextmanager
def redis_lock() -> Iterator[None]:
    """Hold the machine-wide lock of the Redis server at REDIS_URL, blocking until no other test holds it.

    The wake-ups go over one channel for the whole server (every database number), so two pytest-xdist
    workers (or two test runs) on one Redis would see each other's: a test that reads the channel would get
    a stranger's message, and a stranger's wake-up could pass for the one a test waits for. A file lock, not
    an xdist group (`--dist loadgroup` silently stopped grouping with pytest 9.2): it also holds between
    runs, and it is released when its process dies.
    """
    if not REDIS_URL:  # no shared Redis, nothing to share
        yield
        return
    server = hashlib.sha256(urlsplit(REDIS_URL).netloc.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"uidhub-test-redis-{server}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def in_thread(fn: Any, *args: Any) -> Any:
    """Run blocking setup (its own event loop inside) from async fixtures."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def pg_admin_exec(sql: str) -> None:
    """Run one statement on the server's `postgres` database (CREATE/DROP DATABASE)."""
    import asyncpg

    assert PG_URL is not None
    url = make_url(PG_URL)

    async def run() -> None:
        conn = await asyncpg.connect(
            user=url.username or "postgres",
            password=url.password,
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            database="postgres",
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    in_thread(asyncio.run, run())


#: Up to this many rows in every table, `DELETE` empties a database far faster than `TRUNCATE`, which makes
#: new files for every table and index (a quarter of a second, most of a PostgreSQL test's setup); past it
#: (a bulk test's data), TRUNCATE is the faster one.
DELETE_UP_TO_ROWS = 1000
#: What RESTART IDENTITY does, for the sequences that were used (all of them belong to the tables).
_RESTART_USED_SEQUENCES = (
    "SELECT setval(format('%I.%I', schemaname, sequencename)::regclass, start_value, false) "
    "FROM pg_sequences WHERE schemaname = current_schema() AND last_value IS NOT NULL"
)


async def truncate_all(db: Database) -> None:
    """Empty every table of a PostgreSQL database and restart its sequences (between tests).

    The same end state as `TRUNCATE <all> RESTART IDENTITY CASCADE`: `DELETE`s, referencing tables first (so
    the listing's triggers only touch tables still to be emptied), when every table is small.
    """
    tables = Base.metadata.sorted_tables
    sizes = " UNION ALL ".join(
        f'SELECT count(*) FROM (SELECT FROM "{t.name}" LIMIT {DELETE_UP_TO_ROWS + 1}) AS capped' for t in tables
    )
    async with db.engine.begin() as conn:
        if max((await conn.execute(text(sizes))).scalars()) > DELETE_UP_TO_ROWS:
            names = ", ".join(f'"{t.name}"' for t in tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            return
        for table in reversed(tables):
            await conn.execute(text(f'DELETE FROM "{table.name}"'))
        await conn.execute(text(_RESTART_USED_SEQUENCES))


def sqlite_url_for(template: Path, tmp_path: Path) -> str:
    target = tmp_path / "uidhub.db"
    shutil.copy(template, target)
    return f"sqlite+aiosqlite:///{target}"


class StatementCounter:
    def __init__(self, db: Database) -> None:
        self.statements: list[str] = []
        self._db = db

    def _on_execute(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")):
            self.statements.append(statement)

    def __enter__(self) -> StatementCounter:
        self.statements.clear()
        event.listen(self._db.engine.sync_engine, "before_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self._db.engine.sync_engine, "before_cursor_execute", self._on_execute)

    @property
    def count(self) -> int:
        return len(self.statements)
