"""A realistic demo data set: a distributor with resellers, masters with sub-accounts, quotas and history."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import func, select

from models import Account, Partner
from models.enums import AccountType, OperationMethod, PartnerKind, Role
from resolvers import accounts as account_ops
from resolvers.actor import Actor
from resolvers.auth import create_token
from uidhub.db import Database
from uidhub.settings import Settings

DISTRIBUTOR_UID = "5010000000000001"

NICKNAMES = [
    "Acme Cloud Ops", "Northwind Retail", "Blue Harbor Logistics", "Zenith Games", "Contoso Analytics",
    "杭州云帆科技", "深圳星河电商", "上海青木数据", "北京远景医疗", "成都熊猫游戏",
    "東京デジタル株式会社", "大阪さくら物流", "横浜みなとAI", "名古屋テック", "札幌スノー商事",
    "Globex Media", "Initech Payments", "Umbrella Bio", "Stark Foods", "Wayne Robotics",
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

    def describe(self, settings: Settings) -> str:
        if not self.loaded:
            return "demo data already present (database not empty); create a token with `uidhub create-token`"
        return (
            f"demo data loaded: {self.accounts} accounts under distributor {DISTRIBUTOR_UID}\n"
            f"PLATFORM admin token: {self.token}\n"
            f"GraphiQL: {settings.console_url}/graphql  (add header Authorization: Bearer <token>)"
        )


def _actor(partner: Partner) -> Actor:
    return Actor(
        partner_id=partner.id, partner_uid=partner.uid, partner_kind=partner.kind, role=Role.ADMIN,
        method=OperationMethod.PLATFORM, operator_uid=partner.uid, operator_name=partner.name, is_ram=False,
    )


async def load_demo(db: Database, settings: Settings, *, accounts: int = 300, only_if_empty: bool = False,
                    seed: int = 7) -> DemoResult:
    """Load the data set. With `only_if_empty`, do nothing when partners already exist."""
    rng = random.Random(seed)
    async with db.write() as session:
        if only_if_empty and (await session.scalar(select(func.count(Partner.id)))):
            return DemoResult(loaded=False, accounts=0, token=None)
        existing = await session.scalar(select(Partner).where(Partner.uid == DISTRIBUTOR_UID))
        if existing is None:
            existing = Partner(uid=DISTRIBUTOR_UID, name="Demo Distributor Ltd.", kind=PartnerKind.DISTRIBUTOR,
                               alert_emails=["alerts@demo-distributor.example"])
            session.add(existing)
            await session.flush()
            for i, kind in enumerate((PartnerKind.RESELLER, PartnerKind.RESELLER), start=2):
                session.add(Partner(uid=f"50100000000000{i:02d}", name=f"Demo Reseller {i - 1}", kind=kind,
                                    parent_id=existing.id, alert_emails=[f"ops{i}@reseller.example"]))
            session.add(Partner(uid="5010000000000009", name="Demo Agency", kind=PartnerKind.AGENCY,
                                alert_emails=[]))
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
                session, actor, uid=uid, account_type=rng.choice(list(AccountType)), nickname=nickname,
                email=f"billing{number}@customer.example", master_uid=None,
                quota_amount_cents=quota if quota else None,
            )
            await account_ops.update_basic_info(session, actor, uid, {
                "businessManager": rng.choice(MANAGERS), "remarks": rng.choice(REMARKS),
            })
            made += 1
            for _ in range(rng.choice([0, 0, 0, 1, 2, 3]) if made < accounts else 0):
                number += 1
                made += 1
                await account_ops.link_account(
                    session, actor, uid=f"1{number:015d}", account_type=AccountType.END_USER,
                    nickname=f"{nickname} – sub {number}", email=None, master_uid=master.uid,
                    quota_amount_cents=None,
                )
    return DemoResult(loaded=True, accounts=made, token=token)
