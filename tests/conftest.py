"""Fixtures that build real databases, a real app and real rows.

`db` runs a test on SQLite and, when UIDHUB_TEST_POSTGRES_URL is set, on
PostgreSQL too. Both are migrated with Alembic once per session; SQLite
tests copy the migrated file, PostgreSQL tests truncate between tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from models import Base, Partner
from models.enums import OperationMethod, PartnerKind, Role
from resolvers.auth import create_token
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.migrate import upgrade_sync
from uidhub.settings import Settings

PG_URL = os.environ.get("UIDHUB_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("UIDHUB_TEST_REDIS_URL")

needs_postgres = pytest.mark.skipif(not PG_URL, reason="UIDHUB_TEST_POSTGRES_URL is not set")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="UIDHUB_TEST_REDIS_URL is not set")


# ---------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    in_thread(upgrade_sync, f"sqlite+aiosqlite:///{path}")
    return path


def in_thread(fn: Any, *args: Any) -> Any:
    """Run blocking setup (its own event loop inside) from async fixtures."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def _pg_admin_exec(sql: str) -> None:
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


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    if not PG_URL:
        pytest.skip("UIDHUB_TEST_POSTGRES_URL is not set")
    name = f"uidhub_test_{uuid.uuid4().hex[:10]}"
    _pg_admin_exec(f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    in_thread(upgrade_sync, url)
    yield url
    _pg_admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _truncate(db: Database) -> None:
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    async with db.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def sqlite_url_for(template: Path, tmp_path: Path) -> str:
    target = tmp_path / "uidhub.db"
    shutil.copy(template, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=needs_postgres)])
async def db(request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty database: SQLite, and PostgreSQL when configured."""
    if request.param == "sqlite":
        database = Database(sqlite_url_for(sqlite_template, tmp_path))
    else:
        database = Database(request.getfixturevalue("pg_database_url"))
        await _truncate(database)
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
    await _truncate(database)
    try:
        yield database
    finally:
        await database.dispose()


# ---------------------------------------------------------------- statement counting


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


# ---------------------------------------------------------------- the API


@dataclass
class Api:
    """A GraphQL client over the real ASGI app (in-process)."""

    client: httpx.AsyncClient
    db: Database
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, token: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)

    async def gql(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        as_: str = "admin",
        errors: bool = False,
    ) -> dict[str, Any]:
        response = await self.post(query, variables, token or self.tokens[as_])
        body = response.json()
        if not errors:
            assert "errors" not in body, body
            return body["data"]
        return body


async def make_partner(
    db: Database, uid: str, kind: PartnerKind = PartnerKind.DISTRIBUTOR, alert_emails: list[str] | None = None
) -> Partner:
    async with db.write() as session:
        partner = Partner(uid=uid, name=f"Partner {uid}", kind=kind, alert_emails=alert_emails or ["ops@example.com"])
        session.add(partner)
    return partner


async def make_token(
    db: Database,
    partner: Partner,
    role: Role = Role.ADMIN,
    *,
    method: OperationMethod = OperationMethod.PLATFORM,
    account_uid: str | None = None,
    is_ram: bool = False,
    operator_uid: str | None = None,
) -> str:
    from sqlalchemy import select

    from models import Account

    async with db.write() as session:
        account = None
        if account_uid is not None:
            account = await session.scalar(select(Account).where(Account.uid == account_uid))
        return await create_token(
            session,
            partner=partner,
            role=role,
            method=method,
            account=account,
            is_ram=is_ram,
            operator_uid=operator_uid,
        )


#: The suite's in-process clients send far faster than any console; the rate limits have their own tests.
NO_REQUEST_RATE_LIMITS = {"rate_limit_token_burst": 0, "rate_limit_ip_burst": 0}


async def make_api(db: Database, tmp_path: Path, **settings: Any) -> AsyncIterator[Api]:
    config = Settings(database_url=db.url, export_dir=str(tmp_path / "exports"), **{**NO_REQUEST_RATE_LIMITS,
                                                                                    **settings})
    app = create_app(config, db=db)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        api = Api(client=client, db=db, settings=config)
        partner = await make_partner(db, "P-MAIN")
        other = await make_partner(db, "P-OTHER")
        api.tokens["admin"] = await make_token(db, partner, Role.ADMIN)
        api.tokens["other"] = await make_token(db, other, Role.ADMIN)
        yield api


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
