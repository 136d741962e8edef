"""The async engine and sessions.

SQLite: WAL so that readers never block the writer, a busy timeout so that a
second writer waits instead of failing, and `BEGIN IMMEDIATE` for write
transactions so that the write lock is taken up front. (A deferred
transaction that reads first and writes later cannot wait for the lock: SQLite
answers "database is locked" at once to avoid a deadlock.)

Connections. Each process has two bounded pools: the request pool
(`PoolConfig`: `db_pool_size` + `db_max_overflow` connections, a checkout
waits at most `db_pool_timeout_seconds` and then fails with
`sqlalchemy.exc.TimeoutError`, answered as SERVICE_UNAVAILABLE / 503 with
Retry-After) and a small background pool (`Database.background`,
`db_background_pool_size`, no overflow) for the outbox sender, the export
worker, the live feeds and housekeeping, so that neither can starve the
other. A process opens at most size + overflow + background connections;
with N workers that times N must stay below PostgreSQL's `max_connections`
minus its reserved slots and other clients. There is no pre-ping on checkout
(a round trip per request): connections are recycled after
`db_pool_recycle_seconds`, and a connection the server closed fails its first
statement, which invalidates the pool and is retried whole
(`uidhub.transactions`).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Executable, event, text
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import make_url
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import FromClause
from sqlalchemy.sql.compiler import WARN_LINTING, SQLCompiler

from uidhub.notifications.log import commit

if TYPE_CHECKING:
    from uidhub.notifications.bus import Bus
    from uidhub.settings import Settings

WRITE_OPTION = "uidhub_write"
#: session.info key of the Database a session belongs to (`Database.of`).
_SESSION_DB = "uidhub_db"
#: session.info key: the session is in autocommit mode (`Database.session`).
_AUTOCOMMIT = "uidhub_autocommit"
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Defaults of UIDHUB_DB_STATEMENT_TIMEOUT_SECONDS and UIDHUB_DB_CONNECT_TIMEOUT_SECONDS (PostgreSQL).
STATEMENT_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 5.0
#: The client gives up this long after the server's statement_timeout should have answered: a database that
#: does not answer at all (network partition, hung host) still frees the caller.
CLIENT_TIMEOUT_SLACK_SECONDS = 1.0


def postgres_connect_args(statement_timeout: float, connect_timeout: float) -> dict[str, Any]:
    """asyncpg arguments that bound every statement and every new connection.

    `statement_timeout` makes PostgreSQL cancel a slow statement itself (a
    clean error, the connection stays usable); asyncpg's `command_timeout`
    covers a server that does not answer at all; `timeout` bounds the connect
    and authentication handshake.
    """
    return {
        "timeout": connect_timeout,
        "command_timeout": statement_timeout + CLIENT_TIMEOUT_SLACK_SECONDS,
        "server_settings": {"statement_timeout": str(max(1, round(statement_timeout * 1000)))},
    }


def _sqlite_from_hint(_compiler: SQLCompiler, _table: FromClause, text: str | None) -> str | None:
    """Render `Select.with_hint(table, "INDEXED BY …", "sqlite")` after the table's name.

    SQLAlchemy's SQLite compiler drops FROM hints (the base compiler's `get_from_hint_text` returns None), and
    SQLite's `INDEXED BY` clause goes exactly there. Only statements that ask for a "sqlite" hint change:
    the listing's masters-only pages (resolvers.accounts._owner_index).
    """
    return text


SQLiteCompiler.get_from_hint_text = _sqlite_from_hint  # type: ignore[method-assign,assignment]


def _sqlite_setup(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@dataclass(frozen=True)
class PoolConfig:
    """One bounded connection pool (see the module docstring); the defaults are the settings' defaults."""

    size: int = 15
    overflow: int = 0
    timeout: float = 10.0
    recycle: float = 1800.0

    @classmethod
    def from_settings(cls, settings: Any) -> PoolConfig:
        return cls(
            size=settings.db_pool_size,
            overflow=settings.db_max_overflow,
            timeout=settings.db_pool_timeout_seconds,
            recycle=settings.db_pool_recycle_seconds,
        )

    @classmethod
    def background_from_settings(cls, settings: Any) -> PoolConfig:
        return BACKGROUND_POOL.with_size(settings.db_background_pool_size, recycle=settings.db_pool_recycle_seconds)

    def with_size(self, size: int, *, recycle: float | None = None) -> PoolConfig:
        return replace(self, size=size, recycle=self.recycle if recycle is None else recycle)

    def engine_options(self) -> dict[str, Any]:
        return {
            "pool_size": self.size,
            "max_overflow": self.overflow,
            "pool_timeout": self.timeout,
            "pool_recycle": self.recycle,
            "pool_pre_ping": False,
        }


