"""Helpers of the export tests: seeding accounts, starting exports, running the worker, downloading."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select

from tests.support.accounts import link
from tests.support.api import Api
from uidhub.export_worker import ExportWorker
from uidhub.models import Account, QuotaAdjustment, QuotaPool
from uidhub.models.base import utcnow
from uidhub.models.enums import (
    AccountStatus,
    CreditControlStatus,
    OperationMethod,
    PaygFreezeStatus,
    PurchaseControl,
    QuotaOperationType,
    Role,
    ShutdownPolicy,
)

TASK_FIELDS = "id kind format language status progress rowCount fileName downloadUrl error createdAt finishedAt"

START = (
    "mutation($input: StartExportInput!) { startExport(input: $input) "
    f"{{ task {{ {TASK_FIELDS} }} userErrors {{ code message field }} }} }}"
)
TASK = f"query($id: ID!) {{ exportTask(id: $id) {{ {TASK_FIELDS} }} }}"

END_USERS = """
query($filter: EndUserFilter, $after: String, $first: Int, $orderBy: EndUserOrder) {
  endUsers(first: $first, after: $after, filter: $filter, orderBy: $orderBy) {
    pageInfo { hasNextPage endCursor }
    edges { node {
      uid nickname accountType accountStatus businessManager remarks linkedAt master { uid }
      policy { effectivePaygFreezeStatus effectivePurchaseControl shutdownPolicy creditControlStatus }
      quota { amount available warningThresholdPercent }
    } }
  }
}
"""


async def seed_accounts(api: Api) -> None:
    """Four accounts covering every column: a frozen master with a sub, a banned account in arrears, a reseller."""
    await link(api, "M1", accountType="ENTERPRISE", nickname="主账号", quotaAmount="1000.00")
    await link(api, "S1", nickname="サブ", masterUid="M1")
    await link(api, "U2", nickname="Bob", quotaAmount="50.00")
    await link(api, "U3", accountType="RESELLER", nickname="=SUM(A1)")
    async with api.db.write() as session:
        by_uid = {a.uid: a for a in (await session.scalars(select(Account))).all()}
        m1, u2, u3 = by_uid["M1"], by_uid["U2"], by_uid["U3"]
        m1.payg_freeze = PaygFreezeStatus.FROZEN
        m1.business_manager = "王经理"
        m1.remarks = 'VIP, "quoted"\nsecond line'
        pool = await session.get(QuotaPool, m1.pool_id)
        assert pool is not None
        pool.warning_percent = 20
        pool.deducted_cents = 90_012
        u2.purchase_control = PurchaseControl.BANNED
        pool2 = await session.get(QuotaPool, u2.pool_id)
        assert pool2 is not None
        pool2.shutdown_policy = ShutdownPolicy.DELAY_STOP
        pool2.delay_credit_cents = 2_000
        pool2.undeducted_cents = 6_005
        pool2.credit_control_status = CreditControlStatus.ARREARS_NOT_SHUTDOWN
        u3.status = AccountStatus.TO_BE_CONFIRMED


async def seed_adjustments(api: Api, uid: str) -> None:
    """Records of `uid`'s pool: a create, an increase by a RAM user, a decrease by API, one too old for the window."""
    now = utcnow()
    async with api.db.write() as session:
        account = await session.scalar(select(Account).where(Account.uid == uid))
        assert account is not None
        rows = [
            (
                now - timedelta(days=220),
                QuotaOperationType.QUOTA_CREATE,
                0,
                10_000,
                OperationMethod.PLATFORM,
                "P-MAIN",
                "Partner",
                False,
            ),
            (
                now - timedelta(days=30),
                QuotaOperationType.QUOTA_CREATE,
                0,
                50_000,
                OperationMethod.PLATFORM,
                "P-MAIN",
                "Partner P-MAIN",
                False,
            ),
            (
                now - timedelta(days=10),
                QuotaOperationType.QUOTA_ADJUSTMENT,
                50_000,
                123_456,
                OperationMethod.PLATFORM,
                "RAM-7",
                "alice",
                True,
            ),
            (
                now - timedelta(days=1),
                QuotaOperationType.QUOTA_ADJUSTMENT,
                123_456,
                100_001,
                OperationMethod.API,
                "P-MAIN",
                "Partner P-MAIN",
                False,
            ),
        ]
        for at, op, before, after, method, op_uid, op_name, ram in rows:
            session.add(
                QuotaAdjustment(
                    pool_id=account.pool_id,
                    operation_type=op,
                    occurred_at=at,
                    before_cents=before,
                    value_cents=after - before,
                    after_cents=after,
                    method=method,
                    operator_uid=op_uid,
                    operator_name=op_name,
                    operator_is_ram=ram,
                    operator_role=Role.ADMIN,
                )
            )


async def end_users(
    api: Api,
    filter: dict[str, Any] | None = None,
    *,
    order_by: dict[str, Any] | None = None,
    token: str | None = None,
    page: int = 7,
) -> list[dict[str, Any]]:
    """Every page of `endUsers` for a filter, in list order."""
    nodes: list[dict[str, Any]] = []
    after = None
    while True:
        data = await api.gql(
            END_USERS, {"filter": filter, "after": after, "first": page, "orderBy": order_by}, token=token
        )
        conn = data["endUsers"]
        nodes.extend(e["node"] for e in conn["edges"])
        if not conn["pageInfo"]["hasNextPage"]:
            return nodes
        after = conn["pageInfo"]["endCursor"]


async def start(api: Api, input: dict[str, Any], *, token: str | None = None, as_: str = "admin") -> dict[str, Any]:
    data = await api.gql(START, {"input": input}, token=token, as_=as_)
    return data["startExport"]


async def start_ok(api: Api, input: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    payload = await start(api, input, **kwargs)
    assert payload["userErrors"] == [], payload
    assert payload["task"]["status"] == "PENDING"
    return payload["task"]


def worker(api: Api) -> ExportWorker:
    return ExportWorker(api.db, api.settings, api.db.bus)  # type: ignore[attr-defined]


async def drain(api: Api, w: ExportWorker | None = None) -> int:
    """Run the worker until no task is pending; returns how many tasks it ran."""
    w = w or worker(api)
    done = 0
    while await w.run_once():
        done += 1
    return done


async def task(api: Api, task_id: str, *, token: str | None = None, as_: str = "admin") -> dict[str, Any] | None:
    return (await api.gql(TASK, {"id": task_id}, token=token, as_=as_))["exportTask"]


async def export(api: Api, input: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any], httpx.Response]:
    """Start an export, run it, and download the file with the same token."""
    started = await start_ok(api, input, **kwargs)
    assert await drain(api) == 1
    token = kwargs.get("token") or api.tokens[kwargs.get("as_", "admin")]
    done = await task(api, started["id"], token=token)
    assert done is not None and done["status"] == "SUCCEEDED", done
    response = await download(api, done["downloadUrl"], token)
    assert response.status_code == 200, response.text
    return done, response


async def download(api: Api, url: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await api.client.get(url, headers=headers)


def workbook(response: httpx.Response) -> Any:
    import openpyxl

    return openpyxl.load_workbook(io.BytesIO(response.content))


def local(iso: str, tz: Any) -> datetime:
    """A DateTime of the API as the export shows it: in the display zone, naive, whole seconds."""
    return datetime.fromisoformat(iso).astimezone(tz).replace(tzinfo=None, microsecond=0)
