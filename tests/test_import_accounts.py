"""`uidhub import-accounts`: all or nothing, linkAccount's rules and records, and a second run changes nothing."""

from __future__ import annotations

import csv
import logging
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from tests.support.api import make_partner
from tests.test_cli import run
from tests.test_scale_counters import check_counters, check_listing
from uidhub import import_accounts as import_accounts_module
from uidhub.db import Database
from uidhub.import_accounts import HEADER, ImportFailed, import_accounts, import_actor
from uidhub.models import Account, AuditEntry, Partner, QuotaAdjustment, QuotaPool
from uidhub.models.enums import AccountType, AuditAction, PartnerKind, QuotaOperationType
from uidhub.models.listing import TRIGRAM_INDEXES
from uidhub.resolvers import accounts


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


VALID = [
    ["M1", "Alpha Corp", "Li Wei", "Key account", "", "1000.50", "20"],
    ["M1-S1", "beta", "", "", "M1", "", ""],
    ["A1", "", "", "", "", "", ""],
    ["M1-S2", "gamma", "", "Hangzhou", "M1", "", ""],
    ["OLD-S1", "", "", "", "OLD", "", ""],  # a sub-account of a master linked before the import
]


async def _counts(db: Database) -> tuple[int, int, int, int]:
    async with db.read() as session:
        return (
            int(await session.scalar(select(func.count()).select_from(Account)) or 0),
            int(await session.scalar(select(func.count()).select_from(QuotaPool)) or 0),
            int(await session.scalar(select(func.count()).select_from(AuditEntry)) or 0),
            int(await session.scalar(select(func.count()).select_from(QuotaAdjustment)) or 0),
        )


async def _partner_with_old_master(db: Database) -> Partner:
    partner = await make_partner(db, "P-IMP")
    async with db.write() as session:
        await accounts.link_account(
            session,
            import_actor(partner),
            uid="OLD",
            account_type=AccountType.END_USER,
            nickname=None,
            email=None,
            master_uid=None,
            quota_amount_cents=500,
        )
    return partner


async def test_invalid_file_links_nothing(db: Database, tmp_path: Path) -> None:
    await _partner_with_old_master(db)
    other = await make_partner(db, "P-ELSE")
    for uid in ("THEIRS", "TAKEN"):
        async with db.write() as session:
            await accounts.link_account(
                session,
                import_actor(other),
                uid=uid,
                account_type=AccountType.END_USER,
                nickname=None,
                email=None,
                master_uid=None,
                quota_amount_cents=None,
            )
    before = await _counts(db)
    path = write_csv(
        tmp_path / "bad.csv",
        [
            *VALID,
            [" BAD", "", "", "", "", "", ""],  # line 7: a leading space
            ["M1", "", "", "", "", "", ""],  # line 8: twice in the file
            ["S9", "", "", "", "M1", "5.00", ""],  # line 9: a sub-account's quota is its master's
            ["S10", "", "", "", "M1-S1", "", ""],  # line 10: a sub-account's sub-account
            ["S11", "", "", "", "THEIRS", "", ""],  # line 11: another partner's master does not exist here
            ["A2", "", "", "", "", "12.345", "0"],  # line 12: money and percent
            ["TAKEN", "", "", "", "", "", ""],  # line 13: linked already (by another partner)
            ["A3", "x" * 151, "", "", "", "", ""],  # line 14: nickname over 150 bytes
        ],
    )
    with pytest.raises(ImportFailed) as failed:
        await import_accounts(db, "P-IMP", path)
    codes = [line.split(" ")[2] for line in failed.value.problems]
    lines = [int(line.split(" ")[1].rstrip(":")) for line in failed.value.problems]
    assert lines == sorted(lines) and set(lines) == set(range(7, 15))
    assert "QUOTA_MANAGED_BY_MASTER" in codes and "NOT_FOUND" in codes and "ALREADY_LINKED" in codes
    assert all(line.startswith("line ") for line in failed.value.problems)
    assert await _counts(db) == before  # nothing at all was written


