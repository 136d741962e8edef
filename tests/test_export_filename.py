"""Issue 10 item 12: a localized export downloads under a readable ASCII `filename=` plus the RFC 5987 `filename*`."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest

from tests.support.api import Api
from tests.support.exports import export, seed_accounts, seed_adjustments


def _parts(disposition: str) -> tuple[str, str | None]:
    """(filename, decoded filename* or None), as a client that knows RFC 6266 reads them."""
    plain = re.search(r'(?:^|;)\s*filename="([^"]*)"', disposition)
    extended = re.search(r"(?:^|;)\s*filename\*=UTF-8''([^;]+)", disposition)
    assert plain is not None, disposition
    return plain.group(1), unquote(extended.group(1)) if extended else None


@pytest.mark.parametrize(
    ("language", "fmt", "title"),
    [
        pytest.param("ZH", "XLSX", "终端用户", id="zh-xlsx"),
        pytest.param("JA", "CSV", None, id="ja-csv"),
    ],
)
async def test_localized_end_user_export_has_a_readable_ascii_fallback(
    api: Api, language: str, fmt: str, title: str | None
) -> None:
    await seed_accounts(api)
    done, response = await export(api, {"kind": "END_USERS", "format": fmt, "language": language})
    fallback, localized = _parts(response.headers["content-disposition"])
    # What `curl -OJ` saves under: says what it is, and carries the same local time as the localized name.
    assert re.fullmatch(rf"uid-list-\d{{8}}-\d{{6}}\.{fmt.lower()}", fallback), fallback
    assert localized == done["fileName"]
    if title is not None:
        assert localized.startswith(title)
    stamp = re.search(r"(\d{8})_(\d{6})", localized)
    assert stamp is not None and fallback == f"uid-list-{stamp.group(1)}-{stamp.group(2)}.{fmt.lower()}"


async def test_quota_adjustment_export_fallback_names_the_account(api: Api) -> None:
    await seed_accounts(api)
    await seed_adjustments(api, "M1")
    _done, response = await export(api, {"kind": "QUOTA_ADJUSTMENTS", "format": "CSV", "language": "ZH", "uid": "M1"})
    fallback, localized = _parts(response.headers["content-disposition"])
    assert re.fullmatch(r"quota-adjustments-M1-\d{8}-\d{6}\.csv", fallback), fallback
    assert localized is not None and "M1" in localized


async def test_an_english_export_keeps_its_plain_name(api: Api) -> None:
    await seed_accounts(api)
    done, response = await export(api, {"kind": "END_USERS", "format": "CSV", "language": "EN"})
    fallback, localized = _parts(response.headers["content-disposition"])
    assert fallback == done["fileName"] and localized is None
