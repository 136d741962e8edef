"""Export worker vs. XlsxWriter alone: time and peak memory for 10,000 and 100,000 accounts, XLSX and CSV.

    .venv/bin/python bench/bench_export.py [--sizes 10000,100000] [--keep DIR]

One SQLite database (WAL, as in production) is filled with two partners: one with the small size of accounts, one
with the large size (every tenth account is a sub-account, so the master join is exercised). Each measurement runs
in a fresh subprocess so that memory figures do not leak between them:

* worker: the real `ExportWorker.run_once()` on an END_USERS task (claim, one read transaction streaming the
  joined query, policy derivation, i18n labels, the streaming writer, progress updates, finish);
* direct: the same rows, read and converted to final cell values BEFORE the clock starts, written straight with
  XlsxWriter (constant_memory, same formats) or the csv module: the floor any exporter of that file pays.

Reported per run: wall time, peak Python heap while exporting (tracemalloc, measured in a second run so that
tracing does not slow the timed one; for `direct` the prepared rows are excluded) and RSS growth (VmHWM, reset just
before the export, minus RSS then, from the timed run). The figure of merit is the time ratio worker/direct, and
memory staying flat from 10,000 to 100,000 rows.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def reset_peak_rss() -> None:
    """Reset VmHWM (Linux >= 4.0): a child's ru_maxrss would include its parent's peak from before exec."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


# ---------------------------------------------------------------- data


def build(url: str, sizes: list[int]) -> None:
    from sqlalchemy import create_engine, insert

    from uidhub.migrate import upgrade_sync
    from uidhub.models import Account, Partner, QuotaPool
    from uidhub.models.enums import (
        AccountStatus,
        AccountType,
        CreditControlStatus,
        PartnerKind,
        PaygFreezeStatus,
        PurchaseControl,
        ShutdownPolicy,
    )

    upgrade_sync(url)
    engine = create_engine(url.replace("+aiosqlite", ""))
    base = datetime(2024, 1, 1, tzinfo=UTC)
    next_id = 1
    with engine.begin() as conn:
        for size in sizes:
            partner_id = conn.execute(
                insert(Partner)
                .values(uid=f"P{size}", name=f"Partner {size}", kind=PartnerKind.DISTRIBUTOR, alert_emails=[])
                .returning(Partner.id)
            ).scalar_one()
            pools, accounts = [], []
            for i in range(size):
                ident = next_id + i
                sub = i % 10 == 9
                if not sub:
                    pools.append(
                        {
                            "id": ident,
                            "partner_id": partner_id,
                            "amount_cents": 100_000 + i,
                            "deducted_cents": i % 977,
                            "undeducted_cents": 0,
                            "quota_created": True,
                            "warning_percent": 20 if i % 3 else None,
                            "warning_below": False,
                            "shutdown_policy": list(ShutdownPolicy)[i % 3],
                            "delay_credit_cents": 0,
                            "credit_control_status": CreditControlStatus.NORMAL,
                        }
                    )
                accounts.append(
                    {
                        "id": ident,
                        "partner_id": partner_id,
                        "uid": f"U{size}-{i:07d}",
                        "account_type": list(AccountType)[i % 3],
                        "nickname": f"客户 {i} お客様",
                        "business_manager": "manager" if i % 2 else None,
                        "remarks": "remarks " * (i % 4) or None,
                        "email": None,
                        "status": AccountStatus.NORMAL,
                        "linked_at": base + timedelta(seconds=i),
                        "master_id": ident - 1 if sub else None,
                        "pool_id": ident - 1 if sub else ident,
                        "payg_freeze": PaygFreezeStatus.FROZEN if i % 7 == 0 else PaygFreezeStatus.NORMAL,
                        "purchase_control": PurchaseControl.BANNED if i % 11 == 0 else PurchaseControl.NORMAL,
                    }
                )
            for chunk in range(0, len(pools), 20_000):
                conn.execute(insert(QuotaPool), pools[chunk : chunk + 20_000])
            for chunk in range(0, len(accounts), 20_000):
                conn.execute(insert(Account), accounts[chunk : chunk + 20_000])
            next_id += size
    engine.dispose()


