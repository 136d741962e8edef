"""Streaming XLSX and CSV writers for exports: rows in, one file out, memory flat however many rows there are.

This module knows nothing about the database or GraphQL. The export task feeds it dicts keyed by `Column.key`:

* money (`money`, `signed_money`) is INTEGER CENTS (`int`); floats are refused, as everywhere in uidhub;
* datetimes are timezone-aware (UTC) and are shown in the display timezone named in the header;
* enums are `StrEnum` members, shown with their label in the export language (`resolvers.i18n`);
* `None` is an empty cell.

Every column key must be present in every row (the value may be None): a misspelt key is a bug that would
otherwise silently produce an empty column.

XLSX is written with XlsxWriter in ``constant_memory`` mode, which flushes each row to a temp file as soon as the
next row starts, so rows must arrive in order (they do: one pass, top to bottom). Per the XlsxWriter docs only
``add_table``, ``merge_range`` and ``set_row`` are limited in that mode; ``set_column``, ``autofilter`` and
``freeze_panes`` merely record settings that XlsxWriter emits when the sheet XML is assembled at ``close()``
(``<cols>`` and ``<autoFilter>`` are written then, around the streamed ``<sheetData>``). That is why column widths
can be fitted to the values actually seen and the autofilter can cover the final row, both set just before closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import unicodedata
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import xlsxwriter
from xlsxwriter.format import Format
from xlsxwriter.worksheet import Worksheet

from uidhub.models.enums import ExportFormat, ExportKind, Language
from uidhub.models.money import cents_to_decimal, format_money
from uidhub.notifications import i18n

ColumnKind = Literal["text", "enum", "datetime", "money", "int", "signed_money"]
COLUMN_KINDS: frozenset[str] = frozenset({"text", "enum", "datetime", "money", "int", "signed_money"})


@dataclass(frozen=True, slots=True)
class Column:
    """One export column: the row-dict key (also the i18n header key) and how its values are rendered."""

    key: str
    kind: ColumnKind

    def __post_init__(self) -> None:
        if self.kind not in COLUMN_KINDS:
            raise ValueError(f"unknown column kind {self.kind!r} for {self.key!r}")


#: END_USERS, in the order RULES.md lists them.
END_USER_COLUMNS: list[Column] = [
    Column("uid", "text"),
    Column("nickname", "text"),
    Column("account_type", "enum"),
    Column("status", "enum"),
    Column("business_manager", "text"),
    Column("remarks", "text"),
    Column("linked_time", "datetime"),
    Column("master_uid", "text"),
    Column("effective_payg_freeze", "enum"),
    Column("effective_purchase_control", "enum"),
    Column("shutdown_policy", "enum"),
    Column("credit_control_status", "enum"),
    Column("quota_amount", "money"),
    Column("available_quota", "money"),
    Column("warning_percent", "int"),
]

#: QUOTA_ADJUSTMENTS, in the order RULES.md lists them; `value` is signed (red increase, green decrease).
QUOTA_ADJUSTMENT_COLUMNS: list[Column] = [
    Column("operation_type", "enum"),
    Column("operation_time", "datetime"),
    Column("before", "money"),
    Column("value", "signed_money"),
    Column("after", "money"),
    Column("method", "enum"),
    Column("operator", "text"),
]

COLUMNS_BY_KIND: dict[ExportKind, list[Column]] = {
    ExportKind.END_USERS: END_USER_COLUMNS,
    ExportKind.QUOTA_ADJUSTMENTS: QUOTA_ADJUSTMENT_COLUMNS,
}

MONEY_FORMAT = "#,##0.00"
#: The negative section spells the minus out, so a decrease always shows "-" whatever the viewer's defaults.
SIGNED_MONEY_FORMAT = "#,##0.00;-#,##0.00"
DATETIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
CSV_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
INCREASE_COLOR = "#FF0000"
DECREASE_COLOR = "#008000"

MIN_WIDTH = 8
MAX_WIDTH = 60
#: Room for the autofilter drop-down button in the header plus a little breathing space.
WIDTH_PADDING = 3
#: Characters CSV-consuming spreadsheets treat as the start of a formula (OWASP "CSV injection").
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def display_width(text: str) -> int:
    """Approximate on-screen width: wide and full-width (CJK) characters take two columns, others one."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _check_row(columns: list[Column], row: Mapping[str, Any]) -> None:
    missing = [c.key for c in columns if c.key not in row]
    if missing:
        raise KeyError(f"export row lacks column(s) {missing}")