#: Background loops wait longer for a connection than a request (nobody is waiting on them) and never overflow.
BACKGROUND_POOL = PoolConfig(size=3, overflow=0, timeout=30.0)


def create_engine(
    url: str,
    *,
    echo: bool = False,
    pool: PoolConfig | None = None,
    statement_timeout: float = STATEMENT_TIMEOUT_SECONDS,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
) -> AsyncEngine:
    pool = pool or PoolConfig()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ValueError("uidhub needs a file-backed SQLite database (WAL is per file)")
        engine = create_async_engine(
            url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **pool.engine_options()
        )
        _sqlite_setup(engine)
        return engine
    return create_async_engine(
        url,
        echo=echo,
        connect_args=postgres_connect_args(statement_timeout, connect_timeout),
        **pool.engine_options(),
    )


async def _rows(
    session: AsyncSession, statement: Executable, parameters: Mapping[str, Any] | None = None
) -> Sequence[Any]:
    """Core execution of a read statement on the session's connection, in its transaction.

    `session.execute` runs every statement through the ORM's execution and loading layers, which build
    each row again in Python even when the statement selects only columns: a third of a list page's
    SQLAlchemy time. A statement of columns needs none of it. Pending changes are flushed first, as
    the ORM's autoflush would.
    """
    if session.new or session.deleted or session.dirty:
        await AsyncSession.flush(session)
    connection = await AsyncSession.connection(session)
    if session.info.get(_AUTOCOMMIT):
        rows = await _driver_rows(connection, statement, parameters or {})
        if rows is not None:
            return rows
    return (await connection.execute(statement, parameters)).all()


class _DriverPlan:
    """What running one compiled read statement on asyncpg needs beyond its SQL: its parameters in order with
    their bind converters, and each result column's converter. Built once per compiled form (kept on it)."""

    __slots__ = ("binds", "converts", "names")

    def __init__(self, compiled: Any, dialect: Any) -> None:
        self.names: list[str] = list(compiled.positiontup or ())
        processors = compiled._bind_processors
        self.binds: list[Any] = [processors.get(name) for name in self.names]
        results = [column[3]._cached_result_processor(dialect, None) for column in compiled._result_columns]
        #: (column index, converter) of the columns SQLAlchemy converts (enums); the others pass as asyncpg gives them.
        self.converts: list[tuple[int, Any]] = [(i, f) for i, f in enumerate(results) if f is not None]


_PLAN = "_uidhub_driver_plan"


