"""The run-out forecast of a quota pool: pure arithmetic over what it spent recently.

Method (documented in the README): the pool's spend over the last
`basis_days` days — consumption recorded and subscription orders, the two
ledger entries that lower `available` — divided evenly over those days is
the daily burn. `daysLeft` and `runsOutAt` extrapolate the current available
amount at that rate, from the exact ratio (not from the burn rounded to
cents), so a small burn still forecasts a date. No spend in the window means
no forecast. Deductions (moving consumption from undeducted to deducted) and
repayments are not spend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

DEFAULT_BASIS_DAYS = 7
MAX_BASIS_DAYS = 90
#: The farthest a forecast looks: a huge credit line at a tiny burn would otherwise run out past year 9999
#: (and past what a GraphQL Int holds). Beyond it `days_left` and `runs_out_at` say "a century or more".
MAX_FORECAST_DAYS = 36_500


@dataclass(frozen=True, slots=True)
class Forecast:
    daily_burn_cents: int
    days_left: int
    runs_out_at: datetime
    basis_days: int


def _round_half_up(value: Fraction) -> int:
    return int(value + Fraction(1, 2)) if value >= 0 else -int(-value + Fraction(1, 2))


def forecast(available_cents: int, spent_cents: int, basis_days: int, now: datetime) -> Forecast | None:
    """The forecast for a pool with `available_cents` that spent `spent_cents` over `basis_days` up to `now`."""
    if basis_days < 1:
        raise ValueError("basis_days must be at least 1")
    if spent_cents <= 0:
        return None
    per_day = Fraction(spent_cents, basis_days)
    if available_cents <= 0:
        return Forecast(_round_half_up(per_day), 0, now, basis_days)
    days = min(Fraction(available_cents) / per_day, Fraction(MAX_FORECAST_DAYS))
    # Whole seconds: a forecast finer than that means nothing, and timedelta needs no Fraction.
    seconds = int(days * 86_400)
    return Forecast(_round_half_up(per_day), int(days), now + timedelta(seconds=seconds), basis_days)