# ---------------------------------------------------------------- one measurement (child process)


async def measure_worker(url: str, size: int, fmt: str, out: Path, trace: bool) -> dict[str, Any]:
    from sqlalchemy import select

    from uidhub.db import Database
    from uidhub.export_worker import ExportWorker
    from uidhub.models import ExportTask, Partner
    from uidhub.models.enums import ExportFormat, ExportKind, ExportStatus, Language
    from uidhub.settings import Settings

    db = Database(url)
    settings = Settings(database_url=url, export_dir=str(out))
    async with db.write() as session:
        partner = await session.scalar(select(Partner).where(Partner.uid == f"P{size}"))
        assert partner is not None
        session.add(
            ExportTask(
                partner_id=partner.id,
                kind=ExportKind.END_USERS,
                format=ExportFormat(fmt),
                language=Language.ZH,
                params={"filter": {}},
                status=ExportStatus.PENDING,
            )
        )
    worker = ExportWorker(db, settings)
    reset_peak_rss()
    rss0 = rss_kb()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    assert await worker.run_once()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] if trace else None
    async with db.read() as session:
        task = (await session.scalars(select(ExportTask).order_by(ExportTask.id.desc()))).first()
        assert task is not None and task.status is ExportStatus.SUCCEEDED, (task.status, task.error)
        rows = task.row_count
    await db.dispose()
    return {"seconds": seconds, "rows": rows, "py_peak": peak, "rss_growth": peak_rss_kb() - rss0}


def prepared_rows(url: str, size: int) -> list[list[Any]]:
    """The rows of the worker's file as final cell values (labels, local naive times, dollars), read up front."""
    import sqlite3

    from uidhub.models.enums import (
        AccountStatus,
        AccountType,
        CreditControlStatus,
        Language,
        PaygFreezeStatus,
        PurchaseControl,
        ShutdownPolicy,
    )
    from uidhub.notifications import i18n

    tz = __import__("uidhub.settings", fromlist=["Settings"]).Settings().tz
    conn = sqlite3.connect(url.split("///", 1)[1])
    sql = """
        SELECT a.uid, a.nickname, a.account_type, a.status, a.business_manager, a.remarks, a.linked_at, m.uid,
               a.payg_freeze, m.payg_freeze, a.purchase_control, m.purchase_control, p.shutdown_policy,
               p.credit_control_status, p.amount_cents, p.amount_cents - p.deducted_cents - p.undeducted_cents,
               p.warning_percent
        FROM accounts a JOIN quota_pools p ON p.id = a.pool_id LEFT JOIN accounts m ON m.id = a.master_id
        JOIN partners pa ON pa.id = a.partner_id WHERE pa.uid = ? ORDER BY a.linked_at DESC, a.uid DESC
    """
    lang = Language.ZH
    rows = []
    for r in conn.execute(sql, (f"P{size}",)):
        linked = datetime.fromisoformat(r[6]).replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None, microsecond=0)
        frozen = PaygFreezeStatus.FROZEN if "FROZEN" in (r[8], r[9]) else PaygFreezeStatus.NORMAL
        banned = PurchaseControl.BANNED if "BANNED" in (r[10], r[11]) else PurchaseControl.NORMAL
        rows.append(
            [
                r[0],
                r[1],
                i18n.label(lang, AccountType(r[2])),
                i18n.label(lang, AccountStatus(r[3])),
                r[4],
                r[5],
                linked,
                r[7],
                i18n.label(lang, frozen),
                i18n.label(lang, banned),
                i18n.label(lang, ShutdownPolicy(r[12])),
                i18n.label(lang, CreditControlStatus(r[13])),
                r[14] / 100,
                r[15] / 100,
                r[16],
            ]
        )
    conn.close()
    return rows


