"""Export files: opened with openpyxl and csv and checked against the API's view of the database."""

from __future__ import annotations

import codecs
import csv
import io
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.support.accounts import link
from tests.support.api import Api
from tests.support.exports import end_users, export, local, seed_accounts, seed_adjustments, workbook
from uidhub.models import enums as E
from uidhub.models.base import utcnow
from uidhub.notifications import i18n
from uidhub.notifications.export_writer import END_USER_COLUMNS, QUOTA_ADJUSTMENT_COLUMNS

LANGS = [E.Language.EN, E.Language.ZH, E.Language.JA]


def expected_end_user_cells(node: dict[str, Any], lang: E.Language, tz: Any) -> list[Any]:
    """What an XLSX row must hold for one `endUsers` node (labels translated, money as numbers)."""
    policy, quota = node["policy"], node["quota"]
    return [
        node["uid"],
        node["nickname"],
        i18n.label(lang, E.AccountType(node["accountType"])),
        i18n.label(lang, E.AccountStatus(node["accountStatus"])),
        node["businessManager"],
        node["remarks"],
        local(node["linkedAt"], tz),
        node["master"]["uid"] if node["master"] else None,
        i18n.label(lang, E.PaygFreezeStatus(policy["effectivePaygFreezeStatus"])),
        i18n.label(lang, E.PurchaseControl(policy["effectivePurchaseControl"])),
        i18n.label(lang, E.ShutdownPolicy(policy["shutdownPolicy"])),
        i18n.label(lang, E.CreditControlStatus(policy["creditControlStatus"])),
        float(Decimal(quota["amount"])),
        float(Decimal(quota["available"])),
        quota["warningThresholdPercent"],
    ]


@pytest.mark.parametrize("lang", LANGS)
async def test_end_users_xlsx_matches_database(api: Api, lang: E.Language) -> None:
    await seed_accounts(api)
    expected = await end_users(api)
    assert len(expected) == 4
    done, response = await export(api, {"kind": "END_USERS", "format": "XLSX", "language": lang.value})
    assert done["rowCount"] == 4 and done["progress"] == 1.0 and done["finishedAt"]
    assert response.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert done["fileName"].endswith(".xlsx")

    tz = api.settings.tz
    sheet = workbook(response).active
    assert sheet.title == i18n.sheet_name(lang, E.ExportKind.END_USERS)
    rows = list(sheet.iter_rows(values_only=True))
    headers = list(rows[0])
    assert headers == [
        i18n.header(lang, c.key, "UTC+08:00" if c.kind == "datetime" else None) for c in END_USER_COLUMNS
    ]
    literal = {
        E.Language.EN: "Linked Time (UTC+08:00)",
        E.Language.ZH: "关联时间 (UTC+08:00)",
        E.Language.JA: "関連付け日時 (UTC+08:00)",
    }[lang]
    assert headers[6] == literal
    assert [list(r) for r in rows[1:]] == [expected_end_user_cells(n, lang, tz) for n in expected]

    by_uid = {r[0]: r for r in rows[1:]}
    frozen = {E.Language.EN: "Frozen", E.Language.ZH: "已冻结", E.Language.JA: "凍結"}[lang]
    assert by_uid["M1"][8] == frozen and by_uid["S1"][8] == frozen  # the sub inherits its master's freeze
    assert by_uid["S1"][7] == "M1" and by_uid["S1"][12] == 1000.0  # shares the master's pool
    assert by_uid["M1"][13] == pytest.approx(99.88)  # 1000.00 - 900.12
    assert by_uid["U2"][13] == pytest.approx(-10.05)
    assert by_uid["U3"][1] == "=SUM(A1)"  # text, never a formula

    # presentation: frozen header, autofilter over all rows, money and time formats
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == "A1:O5"
    for row in sheet.iter_rows(min_row=2):
        assert row[12].number_format == "#,##0.00" and row[13].number_format == "#,##0.00"
        assert row[6].number_format == "yyyy-mm-dd hh:mm:ss"
    assert sheet.column_dimensions["A"].width >= 8


async def test_end_users_csv_bom_and_text(api: Api) -> None:
    await seed_accounts(api)
    expected = await end_users(api)
    done, response = await export(api, {"kind": "END_USERS", "format": "CSV", "language": "ZH"})
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.content.startswith(codecs.BOM_UTF8)
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"), newline="")))
    assert rows[0][0] == "UID" and rows[0][6] == "关联时间 (UTC+08:00)" and rows[0][12] == "额度总额(USD)"
    assert done["rowCount"] == len(rows) - 1 == 4
    tz = api.settings.tz
    for row, node in zip(rows[1:], expected, strict=True):
        assert row[0] == node["uid"]
        assert row[6] == local(node["linkedAt"], tz).strftime("%Y-%m-%d %H:%M:%S")
        assert row[12] == node["quota"]["amount"] and row[13] == node["quota"]["available"]
        assert row[3] == i18n.label(E.Language.ZH, E.AccountStatus(node["accountStatus"]))
    by_uid = {r[0]: r for r in rows[1:]}
    assert by_uid["M1"][1] == "主账号" and by_uid["S1"][1] == "サブ"
    assert by_uid["M1"][5] == 'VIP, "quoted"\nsecond line'
    assert by_uid["U3"][1] == "'=SUM(A1)"  # CSV injection defused
    assert by_uid["U2"][13] == "-10.05" and by_uid["U2"][9] == "已禁止" and by_uid["U2"][11] == "欠费未停机"
    assert by_uid["U3"][3] == "待确认" and by_uid["M1"][14] == "20" and by_uid["U2"][14] == ""