async def test_valid_file_links_all_and_a_second_run_changes_nothing(db: Database, tmp_path: Path) -> None:
    partner = await _partner_with_old_master(db)
    before = await _counts(db)
    path = write_csv(tmp_path / "ok.csv", VALID)
    assert await import_accounts(db, "P-IMP", path) == len(VALID)
    after = await _counts(db)
    # 5 accounts; 2 pools (M1, A1); audit: 5 ACCOUNT_LINKED + QUOTA_CREATED + WARNING_THRESHOLD_CHANGED; 1 record.
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2], after[3] - before[3]) == (5, 2, 7, 1)
    async with db.read() as session:
        m1 = await session.scalar(select(Account).where(Account.uid == "M1"))
        sub = await session.scalar(select(Account).where(Account.uid == "OLD-S1"))
        old = await session.scalar(select(Account).where(Account.uid == "OLD"))
        assert m1 is not None and sub is not None and old is not None
        assert (m1.nickname, m1.business_manager, m1.remarks) == ("Alpha Corp", "Li Wei", "Key account")
        assert sub.master_id == old.id and sub.pool_id == old.pool_id
        pool = await session.get(QuotaPool, m1.pool_id)
        assert pool is not None and (pool.amount_cents, pool.quota_created, pool.warning_percent) == (100_050, True, 20)
        record = await session.scalar(select(QuotaAdjustment).where(QuotaAdjustment.pool_id == m1.pool_id))
        assert record is not None and record.operation_type is QuotaOperationType.QUOTA_CREATE
        assert record.value_cents == 100_050
        actions = (
            await session.scalars(
                select(AuditEntry.action).where(AuditEntry.account_id == m1.id).order_by(AuditEntry.id)
            )
        ).all()
        assert actions == [AuditAction.ACCOUNT_LINKED, AuditAction.QUOTA_CREATED, AuditAction.WARNING_THRESHOLD_CHANGED]
        linked = await session.scalar(select(AuditEntry).where(AuditEntry.account_id == sub.id))
        assert linked is not None and linked.after["masterUid"] == "OLD" and linked.operator_uid == "P-IMP"
    await check_listing(db)
    await check_counters(db, import_actor(partner))

    with pytest.raises(ImportFailed) as again:
        await import_accounts(db, "P-IMP", path)
    assert len(again.value.problems) == len(VALID)
    assert all(" ALREADY_LINKED " in line for line in again.value.problems)
    assert await _counts(db) == after