def measure_direct(url: str, size: int, fmt: str, out: Path, trace: bool) -> dict[str, Any]:
    import xlsxwriter

    rows = prepared_rows(url, size)
    headers = [f"h{i}" for i in range(15)]
    path = out / f"direct-{size}.{fmt.lower()}"
    out.mkdir(parents=True, exist_ok=True)
    reset_peak_rss()
    rss0 = rss_kb()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    if fmt == "XLSX":
        book = xlsxwriter.Workbook(str(path), {"constant_memory": True})
        sheet = book.add_worksheet("bench")
        money = book.add_format({"num_format": "#,##0.00"})
        when = book.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        sheet.freeze_panes(1, 0)
        sheet.write_row(0, 0, headers)
        for n, r in enumerate(rows, start=1):
            for c in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11):
                if r[c] is not None:
                    sheet.write_string(n, c, r[c])
            sheet.write_datetime(n, 6, r[6], when)
            sheet.write_number(n, 12, r[12], money)
            sheet.write_number(n, 13, r[13], money)
            if r[14] is not None:
                sheet.write_number(n, 14, r[14])
        sheet.autofilter(0, 0, len(rows), 14)
        book.close()
    else:
        with path.open("w", encoding="utf-8-sig", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(headers)
            for r in rows:
                writer.writerow(
                    [
                        ""
                        if v is None
                        else v.strftime("%Y-%m-%d %H:%M:%S")
                        if isinstance(v, datetime)
                        else f"{v:.2f}"
                        if isinstance(v, float)
                        else v
                        for v in r
                    ]
                )
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] if trace else None
    return {"seconds": seconds, "rows": len(rows), "py_peak": peak, "rss_growth": peak_rss_kb() - rss0}


def child(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.mode == "worker":
        result = asyncio.run(measure_worker(args.url, args.size, args.fmt, out, args.trace))
    else:
        result = measure_direct(args.url, args.size, args.fmt, out, args.trace)
    print(json.dumps(result))


def run_child(url: str, mode: str, size: int, fmt: str, out: Path, trace: bool) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--url",
        url,
        "--size",
        str(size),
        "--fmt",
        fmt,
        "--out",
        str(out),
    ]
    if trace:
        cmd.append("--trace")
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(value: float | None, kb: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.1f}" if kb else f"{value / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--keep", help="keep the database and files in this directory")
    parser.add_argument("--child", choices=["worker", "direct"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fmt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite+aiosqlite:///{work / 'bench.db'}"
    started = time.perf_counter()
    build(url, sizes)
    print(f"built {sum(sizes):,} accounts in {time.perf_counter() - started:.1f}s ({work})")
    print(
        f"{'fmt':4} {'rows':>8} | {'worker s':>8} {'direct s':>8} {'ratio':>6} | "
        f"{'worker heap MiB':>15} {'direct heap MiB':>15} | {'worker RSS+ MiB':>15} {'direct RSS+ MiB':>15}"
    )
    for fmt in ("XLSX", "CSV"):
        for size in sizes:
            w = run_child(url, "worker", size, fmt, work / "out", False)
            d = run_child(url, "direct", size, fmt, work / "out", False)
            wt = run_child(url, "worker", size, fmt, work / "out", True)
            dt = run_child(url, "direct", size, fmt, work / "out", True)
            assert w["rows"] == d["rows"] == size, (w, d)
            print(
                f"{fmt:4} {size:>8,} | {w['seconds']:8.2f} {d['seconds']:8.2f} {w['seconds'] / d['seconds']:6.2f} | "
                f"{mib(wt['py_peak']):>15} {mib(dt['py_peak']):>15} | "
                f"{mib(w['rss_growth'], kb=True):>15} {mib(d['rss_growth'], kb=True):>15}",
                flush=True,
            )


if __name__ == "__main__":
    main()
