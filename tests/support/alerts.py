"""Helpers shared by the alert tests (link accounts with tests.support.accounts.link).

Money moves through the resolvers and atomic UPDATEs followed by
`after_pool_change` inside `Database.write()`, exactly as the quota
operations do, so these tests do not depend on the quota GraphQL mutations.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from tests.support.api import Api, make_token
from uidhub.models import Account, AlertEvent, EmailNotification, Partner, QuotaPool
from uidhub.models.enums import OperationMethod, PartnerKind, Role
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.pool_amounts import apply_quota_amount
from uidhub.resolvers.pools import after_pool_change, lock_pool

SET_CREDIT_ALERT = """
mutation($input: SetCreditAlertInput!) {
  setCreditAlert(input: $input) {
    endUser { uid creditAlert { enabled threshold email } }
    userErrors { code message field }
  }
}
"""

SET_ALERT_EMAILS = """
mutation($emails: [String!]!) {
  setAlertEmails(input: {emails: $emails}) {
    partner { uid alertEmails }
    userErrors { code message field }
  }
}
"""

EVENTS = """
query($first: Int, $after: String, $uid: String, $kinds: [AlertKind!], $states: [AlertState!]) {
  alertEvents(first: $first, after: $after, uid: $uid, kinds: $kinds, states: $states) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { cursor node { id kind state account { uid } available threshold occurredAt } }
  }
}
"""

NOTIFICATIONS = """
query($first: Int, $after: String, $status: NotificationStatus) {
  notifications(first: $first, after: $after, status: $status) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { node { id to subject status attempts lastError createdAt sentAt
                   alertEvent { id kind state account { uid } } } }
  }
}
"""


async def partner(api: Api, uid: str = "P-MAIN") -> Partner:
    async with api.db.read() as session:
        row = await session.scalar(select(Partner).where(Partner.uid == uid))
    assert row is not None
    return row


async def token(api: Api, role: Role, *, account_uid: str | None = None, partner_uid: str = "P-MAIN") -> str:
    return await make_token(api.db, await partner(api, partner_uid), role, account_uid=account_uid)


def admin_actor(p: Partner) -> Actor:
    return Actor(
        partner_id=p.id,
        partner_uid=p.uid,
        partner_kind=PartnerKind.DISTRIBUTOR,
        role=Role.ADMIN,
        method=OperationMethod.PLATFORM,
        operator_uid=p.uid,
        operator_name=p.name,
        is_ram=False,
    )


async def _account(session: Any, uid: str) -> Account:
    account = await session.scalar(select(Account).where(Account.uid == uid))
    assert account is not None
    return account


async def consume(api: Api, uid: str, cents: int) -> None:
    """Consumption (negative: a repayment) the way the quota operations do it: atomic UPDATE, lock, evaluate."""
    async with api.db.write() as session:
        account = await _account(session, uid)
        await session.execute(
            update(QuotaPool)
            .where(QuotaPool.id == account.pool_id)
            .values(undeducted_cents=QuotaPool.undeducted_cents + cents)
        )
        pool = await lock_pool(session, account.pool_id)
        await after_pool_change(session, pool, None)


async def set_percent(api: Api, uid: str, percent: int | None) -> None:
    async with api.db.write() as session:
        account = await _account(session, uid)
        pool = await lock_pool(session, account.pool_id)
        pool.warning_percent = percent
        await after_pool_change(session, pool, None)


async def set_amount(api: Api, uid: str, cents: int) -> None:
    actor = admin_actor(await partner(api))
    async with api.db.write() as session:
        await apply_quota_amount(session, actor, await _account(session, uid), cents)


async def pool_of(api: Api, uid: str) -> QuotaPool:
    async with api.db.read() as session:
        account = await _account(session, uid)
        pool = await session.get(QuotaPool, account.pool_id)
    assert pool is not None
    return pool


async def events(api: Api) -> list[tuple[str, str, str, int, int]]:
    """(kind, state, account uid, available cents, threshold cents), oldest first."""
    async with api.db.read() as session:
        rows = (
            await session.execute(
                select(AlertEvent, Account.uid)
                .join(Account, Account.id == AlertEvent.account_id)
                .order_by(AlertEvent.id)
            )
        ).all()
    return [(e.kind.value, e.state.value, uid, e.available_cents, e.threshold_cents) for e, uid in rows]


async def emails(api: Api) -> list[EmailNotification]:
    async with api.db.read() as session:
        return list((await session.scalars(select(EmailNotification).order_by(EmailNotification.id))).all())


async def set_credit_alert(
    api: Api,
    uid: str,
    threshold: str,
    email: str = "eu@example.com",
    *,
    enabled: bool = True,
    as_: str = "admin",
    tok: str | None = None,
    errors: bool = False,
) -> dict[str, Any]:
    variables = {"input": {"uid": uid, "enabled": enabled, "threshold": threshold, "email": email}}
    body = await api.gql(SET_CREDIT_ALERT, variables, as_=as_, token=tok, errors=errors)
    return body
