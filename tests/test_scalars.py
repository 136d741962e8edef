"""The DateTime scalar's output: exactly `isoformat()` of the UTC instant, whichever way it is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from uidhub.schema.scalars import _serialize_datetime

#: The instants the DateTime scalar takes (its description): 0001-01-02 to 9999-12-30.
INSTANTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))


@given(INSTANTS)
def test_naive_and_utc_values_read_as_isoformat_of_the_utc_instant(value: datetime) -> None:
    expected = value.replace(tzinfo=UTC).isoformat()
    assert _serialize_datetime(value) == expected
    assert _serialize_datetime(value.replace(tzinfo=UTC)) == expected


@given(INSTANTS, st.integers(min_value=-(23 * 3600 + 59 * 60), max_value=23 * 3600 + 59 * 60))
def test_other_offsets_keep_their_own_offset(value: datetime, seconds: int) -> None:
    zone = timezone(timedelta(seconds=seconds))
    assert _serialize_datetime(value.replace(tzinfo=zone)) == value.replace(tzinfo=zone).isoformat()


def test_whole_seconds_and_microseconds() -> None:
    assert _serialize_datetime(datetime(2025, 1, 1, 11, 6, 31, tzinfo=UTC)) == "2025-01-01T11:06:31+00:00"
    assert _serialize_datetime(datetime(2025, 1, 1, 11, 6, 31, 5)) == "2025-01-01T11:06:31.000005+00:00"