def _cents(column: Column, value: object) -> int:
    """Money must be integer cents; a float (or bool) here means someone converted too early."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{column.key}: money must be integer cents, got {type(value).__name__}")
    return value


def _local_naive(column: Column, value: object, tz: timezone) -> datetime:
    """Convert an aware datetime to the display zone, drop the zone (Excel has none) and sub-second noise.

    Seconds are the finest unit shown, and truncating keeps XLSX and CSV cells equal for the same instant.
    """
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise TypeError(f"{column.key}: expected a timezone-aware datetime, got {value!r}")
    return value.astimezone(tz).replace(tzinfo=None, microsecond=0)


def _enum_label(column: Column, value: object, language: Language) -> str:
    if not isinstance(value, StrEnum):
        raise TypeError(f"{column.key}: expected an enum member, got {value!r}")
    return i18n.label(language, value)


def _int(column: Column, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{column.key}: expected an int, got {type(value).__name__}")
    return value


def _headers(columns: list[Column], language: Language, tz: timezone) -> list[str]:
    offset = i18n.utc_offset_label(tz)
    return [i18n.header(language, c.key, offset if c.kind == "datetime" else None) for c in columns]


#: Rows one worksheet holds, the header included (Excel's limit). Rows past it continue on a new sheet of the same
#: workbook with the header repeated; read at every row, so a test can lower it.
SHEET_MAX_ROWS = 1_048_576


def _grouped(cents: int) -> str:
    """How '#,##0.00' renders the amount ("-1,234.50"), used only to measure column width."""
    return f"{cents_to_decimal(cents):,.2f}"


class XlsxExportWriter:
    """Writes worksheets row by row in constant memory; `close()` finishes the file and returns the row count.

    More rows than one sheet holds (SHEET_MAX_ROWS with the header) continue on "<name> (2)", "<name> (3)", …,
    each with the header, the frozen header row and an autofilter of its own.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        columns: list[Column],
        language: Language,
        tz: timezone,
        sheet_kind: ExportKind,
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.language = Language(language)
        self.tz = tz
        self._rows = 0
        self._closed = False
        self._workbook = xlsxwriter.Workbook(str(self.path), {"constant_memory": True})
        self._sheet_name = i18n.sheet_name(self.language, sheet_kind)
        #: Every sheet with the data rows on it; the last one is being written.
        self._sheets: list[list[Any]] = []
        self._header_fmt: Format = self._workbook.add_format({"bold": True})
        self._money_fmt: Format = self._workbook.add_format({"num_format": MONEY_FORMAT})
        self._zero_fmt: Format = self._workbook.add_format({"num_format": SIGNED_MONEY_FORMAT})
        self._increase_fmt: Format = self._workbook.add_format(
            {"num_format": SIGNED_MONEY_FORMAT, "font_color": INCREASE_COLOR}
        )
        self._decrease_fmt: Format = self._workbook.add_format(
            {"num_format": SIGNED_MONEY_FORMAT, "font_color": DECREASE_COLOR}
        )
        self._datetime_fmt: Format = self._workbook.add_format({"num_format": DATETIME_FORMAT})
        self._int_fmt: Format = self._workbook.add_format({"num_format": "0"})
        self._headers = _headers(self.columns, self.language, tz)
        # Widths start at the header's; values widen them (capped) and they are applied in close().
        self._widths = [display_width(h) for h in self._headers]
        self._sheet_rows = 0
        self._sheet: Worksheet = self._add_sheet()

    def _add_sheet(self) -> Worksheet:
        """A new sheet with the header row (frozen); the rows written next go on it."""
        number = len(self._sheets) + 1
        suffix = f" ({number})" if number > 1 else ""
        sheet = self._workbook.add_worksheet(self._sheet_name[: 31 - len(suffix)] + suffix)  # Excel: 31 characters
        sheet.freeze_panes(1, 0)
        for col, text in enumerate(self._headers):
            sheet.write_string(0, col, text, self._header_fmt)
        self._sheets.append([sheet, 0])
        self._sheet_rows = 0
        return sheet

    def _seen(self, col: int, width: int) -> None:
        if width > self._widths[col]:
            self._widths[col] = width

    def _number(self, row: int, col: int, cents: int, fmt: Format) -> None:
        """Write cents as a number of dollars.

        Excel stores every number as an IEEE double, so the conversion has to happen somewhere; it happens here and
        nowhere else. `cents_to_decimal` is exact, and `float()` of it is the double nearest to that two-decimal
        value. Doubles carry 15-17 significant digits and amounts are below 10^12 dollars (at most 14 significant
        digits with the cents), so the nearest double is unique to that amount and displays and round-trips to
        exactly the same two decimals.
        """
        self._sheet.write_number(row, col, float(cents_to_decimal(cents)), fmt)

    def write_row(self, row: Mapping[str, Any]) -> None:
        """Append one data row; values are validated so a wrong type fails the export instead of corrupting it."""
        if self._closed:
            raise RuntimeError("writer is closed")
        _check_row(self.columns, row)
        if self._sheet_rows + 1 >= SHEET_MAX_ROWS:
            self._sheet = self._add_sheet()
        r = self._sheet_rows + 1
        for col, column in enumerate(self.columns):
            value = row[column.key]
            if value is None:
                continue  # constant_memory: an unwritten cell is simply absent, i.e. empty
            kind = column.kind
            if kind == "text":
                text = str(value)
                # write_string, not write(): a UID of digits stays text and "=..." is never a formula.
                self._sheet.write_string(r, col, text)
                self._seen(col, display_width(text))
            elif kind == "enum":
                text = _enum_label(column, value, self.language)
                self._sheet.write_string(r, col, text)
                self._seen(col, display_width(text))
            elif kind == "datetime":
                self._sheet.write_datetime(r, col, _local_naive(column, value, self.tz), self._datetime_fmt)
                self._seen(col, len("yyyy-mm-dd hh:mm:ss"))
            elif kind == "money":
                cents = _cents(column, value)
                self._number(r, col, cents, self._money_fmt)
                self._seen(col, len(_grouped(cents)))
            elif kind == "signed_money":
                cents = _cents(column, value)
                fmt = self._increase_fmt if cents > 0 else self._decrease_fmt if cents < 0 else self._zero_fmt
                self._number(r, col, cents, fmt)
                self._seen(col, len(_grouped(cents)))
            else:  # int
                number = _int(column, value)
                self._sheet.write_number(r, col, number, self._int_fmt)
                self._seen(col, len(str(number)))
        self._sheet_rows = r
        self._sheets[-1][1] = r
        self._rows += 1

    def close(self) -> int:
        """Apply widths and the autofilter (allowed after the rows, see module docstring), write the file.

        Returns the number of data rows, header excluded. Calling it again returns the same count.
        """
        if not self._closed:
            self._closed = True
            for sheet, rows in self._sheets:
                for col, width in enumerate(self._widths):
                    sheet.set_column(col, col, max(MIN_WIDTH, min(MAX_WIDTH, width + WIDTH_PADDING)))
                sheet.autofilter(0, 0, rows, len(self.columns) - 1)
            self._workbook.close()
        return self._rows

    def abort(self) -> None:
        """Give up: release XlsxWriter's temp files and remove whatever was written, so no half export is served."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._workbook.close()
        self.path.unlink(missing_ok=True)


class CsvExportWriter:
    """Writes UTF-8 CSV with a BOM (so Excel detects the encoding and CJK text survives) one row at a time."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        columns: list[Column],
        language: Language,
        tz: timezone,
        sheet_kind: ExportKind,
    ) -> None:
        # sheet_kind is unused (CSV has no sheets); it is accepted so both writers are constructed the same way.
        del sheet_kind
        self.path = Path(path)
        self.columns = list(columns)
        self.language = Language(language)
        self.tz = tz
        self._rows = 0
        self._closed = False
        self._file = self.path.open("w", encoding="utf-8-sig", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(_headers(self.columns, self.language, tz))

    def _cell(self, column: Column, value: object) -> str:
        if value is None:
            return ""
        kind = column.kind
        if kind == "text":
            text = str(value)
            # A nickname such as "=HYPERLINK(...)" must not become a live formula when the CSV is opened.
            return "'" + text if text.startswith(_FORMULA_PREFIXES) else text
        if kind == "enum":
            return _enum_label(column, value, self.language)
        if kind == "datetime":
            return _local_naive(column, value, self.tz).strftime(CSV_DATETIME_FORMAT)
        if kind in ("money", "signed_money"):
            return format_money(_cents(column, value))  # "1234.50" / "-3.10": exact, no float anywhere
        return str(_int(column, value))

    def write_row(self, row: Mapping[str, Any]) -> None:
        """Append one data row, rendered as the console would show it."""
        if self._closed:
            raise RuntimeError("writer is closed")
        _check_row(self.columns, row)
        self._writer.writerow([self._cell(c, row[c.key]) for c in self.columns])
        self._rows += 1

    def close(self) -> int:
        """Flush and close the file; returns the number of data rows, header excluded."""
        if not self._closed:
            self._closed = True
            self._file.close()
        return self._rows

    def abort(self) -> None:
        """Give up and remove the partial file."""
        if not self._closed:
            self._closed = True
            self._file.close()
        self.path.unlink(missing_ok=True)


ExportWriter = XlsxExportWriter | CsvExportWriter


def open_writer(
    path: str | os.PathLike[str],
    fmt: ExportFormat,
    columns: list[Column],
    language: Language,
    tz: timezone,
    kind: ExportKind,
) -> ExportWriter:
    """The writer for a format, so callers never branch on it themselves."""
    if ExportFormat(fmt) is ExportFormat.XLSX:
        return XlsxExportWriter(path, columns, language, tz, kind)
    return CsvExportWriter(path, columns, language, tz, kind)


async def write_export(
    path: str | os.PathLike[str],
    fmt: ExportFormat,
    columns: list[Column],
    language: Language,
    tz: timezone,
    kind: ExportKind,
    rows: AsyncIterable[Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    progress: Callable[[int], Awaitable[None]] | None = None,
    progress_every: int = 1000,
) -> int:
    """Stream `rows` into a finished file at `path` and return the data row count.

    `progress(n)` is awaited after every `progress_every` rows with the count so far (the final count is the
    return value). Every `progress_every` rows the loop also yields to the event loop, so a large export from a
    synchronous source does not starve other requests; the final `close()` (XLSX compression can take a while)
    runs in a worker thread for the same reason. If anything fails, the partial file is removed and the error
    propagates, so a failed task never leaves a downloadable half file behind.
    """
    if progress_every < 1:
        raise ValueError("progress_every must be >= 1")
    writer = open_writer(path, fmt, columns, language, tz, kind)
    try:
        count = 0
        if isinstance(rows, AsyncIterable):
            async for row in rows:
                writer.write_row(row)
                count += 1
                if count % progress_every == 0:
                    await _tick(count, progress)
        else:
            for row in rows:
                writer.write_row(row)
                count += 1
                if count % progress_every == 0:
                    await _tick(count, progress)
        return await asyncio.to_thread(writer.close)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(writer.abort))
        raise


async def _tick(count: int, progress: Callable[[int], Awaitable[None]] | None) -> None:
    if progress is not None:
        await progress(count)
    await asyncio.sleep(0)
