"""Autocommit reads on PostgreSQL run on the asyncpg connection itself (uidhub.db._driver_rows).

What must hold: the rows are the ones SQLAlchemy's own execution returns (same values, same Python types:
enums converted, NULLs kept, literal values of a new statement object of a cached shape applied), statements
SQLAlchemy must expand are left to it, a failing statement is reported as SQLAlchemy reports one and its
connection is not pooled again, and the engine's listeners see every statement. Also here (uidhub.db): the
default request pool is fixed, so a steady load opens no new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import BigInteger, DateTime, Float, bindparam, event, func, literal, null, select
from sqlalchemy.exc import SQLAlchemyError

from tests.support.db import needs_postgres
from uidhub.db import Database, rows_of
from uidhub.models import Account
from uidhub.models.enums import AccountStatus

pytestmark = needs_postgres

STATUS = Account.__table__.c.status.type


def _statement(uid: str) -> Any:
    """One shape; `uid` a literal value (a new statement object per call, as a cursor page builds one)."""
    return select(
        bindparam("status", type_=STATUS),
        literal(uid),
        bindparam("at", type_=DateTime(timezone=True)),
        literal(2**40, BigInteger),
        null(),
    ).where(literal(uid) == bindparam(None, uid))


async def _both(db: Database, statement: Any, params: dict[str, Any]) -> tuple[list[tuple[Any, ...]], list[Any]]:
    contexts: list[Any] = []

    def seen(_conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool) -> None:
        contexts.append(context)

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with db.session(autocommit=True) as session:
            driver = [tuple(row) for row in await rows_of(session, statement, params)]
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    async with db.engine.connect() as conn:
        plain = [tuple(row) for row in (await conn.execute(statement, params)).all()]
    assert driver == plain
    return driver, contexts


@contextlib.contextmanager
def _invalidations(db: Database) -> Iterator[list[object]]:
    """The connections the engine invalidates (closes instead of pooling) inside the block."""
    seen: list[object] = []

    def on_invalidate(*_args: Any) -> None:
        seen.append(1)

    event.listen(db.engine.sync_engine, "invalidate", on_invalidate)
    try:
        yield seen
    finally:
        event.remove(db.engine.sync_engine, "invalidate", on_invalidate)


async def test_rows_are_sqlalchemys_rows(pg_db: Database) -> None:
    at = datetime(2025, 3, 4, 5, 6, 7, 890, tzinfo=UTC)
    for uid, status in (("U-1", AccountStatus.NORMAL), ("U-2", AccountStatus.TERMINATED)):
        rows, contexts = await _both(pg_db, _statement(uid), {"status": status, "at": at})
        assert rows == [(status, uid, at, 2**40, None)]
        assert type(rows[0][0]) is AccountStatus
        # The driver path: the listener saw the statement, without SQLAlchemy's execution context.
        assert contexts == [None]
    rows, contexts = await _both(pg_db, _statement("U-3"), {"status": None, "at": None})
    assert rows == [(None, "U-3", None, 2**40, None)]


async def test_expanding_parameters_are_left_to_sqlalchemy(pg_db: Database) -> None:
    statement = select(literal(1)).where(literal(2).in_(bindparam("values", expanding=True)))
    rows, contexts = await _both(pg_db, statement, {"values": [1, 2, 3]})
    assert rows == [(1,)]
    assert len(contexts) == 1 and contexts[0] is not None  # SQLAlchemy's own execution


async def test_results_whose_conversion_needs_the_column_type_are_left_to_sqlalchemy(pg_db: Database) -> None:
    rows, contexts = await _both(pg_db, select(literal(7) / bindparam("d", type_=BigInteger)), {"d": 2})
    assert [float(v) for (v,) in rows] == [3.5]
    assert len(contexts) == 1 and contexts[0] is not None


async def test_a_failing_statement_is_sqlalchemys_error_and_its_connection_is_dropped(pg_db: Database) -> None:
    pool: Any = pg_db.engine.pool
    with _invalidations(pg_db) as invalidated, pytest.raises(SQLAlchemyError, match="division by zero"):
        async with pg_db.session(autocommit=True) as session:
            await rows_of(session, select(literal(1) // bindparam("zero", type_=BigInteger)), {"zero": 0})
    assert invalidated == [1]
    assert pool.checkedout() == 0
    # The next read gets a working connection.
    async with pg_db.session(autocommit=True) as session:
        assert [tuple(r) for r in await rows_of(session, select(literal(7)))] == [(7,)]


async def test_a_cancelled_statement_drops_its_connection(pg_db: Database) -> None:
    """A request cancelled at its time budget in the middle of a read: the connection is not pooled again."""
    pool: Any = pg_db.engine.pool

    async def slow_read() -> None:
        async with pg_db.session(autocommit=True) as session:
            await rows_of(session, select(func.pg_sleep(bindparam("s", type_=Float)), literal(1)), {"s": 5.0})

    with _invalidations(pg_db) as invalidated:
        task = asyncio.create_task(slow_read())
        for _ in range(200):  # until the statement is running on the server
            await asyncio.sleep(0.01)
            if pool.checkedout():
                break
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert invalidated == [1]  # discarded, not handed to the next request mid-cancellation
    assert pool.checkedout() == 0
    async with pg_db.session(autocommit=True) as session:
        assert [tuple(r) for r in await rows_of(session, select(literal(8)))] == [(8,)]


async def test_a_steady_load_above_the_old_pool_size_opens_no_new_connections(pg_db: Database) -> None:
    """The default request pool is fixed (15, no overflow): overflow connections are closed as soon as they are
    returned while the pool is full, so 16 concurrent readers with 10 + 5 reconnected all the time."""
    connects: list[object] = []

    def connected(*_args: Any) -> None:
        connects.append(1)

    event.listen(pg_db.engine.sync_engine, "connect", connected)

    async def read() -> None:
        async with pg_db.session(autocommit=True) as session:
            await rows_of(session, select(func.pg_sleep(0.002), literal(1)))

    try:
        for _round in range(3):  # warm-up: the pool opens what the load needs
            await asyncio.gather(*(read() for _ in range(15)))
        opened = len(connects)
        for _round in range(20):
            await asyncio.gather(*(read() for _ in range(16)))
        assert len(connects) == opened, f"{len(connects) - opened} connections opened under a steady load"
    finally:
        event.remove(pg_db.engine.sync_engine, "connect", connected)
