"""`uidhub import-accounts --partner UID FILE`: link accounts in bulk from a CSV file.

The file is UTF-8 with the header `uid,nickname,business_manager,remarks,master_uid,quota_amount,
warning_percent`; an empty cell is "not set". A sub-account's master comes earlier in the file or is
already linked to the partner.

Everything happens in one write transaction, so that the file is linked entirely or not at all: every row
is checked first with linkAccount's own rules (`resolvers.accounts.link_input_errors`, `master_problem`,
the text limits of updateBasicInfo, money parsing), against the file itself (duplicates, masters) and
against the database (UIDs already linked, masters' state, read with the masters locked). Any problem:
nothing is written, and the first `MAX_REPORTED` problems come back as `line N: CODE message`. Otherwise
the rows go in `BATCH` accounts at a time, through COPY (PostgreSQL) or multi-row INSERTs (SQLite), see
`_insert`: pools, accounts, quota records (QUOTA_CREATE) and audit entries (ACCOUNT_LINKED, QUOTA_CREATED,
WARNING_THRESHOLD_CHANGED), as linkAccount, setQuotaAmount and setWarningThreshold write them. The listing,
counters and search index follow through the database's triggers (migration 0004_scale). A second run of
the same file finds every UID linked and reports each as ALREADY_LINKED: it changes nothing.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from uidhub.db import Database
from uidhub.models import Account, AuditEntry, Partner, QuotaAdjustment, QuotaPool
from uidhub.models import rules as R
from uidhub.models.base import utcnow
from uidhub.models.enums import (
    AccountStatus,
    AccountType,
    AuditAction,
    CreditControlStatus,
    ErrorCode,
    OperationMethod,
    PaygFreezeStatus,
    PurchaseControl,
    QuotaOperationType,
    Role,
    ShutdownPolicy,
)
from uidhub.models.listing import TRIGRAM_INDEXES
from uidhub.models.money import MoneyError, format_money, parse_money
from uidhub.notifications import log
from uidhub.resolvers import accounts, counters
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.errors import UserError

logger = logging.getLogger(__name__)

HEADER = ["uid", "nickname", "business_manager", "remarks", "master_uid", "quota_amount", "warning_percent"]
MAX_REPORTED = 100
#: Accounts per batch (pools, accounts and quota records of a batch go in together; sub-accounts may name a
#: master of the same batch).
BATCH = 10_000
#: Rows per COPY on PostgreSQL: each COPY is one statement, under the statement timeout.
COPY_ROWS = 50_000
#: Rows per INSERT on SQLite: 500 × 15 columns stays far below its 32,766 bound parameters.
SQLITE_ROWS_PER_INSERT = 500
#: Names per IN (...) lookup: under asyncpg's bound-parameter limit (32,767) and SQLite's since 3.32 (32,766;
#: `lookup_chunk` falls back to 900 under older SQLite builds' 999). A round trip per 900 names was a second per
#: 100,000 rows.
LOOKUP_CHUNK = 30_000


class ImportFailed(Exception):
    """The file cannot be linked: `problems` are the `line N: CODE message` lines (at most MAX_REPORTED)."""

    def __init__(self, problems: list[str], total: int) -> None:
        super().__init__(f"{total} invalid row(s)")
        self.problems = problems
        self.total = total


@dataclass
class Row:
    line: int
    uid: str
    nickname: str | None
    business_manager: str | None
    remarks: str | None
    master_uid: str | None
    quota_cents: int | None
    warning_percent: int | None


@dataclass
class Problems:
    """What is wrong with the file, found in two passes (the file, then the database): reported by line."""

    found: list[tuple[int, str]]
    total: int = 0

    def add(self, line: int, code: ErrorCode | str, message: str) -> None:
        self.total += 1
        if len(self.found) < MAX_REPORTED * 100:  # enough to report the first MAX_REPORTED lines of both passes
            self.found.append((line, f"line {line}: {code} {message}"))

    @property
    def lines(self) -> list[str]:
        return [text for _line, text in sorted(self.found, key=lambda item: item[0])[:MAX_REPORTED]]

    def add_errors(self, line: int, errors: Iterable[UserError]) -> None:
        for error in errors:
            self.add(line, error.code, error.message)


def import_actor(partner: Partner) -> Actor:
    """Who the audit trail names: the partner itself, through the platform, as an administrator."""
    return Actor(
        partner_id=partner.id,
        partner_uid=partner.uid,
        partner_kind=partner.kind,
        role=Role.ADMIN,
        method=OperationMethod.PLATFORM,
        operator_uid=partner.uid,
        operator_name="import-accounts",
        is_ram=False,
    )


def _cell(value: str | None) -> str | None:
    return None if value is None or value == "" else value


def parse_rows(handle: io.TextIOBase | Any, actor: Actor, problems: Problems) -> list[Row]:
    """Rows of the file with every check that needs no database."""
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != HEADER:
        raise ImportFailed([f"line 1: {ErrorCode.INVALID_INPUT} the header must be {','.join(HEADER)}"], 1)
    rows: list[Row] = []
    seen: dict[str, int] = {}
    owners: set[str] = set()
    for values in reader:
        line = reader.line_num
        if not values:
            continue
        if len(values) != len(HEADER):
            problems.add(line, ErrorCode.INVALID_INPUT, f"expected {len(HEADER)} cells, found {len(values)}")
            continue
        uid, nickname, manager, remarks, master_uid, quota, warning = (_cell(v) for v in values)
        uid = uid or ""
        quota_cents: int | None = None
        if quota is not None:
            try:
                quota_cents = parse_money(quota)
            except MoneyError as exc:
                problems.add(line, ErrorCode.INVALID_INPUT, f"quota_amount: {exc}")
        errors = accounts.link_input_errors(
            actor, uid=uid, nickname=nickname, email=None, master_uid=master_uid, quota_amount_cents=quota_cents
        )
        # What updateBasicInfo applies to the two fields linkAccount does not take.
        if manager is not None and (denial := actor.denial(Permission.BUSINESS_MANAGER)) is not None:
            errors.append(UserError(ErrorCode.FORBIDDEN, denial, ("input", "businessManager")))
        accounts.check_text(errors, manager, "businessManager", max_chars=R.BUSINESS_MANAGER_MAX_CHARS)
        accounts.check_text(errors, remarks, "remarks", max_bytes=R.REMARKS_MAX_BYTES)
        problems.add_errors(line, errors)
        percent: int | None = None
        if warning is not None:
            if not warning.isascii() or not warning.isdigit() or not 1 <= int(warning) <= 100:
                problems.add(line, ErrorCode.INVALID_INPUT, "warning_percent must be an integer from 1 to 100.")
            elif master_uid is not None:
                problems.add(
                    line, ErrorCode.QUOTA_MANAGED_BY_MASTER, "A sub-account's warning threshold is its master's."
                )
            else:
                percent = int(warning)
        if uid in seen:
            problems.add(line, ErrorCode.ALREADY_LINKED, f"UID {uid} is already in this file (line {seen[uid]}).")
            continue
        seen[uid] = line
        if master_uid is not None and master_uid in seen and master_uid not in owners:
            # Earlier in the file, but itself a sub-account (or invalid).
            problems.add(line, ErrorCode.INVALID_INPUT, "A sub-account cannot have sub-accounts (one level only).")
        if master_uid is None:
            owners.add(uid)
        rows.append(Row(line, uid, nickname, manager, remarks, master_uid, quota_cents, percent))
    return rows


def lookup_chunk() -> int:
    return LOOKUP_CHUNK if sqlite3.sqlite_version_info >= (3, 32, 0) else min(LOOKUP_CHUNK, 900)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _check_database(session: Any, actor: Actor, rows: list[Row], problems: Problems) -> dict[str, Account]:
    """UIDs already linked (any partner), and the masters named from the database (locked, like linkAccount)."""
    uids = [r.uid for r in rows]
    linked: set[str] = set()
    size = lookup_chunk()
    for chunk in _chunks(uids, size):
        linked.update((await session.scalars(select(Account.uid).where(Account.uid.in_(list(chunk))))).all())
    in_file = {r.uid for r in rows}
    wanted = sorted({r.master_uid for r in rows if r.master_uid is not None and r.master_uid not in in_file})
    masters: dict[str, Account] = {}
    for chunk in _chunks(wanted, size):
        query = (
            select(Account)
            .where(Account.uid.in_(list(chunk)), actor.account_scope())
            .order_by(Account.id)
            .with_for_update()
        )
        masters.update({a.uid: a for a in (await session.scalars(query)).all()})
    first_line: dict[str, int] = {}
    for r in rows:
        first_line.setdefault(r.uid, r.line)
    for r in rows:
        if r.uid in linked:
            problems.add(r.line, ErrorCode.ALREADY_LINKED, f"UID {r.uid} is already linked.")
        if r.master_uid is not None:
            if r.master_uid in in_file:
                if (at := first_line[r.master_uid]) > r.line:
                    problems.add(
                        r.line,
                        ErrorCode.INVALID_INPUT,
                        f"master {r.master_uid} must come earlier in the file (line {at}).",
                    )
            elif (problem := accounts.master_problem(masters.get(r.master_uid), r.master_uid)) is not None:
                problems.add(r.line, problem.code, problem.message)
    return masters


async def _reserve_ids(session: Any, table: Any, count: int) -> list[int]:
    """`count` fresh ids for `table`, so that rows go in with plain multi-row INSERTs (no RETURNING, which
    SQLAlchemy runs row by row on SQLite). PostgreSQL draws them from the table's sequence (one row: an array);
    on SQLite this transaction holds the write lock (BEGIN IMMEDIATE), so the ids above the current maximum are
    ours."""
    if count == 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        drawn = await session.scalar(
            text(
                f"SELECT array(SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) "
                "FROM generate_series(1, :n))"
            ),
            {"n": count},
        )
        return [int(i) for i in drawn]
    top = int(await session.scalar(text(f"SELECT coalesce(max(id), 0) FROM {table.name}")) or 0)
    return list(range(top + 1, top + 1 + count))


class Same:
    """One value for every row of a column: converted once, repeated."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