def test_cli_exit_codes_and_output(tmp_path: Path) -> None:
    """As a user runs it: the count and exit 0; then `line N: CODE message` lines and exit 1."""
    assert (
        run(
            tmp_path, "create-partner", "--uid", "P1", "--name", "P", "--kind", PartnerKind.DISTRIBUTOR.value
        ).returncode
        == 0
    )
    path = write_csv(tmp_path / "ok.csv", VALID[:4])
    first = run(tmp_path, "import-accounts", "--partner", "P1", str(path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "linked 4 account(s)"
    second = run(tmp_path, "import-accounts", "--partner", "P1", str(path))
    assert second.returncode == 1
    assert second.stdout.splitlines() == [
        f"line {n}: ALREADY_LINKED UID {VALID[n - 2][0]} is already linked." for n in range(2, 6)
    ]
    assert "Traceback" not in second.stderr and "nothing was linked" in second.stderr
    missing = run(tmp_path, "import-accounts", "--partner", "NOPE", str(path))
    assert missing.returncode == 2 and "no partner NOPE" in missing.stderr


async def test_agency_rules_are_linkaccounts(db: Database, tmp_path: Path) -> None:
    """An agency may link, but not set quotas (linkAccount) nor business managers (updateBasicInfo)."""
    await make_partner(db, "P-AG", PartnerKind.AGENCY)
    path = write_csv(
        tmp_path / "agency.csv",
        [
            ["G1", "", "Li", "", "", "", ""],
            ["G2", "", "", "", "", "5.00", ""],
            ["G3", "nick", "", "remarks", "", "", ""],
        ],
    )
    with pytest.raises(ImportFailed) as failed:
        await import_accounts(db, "P-AG", path)
    assert [line.split(" ")[:3] for line in failed.value.problems] == [
        ["line", "2:", "FORBIDDEN"],
        ["line", "3:", "FORBIDDEN"],
    ]
    ok = write_csv(tmp_path / "agency-ok.csv", [["G3", "nick", "", "remarks", "", "", ""]])
    assert await import_accounts(db, "P-AG", ok) == 1


async def test_rows_across_batches_and_statements(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches, COPYs and multi-row INSERTs of two rows: a sub-account names a master of an earlier batch, every
    row lands once with linkAccount's records, and the values read back as the ORM wrote them."""
    monkeypatch.setattr(import_accounts_module, "BATCH", 2)
    monkeypatch.setattr(import_accounts_module, "COPY_ROWS", 2)
    monkeypatch.setattr(import_accounts_module, "SQLITE_ROWS_PER_INSERT", 2)
    partner = await _partner_with_old_master(db)
    before = await _counts(db)
    path = write_csv(tmp_path / "ok.csv", VALID)
    assert await import_accounts(db, "P-IMP", path) == len(VALID)
    after = await _counts(db)
    assert tuple(a - b for a, b in zip(after, before, strict=True)) == (5, 2, 7, 1)
    async with db.read() as session:
        m1 = await session.scalar(select(Account).where(Account.uid == "M1"))
        s2 = await session.scalar(select(Account).where(Account.uid == "M1-S2"))
        assert m1 is not None and s2 is not None
        assert s2.master_id == m1.id and s2.pool_id == m1.pool_id and s2.remarks == "Hangzhou"
        assert m1.linked_at.tzinfo is not None
        entries = (await session.scalars(select(AuditEntry).where(AuditEntry.account_id == m1.id))).all()
        by_action = {e.action: e for e in entries}
        assert by_action[AuditAction.QUOTA_CREATED].before == {"amount": "0.00"}
        assert by_action[AuditAction.QUOTA_CREATED].after == {"amount": "1000.50"}
        assert by_action[AuditAction.WARNING_THRESHOLD_CHANGED].before == {"warningThresholdPercent": None}
        assert by_action[AuditAction.ACCOUNT_LINKED].before is None
        assert by_action[AuditAction.ACCOUNT_LINKED].after["remarks"] == "Key account"
        assert by_action[AuditAction.ACCOUNT_LINKED].occurred_at == m1.linked_at
    await check_listing(db)
    await check_counters(db, import_actor(partner))


async def test_a_failed_write_links_nothing(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows are written by a task of their own while the next batch is prepared: a write that fails midway
    (after earlier batches went in) reaches the caller, and the transaction links nothing."""
    monkeypatch.setattr(import_accounts_module, "BATCH", 2)
    real_write = import_accounts_module.write
    calls = 0

    async def failing_write(session: object, prepared: import_accounts_module.Prepared) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("disk full")
        await real_write(session, prepared)

    monkeypatch.setattr(import_accounts_module, "write", failing_write)
    partner = await _partner_with_old_master(db)
    before = await _counts(db)
    with pytest.raises(RuntimeError, match="disk full"):
        await import_accounts(db, "P-IMP", write_csv(tmp_path / "ok.csv", VALID))
    assert calls == 4
    assert await _counts(db) == before
    await check_counters(db, import_actor(partner))


# ---------------------------------------------------------------- PostgreSQL: the search indexes after an import


async def test_an_import_leaves_no_pending_search_entries(pg_db: Database, tmp_path: Path) -> None:
    """The trigram indexes' pending lists are merged once the import has committed: no search after it reads
    them. Before, they held what the import wrote until autovacuum merged it (never, where it is off)."""
    await make_partner(pg_db, "P-IMP")
    rows = [[f"U{i}", f"Customer {i}", "", f"Remarks {i}", "", "", ""] for i in range(300)]
    assert await import_accounts(pg_db, "P-IMP", write_csv(tmp_path / "many.csv", rows)) == 300
    async with pg_db.engine.connect() as conn:
        for name in TRIGRAM_INDEXES:
            # The number of pending pages merged now: none are left.
            left = await conn.scalar(text("SELECT gin_clean_pending_list(to_regclass(:name))"), {"name": name})
            assert left == 0, name


async def test_a_user_who_may_not_flush_the_search_indexes_gets_a_warning(
    pg_db: Database, pg_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only an index's owner may merge its pending list: another database user's import still succeeds (it
    has committed) and is told why searches may read the pending entries for a while."""
    role = f"uidhub_limited_{uuid.uuid4().hex[:8]}"
    async with pg_db.engine.connect() as conn:
        await conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        await conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        await conn.commit()
    limited = Database(make_url(pg_database_url).set(username=role).render_as_string(hide_password=False))
    try:
        with caplog.at_level(logging.WARNING, logger="uidhub.import_accounts"):
            await import_accounts_module.flush_search_pending(limited)
        warned = [r.getMessage() for r in caplog.records if "not allowed to flush" in r.getMessage()]
        assert len(warned) == len(TRIGRAM_INDEXES), warned
    finally:
        await limited.dispose()
        async with pg_db.engine.connect() as conn:
            await conn.execute(text(f"DROP OWNED BY {role}"))
            await conn.execute(text(f"DROP ROLE {role}"))
            await conn.commit()
