"""Benchmark: emails per second the outbox sender sustains against a real SMTP server (aiosmtpd on loopback).

Queues N alert emails in a fresh database, then, in the same run:

- outbox: `OutboxSender.run_once()` until every row is SENT (claim under a
  lease, one SMTP connection per pass with a NOOP check before each reuse,
  the outcome recorded per row);
- two senders: two OutboxSender instances over separate Database objects
  draining the same outbox concurrently (the multi-worker case);
- baselines, with no database at all: the same messages through one
  `aiosmtplib.SMTP` connection in a plain loop (the fair one: the outbox
  also keeps its connection), and through `aiosmtplib.send` (a connection
  per email, what the outbox did before).

The ratio outbox/baseline is the figure.

    .venv/bin/python bench/bench_outbox.py [--emails 500] [--database-url URL-of-a-scratch-database]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiosmtplib
from aiosmtpd.controller import Controller
from sqlalchemy import delete, func, select

from tests.support.net import free_port
from uidhub.db import Database
from uidhub.models import Base, EmailNotification, Partner
from uidhub.models.enums import AlertKind, AlertState, NotificationStatus, PartnerKind
from uidhub.notifications.emails import queue_email
from uidhub.notifications.outbox import ClaimedEmail, OutboxSender, build_message
from uidhub.settings import Settings

SENDER = "alerts@uidhub.localhost"


class CountingHandler:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.count += 1
        return "250 OK"


async def queue(db: Database, settings: Settings, n: int) -> None:
    async with db.write() as session:
        await session.execute(delete(EmailNotification))
        partner = await session.scalar(select(Partner).where(Partner.uid == "BENCH"))
        if partner is None:
            partner = Partner(uid="BENCH", name="Bench", kind=PartnerKind.DISTRIBUTOR, alert_emails=["ops@example.com"])
            session.add(partner)
            await session.flush()
        now = datetime.now(UTC)
        for i in range(n):
            session.add(
                queue_email(
                    partner_id=partner.id,
                    account_id=None,
                    recipients=[f"ops{i % 7}@example.com"],
                    kind=AlertKind.QUOTA_WARNING,
                    state=AlertState.BREACHED,
                    account_uid=f"1{i:015d}",
                    account_nickname=f"客户 {i}",
                    available_cents=12_345,
                    threshold_cents=50_000,
                    occurred_at=now,
                    tz=settings.tz,
                    console_url="http://127.0.0.1:8000",
                    sender=SENDER,
                )
            )


async def pending(db: Database) -> int:
    async with db.read() as session:
        return int(
            await session.scalar(select(func.count()).where(EmailNotification.status != NotificationStatus.SENT)) or 0
        )


async def drain(sender: OutboxSender) -> None:
    while await sender.run_once():
        pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", type=int, default=500)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    handler = CountingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    tmp = tempfile.TemporaryDirectory()
    url = args.database_url or f"sqlite+aiosqlite:///{tmp.name}/bench.db"
    settings = Settings(
        database_url=url,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_sender=SENDER,
        smtp_username=None,
        smtp_password=None,
        smtp_starttls=False,
    )
    db = Database(url)
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        # outbox, one sender
        await queue(db, settings, args.emails)
        start = time.perf_counter()
        await drain(OutboxSender(db, settings, batch_size=50))
        one = time.perf_counter() - start
        assert await pending(db) == 0

        # outbox, two senders over separate engines
        await queue(db, settings, args.emails)
        other = Database(url)
        start = time.perf_counter()
        await asyncio.gather(
            drain(OutboxSender(db, settings, batch_size=50)), drain(OutboxSender(other, settings, batch_size=50))
        )
        two = time.perf_counter() - start
        await other.dispose()
        assert await pending(db) == 0

        # baseline: the same messages straight through aiosmtplib
        async with db.read() as session:
            rows = (await session.scalars(select(EmailNotification).order_by(EmailNotification.id))).all()
        messages = [
            build_message(
                ClaimedEmail(
                    id=r.id,
                    recipients=list(r.recipients),
                    subject=r.subject,
                    body_text=r.body_text,
                    body_html=r.body_html,
                    message_id=r.message_id,
                    attempts=0,
                    created_at=r.created_at,
                ),
                SENDER,
            )
            for r in rows
        ]
        start = time.perf_counter()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
            for message in messages:
                await client.send_message(message, sender=SENDER, recipients=message["To"].split(", "))
        base = time.perf_counter() - start

        start = time.perf_counter()
        for message in messages:
            await aiosmtplib.send(
                message,
                sender=SENDER,
                recipients=message["To"].split(", "),
                hostname="127.0.0.1",
                port=port,
                timeout=10,
            )
        per_email = time.perf_counter() - start
    finally:
        await db.dispose()
        controller.stop()
        tmp.cleanup()

    n = args.emails
    print(f"database {db.dialect}, {n} emails, aiosmtpd on 127.0.0.1:{port} (received {handler.count})")
    print(f"  baseline, one connection   {n / base:8.1f} emails/s")
    print(f"  baseline, connection/email {n / per_email:8.1f} emails/s")
    print(f"  outbox, one sender         {n / one:8.1f} emails/s   ratio {base / one:.2f}")
    print(f"  outbox, two senders        {n / two:8.1f} emails/s   ratio {base / two:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