#: Rows to insert, column by column: one value per row (a list), or `Same` for all of them.
Columns = dict[str, "list[Any] | Same"]


@dataclass
class Prepared:
    """Rows of one table ready for the driver: each value already through its column type's bind conversion."""

    table: Any
    names: list[str]
    records: list[tuple[Any, ...]]


def _convert(process: Callable[[Any], Any], cells: list[Any]) -> list[Any]:
    """`process` over `cells`, once per distinct object: many cells of a column are the same object (an action,
    a constant audit `before`), and JSON or timestamp conversion is most of the Python time of an import.
    Keyed by id(): every cell stays alive in `cells` meanwhile."""
    done: dict[int, Any] = {}
    out = []
    for cell in cells:
        key = id(cell)
        if key not in done:
            done[key] = process(cell)
        out.append(done[key])
    return out


def prepare(dialect: Any, table: Any, count: int, columns: Columns) -> Prepared:
    """`count` rows of `table` as driver values: each value through its column type's own bind conversion (what
    an ORM insert would store), without SQLAlchemy's per-row statement machinery (which cost as much Python time
    as the database spent). Pure Python: it runs while the database writes the previous batch (`Writer`)."""
    names = list(columns)
    values: list[Iterable[Any]] = []
    for name in names:
        process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        cells = columns[name]
        if isinstance(cells, Same):
            values.append(itertools.repeat(cells.value if process is None else process(cells.value), count))
        else:
            values.append(cells if process is None else _convert(process, cells))
    return Prepared(table, names, list(zip(*values, strict=True)))