async def _driver_rows(connection: Any, statement: Executable, parameters: Mapping[str, Any]) -> list[Any] | None:
    """The rows of a read statement run on the asyncpg connection itself, or None when SQLAlchemy must run it.

    Why: SQLAlchemy's execution layers (execution context, cursor adaptation, result metadata, Row objects)
    cost more CPU than asyncpg's own round trip for a list page's statement, on every request. This takes the
    statement's compiled form from the engine's own compiled cache (as `Connection.execute` does: the same
    SQL, the same extracted literal values) and applies SQLAlchemy's own bind and result processors, so the
    values are the ones SQLAlchemy would return (tests/test_compiled_reads.py compares whole responses with
    ordinary execution, which runs through SQLAlchemy). Only autocommit reads come here
    (`Database.session(autocommit=True)`, PostgreSQL): there is no transaction of the session's to be inside
    of. The engine's `before_cursor_execute` / `after_cursor_execute` listeners still see every statement.
    Statements that need SQLAlchemy's parameter expansion (IN lists, literal execution) are left to it.
    """
    sync = connection.sync_connection
    dialect = sync.dialect
    if dialect.driver != "asyncpg" or dialect.paramstyle != "numeric_dollar":
        return None
    compiled: Any
    compiled, extracted, collected, _hit = statement._compile_w_cache(
        dialect=dialect,
        compiled_cache=sync.engine._compiled_cache,
        column_keys=sorted(parameters),
        for_executemany=False,
        schema_translate_map=None,
        linting=dialect.compiler_linting | WARN_LINTING,  # as Connection.execute compiles it
    )
    if compiled.post_compile_params or compiled.literal_execute_params or not compiled._result_columns:
        return None
    plan: _DriverPlan | bool | None = getattr(compiled, _PLAN, None)
    if plan is None:
        try:
            plan = _DriverPlan(compiled, dialect)
        except Exception:
            # A result type whose conversion depends on the driver's column type (NUMERIC: uidhub stores money
            # as integers) cannot be planned without a round trip: SQLAlchemy runs such statements.
            plan = False
        setattr(compiled, _PLAN, plan)
    if plan is False:
        return None
    assert isinstance(plan, _DriverPlan)
    values = compiled.construct_params(
        parameters, extracted_parameters=extracted, escape_names=False, _collected_params=collected
    )
    # A tuple, as SQLAlchemy hands a positional statement's parameters to the driver and to the listeners.
    arguments = tuple(
        value if bind is None or value is None else bind(value)
        for bind, value in zip(plan.binds, (values[name] for name in plan.names), strict=True)
    )
    sql = compiled.string
    listened = sync._has_events or sync.engine._has_events
    if listened:
        sync.dispatch.before_cursor_execute(sync, None, sql, arguments, None, False)
    try:
        records = await sync.connection.driver_connection.fetch(sql, *arguments)
    except BaseException as error:
        # The connection's state after a driver error, or after a cancellation in the middle of the statement,
        # is not known here: discard it (closed, not pooled), as SQLAlchemy does in both cases, and report an
        # error as SQLAlchemy reports a failed statement, which every caller handles.
        await connection.invalidate()
        if isinstance(error, Exception):
            raise StatementError(str(error), sql, arguments, error) from error
        raise
    if listened:
        sync.dispatch.after_cursor_execute(sync, None, sql, arguments, None, False)
    converts = plan.converts
    if not converts:
        return [tuple(record) for record in records]
    rows = []
    for record in records:
        row = list(record)
        for index, convert in converts:
            value = row[index]
            if value is not None:
                row[index] = convert(value)
        rows.append(row)
    return rows


async def rows_of(
    session: AsyncSession, statement: Executable, parameters: Mapping[str, Any] | None = None
) -> Sequence[Any]:
    """The rows of a statement that selects columns (not entities), without the ORM's loading (`_rows`)."""
    if isinstance(session, SerialSession):
        return await session.rows(statement, parameters)
    return await _rows(session, statement, parameters)


def in_autocommit(session: AsyncSession) -> bool:
    """The session runs each statement as its own transaction (`Database.session(autocommit=True)`)."""
    return bool(session.info.get(_AUTOCOMMIT))


async def invalidate(session: AsyncSession) -> None:
    """Discard the session's connection (closed, not returned to the pool): its state is not known."""
    connection = await session.connection()
    await connection.invalidate()


