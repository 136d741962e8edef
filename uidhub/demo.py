"""A realistic demo data set: a distributor with resellers, masters with sub-accounts, quotas and history."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.db import Database
from uidhub.models import Account, Partner
from uidhub.models.enums import (
    AccountType,
    BillingMethod,
    OperationMethod,
    PartnerKind,
    PaygFreezeStatus,
    Role,
    ShutdownPolicy,
)
from uidhub.resolvers import accounts as account_ops
from uidhub.resolvers import alerts as alert_ops
from uidhub.resolvers import orders as order_ops
from uidhub.resolvers import policy as policy_ops
from uidhub.resolvers import quota as quota_ops
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.auth import create_token
from uidhub.settings import Settings

DISTRIBUTOR_UID = "5010000000000001"

NICKNAMES = [
    "Acme Cloud Ops",
    "Northwind Retail",
    "Blue Harbor Logistics",
    "Zenith Games",
    "Contoso Analytics",
    "杭州云帆科技",
    "深圳星河电商",
    "上海青木数据",
    "北京远景医疗",
    "成都熊猫游戏",
    "東京デジタル株式会社",
    "大阪さくら物流",
    "横浜みなとAI",
    "名古屋テック",
    "札幌スノー商事",
    "Globex Media",
    "Initech Payments",
    "Umbrella Bio",
    "Stark Foods",
    "Wayne Robotics",
]
MANAGERS = ["Li Wei", "王芳", "Sato Yuki", "Emma Clark", "张伟", "田中 花子", "Lucas Martin"]
REMARKS = [
    "Key account; quarterly review in March.",
    "月结客户，注意额度预警。",
    "請求書は月末締め。",
    "Migrating from on-prem; expect spiky usage.",
    None,
]


@dataclass
class DemoResult:
    loaded: bool
    accounts: int
    token: str | None
    #: Whether the demo distributor exists (after loading, or from an earlier start).
    has_distributor: bool = True

    def token_command(self, uidhub: str = "uidhub") -> str:
        """The full command that makes another admin token of the demo distributor."""
        return f"{uidhub} create-token --partner {DISTRIBUTOR_UID} --role ADMIN"

    def describe(self, settings: Settings, uidhub: str = "uidhub") -> str:
        if not self.loaded:
            if not self.has_distributor:
                return (
                    "database not empty and without the demo distributor: nothing loaded; "
                    f"create a token with `{uidhub} create-token --partner <partner uid> --role ADMIN`"
                )
            return (
                "demo data already present (distributor "
                f"{DISTRIBUTOR_UID}); create a token with:\n    {self.token_command(uidhub)}"
            )
        return (
            f"demo data loaded: {self.accounts} accounts under distributor {DISTRIBUTOR_UID}\n"
            f"PLATFORM admin token: {self.token}\n"
            f"GraphiQL: {settings.console_url}/graphql  (add header Authorization: Bearer <token>)"
        )

    def banner(self, settings: Settings, uidhub: str = "uidhub") -> str:
        """What `serve --demo` prints once the server listens: the last lines of the output, the token in them."""
        rule = "=" * 72
        lines = [rule, f"uidhub demo is ready: {settings.console_url}/graphql (GraphiQL)"]
        if self.loaded:
            lines += [
                f"Loaded {self.accounts} demo accounts under distributor {DISTRIBUTOR_UID}.",
                "PLATFORM admin token (shown only now):",
                "",
                f"    {self.token}",
                "",
                "Send it as the header  Authorization: Bearer <token>",
                f"More tokens later:  {self.token_command(uidhub)}",
            ]
        elif self.has_distributor:
            lines += [
                f"Demo data already loaded (distributor {DISTRIBUTOR_UID}). Create an admin token with:",
                "",
                f"    {self.token_command(uidhub)}",
                "",
                "and send it as the header  Authorization: Bearer <token>",
            ]
        else:
            lines += [
                "The database holds other data, so no demo data was loaded. Create a token with:",
                "",
                f"    {uidhub} create-token --partner <partner uid> --role ADMIN",
                "",
            ]
        return "\n".join([*lines, rule])


def _actor(partner: Partner) -> Actor:
    return Actor(
        partner_id=partner.id,
        partner_uid=partner.uid,
        partner_kind=partner.kind,
        role=Role.ADMIN,
        method=OperationMethod.PLATFORM,
        operator_uid=partner.uid,
        operator_name=partner.name,
        is_ram=False,
    )


async def load_demo(
    db: Database, settings: Settings, *, accounts: int = 300, only_if_empty: bool = False, seed: int = 7
) -> DemoResult:
    """Load the data set. With `only_if_empty`, do nothing when partners already exist."""
    rng = random.Random(seed)
    if db.settings is None:  # alert emails the demo queues render with the settings the command was given
        db = db.with_runtime(bus=db.bus, settings=settings)
    async with db.write() as session:
        if only_if_empty and (await session.scalar(select(func.count(Partner.id)))):
            present = await session.scalar(select(Partner.id).where(Partner.uid == DISTRIBUTOR_UID))
            return DemoResult(loaded=False, accounts=0, token=None, has_distributor=present is not None)
        existing = await session.scalar(select(Partner).where(Partner.uid == DISTRIBUTOR_UID))
        if existing is None:
            existing = Partner(
                uid=DISTRIBUTOR_UID,
                name="Demo Distributor Ltd.",
                kind=PartnerKind.DISTRIBUTOR,
                alert_emails=["alerts@demo-distributor.example"],
            )
            session.add(existing)
            await session.flush()
            for i, kind in enumerate((PartnerKind.RESELLER, PartnerKind.RESELLER), start=2):
                session.add(
                    Partner(
                        uid=f"50100000000000{i:02d}",
                        name=f"Demo Reseller {i - 1}",
                        kind=kind,
                        parent_id=existing.id,
                        alert_emails=[f"ops{i}@reseller.example"],
                    )
                )
            session.add(Partner(uid="5010000000000009", name="Demo Agency", kind=PartnerKind.AGENCY, alert_emails=[]))
        distributor = existing
        token = await create_token(session, partner=distributor, role=Role.ADMIN)
        actor = _actor(distributor)
        base = int(await session.scalar(select(func.count(Account.id))) or 0)
    made = 0
    number = base
    while made < accounts:
        async with db.write() as session:
            number += 1
            uid = f"1{number:015d}"
            nickname = rng.choice(NICKNAMES) + ("" if rng.random() < 0.5 else f" #{number}")
            quota = rng.choice([0, 500, 1000, 5000, 20000, 100000]) * 100
            master = await account_ops.link_account(
                session,
                actor,
                uid=uid,
                account_type=rng.choice(list(AccountType)),
                nickname=nickname,
                email=f"billing{number}@customer.example",
                master_uid=None,
                quota_amount_cents=quota if quota else None,
            )
            await account_ops.update_basic_info(
                session,
                actor,
                uid,
                {
                    "businessManager": rng.choice(MANAGERS),
                    "remarks": rng.choice(REMARKS),
                },
            )
            made += 1
            if quota:
                await _history(session, actor, rng, master, quota, number)
            for _ in range(min(rng.choice([0, 0, 0, 1, 2, 3]), accounts - made)):
                number += 1
                made += 1
                await account_ops.link_account(
                    session,
                    actor,
                    uid=f"1{number:015d}",
                    account_type=AccountType.END_USER,
                    nickname=f"{nickname} – sub {number}",
                    email=None,
                    master_uid=master.uid,
                    quota_amount_cents=None,
                )
    return DemoResult(loaded=True, accounts=made, token=token)


async def _history(
    session: AsyncSession, actor: Actor, rng: random.Random, master: Account, quota: int, number: int
) -> None:
    """Orders, consumption, deductions and settings of one master, through the real operations.

    So the demo shows what a console shows: quota records, ledger, audit
    entries, warnings that were crossed (with their queued emails), frozen and
    shut-down accounts and a credit alert.
    """
    uid = master.uid
    if rng.random() < 0.6:
        await quota_ops.set_warning_threshold(session, actor, uid, rng.choice([10, 20, 30]))
    await order_ops.place_order(
        session,
        actor,
        uid=uid,
        billing_method=BillingMethod.PAYG,
        amount_cents=0,
        description="ECS pay-as-you-go",
        idempotency_key=f"demo-payg-{number}",
    )
    await order_ops.place_order(
        session,
        actor,
        uid=uid,
        billing_method=BillingMethod.SUBSCRIPTION,
        amount_cents=quota // 20,
        description="RDS 1 month",
        idempotency_key=f"demo-sub-{number}",
    )
    # Usage between 10 % and 105 % of the line: some accounts end below their warning level, a few in arrears.
    used = quota * rng.randint(10, 105) // 100
    for day in range(3):
        await quota_ops.change_balance(
            session, actor, quota_ops.BalanceOp.RECORD, uid, max(1, used // 3), f"demo-use-{number}-{day}"
        )
    await quota_ops.change_balance(
        session, actor, quota_ops.BalanceOp.DEDUCT, uid, max(1, used // 3), f"demo-deduct-{number}"
    )
    roll = rng.random()
    if roll < 0.05:
        await policy_ops.change_freeze(
            session, actor, [uid], target=PaygFreezeStatus.FROZEN, confirm=True, reason="Overdue invoice (demo)"
        )
    elif roll < 0.08:
        await policy_ops.set_shutdown_policy(session, actor, uid, ShutdownPolicy.DELAY_STOP, quota // 10)
    elif roll < 0.10:
        await alert_ops.set_credit_alert(
            session,
            actor,
            uid=uid,
            enabled=True,
            threshold_cents=quota // 2,
            email=master.email or "billing@customer.example",
        )