def sqlite_rows_per_insert(columns: int) -> int:
    """Rows per multi-row INSERT on SQLite: SQLITE_ROWS_PER_INSERT, within the bound-parameter limit of builds
    older than 3.32 (999) and newer ones (32,766)."""
    limit = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
    return max(1, min(SQLITE_ROWS_PER_INSERT, limit // columns))


async def write(session: Any, prepared: Prepared) -> None:
    """Write prepared rows in as few statements as the database allows.

    PostgreSQL: binary COPY, `COPY_ROWS` at a time. One COPY is one firing of the statement-level triggers
    (one listing INSERT … SELECT, one counters delta row) and one round trip, whatever its number of rows.
    SQLite: multi-row INSERT … VALUES. Its triggers run per row either way, but one statement per row (an
    executemany) cost 140 µs a row where 500-row statements cost 58 µs (listing, counters and FTS triggers,
    100,000 accounts, measured with the sqlite3 module).
    """
    records, names, name = prepared.records, prepared.names, prepared.table.name
    if not records:
        return
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        raw = (await conn.get_raw_connection()).driver_connection
        for chunk in _chunks(records, COPY_ROWS):
            await raw.copy_records_to_table(name, records=chunk, columns=names)
        return
    one = "(" + ", ".join("?" for _ in names) + ")"
    head = f"INSERT INTO {name} ({', '.join(names)}) VALUES "
    for chunk in _chunks(records, sqlite_rows_per_insert(len(names))):
        await conn.exec_driver_sql(head + ", ".join([one] * len(chunk)), tuple(itertools.chain.from_iterable(chunk)))


class Writer:
    """Writes prepared rows in order, in a task of its own on the session's connection, while the import
    prepares the next batch: the database maintains its indexes and triggers while Python builds rows (on
    PostgreSQL the server process, on SQLite aiosqlite's thread, which releases the GIL while SQLite works).
    At most `AHEAD` writes wait; the first failure is raised to the caller at its next `put` or at `close`."""

    AHEAD = 4

    def __init__(self, session: Any) -> None:
        self.session = session
        self.queue: asyncio.Queue[Prepared | None] = asyncio.Queue(self.AHEAD)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while (item := await self.queue.get()) is not None:
            await write(self.session, item)

    async def put(self, item: Prepared) -> None:
        put = asyncio.ensure_future(self.queue.put(item))
        await asyncio.wait({put, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self.task.result()  # the write that failed raises here
            raise RuntimeError("the import's writer stopped")  # pragma: no cover - _run only ends on None

    async def close(self) -> None:
        """Wait for every write; raises the first failure."""
        if not self.task.done():
            await self.put_end()
        await self.task

    async def put_end(self) -> None:
        put = asyncio.ensure_future(self.queue.put(None))
        await asyncio.wait({put, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    def abandon(self) -> None:
        """Stop writing (the import failed elsewhere; its transaction is rolled back)."""
        if self.task.done():
            if not self.task.cancelled():
                self.task.exception()  # retrieved: the caller's own exception is the one reported
        else:
            self.task.cancel()


@dataclass
class Ids:
    """Ids reserved for the whole file before the first write, drawn in batch order (so that preparing a batch
    never waits for the database)."""

    pools: list[int]
    accounts: list[int]
    pools_used: int = 0
    accounts_used: int = 0

    def take_pools(self, count: int) -> list[int]:
        self.pools_used += count
        return self.pools[self.pools_used - count : self.pools_used]

    def take_accounts(self, count: int) -> list[int]:
        self.accounts_used += count
        return self.accounts[self.accounts_used - count : self.accounts_used]


@dataclass
class AuditColumns:
    """The import's audit entries (ACCOUNT_LINKED, QUOTA_CREATED, WARNING_THRESHOLD_CHANGED), column by column,
    in the order linkAccount, setQuotaAmount and setWarningThreshold would write them, row after row."""

    account_id: list[int]
    action: list[AuditAction]
    before: list[Any]
    after: list[Any]


def _batch_tables(
    dialect: Any, actor: Actor, batch: Sequence[Row], ids: Ids, known: dict[str, tuple[int, int]]
) -> tuple[list[Prepared], Prepared]:
    """Pools, accounts (owners, then sub-accounts: a sub-account may name a master of the same batch) and quota
    records of one batch, prepared, and its audit entries (written last, see import_accounts). `known` maps
    UID → (account id, pool id) as rows are given ids."""
    now = utcnow()
    operator = {name: Same(value) for name, value in actor.operator_fields().items()}
    owners = [r for r in batch if r.master_uid is None]
    subs = [r for r in batch if r.master_uid is not None]
    pool_ids = ids.take_pools(len(owners))
    pools = prepare(
        dialect,
        QuotaPool.__table__,
        len(owners),
        {
            "id": pool_ids,
            "partner_id": Same(actor.partner_id),
            "amount_cents": [r.quota_cents or 0 for r in owners],
            "deducted_cents": Same(0),
            "undeducted_cents": Same(0),
            "quota_created": [r.quota_cents is not None for r in owners],
            "warning_percent": [r.warning_percent for r in owners],
            "warning_below": Same(False),
            "shutdown_policy": Same(ShutdownPolicy.IMMEDIATE_STOP),
            "delay_credit_cents": Same(0),
            "credit_control_status": Same(CreditControlStatus.NORMAL),
            "updated_at": Same(now),
        },
    )
    pool_of = dict(zip((r.uid for r in owners), pool_ids, strict=True))
    owner_ids = ids.take_accounts(len(owners))
    for r, account_id in zip(owners, owner_ids, strict=True):
        known[r.uid] = (account_id, pool_of[r.uid])
    sub_ids = ids.take_accounts(len(subs))
    sub_masters = [known[r.master_uid] for r in subs]  # type: ignore[index]
    for r, account_id, master in zip(subs, sub_ids, sub_masters, strict=True):
        known[r.uid] = (account_id, master[1])

    def accounts(rows: list[Row], account_ids: list[int], masters: list[int | None], pools: list[int]) -> Prepared:
        return prepare(
            dialect,
            Account.__table__,
            len(rows),
            {
                "id": account_ids,
                "partner_id": Same(actor.partner_id),
                "uid": [r.uid for r in rows],
                "account_type": Same(AccountType.END_USER),
                "nickname": [r.nickname for r in rows],
                "business_manager": [r.business_manager for r in rows],
                "remarks": [r.remarks for r in rows],
                "email": Same(None),
                "status": Same(AccountStatus.NORMAL),
                "linked_at": Same(now),
                "master_id": masters,
                "pool_id": pools,
                "payg_freeze": Same(PaygFreezeStatus.NORMAL),
                "purchase_control": Same(PurchaseControl.NORMAL),
                "updated_at": Same(now),
            },
        )

    prepared = [
        pools,
        accounts(owners, owner_ids, [None] * len(owners), pool_ids),
        accounts(subs, sub_ids, [m[0] for m in sub_masters], [m[1] for m in sub_masters]),
    ]
    quota_owners = [r for r in owners if r.quota_cents is not None]
    if quota_owners:
        prepared.append(
            prepare(
                dialect,
                QuotaAdjustment.__table__,
                len(quota_owners),
                {
                    "pool_id": [pool_of[r.uid] for r in quota_owners],
                    "operation_type": Same(QuotaOperationType.QUOTA_CREATE),
                    "occurred_at": Same(now),
                    "before_cents": Same(0),
                    "value_cents": [r.quota_cents for r in quota_owners],
                    "after_cents": [r.quota_cents for r in quota_owners],
                    "method": Same(actor.method),
                    **operator,
                },
            )
        )
    linked, quota_created, warning_changed = (
        AuditAction.ACCOUNT_LINKED,
        AuditAction.QUOTA_CREATED,
        AuditAction.WARNING_THRESHOLD_CHANGED,
    )
    end_user = AccountType.END_USER.value
    audit = AuditColumns([], [], [], [])
    # One object for every row's identical `before` (converted once, see _convert; never mutated).
    quota_before, warning_before = {"amount": format_money(0)}, {"warningThresholdPercent": None}
    for r in batch:
        account_id = known[r.uid][0]
        audit.account_id.append(account_id)
        audit.action.append(linked)
        audit.before.append(None)
        audit.after.append(
            {
                "uid": r.uid,
                "accountType": end_user,
                "nickname": r.nickname,
                "email": None,
                "masterUid": r.master_uid,
                "businessManager": r.business_manager,
                "remarks": r.remarks,
            }
        )
        if r.quota_cents is not None:
            audit.account_id.append(account_id)
            audit.action.append(quota_created)
            audit.before.append(quota_before)
            audit.after.append({"amount": format_money(r.quota_cents)})
        if r.warning_percent is not None:
            audit.account_id.append(account_id)
            audit.action.append(warning_changed)
            audit.before.append(warning_before)
            audit.after.append({"warningThresholdPercent": r.warning_percent})
    return prepared, _audit_table(dialect, actor, audit, now)


def _audit_table(dialect: Any, actor: Actor, audit: AuditColumns, now: Any) -> Prepared:
    operator = {name: Same(value) for name, value in actor.operator_fields().items()}
    return prepare(
        dialect,
        AuditEntry.__table__,
        len(audit.account_id),
        {
            "partner_id": Same(actor.partner_id),
            "account_id": audit.account_id,
            "action": audit.action,
            "occurred_at": Same(now),
            "method": Same(actor.method),
            "before": audit.before,
            "after": audit.after,
            "reason": Same(None),
            "cascade_from_id": Same(None),
            **operator,
        },
    )


async def import_accounts(
    db: Database, partner_uid: str, path: Path, *, progress: Callable[[int, int], None] | None = None
) -> int:
    """Link every row of the file for the partner, or nothing (ImportFailed). Returns the number linked."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        async with db.write() as session:
            partner = await session.scalar(select(Partner).where(Partner.uid == partner_uid))
            if partner is None:
                raise LookupError(f"no partner {partner_uid}")
            actor = import_actor(partner)
            problems = Problems([])
            rows = parse_rows(handle, actor, problems)
            masters = await _check_database(session, actor, rows, problems)
            if problems.total:
                raise ImportFailed(problems.lines, problems.total)
            known = {uid: (a.id, a.pool_id) for uid, a in masters.items()}
            owners = sum(1 for r in rows if r.master_uid is None)
            ids = Ids(
                await _reserve_ids(session, QuotaPool.__table__, owners),
                await _reserve_ids(session, Account.__table__, len(rows)),
            )
            dialect = (await session.connection()).dialect
            entries = Prepared(AuditEntry.__table__, [], [])
            writer = Writer(session)
            try:
                done = 0
                for batch in _chunks(rows, BATCH):
                    tables, batch_entries = _batch_tables(dialect, actor, batch, ids, known)
                    for prepared in tables:
                        await writer.put(prepared)
                    entries.names = batch_entries.names
                    entries.records += batch_entries.records
                    done += len(batch)
                    if progress:
                        progress(done, len(rows))
                await writer.close()
            except BaseException:
                writer.abandon()
                raise
            # Audit ids must follow commit order (notifications.log): on PostgreSQL under the log's lock,
            # taken last and held only for these inserts and the commit.
            if db.is_postgres:
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": log.LOG_LOCK_KEY})
            await write(session, entries)
            if entries.records:
                log.add_topic(session, f"audit:{partner.id}")
        async with db.read() as session:
            await counters.compact(session, partner.id)  # fold the import's delta rows (PostgreSQL)
    if rows:
        await flush_search_pending(db)
    return len(rows)


async def flush_search_pending(db: Database) -> None:
    """PostgreSQL: move the trigram indexes' pending entries into their trees, after the import committed.

    Why: a GIN index takes new entries into a pending list (`fastupdate`) that every search through it reads
    in full, until a vacuum or the insert that overflows `gin_pending_list_limit` (4 MB by default) merges it.
    An import leaves up to that much per index: at a million accounts the bench's nickname search read 1,000
    pending pages, 32 ms instead of 17 ms (EXPLAIN ANALYZE), until autovacuum came by, and on a server where
    it is off, never. `gin_clean_pending_list` is what autovacuum would do, done when the import knows it is
    due; it runs outside the import's transaction, holding no lock of the import.

    Only an index's owner (or a superuser) may call it: a database user without that right gets a warning,
    not a failure: the accounts are linked either way.
    """
    if not db.is_postgres:
        return
    async with db.engine.connect() as conn:
        for name in TRIGRAM_INDEXES:
            try:
                async with conn.begin():
                    await conn.execute(text("SELECT gin_clean_pending_list(to_regclass(:name))"), {"name": name})
            except DBAPIError as error:
                if getattr(error.orig, "sqlstate", None) != "42501":  # insufficient_privilege
                    raise
                logger.warning(
                    "import-accounts: not allowed to flush the pending entries of %s (only its owner may); "
                    "searches read them until autovacuum merges them",
                    name,
                )


def terminal_progress(done: int, total: int) -> None:
    """A one-line progress bar on stderr, redrawn in place (only when stderr is a terminal)."""
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