def _serialized(name: str, method: Any = None) -> Any:
    method = method or getattr(AsyncSession, name)

    async def locked(self: SerialSession, *args: Any, **kwargs: Any) -> Any:
        async with self._lock:
            return await method(self, *args, **kwargs)

    async def call(self: SerialSession, *args: Any, **kwargs: Any) -> Any:
        if not self.shielded:
            return await locked(self, *args, **kwargs)
        # The call runs in a task of its own that the caller's cancellation does not reach.
        task = asyncio.ensure_future(locked(self, *args, **kwargs))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    call.__name__ = name
    call.__doc__ = method.__doc__
    return call


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a shielded call's outcome as seen: the caller that would have read it may be gone."""
    if not task.cancelled():
        task.exception()


class SerialSession(AsyncSession):
    """An AsyncSession whose database calls take turns.

    GraphQL resolves sibling fields concurrently, and each DataLoader batch
    runs in its own task; without this lock two of them could use the
    request's one session at once, which SQLAlchemy forbids. (`scalars` is
    not wrapped: it calls `execute`.)

    A `shielded` session (a feed batch's, shared by many subscribers) also
    protects each call from its caller's cancellation: SQLAlchemy invalidates
    a connection whose call is interrupted by a BaseException, so one
    dashboard closing in the middle of a query would otherwise break the
    session under every other subscriber of the batch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = asyncio.Lock()
        self.shielded = False

    execute = _serialized("execute")
    scalar = _serialized("scalar")
    get = _serialized("get")
    get_one = _serialized("get_one")
    stream = _serialized("stream")
    flush = _serialized("flush")
    commit = _serialized("commit")
    rollback = _serialized("rollback")
    close = _serialized("close")
    refresh = _serialized("refresh")
    merge = _serialized("merge")
    delete = _serialized("delete")
    connection = _serialized("connection")
    run_sync = _serialized("run_sync")
    rows = _serialized("rows", _rows)


class Database:
    """One engine, with a read sessionmaker and a write sessionmaker over the same pool.

    `bus` and `settings` are what the sessions' commits and renderings use
    (the bus wakes subscribers after a commit; the settings render alert
    emails). They are given at construction and never change: a database
    opened without them (a script, a unit test) commits without waking
    anyone and renders with the documented defaults. `with_runtime` gives a
    view of the same engines that carries them (`uidhub.runtime.Runtime`).

    `background` is a sibling over the same database with a pool of its own
    (its engine is created on first use) for the background loops; it
    carries the same bus and settings.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        engine: AsyncEngine | None = None,
        pool: PoolConfig | None = None,
        background_pool: PoolConfig | None = None,
        statement_timeout: float = STATEMENT_TIMEOUT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        bus: Bus | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.url = url
        self.pool = pool or PoolConfig()
        self._statement_timeout = statement_timeout
        self._connect_timeout = connect_timeout
        self.engine = engine or create_engine(
            url, echo=echo, pool=self.pool, statement_timeout=statement_timeout, connect_timeout=connect_timeout
        )
        self._ping_task: asyncio.Task[bool] | None = None
        self.dialect = self.engine.dialect.name
        self._bus = bus
        self._settings = settings
        #: The background sibling, shared by every view of this database; None until first used.
        self._background_slot: list[Database] = []
        self._background_pool: PoolConfig | None = background_pool or BACKGROUND_POOL
        self._background_view: Database | None = None
        self._read = async_sessionmaker(self.engine, class_=SerialSession, expire_on_commit=False, autoflush=True)
        #: Read sessions without BEGIN/ROLLBACK (PostgreSQL): see `session(autocommit=True)`.
        self._autocommit = (
            async_sessionmaker(
                self.engine.execution_options(isolation_level="AUTOCOMMIT"),
                class_=SerialSession,
                expire_on_commit=False,
                autoflush=True,
            )
            if self.dialect == "postgresql"
            else self._read
        )
        self._write = async_sessionmaker(
            self.engine.execution_options(**{WRITE_OPTION: True}),
            class_=SerialSession,
            expire_on_commit=False,
            autoflush=True,
        )

    @property
    def bus(self) -> Bus | None:
        """Wakes subscribers after this database's commits (notifications.bus); None outside an app."""
        return self._bus

    @property
    def settings(self) -> Settings | None:
        """What alert emails render with (timezone, console URL, sender); None means the documented defaults."""
        return self._settings

    def with_runtime(self, *, bus: Bus | None, settings: Settings | None) -> Database:
        """A view of this database (same engines, pools, background sibling) that carries `bus` and `settings`."""
        view = copy.copy(self)
        view._bus, view._settings, view._background_view = bus, settings, None
        return view

    @staticmethod
    def of(session: AsyncSession) -> Database | None:
        """The database a session was opened from (`session()` records it), or None for a foreign session."""
        db = session.info.get(_SESSION_DB)
        return db if isinstance(db, Database) else None

    @property
    def background(self) -> Database:
        """The background loops' database: the same one, through a small pool of its own."""
        if self._background_pool is None:  # this is the background sibling
            return self
        if not self._background_slot:
            self._background_slot.append(
                Database(
                    self.url,
                    pool=self._background_pool,
                    statement_timeout=self._statement_timeout,
                    connect_timeout=self._connect_timeout,
                )
            )
        if self._background_view is None:
            sibling = copy.copy(self._background_slot[0])
            sibling._bus, sibling._settings, sibling._background_pool = self._bus, self._settings, None
            self._background_view = sibling
        return self._background_view

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def session(self, *, write: bool = False, autocommit: bool = False) -> AsyncSession:
        """A new session; `write=True` makes its transactions take the write lock up front on SQLite.

        `autocommit=True` (a read, on PostgreSQL): every statement is its own transaction, without the
        BEGIN and ROLLBACK round trips around them. Under READ COMMITTED, PostgreSQL's default (uidhub
        sets no other), each statement of a transaction takes its own snapshot anyway, so a read of several
        statements sees exactly what it would see inside one; a server configured for a stricter default
        would lose the one snapshot per request for these reads. SET LOCAL has nothing to apply to
        (`in_autocommit`). SQLite sessions are unchanged (a deferred BEGIN costs no round trip there).
        """
        session = (self._write if write else self._autocommit if autocommit else self._read)()
        session.info[_AUTOCOMMIT] = autocommit and self._autocommit is not self._read
        session.info[_SESSION_DB] = self
        return session

    def shared_session(self) -> AsyncSession:
        """A read session for many tasks at once: no caller's cancellation interrupts its calls."""
        session = self.session()
        assert isinstance(session, SerialSession)
        session.shielded = True
        return session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction that commits on success and rolls back on any error."""
        async with self.session(write=True) as session:
            try:
                yield session
                await commit(session, self._bus)
            except BaseException:
                await session.rollback()
                raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.session() as session:
            yield session

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def ready(self, timeout: float) -> bool:
        """`ping`, answered within `timeout` whatever the database does.

        The ping runs in a task of its own that is never cancelled (cancelling
        a pooled connection mid-statement would leave its cleanup waiting on
        the same hung database); it ends on its own through the statement and
        connect timeouts. While one is still running, later checks wait on it
        instead of stacking new ones.
        """
        task = self._ping_task
        if task is None or task.done():
            task = self._ping_task = asyncio.ensure_future(self.ping())
        done, _pending = await asyncio.wait({task}, timeout=timeout)
        return bool(done) and task.result()

    async def dispose(self) -> None:
        task, self._ping_task = self._ping_task, None
        if task is not None and not task.done():
            task.cancel()
        if self._background_pool is not None and self._background_slot:
            await self._background_slot[0].dispose()
        await self.engine.dispose()


def null_pool_engine(url: str) -> AsyncEngine:
    """An engine without pooling, for one-shot CLI commands and migrations."""
    return create_async_engine(url, poolclass=NullPool)