async def test_filtered_export_equals_end_users(api: Api) -> None:
    for i in range(23):
        await link(
            api,
            f"F{i:02d}",
            nickname=f"{'apple' if i % 3 else 'pear'}-{i}",
            accountType="ENTERPRISE" if i % 2 else "END_USER",
        )
    await link(api, "G1", nickname="apple-master")
    await link(api, "G1-SUB", nickname="apple-sub", masterUid="G1")
    filters: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = [
        (None, None),
        ({"search": "apple"}, None),
        ({"search": "apple", "accountTypes": ["ENTERPRISE"]}, {"field": "NICKNAME", "direction": "ASC"}),
        ({"includeSubAccounts": False}, {"field": "UID", "direction": "DESC"}),
    ]
    for f, order in filters:
        expected = [n["uid"] for n in await end_users(api, f, order_by=order)]
        input_: dict[str, Any] = {"kind": "END_USERS", "format": "CSV", "filter": f}
        if order:
            input_["orderBy"] = order
        done, response = await export(api, input_)
        rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"), newline="")))
        assert [r[0] for r in rows[1:]] == expected, f
        assert done["rowCount"] == len(expected)
    assert "G1-SUB" not in [n["uid"] for n in await end_users(api, {"includeSubAccounts": False})]


async def test_quota_adjustments_xlsx_colours_and_window(api: Api) -> None:
    await link(api, "Q1")
    await seed_adjustments(api, "Q1")
    done, response = await export(api, {"kind": "QUOTA_ADJUSTMENTS", "uid": "Q1", "language": "JA"})
    assert done["rowCount"] == 3  # the record 220 days old is outside the default six months
    assert "Q1" in done["fileName"]
    sheet = workbook(response).active
    assert sheet.title == i18n.sheet_name(E.Language.JA, E.ExportKind.QUOTA_ADJUSTMENTS)
    rows = list(sheet.iter_rows(min_row=1))
    assert [c.value for c in rows[0]] == [
        i18n.header(E.Language.JA, c.key, "UTC+08:00" if c.kind == "datetime" else None)
        for c in QUOTA_ADJUSTMENT_COLUMNS
    ]
    assert rows[0][1].value == "操作日時 (UTC+08:00)"
    data = [[c.value for c in r] for r in rows[1:]]
    # newest first: the decrease, the increase, the create
    assert [r[0] for r in data] == ["クォータ調整", "クォータ調整", "クォータ作成"]
    assert data[0][2:5] == [1234.56, pytest.approx(-234.55), 1000.01]
    assert data[1][2:5] == [500.0, 734.56, 1234.56]
    assert data[0][5] == "API" and data[1][5] == "プラットフォーム"
    assert data[0][6] == "P-MAIN (Partner P-MAIN)" and data[1][6] == "RAM-7 (RAM)"
    decrease, increase, create = rows[1][3], rows[2][3], rows[3][3]
    assert decrease.font.color.rgb == "FF008000" and decrease.value < 0
    assert increase.font.color.rgb == "FFFF0000" and increase.value > 0
    assert create.font.color.rgb == "FFFF0000"
    assert decrease.number_format == "#,##0.00;-#,##0.00"
    assert rows[1][2].number_format == "#,##0.00"
    # times in the display zone
    assert isinstance(data[0][1], type(local("2020-01-01T00:00:00+00:00", api.settings.tz)))


async def test_quota_adjustments_csv_window_and_signs(api: Api) -> None:
    await link(api, "Q1")
    await seed_adjustments(api, "Q1")
    since = (utcnow() - timedelta(days=365)).isoformat()
    until = (utcnow() - timedelta(days=5)).isoformat()
    done, response = await export(
        api, {"kind": "QUOTA_ADJUSTMENTS", "format": "CSV", "uid": "Q1", "since": since, "until": until}
    )
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"), newline="")))
    assert rows[0] == [
        "Operation Type",
        "Operation Time (UTC+08:00)",
        "Adjust Before(USD)",
        "Operation Value(USD)",
        "Adjust After(USD)",
        "Operation Method",
        "Operator",
    ]
    assert [r[3] for r in rows[1:]] == ["734.56", "500.00", "100.00"]
    assert rows[1][6] == "RAM-7 (RAM)" and rows[3][6] == "P-MAIN (Partner)"
    assert done["rowCount"] == 3
