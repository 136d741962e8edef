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

import csv
import io
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

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
from uidhub.models.money import MoneyError, format_money, parse_money
from uidhub.notifications import log
from uidhub.resolvers import accounts, counters
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.errors import UserError

HEADER = ["uid", "nickname", "business_manager", "remarks", "master_uid", "quota_amount", "warning_percent"]
MAX_REPORTED = 100
#: Accounts per batch (pools, accounts and quota records of a batch go in together; sub-accounts may name a
#: master of the same batch).
BATCH = 10_000
#: Rows per COPY on PostgreSQL: each COPY is one statement, under the statement timeout.
COPY_ROWS = 50_000
#: Rows per INSERT on SQLite: 500 × 15 columns stays far below its 32,766 bound parameters.
SQLITE_ROWS_PER_INSERT = 500
#: Names per IN (...) lookup: under SQLite's and asyncpg's bound-parameter limits.
LOOKUP_CHUNK = 900


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


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def _check_database(session: Any, actor: Actor, rows: list[Row], problems: Problems) -> dict[str, Account]:
    """UIDs already linked (any partner), and the masters named from the database (locked, like linkAccount)."""
    uids = [r.uid for r in rows]
    linked: set[str] = set()
    for chunk in _chunks(uids, LOOKUP_CHUNK):
        linked.update((await session.scalars(select(Account.uid).where(Account.uid.in_(list(chunk))))).all())
    in_file = {r.uid for r in rows}
    wanted = sorted({r.master_uid for r in rows if r.master_uid is not None and r.master_uid not in in_file})
    masters: dict[str, Account] = {}
    for chunk in _chunks(wanted, LOOKUP_CHUNK):
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
    SQLAlchemy runs row by row on SQLite). PostgreSQL draws them from the table's sequence; on SQLite this
    transaction holds the write lock (BEGIN IMMEDIATE), so the ids above the current maximum are ours."""
    if count == 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        result = await session.execute(
            text(f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) FROM generate_series(1, :n)"),
            {"n": count},
        )
        return [int(r[0]) for r in result.all()]
    top = int(await session.scalar(text(f"SELECT coalesce(max(id), 0) FROM {table.name}")) or 0)
    return list(range(top + 1, top + 1 + count))


def _convert(process: Callable[[Any], Any], cells: list[Any]) -> list[Any]:
    """`process` over `cells`, once per distinct object: most cells of a column are the same object (the
    batch's timestamp, the operator, an action, a constant audit `before`), and JSON or timestamp conversion is
    most of the Python time of an import. Keyed by id(): every cell stays alive in `cells` meanwhile."""
    done: dict[int, Any] = {}
    out = []
    for cell in cells:
        key = id(cell)
        if key not in done:
            done[key] = process(cell)
        out.append(done[key])
    return out


async def _insert(session: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    """Write `rows` (dicts with the same keys) in as few statements as the database allows, each value through
    its column type's own bind conversion (what an ORM insert would store), without SQLAlchemy's per-row
    statement machinery (which cost as much Python time as the database spent).

    PostgreSQL: binary COPY, `COPY_ROWS` at a time. One COPY is one firing of the statement-level triggers
    (one listing INSERT … SELECT, one counters delta row) and one round trip, whatever its number of rows.
    SQLite: multi-row INSERT … VALUES. Its triggers run per row either way, but one statement per row (an
    executemany) cost 140 µs a row where 500-row statements cost 58 µs (listing, counters and FTS triggers,
    100,000 accounts, measured with the sqlite3 module).
    """
    if not rows:
        return
    conn = await session.connection()
    dialect = conn.dialect
    columns = list(rows[0])
    # Column by column: each column's conversion mapped over its values (C-level iteration), then zipped.
    values: list[list[Any]] = []
    for name in columns:
        process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        cells = [row[name] for row in rows]
        values.append(cells if process is None else _convert(process, cells))
    records = list(zip(*values, strict=True))
    if dialect.name == "postgresql":
        raw = (await conn.get_raw_connection()).driver_connection
        for chunk in _chunks(records, COPY_ROWS):
            await raw.copy_records_to_table(table.name, records=chunk, columns=columns)
        return
    one = "(" + ", ".join("?" for _ in columns) + ")"
    head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
    for chunk in _chunks(records, SQLITE_ROWS_PER_INSERT):
        await conn.exec_driver_sql(head + ", ".join([one] * len(chunk)), tuple(v for r in chunk for v in r))


async def _link_batch(
    session: Any, actor: Actor, batch: Sequence[Row], known: dict[str, tuple[int, int]], audit: list[dict[str, Any]]
) -> None:
    """Pools, accounts and quota records of one batch; `known` maps UID → (account id, pool id) as they go in."""
    now = utcnow()
    operator = actor.operator_fields()
    owners = [r for r in batch if r.master_uid is None]
    pool_ids = await _reserve_ids(session, QuotaPool.__table__, len(owners))
    pool_shared = {
        "partner_id": actor.partner_id,
        "deducted_cents": 0,
        "undeducted_cents": 0,
        "warning_below": False,
        "shutdown_policy": ShutdownPolicy.IMMEDIATE_STOP,
        "delay_credit_cents": 0,
        "credit_control_status": CreditControlStatus.NORMAL,
        "updated_at": now,
    }
    await _insert(
        session,
        QuotaPool.__table__,
        [
            {
                **pool_shared,
                "id": pool_id,
                "amount_cents": r.quota_cents or 0,
                "quota_created": r.quota_cents is not None,
                "warning_percent": r.warning_percent,
            }
            for r, pool_id in zip(owners, pool_ids, strict=True)
        ],
    )
    pool_of = {r.uid: p for r, p in zip(owners, pool_ids, strict=True)}

    # What every account of the batch shares, built once (enum member lookups cost, a million times over).
    shared = {
        "partner_id": actor.partner_id,
        "account_type": AccountType.END_USER,
        "email": None,
        "status": AccountStatus.NORMAL,
        "linked_at": now,
        "payg_freeze": PaygFreezeStatus.NORMAL,
        "purchase_control": PurchaseControl.NORMAL,
        "updated_at": now,
    }

    def account_row(r: Row, account_id: int) -> dict[str, Any]:
        master = known[r.master_uid] if r.master_uid is not None else None
        return {
            **shared,
            "id": account_id,
            "uid": r.uid,
            "nickname": r.nickname,
            "business_manager": r.business_manager,
            "remarks": r.remarks,
            "master_id": master[0] if master else None,
            "pool_id": master[1] if master else pool_of[r.uid],
        }

    # Owners first: a sub-account of this batch may name a master of this batch.
    ids = await _reserve_ids(session, Account.__table__, len(owners))
    for r, account_id in zip(owners, ids, strict=True):
        known[r.uid] = (account_id, pool_of[r.uid])
    await _insert(session, Account.__table__, [account_row(r, i) for r, i in zip(owners, ids, strict=True)])
    subs = [r for r in batch if r.master_uid is not None]
    ids = await _reserve_ids(session, Account.__table__, len(subs))
    await _insert(session, Account.__table__, [account_row(r, i) for r, i in zip(subs, ids, strict=True)])
    for r, account_id in zip(subs, ids, strict=True):
        known[r.uid] = (account_id, known[r.master_uid][1])  # type: ignore[index]

    adjustments = []
    entry_shared = {
        "partner_id": actor.partner_id,
        "method": actor.method,
        "occurred_at": now,
        "reason": None,
        "cascade_from_id": None,
        **operator,
    }
    linked, quota_created, warning_changed = (
        AuditAction.ACCOUNT_LINKED,
        AuditAction.QUOTA_CREATED,
        AuditAction.WARNING_THRESHOLD_CHANGED,
    )
    end_user, quota_create = AccountType.END_USER.value, QuotaOperationType.QUOTA_CREATE
    # One object for every row's identical `before` (converted once, see _convert; never mutated).
    quota_before, warning_before = {"amount": format_money(0)}, {"warningThresholdPercent": None}
    for r in batch:
        entry = {**entry_shared, "account_id": known[r.uid][0]}
        audit.append(
            {
                **entry,
                "action": linked,
                "before": None,
                "after": {
                    "uid": r.uid,
                    "accountType": end_user,
                    "nickname": r.nickname,
                    "email": None,
                    "masterUid": r.master_uid,
                    "businessManager": r.business_manager,
                    "remarks": r.remarks,
                },
            }
        )
        if r.quota_cents is not None:
            adjustments.append(
                {
                    "pool_id": pool_of[r.uid],
                    "operation_type": quota_create,
                    "occurred_at": now,
                    "before_cents": 0,
                    "value_cents": r.quota_cents,
                    "after_cents": r.quota_cents,
                    "method": actor.method,
                    **operator,
                }
            )
            audit.append(
                {
                    **entry,
                    "action": quota_created,
                    "before": quota_before,
                    "after": {"amount": format_money(r.quota_cents)},
                }
            )
        if r.warning_percent is not None:
            audit.append(
                {
                    **entry,
                    "action": warning_changed,
                    "before": warning_before,
                    "after": {"warningThresholdPercent": r.warning_percent},
                }
            )
    if adjustments:
        await _insert(session, QuotaAdjustment.__table__, adjustments)


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
            audit: list[dict[str, Any]] = []
            done = 0
            for batch in _chunks(rows, BATCH):
                await _link_batch(session, actor, batch, known, audit)
                done += len(batch)
                if progress:
                    progress(done, len(rows))
            # Audit ids must follow commit order (notifications.log): on PostgreSQL under the log's lock,
            # taken last and held only for these inserts and the commit.
            if db.is_postgres:
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": log.LOG_LOCK_KEY})
            await _insert(session, AuditEntry.__table__, audit)
            if audit:
                log.add_topic(session, f"audit:{partner.id}")
        async with db.read() as session:
            await counters.compact(session, partner.id)  # fold the import's delta rows (PostgreSQL)
    return len(rows)


def terminal_progress(done: int, total: int) -> None:
    """A one-line progress bar on stderr, redrawn in place (only when stderr is a terminal)."""
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
