"""Migration 0004_scale upgrades a database filled at revision 0001: it backfills the listing (stored available
amount, effective freeze and ban), the per-partner counters and the search index, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from alembic import command
from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url

from tests.support.db import PG_URL, in_thread, pg_admin_exec
from tests.test_scale_counters import check_counters, check_listing
from uidhub.db import Database
from uidhub.migrate import alembic_config
from uidhub.models import Account, CreditAlert, Partner, QuotaPool, QuotaThreshold
from uidhub.models.enums import (
    AccountStatus,
    AccountType,
    CreditControlStatus,
    OperationMethod,
    PartnerKind,
    PaygFreezeStatus,
    PurchaseControl,
    Role,
)
from uidhub.resolvers import accounts
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.counters import totals


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason="no PG"))])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no schema at all)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    assert PG_URL is not None
    name = f"uidhub_mig_{uuid.uuid4().hex[:10]}"
    pg_admin_exec(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        pg_admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _fill_at_0001(db: Database) -> Actor:
    """Accounts of every kind the counters distinguish, written while no trigger exists yet."""
    async with db.write() as session:
        partner = Partner(uid="P", name="P", kind=PartnerKind.DISTRIBUTOR, alert_emails=["a@example.com"])
        session.add(partner)
        await session.flush()
        # Core inserts of the columns 0001 has: the model's later columns (alert_rules) do not exist yet.
        pool_rows: list[dict[str, object]] = [
            {
                "amount_cents": 10_000,
                "deducted_cents": 2_000,
                "undeducted_cents": 500,
                "warning_percent": 90,
            },  # below warning: 7,500 < 9,000
            {
                "amount_cents": 1_000,
                "undeducted_cents": 3_000,
                "credit_control_status": CreditControlStatus.SHUTDOWN,
            },  # owes 2,000
            {"amount_cents": 500},
            {"amount_cents": 700},
        ]
        table = QuotaPool.__table__
        pools = [
            SimpleNamespace(
                id=await session.scalar(
                    insert(table).values(partner_id=partner.id, **values).returning(table.c.id)  # type: ignore[attr-defined]
                )
            )
            for values in pool_rows
        ]
        master = Account(
            partner_id=partner.id,
            uid="M1",
            account_type=AccountType.ENTERPRISE,
            nickname="Alpha Corp",
            pool_id=pools[0].id,
            payg_freeze=PaygFreezeStatus.FROZEN,
        )
        other = Account(
            partner_id=partner.id,
            uid="M2",
            account_type=AccountType.END_USER,
            remarks="Hangzhou office",
            pool_id=pools[1].id,
            purchase_control=PurchaseControl.BANNED,
        )
        solo = Account(partner_id=partner.id, uid="A1", account_type=AccountType.END_USER, pool_id=pools[2].id)
        gone = Account(
            partner_id=partner.id,
            uid="D1",
            account_type=AccountType.END_USER,
            pool_id=pools[3].id,
            status=AccountStatus.DELETED,
        )
        session.add_all([master, other, solo, gone])
        await session.flush()
        session.add_all(
            [
                Account(
                    partner_id=partner.id,
                    uid="M1-S1",
                    account_type=AccountType.END_USER,
                    nickname="beta",
                    pool_id=pools[0].id,
                    master_id=master.id,
                ),
                Account(
                    partner_id=partner.id,
                    uid="M2-S1",
                    account_type=AccountType.END_USER,
                    pool_id=pools[1].id,
                    master_id=other.id,
                ),
            ]
        )
        # Credit alerts on the first pool (the master's, enabled, and its sub-account's, disabled): 0006 counts them.
        await session.flush()
        for uid, enabled in (("M1", True), ("M1-S1", False)):
            account_id = await session.scalar(select(Account.id).where(Account.uid == uid))
            await session.execute(
                insert(CreditAlert.__table__).values(  # type: ignore[arg-type]
                    account_id=account_id, pool_id=pools[0].id, enabled=enabled, threshold_cents=100, email="a@b.co"
                )
            )
    return Actor(
        partner_id=partner.id,
        partner_uid="P",
        partner_kind=PartnerKind.DISTRIBUTOR,
        role=Role.ADMIN,
        method=OperationMethod.PLATFORM,
        operator_uid="P",
        operator_name="P",
        is_ram=False,
    )


async def _uids(db: Database, actor: Actor, **filter: object) -> set[str]:
    async with db.read() as session:
        page = await accounts.list_end_users(
            session, actor, first=100, after=None, f=accounts.EndUserQuery(**filter), sort=accounts.EndUserSort()
        )  # type: ignore[arg-type]
    return {a.uid for a in page.items}


async def test_upgrade_from_0001_backfills(empty_url: str) -> None:
    in_thread(command.upgrade, alembic_config(empty_url), "0001")
    db = Database(empty_url)
    try:
        actor = await _fill_at_0001(db)
        await db.dispose()
        in_thread(command.upgrade, alembic_config(empty_url), "head")
        db = Database(empty_url)
        await check_listing(db)
        await check_counters(db, actor)
        async with db.read() as session:
            t = await totals(session, actor.partner_id)
        # 5 live accounts (D1 is deleted); money over the three live pools' owners.
        assert (t.accounts, t.owners, t.frozen, t.banned, t.shutdown, t.below_warning) == (5, 3, 2, 2, 2, 2)
        assert (t.total_quota_cents, t.total_available_cents, t.total_outstanding_cents) == (11_500, 6_000, 2_000)
        # Every pool's alert rule count (0006) is its thresholds (0003 made the warning's) and enabled credit alerts.
        async with db.read() as session:
            for pool_id, stored in (await session.execute(select(QuotaPool.id, QuotaPool.alert_rules))).all():
                thresholds = await session.scalar(
                    select(func.count()).select_from(QuotaThreshold).where(QuotaThreshold.pool_id == pool_id)
                )
                alerts = await session.scalar(
                    select(func.count())
                    .select_from(CreditAlert)
                    .where(CreditAlert.pool_id == pool_id, CreditAlert.enabled)
                )
                assert stored == thresholds + alerts, (pool_id, stored, thresholds, alerts)
            assert await session.scalar(select(func.max(QuotaPool.alert_rules))) >= 1
        # The search index holds the rows that were there before the upgrade.
        assert await _uids(db, actor, search="alpha") == {"M1"}
        assert await _uids(db, actor, search="HANGZHOU") == {"M2"}
        assert await _uids(db, actor, search="m1-") == {"M1-S1"}
        # And the triggers keep it in step from now on.
        async with db.write() as session:
            row = await session.scalar(select(Account).where(Account.uid == "A1"))
            assert row is not None
            row.nickname = "gamma ray"
        assert await _uids(db, actor, search="mma r") == {"A1"}
        await check_counters(db, actor)
    finally:
        await db.dispose()
