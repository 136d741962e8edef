"""The file-writing layer of exports: headers, labels, time zones, money and styling, read back from real files.

XLSX files are opened with openpyxl and CSV files with the csv module, so these tests check what a partner would
actually see, not what the writer believes it wrote.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.worksheet.worksheet import Worksheet

from uidhub.models import enums
from uidhub.models.enums import (
    AccountStatus,
    AccountType,
    CreditControlStatus,
    ExportFormat,
    ExportKind,
    Language,
    OperationMethod,
    PaygFreezeStatus,
    PurchaseControl,
    QuotaOperationType,
    ShutdownPolicy,
)
from uidhub.notifications import i18n
from uidhub.notifications.export_writer import (
    COLUMNS_BY_KIND,
    END_USER_COLUMNS,
    QUOTA_ADJUSTMENT_COLUMNS,
    Column,
    CsvExportWriter,
    XlsxExportWriter,
    display_width,
    write_export,
)

CST = timezone(timedelta(hours=8))
NEW_YEAR_UTC = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
NEW_YEAR_CST = datetime(2026, 1, 1, 8, 0, 0)

EN_END_USER_HEADERS = [
    "UID",
    "Nickname",
    "Account Type",
    "Account Status",
    "Business Manager",
    "Remarks",
    "Linked Time (UTC+08:00)",
    "Master UID",
    "PAYG Freeze Status",
    "Purchase Control",
    "Shutdown Policy",
    "Credit Control Status",
    "Quota Amount(USD)",
    "Available Quota(USD)",
    "Quota Warning Threshold(%)",
]
EN_QUOTA_HEADERS = [
    "Operation Type",
    "Operation Time (UTC+08:00)",
    "Adjust Before(USD)",
    "Operation Value(USD)",
    "Adjust After(USD)",
    "Operation Method",
    "Operator",
]

#: Literal translations the tests pin, independent of the catalogue, so a wrong catalogue entry is caught.
EXPECTED = {
    Language.EN: {
        "linked": "Linked Time (UTC+08:00)",
        "optime": "Operation Time (UTC+08:00)",
        "before": "Adjust Before(USD)",
        "value": "Operation Value(USD)",
        "after": "Adjust After(USD)",
        "normal": "Normal",
        "to_be_confirmed": "To Be Confirmed",
        "terminated": "Terminated",
        "frozen": "Frozen",
        "banned": "Banned",
        "delay_stop": "Delay Stop",
        "arrears": "Arrears (not shut down)",
        "quota_create": "Quota Create",
        "quota_adjustment": "Quota Adjustment",
        "platform": "Platform",
        "api": "API",
        "sheet_users": "End Users",
        "sheet_quota": "Quota Adjustments",
    },
    Language.ZH: {
        "linked": "关联时间 (UTC+08:00)",
        "optime": "操作时间 (UTC+08:00)",
        "before": "调整前(USD)",
        "value": "操作值(USD)",
        "after": "调整后(USD)",
        "normal": "正常",
        "to_be_confirmed": "待确认",
        "terminated": "已终止",
        "frozen": "已冻结",
        "banned": "已禁止",
        "delay_stop": "延迟停机",
        "arrears": "欠费未停机",
        "quota_create": "额度创建",
        "quota_adjustment": "额度调整",
        "platform": "平台",
        "api": "API",
        "sheet_users": "终端用户",
        "sheet_quota": "额度调整记录",
    },
    Language.JA: {
        "linked": "関連付け日時 (UTC+08:00)",
        "optime": "操作日時 (UTC+08:00)",
        "before": "調整前(USD)",
        "value": "操作値(USD)",
        "after": "調整後(USD)",
        "normal": "正常",
        "to_be_confirmed": "確認待ち",
        "terminated": "終了",
        "frozen": "凍結",
        "banned": "禁止",
        "delay_stop": "遅延停止",
        "arrears": "未払い（停止なし）",
        "quota_create": "クォータ作成",
        "quota_adjustment": "クォータ調整",
        "platform": "プラットフォーム",
        "api": "API",
        "sheet_users": "エンドユーザー",
        "sheet_quota": "クォータ調整履歴",
    },
}


def end_user_rows() -> list[dict[str, Any]]:
    """Three accounts: a full one with CJK text, a sub-account, and one with every optional value empty."""
    return [
        {
            "uid": "1234567890123456",  # digits only: must stay text, not become 1.23e15
            "nickname": "测试用户・テスト",
            "account_type": AccountType.ENTERPRISE,
            "status": AccountStatus.NORMAL,
            "business_manager": "王小明",
            "remarks": "VIP 顧客",
            "linked_time": NEW_YEAR_UTC,
            "master_uid": None,
            "effective_payg_freeze": PaygFreezeStatus.FROZEN,
            "effective_purchase_control": PurchaseControl.BANNED,
            "shutdown_policy": ShutdownPolicy.DELAY_STOP,
            "credit_control_status": CreditControlStatus.ARREARS_NOT_SHUTDOWN,
            "quota_amount": 1234550,
            "available_quota": -310,
            "warning_percent": 80,
        },
        {
            "uid": "2000000000000001",
            "nickname": "sub",
            "account_type": AccountType.END_USER,
            "status": AccountStatus.TO_BE_CONFIRMED,
            "business_manager": None,
            "remarks": None,
            "linked_time": datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=UTC),
            "master_uid": "1234567890123456",
            "effective_payg_freeze": PaygFreezeStatus.NORMAL,
            "effective_purchase_control": PurchaseControl.NORMAL,
            "shutdown_policy": ShutdownPolicy.NO_STOP,
            "credit_control_status": CreditControlStatus.NORMAL,
            "quota_amount": 0,
            "available_quota": 0,
            "warning_percent": None,
        },
        {
            "uid": "3000000000000001",
            "nickname": None,
            "account_type": AccountType.RESELLER,
            "status": AccountStatus.TERMINATED,
            "business_manager": None,
            "remarks": None,
            "linked_time": NEW_YEAR_UTC,
            "master_uid": None,
            "effective_payg_freeze": None,
            "effective_purchase_control": None,
            "shutdown_policy": None,
            "credit_control_status": None,
            "quota_amount": None,
            "available_quota": None,
            "warning_percent": None,
        },
    ]


def quota_rows() -> list[dict[str, Any]]:
    """A creation, an increase, a decrease and a zero adjustment."""
    return [
        {
            "operation_type": QuotaOperationType.QUOTA_CREATE,
            "operation_time": NEW_YEAR_UTC,
            "before": 0,
            "value": 100000,
            "after": 100000,
            "method": OperationMethod.PLATFORM,
            "operator": "1234567890123456",
        },
        {
            "operation_type": QuotaOperationType.QUOTA_ADJUSTMENT,
            "operation_time": NEW_YEAR_UTC + timedelta(days=1),
            "before": 100000,
            "value": 2550,
            "after": 102550,
            "method": OperationMethod.API,
            "operator": "ram-user@1234567890123456",
        },
        {
            "operation_type": QuotaOperationType.QUOTA_ADJUSTMENT,
            "operation_time": NEW_YEAR_UTC + timedelta(days=2),
            "before": 102550,
            "value": -1250,
            "after": 101300,
            "method": OperationMethod.API,
            "operator": "ram-user@1234567890123456",
        },
        {
            "operation_type": QuotaOperationType.QUOTA_ADJUSTMENT,
            "operation_time": NEW_YEAR_UTC + timedelta(days=3),
            "before": 101300,
            "value": 0,
            "after": 101300,
            "method": OperationMethod.SYSTEM,
            "operator": None,
        },
    ]


def write_xlsx(path: Path, kind: ExportKind, language: Language, rows: list[dict[str, Any]], tz: timezone = CST) -> int:
    writer = XlsxExportWriter(path, COLUMNS_BY_KIND[kind], language, tz, kind)
    for row in rows:
        writer.write_row(row)
    return writer.close()


def write_csv(path: Path, kind: ExportKind, language: Language, rows: list[dict[str, Any]], tz: timezone = CST) -> int:
    writer = CsvExportWriter(path, COLUMNS_BY_KIND[kind], language, tz, kind)
    for row in rows:
        writer.write_row(row)
    return writer.close()


def sheet_rows(ws: Worksheet) -> list[list[Any]]:
    return [list(r) for r in ws.iter_rows(values_only=True)]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.reader(fh))


# ---------------------------------------------------------------- i18n


def test_every_enum_member_has_a_label_in_every_language() -> None:
    for enum_cls in i18n.LABELLED_ENUMS:
        for member in enum_cls:
            for language in Language:
                text = i18n.label(language, member)
                assert text.strip(), f"{language} label of {enum_cls.__name__}.{member} is blank"


def test_every_enum_used_by_an_export_column_is_labelled() -> None:
    """The enums in the sample rows must all be in LABELLED_ENUMS, so the completeness test above covers them."""
    used = {type(v) for row in end_user_rows() + quota_rows() for v in row.values() if isinstance(v, StrEnum)}
    assert used <= set(i18n.LABELLED_ENUMS)
    expected = {
        enums.AccountStatus,
        enums.AccountType,
        enums.PaygFreezeStatus,
        enums.PurchaseControl,
        enums.ShutdownPolicy,
        enums.CreditControlStatus,
        enums.QuotaOperationType,
        enums.OperationMethod,
    }
    assert set(i18n.LABELLED_ENUMS) == expected


def test_every_language_has_the_same_message_keys() -> None:
    en = set(i18n.MESSAGES[Language.EN])
    for language in Language:
        assert set(i18n.MESSAGES[language]) == en, language
        assert all(v.strip() for v in i18n.MESSAGES[language].values()), language


def test_every_column_has_a_header_and_time_columns_name_the_offset() -> None:
    for columns in (END_USER_COLUMNS, QUOTA_ADJUSTMENT_COLUMNS):
        for column in columns:
            for language in Language:
                if column.kind == "datetime":
                    assert column.key in i18n.TIME_KEYS
                    assert i18n.header(language, column.key, "UTC+08:00").endswith(" (UTC+08:00)")
                    with pytest.raises(ValueError):
                        i18n.header(language, column.key)
                else:
                    assert i18n.header(language, column.key)


def test_labels_distinguish_enums_sharing_a_value() -> None:
    assert i18n.label(Language.EN, PaygFreezeStatus.FROZEN) == "Frozen"
    assert i18n.label(Language.EN, PurchaseControl.BANNED) == "Banned"
    assert i18n.label(Language.ZH, AccountStatus.IN_PROCESS) == "处理中"
    assert i18n.label(Language.JA, AccountStatus.DELETED) == "削除済み"
    assert i18n.label(Language.EN, CreditControlStatus.SHUTDOWN) == "Shutdown"
    assert i18n.label(Language.EN, ShutdownPolicy.IMMEDIATE_STOP) == "Immediate Stop"


def test_unknown_keys_fail_loudly() -> None:
    with pytest.raises(KeyError):
        i18n.header(Language.EN, "no_such_column")
    with pytest.raises(KeyError):
        i18n.label(Language.EN, enums.Role.ADMIN)


def test_utc_offset_label() -> None:
    assert i18n.utc_offset_label(CST) == "UTC+08:00"
    assert i18n.utc_offset_label(UTC) == "UTC+00:00"
    assert i18n.utc_offset_label(timezone(-timedelta(hours=5, minutes=30))) == "UTC-05:30"


def test_sheet_names() -> None:
    for language in Language:
        assert i18n.sheet_name(language, ExportKind.END_USERS) == EXPECTED[language]["sheet_users"]
        assert i18n.sheet_name(language, ExportKind.QUOTA_ADJUSTMENTS) == EXPECTED[language]["sheet_quota"]


def test_display_width_counts_cjk_double() -> None:
    assert display_width("abc") == 3
    assert display_width("中文") == 4
    assert display_width("テスト") == 6


def test_column_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError):
        Column("x", "float")  # type: ignore[arg-type]


# ---------------------------------------------------------------- XLSX


@pytest.mark.parametrize("language", list(Language))
def test_xlsx_end_users(tmp_path: Path, language: Language) -> None:
    path = tmp_path / "users.xlsx"
    count = write_xlsx(path, ExportKind.END_USERS, language, end_user_rows())
    assert count == 3

    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == [EXPECTED[language]["sheet_users"]]
    ws = wb.active
    rows = sheet_rows(ws)
    assert len(rows) == 1 + count
    headers = rows[0]
    if language is Language.EN:
        assert headers == EN_END_USER_HEADERS
    assert headers[6] == EXPECTED[language]["linked"]
    assert len(headers) == len(END_USER_COLUMNS)
    assert all(ws.cell(row=1, column=c).font.b for c in range(1, len(headers) + 1))

    exp = EXPECTED[language]
    first, second, third = rows[1], rows[2], rows[3]
    assert first[0] == "1234567890123456"
    assert first[1] == "测试用户・テスト"
    assert first[4] == "王小明"
    assert first[3] == exp["normal"]
    assert first[6] == NEW_YEAR_CST
    assert first[7] is None
    assert first[8] == exp["frozen"]
    assert first[9] == exp["banned"]
    assert first[10] == exp["delay_stop"]
    assert first[11] == exp["arrears"]
    assert first[12] == 12345.5
    assert first[13] == -3.1
    assert first[14] == 80
    assert second[3] == exp["to_be_confirmed"]
    assert second[6] == datetime(2026, 7, 1, 7, 59, 59)  # crosses midnight into the next day; sub-seconds dropped
    assert second[7] == "1234567890123456"
    assert second[12] == 0
    assert third[3] == exp["terminated"]
    assert third[1:3] == [None, i18n.label(language, AccountType.RESELLER)]
    assert third[8:] == [None] * 7

    assert ws["G2"].number_format == "yyyy-mm-dd hh:mm:ss"
    assert ws["M2"].number_format == "#,##0.00"
    assert ws["N2"].number_format == "#,##0.00"
    assert ws["A2"].data_type == "s"
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == "A1:O4"


@pytest.mark.parametrize("language", list(Language))
def test_xlsx_quota_adjustments(tmp_path: Path, language: Language) -> None:
    path = tmp_path / "quota.xlsx"
    count = write_xlsx(path, ExportKind.QUOTA_ADJUSTMENTS, language, quota_rows())
    assert count == 4

    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == [EXPECTED[language]["sheet_quota"]]
    ws = wb.active
    rows = sheet_rows(ws)
    assert len(rows) == 1 + count
    exp = EXPECTED[language]
    if language is Language.EN:
        assert rows[0] == EN_QUOTA_HEADERS
    assert rows[0][1:5] == [exp["optime"], exp["before"], exp["value"], exp["after"]]
    assert [r[0] for r in rows[1:]] == [exp["quota_create"]] + [exp["quota_adjustment"]] * 3
    assert [r[5] for r in rows[1:3]] == [exp["platform"], exp["api"]]
    assert rows[1][1] == NEW_YEAR_CST
    assert [r[2:5] for r in rows[1:]] == [
        [0, 1000, 1000],
        [1000, 25.5, 1025.5],
        [1025.5, -12.5, 1013],
        [1013, 0, 1013],
    ]
    assert rows[4][6] is None

    increase, decrease, zero = ws["D3"], ws["D4"], ws["D5"]
    assert increase.font.color is not None and increase.font.color.rgb == "FFFF0000"
    assert decrease.font.color is not None and decrease.font.color.rgb == "FF008000"
    assert zero.font.color is None or zero.font.color.rgb not in ("FFFF0000", "FF008000")
    assert decrease.value < 0
    # The negative section of the format must print a minus sign (not parentheses, not hidden).
    positive_section, negative_section = decrease.number_format.split(";")
    assert positive_section == "#,##0.00"
    assert negative_section.startswith("-")
    assert "-" not in increase.number_format.split(";")[0]
    for ref in ("C2", "E2"):
        assert ws[ref].number_format == "#,##0.00"
        assert ws[ref].font.color is None or ws[ref].font.color.rgb not in ("FFFF0000", "FF008000")
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == "A1:G5"


def test_xlsx_uses_constant_memory_inline_strings(tmp_path: Path) -> None:
    """constant_memory writes strings in-line instead of a shared-strings table; that proves the mode is on."""
    path = tmp_path / "users.xlsx"
    write_xlsx(path, ExportKind.END_USERS, Language.ZH, end_user_rows())
    with zipfile.ZipFile(path) as zf:
        sheet_xml = zf.read("xl/worksheets/sheet1.xml").decode()
        assert "xl/sharedStrings.xml" not in zf.namelist()
    assert 't="inlineStr"' in sheet_xml
    assert "测试用户・テスト" in sheet_xml


def test_xlsx_column_widths_fit_values_with_cjk_counted_double(tmp_path: Path) -> None:
    rows = end_user_rows()
    rows[0]["nickname"] = "长" * 20  # 40 display columns
    rows[1]["remarks"] = "r" * 30
    rows[2]["business_manager"] = "x" * 500  # capped
    path = tmp_path / "users.xlsx"
    write_xlsx(path, ExportKind.END_USERS, Language.EN, rows)
    ws = openpyxl.load_workbook(path).active
    width = {c: ws.column_dimensions[c].width for c in "ABCDEFGHIJKLMNO"}
    assert width["B"] >= 40  # nickname: 20 CJK characters
    assert 30 <= width["F"] < 40  # remarks: 30 ASCII characters
    assert width["E"] <= 61  # business manager: capped
    assert width["G"] >= len("Linked Time (UTC+08:00)")  # header wider than the values
    assert all(w >= 8 for w in width.values())


def test_xlsx_money_is_exact_to_two_decimals_at_the_largest_amount(tmp_path: Path) -> None:
    rows = quota_rows()[:1]
    rows[0] |= {"before": 10**14 - 1, "value": -(10**14 - 1), "after": 1}
    path = tmp_path / "quota.xlsx"
    write_xlsx(path, ExportKind.QUOTA_ADJUSTMENTS, Language.EN, rows)
    ws = openpyxl.load_workbook(path).active
    assert f"{ws['C2'].value:.2f}" == "999999999999.99"
    assert Decimal(repr(ws["C2"].value)) == Decimal("999999999999.99")
    assert f"{ws['D2'].value:.2f}" == "-999999999999.99"
    assert ws["E2"].value == 0.01


def test_xlsx_negative_display_offset(tmp_path: Path) -> None:
    tz = timezone(-timedelta(hours=5))
    path = tmp_path / "quota.xlsx"
    write_xlsx(path, ExportKind.QUOTA_ADJUSTMENTS, Language.EN, quota_rows()[:1], tz=tz)
    ws = openpyxl.load_workbook(path).active
    assert ws["B1"].value == "Operation Time (UTC-05:00)"
    assert ws["B2"].value == datetime(2025, 12, 31, 19, 0, 0)


def test_xlsx_header_only_when_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.xlsx"
    assert write_xlsx(path, ExportKind.END_USERS, Language.EN, []) == 0
    ws = openpyxl.load_workbook(path).active
    assert sheet_rows(ws) == [EN_END_USER_HEADERS]
    assert ws.auto_filter.ref == "A1:O1"
    assert ws.freeze_panes == "A2"


def test_text_that_looks_like_a_formula_stays_text_in_xlsx(tmp_path: Path) -> None:
    rows = end_user_rows()[:1]
    rows[0]["nickname"] = "=1+1"
    path = tmp_path / "users.xlsx"
    write_xlsx(path, ExportKind.END_USERS, Language.EN, rows)
    cell = openpyxl.load_workbook(path).active["B2"]
    assert cell.value == "=1+1"
    assert cell.data_type == "s"


# ---------------------------------------------------------------- CSV


@pytest.mark.parametrize("language", list(Language))
def test_csv_end_users(tmp_path: Path, language: Language) -> None:
    path = tmp_path / "users.csv"
    count = write_csv(path, ExportKind.END_USERS, language, end_user_rows())
    assert count == 3
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")

    rows = read_csv(path)
    assert len(rows) == 1 + count
    exp = EXPECTED[language]
    if language is Language.EN:
        assert rows[0] == EN_END_USER_HEADERS
    assert rows[0][6] == exp["linked"]
    first, second, third = rows[1:]
    assert first[:3] == ["1234567890123456", "测试用户・テスト", i18n.label(language, AccountType.ENTERPRISE)]
    assert first[3] == exp["normal"]
    assert first[5] == "VIP 顧客"
    assert first[6] == "2026-01-01 08:00:00"
    assert first[7] == ""
    assert first[8:12] == [exp["frozen"], exp["banned"], exp["delay_stop"], exp["arrears"]]
    assert first[12:] == ["12345.50", "-3.10", "80"]
    assert second[6] == "2026-07-01 07:59:59"
    assert second[12:] == ["0.00", "0.00", ""]
    assert third[3] == exp["terminated"]
    assert third[8:] == [""] * 7


@pytest.mark.parametrize("language", list(Language))
def test_csv_quota_adjustments(tmp_path: Path, language: Language) -> None:
    path = tmp_path / "quota.csv"
    count = write_csv(path, ExportKind.QUOTA_ADJUSTMENTS, language, quota_rows())
    assert count == 4
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    rows = read_csv(path)
    assert len(rows) == 1 + count
    exp = EXPECTED[language]
    if language is Language.EN:
        assert rows[0] == EN_QUOTA_HEADERS
    assert rows[0][1:5] == [exp["optime"], exp["before"], exp["value"], exp["after"]]
    assert rows[1][:2] == [exp["quota_create"], "2026-01-01 08:00:00"]
    assert [r[2:5] for r in rows[1:]] == [
        ["0.00", "1000.00", "1000.00"],
        ["1000.00", "25.50", "1025.50"],
        ["1025.50", "-12.50", "1013.00"],
        ["1013.00", "0.00", "1013.00"],
    ]
    assert [r[5] for r in rows[1:3]] == [exp["platform"], exp["api"]]
    assert rows[4][6] == ""


def test_csv_neutralises_formula_text(tmp_path: Path) -> None:
    rows = end_user_rows()[:1]
    rows[0]["nickname"] = '=HYPERLINK("http://evil")'
    rows[0]["remarks"] = "@SUM(A1)"
    path = tmp_path / "users.csv"
    write_csv(path, ExportKind.END_USERS, Language.EN, rows)
    data = read_csv(path)[1]
    assert data[1] == '\'=HYPERLINK("http://evil")'
    assert data[5] == "'@SUM(A1)"
    assert data[0] == "1234567890123456"


def test_csv_header_only_when_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    assert write_csv(path, ExportKind.QUOTA_ADJUSTMENTS, Language.JA, []) == 0
    rows = read_csv(path)
    assert len(rows) == 1
    assert rows[0][1] == "操作日時 (UTC+08:00)"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("writer_cls", [XlsxExportWriter, CsvExportWriter])
def test_bad_values_are_refused(tmp_path: Path, writer_cls: type[XlsxExportWriter | CsvExportWriter]) -> None:
    writer = writer_cls(tmp_path / "out", QUOTA_ADJUSTMENT_COLUMNS, Language.EN, CST, ExportKind.QUOTA_ADJUSTMENTS)
    good = quota_rows()[0]
    with pytest.raises(TypeError):
        writer.write_row(good | {"value": 12.5})  # money must be cents
    with pytest.raises(TypeError):
        writer.write_row(good | {"operation_time": datetime(2026, 1, 1)})  # naive
    with pytest.raises(TypeError):
        writer.write_row(good | {"method": "API"})  # plain string, not an enum member
    missing = dict(good)
    del missing["operator"]
    with pytest.raises(KeyError):
        writer.write_row(missing)
    writer.abort()
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- write_export


async def agen(rows: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for row in rows:
        yield row


@pytest.mark.parametrize("fmt", list(ExportFormat))
async def test_write_export_streams_and_reports_progress(tmp_path: Path, fmt: ExportFormat) -> None:
    rows = [quota_rows()[1] | {"value": i + 1} for i in range(5)]
    seen: list[int] = []

    async def progress(n: int) -> None:
        seen.append(n)

    path = tmp_path / f"quota.{fmt.value.lower()}"
    count = await write_export(
        path,
        fmt,
        QUOTA_ADJUSTMENT_COLUMNS,
        Language.ZH,
        CST,
        ExportKind.QUOTA_ADJUSTMENTS,
        agen(rows),
        progress=progress,
        progress_every=2,
    )
    assert count == 5
    assert seen == [2, 4]
    if fmt is ExportFormat.XLSX:
        ws = openpyxl.load_workbook(path).active
        assert ws.max_row == 6
        assert ws["D6"].value == 0.05
        assert ws["B1"].value == "操作时间 (UTC+08:00)"
    else:
        data = read_csv(path)
        assert len(data) == 6
        assert data[5][3] == "0.05"


async def test_write_export_accepts_a_sync_iterable(tmp_path: Path) -> None:
    def gen() -> Iterator[dict[str, Any]]:
        yield from end_user_rows()

    path = tmp_path / "users.csv"
    count = await write_export(path, ExportFormat.CSV, END_USER_COLUMNS, Language.EN, CST, ExportKind.END_USERS, gen())
    assert count == 3
    assert len(read_csv(path)) == 4


@pytest.mark.parametrize("fmt", list(ExportFormat))
async def test_write_export_removes_the_partial_file_on_failure(tmp_path: Path, fmt: ExportFormat) -> None:
    async def failing() -> AsyncIterator[dict[str, Any]]:
        yield quota_rows()[0]
        raise RuntimeError("database went away")

    path = tmp_path / "quota.out"
    with pytest.raises(RuntimeError, match="database went away"):
        await write_export(
            path, fmt, QUOTA_ADJUSTMENT_COLUMNS, Language.EN, CST, ExportKind.QUOTA_ADJUSTMENTS, failing()
        )
    assert not path.exists()
