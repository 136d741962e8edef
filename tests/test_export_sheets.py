"""An XLSX export with more rows than one sheet holds continues on further sheets, the header repeated.

Excel's limit is 1,048,576 rows a sheet; the test lowers `SHEET_MAX_ROWS` to 10 (the header and 9 data rows)
so that 25 rows need three sheets, and reads the file back with openpyxl.
"""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest

from tests.test_export_writer import EN_END_USER_HEADERS, end_user_rows, sheet_rows, write_xlsx
from uidhub.models.enums import ExportKind, Language
from uidhub.notifications import export_writer, i18n


def test_rows_past_the_sheet_limit_continue_on_new_sheets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_writer, "SHEET_MAX_ROWS", 10)
    template = end_user_rows()
    rows = [{**template[i % 3], "uid": f"U{i:03d}"} for i in range(25)]
    path = tmp_path / "users.xlsx"
    assert write_xlsx(path, ExportKind.END_USERS, Language.EN, rows) == 25

    wb = openpyxl.load_workbook(path)
    base = i18n.sheet_name(Language.EN, ExportKind.END_USERS)
    assert wb.sheetnames == [base, f"{base} (2)", f"{base} (3)"]
    uids: list[str] = []
    for name, data_rows in zip(wb.sheetnames, (9, 9, 7), strict=True):
        ws = wb[name]
        values = sheet_rows(ws)
        assert values[0] == EN_END_USER_HEADERS  # the header on every sheet
        assert len(values) == 1 + data_rows
        assert ws.freeze_panes == "A2"
        assert ws.auto_filter.ref == f"A1:O{1 + data_rows}"
        uids += [row[0] for row in values[1:]]
    assert uids == [f"U{i:03d}" for i in range(25)]  # every row once, in order


def test_exactly_a_full_sheet_needs_no_second_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_writer, "SHEET_MAX_ROWS", 4)
    rows = end_user_rows()  # 3 data rows + the header = 4
    path = tmp_path / "users.xlsx"
    assert write_xlsx(path, ExportKind.END_USERS, Language.EN, rows) == 3
    assert len(openpyxl.load_workbook(path).sheetnames) == 1


def test_the_real_limit_is_excels() -> None:
    assert export_writer.SHEET_MAX_ROWS == 1_048_576
