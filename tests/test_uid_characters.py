"""Issue 10 item 1: a UID with whitespace or a control character anywhere is INVALID_INPUT, and nothing is linked."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.support.accounts import link
from tests.support.api import Api
from uidhub.models import Account

REFUSED = [
    pytest.param("a b", id="inner-space"),
    pytest.param("1999\t0001", id="inner-tab"),
    pytest.param("1999\n0001", id="inner-newline"),
    pytest.param("1999\r0001", id="inner-cr"),
    pytest.param("1999\u30000001", id="ideographic-space"),
    pytest.param("1999\u00a00001", id="no-break-space"),
    pytest.param("1999\u20280001", id="line-separator"),
    pytest.param("1999\u200b0001", id="zero-width-space"),
    pytest.param("1999\u202e0001", id="bidi-override"),
    pytest.param("1999\x000001", id="nul"),
    pytest.param("1999\x7f0001", id="del"),
    pytest.param("1999\x850001", id="next-line"),
    pytest.param(" 19990001", id="leading-space"),
    pytest.param("19990001\n", id="trailing-newline"),
    pytest.param("", id="empty"),
    pytest.param("1" * 65, id="too-long"),
]


@pytest.mark.parametrize("uid", REFUSED)
async def test_uids_with_whitespace_or_control_characters_are_refused(api: Api, uid: str) -> None:
    payload = await link(api, uid, expect_ok=False)
    assert payload["endUser"] is None
    [error] = payload["userErrors"]
    assert error["code"] == "INVALID_INPUT" and error["field"] == ["input", "uid"]
    async with api.db.read() as session:
        assert await session.scalar(select(func.count(Account.id))) == 0


@pytest.mark.parametrize("uid", ["19990001", "1" * 64, "uid-with.dots_and-dashes", "用户-0001"])
async def test_ordinary_uids_are_linked(api: Api, uid: str) -> None:
    payload = await link(api, uid)
    assert payload["endUser"]["uid"] == uid
