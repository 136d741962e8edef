"""Account helpers: the one `link()` and LINK mutation, basic info, status, tokens, direct row edits."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from tests.support.api import Api, make_token
from uidhub.models import Account, Partner, QuotaPool
from uidhub.models.enums import OperationMethod, Role

LINK = """
mutation($input: LinkAccountInput!) {
  linkAccount(input: $input) {
    endUser { id uid accountType nickname email accountStatus master { uid } quota { amount } }
    userErrors { code message field }
  }
}
"""

UPDATE = """
mutation($input: UpdateBasicInfoInput!) {
  updateBasicInfo(input: $input) {
    endUser { uid nickname businessManager remarks }
    userErrors { code message field }
  }
}
"""

STATUS = """
mutation($uid: String!, $status: AccountStatus!) {
  changeAccountStatus(input: {uid: $uid, status: $status}) {
    endUser { uid accountStatus subAccounts { uid accountStatus } }
    userErrors { code message field }
  }
}
"""

ONE = "query($uid: String!) { endUser(uid: $uid) { uid nickname businessManager remarks accountStatus } }"


async def link(
    api: Api, uid: str, *, as_: str = "admin", token: str | None = None, expect_ok: bool = True, **fields: Any
) -> dict[str, Any]:
    """Link `uid` through the in-process API; the one `link()` of the suite.

    `fields` are LinkAccountInput fields by their GraphQL names (nickname, email,
    quotaAmount, masterUid, accountType); `as_` names a token of `api.tokens`,
    `token` overrides it. Asserts there are no userErrors unless `expect_ok` is
    False, and returns the linkAccount payload. Over a running server's address
    use `tests.support.live.link_over_http`.
    """
    data = await api.gql(LINK, {"input": {"uid": uid, **fields}}, as_=as_, token=token)
    payload = data["linkAccount"]
    if expect_ok:
        assert payload["userErrors"] == [], payload
    return payload


async def update_info(
    api: Api, uid: str, *, as_: str = "admin", token: str | None = None, **fields: Any
) -> dict[str, Any]:
    data = await api.gql(UPDATE, {"input": {"uid": uid, **fields}}, as_=as_, token=token)
    return data["updateBasicInfo"]


async def change_status(
    api: Api, uid: str, status: str, *, as_: str = "admin", token: str | None = None
) -> dict[str, Any]:
    data = await api.gql(STATUS, {"uid": uid, "status": status}, as_=as_, token=token)
    return data["changeAccountStatus"]


async def one(api: Api, uid: str, *, as_: str = "admin") -> dict[str, Any] | None:
    return (await api.gql(ONE, {"uid": uid}, as_=as_))["endUser"]


async def partner(api: Api, uid: str = "P-MAIN") -> Partner:
    async with api.db.read() as session:
        row = await session.scalar(select(Partner).where(Partner.uid == uid))
        assert row is not None
        return row


async def token_for(
    api: Api,
    role: Role = Role.ADMIN,
    *,
    partner_uid: str = "P-MAIN",
    method: OperationMethod = OperationMethod.PLATFORM,
    account_uid: str | None = None,
    is_ram: bool = False,
    operator_uid: str | None = None,
) -> str:
    return await make_token(
        api.db,
        await partner(api, partner_uid),
        role,
        method=method,
        account_uid=account_uid,
        is_ram=is_ram,
        operator_uid=operator_uid,
    )


async def set_pool(api: Api, uid: str, **values: int) -> None:
    """Set a pool's columns directly (amount_cents, deducted_cents, undeducted_cents, ...)."""
    async with api.db.write() as session:
        pool_id = await session.scalar(select(Account.pool_id).where(Account.uid == uid))
        await session.execute(update(QuotaPool).where(QuotaPool.id == pool_id).values(**values))


async def set_account(api: Api, uid: str, **values: Any) -> None:
    async with api.db.write() as session:
        await session.execute(update(Account).where(Account.uid == uid).values(**values))


async def audit_of(api: Api, uid: str, *, as_: str = "admin") -> list[dict[str, Any]]:
    data = await api.gql(
        """query($uid: String!) { auditEntries(uid: $uid, first: 100) { edges { node {
             action method before after reason cascadeFrom { uid } account { uid }
             operator { uid name isRamAccount role } } } } }""",
        {"uid": uid},
        as_=as_,
    )
    return [e["node"] for e in data["auditEntries"]["edges"]]
