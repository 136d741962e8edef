"""The run-out forecast: the arithmetic, and `Quota.forecast` over a fixed ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from tests.support.accounts import link, set_pool
from tests.support.api import Api
from tests.support.db import StatementCounter
from uidhub.models import Account, LedgerEntry
from uidhub.models.enums import LedgerKind, OperationMethod
from uidhub.models.forecast import MAX_FORECAST_DAYS, forecast

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

FORECAST = """query($uid: String!, $days: Int) {
  endUser(uid: $uid) { quota { available forecast(basisDays: $days) { dailyBurn daysLeft runsOutAt basisDays } } }
}"""


def test_no_spend_means_no_forecast() -> None:
    assert forecast(100_000, 0, 7, NOW) is None


def test_even_spend_extrapolates_the_available_amount() -> None:
    result = forecast(100_000, 70_000, 7, NOW)  # 1000.00 left, 700.00 spent in a week
    assert result is not None
    assert (result.daily_burn_cents, result.days_left, result.basis_days) == (10_000, 10, 7)
    assert result.runs_out_at == NOW + timedelta(days=10)


def test_a_burn_below_a_cent_a_day_still_forecasts_a_date() -> None:
    result = forecast(1_000, 3, 7, NOW)  # 3 cents a week
    assert result is not None
    assert result.daily_burn_cents == 0  # 0.43 cents rounds to 0.00 ...
    assert result.days_left == 2333  # ... but the date comes from the exact pace
    assert result.runs_out_at == NOW + timedelta(seconds=int(1_000 * 7 / 3 * 86_400))


def test_a_huge_line_at_a_tiny_burn_is_capped_at_a_century() -> None:
    """Extrapolated as is it would run out after year 9999 (an OverflowError) and past a GraphQL Int."""
    result = forecast(10**15, 1, 90, NOW)
    assert result is not None
    assert result.days_left == MAX_FORECAST_DAYS
    assert result.runs_out_at == NOW + timedelta(days=MAX_FORECAST_DAYS)


def test_rounding_is_half_up_and_a_pool_in_arrears_has_run_out() -> None:
    assert forecast(1, 7 * 150 + 4, 7, NOW).daily_burn_cents == 151  # type: ignore[union-attr]
    result = forecast(-500, 700, 7, NOW)
    assert result is not None and (result.days_left, result.runs_out_at) == (0, NOW)
    with pytest.raises(ValueError):
        forecast(1, 1, 0, NOW)


async def _spend(api: Api, uid: str, entries: list[tuple[LedgerKind, int, timedelta]]) -> None:
    """Ledger rows `age` before now, as if recorded then (the pool's columns are set separately)."""
    now = datetime.now(UTC)
    async with api.db.write() as session:
        account = await session.scalar(select(Account).where(Account.uid == uid))
        assert account is not None
        session.add_all(
            LedgerEntry(
                pool_id=account.pool_id,
                account_id=account.id,
                kind=kind,
                amount_cents=cents,
                occurred_at=now - age,
                method=OperationMethod.API,
            )
            for kind, cents, age in entries
        )


async def test_quota_forecast_over_a_fixed_ledger(api: Api) -> None:
    await link(api, "3000000000000001", quotaAmount="2000.00")
    await link(api, "3000000000000002", masterUid="3000000000000001")
    await _spend(
        api,
        "3000000000000001",
        [
            (LedgerKind.CONSUMPTION, 30_000, timedelta(days=1)),
            (LedgerKind.CONSUMPTION, 20_000, timedelta(days=6)),
            (LedgerKind.SUBSCRIPTION_ORDER, 20_000, timedelta(hours=3)),
            (LedgerKind.DEDUCTION, 99_900, timedelta(hours=2)),  # not spend: moves undeducted to deducted
            (LedgerKind.REPAYMENT, 99_900, timedelta(hours=2)),  # not spend
            (LedgerKind.CONSUMPTION, 500_000, timedelta(days=8)),  # outside the default week
        ],
    )
    # The sub-account spends from its master's pool: its spend counts for the pool.
    await _spend(api, "3000000000000002", [(LedgerKind.CONSUMPTION, 0, timedelta(days=2))])
    await set_pool(api, "3000000000000001", undeducted_cents=70_000)
    data = await api.gql(FORECAST, {"uid": "3000000000000002"})
    quota = data["endUser"]["quota"]
    assert quota["available"] == "1300.00"
    forecast_ = quota["forecast"]
    assert (forecast_["dailyBurn"], forecast_["daysLeft"], forecast_["basisDays"]) == ("100.00", 13, 7)
    runs_out = datetime.fromisoformat(forecast_["runsOutAt"])
    assert abs(runs_out - (datetime.now(UTC) + timedelta(days=13))) < timedelta(minutes=5)
    # A two-day basis sees only the last two days' 500.00.
    two = (await api.gql(FORECAST, {"uid": "3000000000000001", "days": 2}))["endUser"]["quota"]["forecast"]
    assert (two["dailyBurn"], two["daysLeft"], two["basisDays"]) == ("250.00", 5, 2)


async def test_no_recent_spend_is_null_and_bad_basis_days_a_coded_error(api: Api) -> None:
    await link(api, "3000000000000001", quotaAmount="10.00")
    await _spend(api, "3000000000000001", [(LedgerKind.CONSUMPTION, 100, timedelta(days=30))])
    assert (await api.gql(FORECAST, {"uid": "3000000000000001"}))["endUser"]["quota"]["forecast"] is None
    for days in (0, 91):
        body = await api.gql(FORECAST, {"uid": "3000000000000001", "days": days}, errors=True)
        assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_forecasts_of_a_list_cost_one_query(api: Api) -> None:
    query = "{ endUsers(first: 50) { edges { node { uid quota { forecast { daysLeft } } } } } }"
    counts = []
    for n in (2, 8):
        for i in range(n - (2 if n == 8 else 0)):
            uid = f"30000000000001{n}{i}"
            await link(api, uid, quotaAmount="100.00")
            await _spend(api, uid, [(LedgerKind.CONSUMPTION, 700, timedelta(days=1))])
        with StatementCounter(api.db) as counter:
            data = await api.gql(query)
        assert len(data["endUsers"]["edges"]) == n
        assert all(e["node"]["quota"]["forecast"]["daysLeft"] == 100 for e in data["endUsers"]["edges"])
        counts.append(counter.count)
    assert counts[0] == counts[1], counts


async def test_the_window_is_evaluated_at_request_time(api: Api) -> None:
    """Time alone moves the forecast: spend that ages out of the window stops counting."""
    await link(api, "3000000000000001", quotaAmount="100.00")
    await _spend(api, "3000000000000001", [(LedgerKind.CONSUMPTION, 700, timedelta(days=6, hours=23))])
    assert (await api.gql(FORECAST, {"uid": "3000000000000001"}))["endUser"]["quota"]["forecast"] is not None
    async with api.db.write() as session:
        await session.execute(update(LedgerEntry).values(occurred_at=datetime.now(UTC) - timedelta(days=7, hours=1)))
    assert (await api.gql(FORECAST, {"uid": "3000000000000001"}))["endUser"]["quota"]["forecast"] is None
