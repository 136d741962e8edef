"""The email outbox against a real SMTP server (aiosmtpd on loopback) and a real database.

Why real: the guarantees under test (exactly one delivery per row, retries
with backoff, FAILED after the last try, nothing sent without SMTP, disjoint
claims with several senders) live in the interplay of SMTP answers, leases
and transactions, which mocks would assume instead of exercise.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url

from tests.support.net import free_port
from uidhub.db import Database
from uidhub.models import Base, EmailNotification, Partner
from uidhub.models.enums import AlertKind, AlertState, NotificationStatus, PartnerKind
from uidhub.notifications.bus import Bus
from uidhub.notifications.emails import (
    message_id_for,
    queue_email,
    render_alert_email,
    sender_domain,
)
from uidhub.notifications.outbox import OutboxSender
from uidhub.settings import Settings

TZ8 = timezone(timedelta(hours=8))
SENDER = "alerts@uidhub.example"
# 2026-11-27 01:30 UTC is 09:30 at +08:00.
OCCURRED = datetime(2026, 11, 27, 1, 30, tzinfo=UTC)


# -- SMTP server -------------------------------------------------------------


class RecordingHandler:
    """Keeps every accepted envelope; answers 451 to the first `fail_first` DATA commands."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.data_calls = 0
        self.envelopes: list[Any] = []
        #: The aiosmtpd session of each DATA (one per connection; kept, so ids stay unique).
        self.sessions: list[Any] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.data_calls += 1
            self.sessions.append(session)
            if self.data_calls <= self.fail_first:
                return "451 4.3.0 try again"
            self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def connections(self) -> int:
        with self._lock:
            return len({id(session) for session in self.sessions})

    def messages(self) -> list[EmailMessage]:
        with self._lock:
            envelopes = list(self.envelopes)
        return [email.message_from_bytes(env.content, policy=policy.default) for env in envelopes]  # type: ignore[misc]

    def message_ids(self) -> list[str]:
        return [str(msg["Message-ID"]) for msg in self.messages()]


class UnfriendlyHandler(RecordingHandler):
    """A relay that will not carry a second message on a connection: 421 to NOOP, or it hangs up after DATA."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        return "421 4.7.0 too many messages on this connection" if self.mode == "421" else "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        if self.mode == "hangup":
            asyncio.get_running_loop().call_soon(server.transport.close)
        return answer


class SmtpServer:
    """An aiosmtpd server on a fixed loopback port that a test may start late (server down first)."""

    def __init__(self, handler: RecordingHandler) -> None:
        self.handler = handler
        self.port = free_port()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(RecordingHandler())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smtp_down() -> Iterator[SmtpServer]:
    server = SmtpServer(RecordingHandler())
    yield server
    server.stop()


def make_settings(port: int | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1" if port is not None else None,
        "smtp_port": port or 25,
        "smtp_username": None,
        "smtp_password": None,
        "smtp_starttls": False,
        "smtp_sender": SENDER,
        "smtp_backoff_seconds": 0.05,
        "smtp_timeout_seconds": 5.0,
        "smtp_max_attempts": 6,
        "sender_poll_seconds": 0.05,
        "display_timezone": "+08:00",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# -- database ----------------------------------------------------------------


async def create_schema(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


async def seed_partner(db: Database) -> int:
    async with db.write() as session:
        partner = Partner(
            uid=f"P-{uuid.uuid4().hex[:8]}",
            name="Partner",
            kind=PartnerKind.DISTRIBUTOR,
            alert_emails=["ops@partner.example"],
        )
        session.add(partner)
        await session.flush()
        return partner.id


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    await create_schema(database)
    yield database
    await database.dispose()


def build_notification(partner_id: int, n: int = 0, nickname: str | None = "Shop <1>") -> EmailNotification:
    return queue_email(
        partner_id=partner_id,
        account_id=None,
        recipients=["ops@partner.example", "  OPS@partner.example ", "boss@partner.example"],
        kind=AlertKind.QUOTA_WARNING,
        state=AlertState.BREACHED,
        account_uid=f"1{n:015d}",
        account_nickname=nickname,
        available_cents=12_345,
        threshold_cents=200_000,
        occurred_at=OCCURRED,
        tz=TZ8,
        console_url="https://console.example/partner",
        sender=SENDER,
    )


async def add_notifications(db: Database, count: int = 1) -> list[int]:
    partner_id = await seed_partner(db)
    rows = [build_notification(partner_id, n) for n in range(count)]
    async with db.write() as session:
        session.add_all(rows)
        await session.flush()
        return [row.id for row in rows]


async def load(db: Database, row_id: int) -> EmailNotification:
    async with db.read() as session:
        row = await session.get(EmailNotification, row_id)
        assert row is not None
        return row


async def run_until(
    sender: OutboxSender, db: Database, row_id: int, status: NotificationStatus, seconds: float
) -> None:
    """Call run_once until the row reaches `status`, as the loop would (backoff needs real time to pass)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while (await load(db, row_id)).status != status:
        assert asyncio.get_running_loop().time() < deadline, f"row {row_id} never became {status}"
        await sender.run_once()
        await asyncio.sleep(0.02)


# -- rendering ---------------------------------------------------------------


def test_render_quota_warning_names_account_money_time_and_action() -> None:
    rendered = render_alert_email(
        kind=AlertKind.QUOTA_WARNING,
        state=AlertState.BREACHED,
        account_uid="1234567890123456",
        account_nickname="Acme shop",
        available_cents=125_000,
        threshold_cents=200_050,
        occurred_at=OCCURRED,
        tz=TZ8,
        console_url="https://console.example/partner",
    )
    for part in (rendered.subject, rendered.text, rendered.html):
        assert "1234567890123456" in part
        assert "Acme shop" in part
        assert "1250.00 USD" in part
        assert "2000.50 USD" in part
    for part in (rendered.text, rendered.html):
        assert "2026-11-27 09:30:00 UTC+08:00" in part
        assert "credit line" in part
        assert "contact the customer" in part
        assert "https://console.example/partner" in part
    assert "\n" not in rendered.subject


def test_render_credit_alert_tells_end_user_to_top_up() -> None:
    rendered = render_alert_email(
        kind=AlertKind.CREDIT_ALERT,
        state=AlertState.BREACHED,
        account_uid="U-1",
        account_nickname=None,
        available_cents=-310,
        threshold_cents=5_000,
        occurred_at=OCCURRED,
        tz=timezone(-timedelta(hours=3, minutes=30)),
        console_url="https://console.example",
    )
    assert "U-1" in rendered.subject
    assert "-3.10 USD" in rendered.text
    assert "50.00 USD" in rendered.text
    assert "2026-11-26 22:00:00 UTC-03:30" in rendered.text
    assert "Top up or repay" in rendered.text
    assert "Contact your partner" in rendered.text


def test_render_escapes_nickname_in_html_and_keeps_subject_on_one_line() -> None:
    nickname = "<script>alert('x')</script>\r\nBcc: victim@example.com"
    rendered = render_alert_email(
        kind=AlertKind.QUOTA_WARNING,
        state=AlertState.BREACHED,
        account_uid="U-2",
        account_nickname=nickname,
        available_cents=0,
        threshold_cents=100,
        occurred_at=OCCURRED,
        tz=TZ8,
        console_url='https://console.example/?a=1&b="2"',
    )
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in rendered.html
    assert 'href="https://console.example/?a=1&amp;b=&quot;2&quot;"' in rendered.html
    assert "<script>alert('x')</script>" in rendered.text  # plain text is shown as given
    assert "\r" not in rendered.subject and "\n" not in rendered.subject


def test_message_ids_are_stable_and_unique() -> None:
    assert message_id_for(42, "uidhub.example") == "<uidhub-notification-42@uidhub.example>"
    assert message_id_for(42, "uidhub.example") == message_id_for(42, "uidhub.example")
    assert sender_domain("Alerts <alerts@mail.example.com>") == "mail.example.com"
    assert sender_domain("no-domain") == "uidhub.localhost"
    first, second = build_notification(1), build_notification(1)
    assert first.message_id != second.message_id
    assert first.message_id.startswith("<uidhub-") and first.message_id.endswith("@uidhub.example>")
    assert first.recipients == ["ops@partner.example", "boss@partner.example"]
    assert first.status == NotificationStatus.PENDING and first.attempts == 0
    with pytest.raises(ValueError):
        queue_email(
            partner_id=1,
            account_id=None,
            recipients=[" ", ""],
            kind=AlertKind.CREDIT_ALERT,
            state=AlertState.BREACHED,
            account_uid="U",
            account_nickname=None,
            available_cents=0,
            threshold_cents=1,
            occurred_at=OCCURRED,
            tz=TZ8,
            console_url="x",
            sender=SENDER,
        )


# -- sending -----------------------------------------------------------------


async def test_one_pending_notification_is_sent_once(db: Database, smtp: SmtpServer) -> None:
    [row_id] = await add_notifications(db)
    sender = OutboxSender(db, make_settings(smtp.port))
    assert await sender.run_once() == 1
    assert await sender.run_once() == 0

    row = await load(db, row_id)
    assert row.status == NotificationStatus.SENT
    assert row.attempts == 1
    assert row.sent_at is not None and row.claimed_until is None and row.last_error is None

    [envelope] = smtp.handler.envelopes
    assert envelope.mail_from == SENDER
    assert sorted(envelope.rcpt_tos) == ["boss@partner.example", "ops@partner.example"]
    [msg] = smtp.handler.messages()
    assert msg["Message-ID"] == row.message_id
    assert msg["Subject"] == row.subject
    assert msg["From"] == SENDER
    assert msg["Date"] is not None
    assert msg.is_multipart() and msg.get_content_type() == "multipart/alternative"
    plain, html_part = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html_part is not None
    assert "2026-11-27 09:30:00 UTC+08:00" in plain.get_content()
    assert "Shop &lt;1&gt;" in html_part.get_content()


async def test_temporary_failures_are_retried_and_delivered_exactly_once(db: Database, smtp: SmtpServer) -> None:
    smtp.handler.fail_first = 2
    [row_id] = await add_notifications(db)
    sender = OutboxSender(db, make_settings(smtp.port, smtp_backoff_seconds=0.05))

    assert await sender.run_once() == 1
    row = await load(db, row_id)
    assert row.status == NotificationStatus.PENDING and row.attempts == 1
    assert row.last_error is not None and "451" in row.last_error
    assert row.next_attempt_at > datetime.now(UTC) - timedelta(seconds=1)
    assert await sender.run_once() == 0  # backoff: not due yet

    await run_until(sender, db, row_id, NotificationStatus.SENT, seconds=10)
    row = await load(db, row_id)
    assert row.attempts == 3
    assert row.last_error is None
    assert smtp.handler.data_calls == 3
    assert smtp.handler.message_ids() == [row.message_id]


async def test_a_pass_sends_its_emails_over_one_connection(db: Database, smtp: SmtpServer) -> None:
    ids = await add_notifications(db, count=5)
    sender = OutboxSender(db, make_settings(smtp.port))
    assert await sender.run_once() == 5
    assert [(await load(db, row_id)).status for row_id in ids] == [NotificationStatus.SENT] * 5
    assert len(smtp.handler.envelopes) == 5
    assert smtp.handler.connections() == 1


@pytest.mark.parametrize("mode", ["421", "hangup"])
async def test_a_connection_the_server_will_not_reuse_is_replaced_without_costing_an_attempt(
    db: Database, mode: str
) -> None:
    server = SmtpServer(UnfriendlyHandler(mode))
    server.start()
    try:
        ids = await add_notifications(db, count=3)
        sender = OutboxSender(db, make_settings(server.port))
        assert await sender.run_once() == 3
        rows = [await load(db, row_id) for row_id in ids]
        assert [(row.status, row.attempts, row.last_error) for row in rows] == [(NotificationStatus.SENT, 1, None)] * 3
        assert sorted(server.handler.message_ids()) == sorted(row.message_id for row in rows)
        assert server.handler.connections() == 3
    finally:
        server.stop()


async def test_after_a_failed_send_the_next_email_of_the_pass_gets_a_fresh_connection(db: Database) -> None:
    server = SmtpServer(RecordingHandler(fail_first=1))
    server.start()
    try:
        first, second = await add_notifications(db, count=2)
        sender = OutboxSender(db, make_settings(server.port, smtp_backoff_seconds=60))
        assert await sender.run_once() == 2
        failed, sent = await load(db, first), await load(db, second)
        assert failed.status == NotificationStatus.PENDING and failed.attempts == 1 and "451" in failed.last_error
        assert sent.status == NotificationStatus.SENT and sent.attempts == 1
        assert server.handler.connections() == 2  # the failed conversation's connection was not reused
    finally:
        server.stop()


async def test_server_down_keeps_pending_then_delivers(db: Database, smtp_down: SmtpServer) -> None:
    [row_id] = await add_notifications(db)
    sender = OutboxSender(db, make_settings(smtp_down.port))

    assert await sender.run_once() == 1
    row = await load(db, row_id)
    assert row.status == NotificationStatus.PENDING
    assert row.attempts == 1
    assert row.last_error
    assert row.claimed_until is None

    smtp_down.start()
    await run_until(sender, db, row_id, NotificationStatus.SENT, seconds=10)
    row = await load(db, row_id)
    assert row.attempts == 2
    assert smtp_down.handler.message_ids() == [row.message_id]


async def test_last_attempt_fails_the_notification(db: Database, smtp_down: SmtpServer) -> None:
    [row_id] = await add_notifications(db)
    sender = OutboxSender(db, make_settings(smtp_down.port, smtp_max_attempts=3))

    await run_until(sender, db, row_id, NotificationStatus.FAILED, seconds=10)
    row = await load(db, row_id)
    assert row.attempts == 3
    assert row.last_error
    assert row.sent_at is None and row.claimed_until is None
    assert await sender.run_once() == 0  # FAILED is final
    assert (await load(db, row_id)).attempts == 3


async def test_without_smtp_notifications_stay_pending(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    [row_id] = await add_notifications(db)
    sender = OutboxSender(db, make_settings(None))
    with caplog.at_level(logging.INFO, logger="uidhub.notifications.outbox"):
        assert await sender.run_once() == 0
        assert await sender.run_once() == 0
    row = await load(db, row_id)
    assert row.status == NotificationStatus.PENDING
    assert row.attempts == 0 and row.claimed_until is None
    messages = [record.getMessage() for record in caplog.records]
    assert sum("SMTP is not configured" in message for message in messages) == 1
    assert sum(f"notification {row_id} kept PENDING" in message for message in messages) == 1


async def test_live_lease_is_not_taken_and_stale_sender_cannot_overwrite(db: Database, smtp: SmtpServer) -> None:
    [row_id] = await add_notifications(db)
    settings = make_settings(smtp.port)
    first, second = OutboxSender(db, settings), OutboxSender(db, settings)

    claimed, lease = await first._claim()
    assert [email.id for email in claimed] == [row_id] and lease is not None
    assert await second.run_once() == 0  # leased by `first`
    assert smtp.handler.envelopes == []

    # The lease runs out (a crashed sender): another sender takes the row over...
    async with db.write() as session:
        await session.execute(
            update(EmailNotification)
            .where(EmailNotification.id == row_id)
            .values(claimed_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert await second.run_once() == 1
    row = await load(db, row_id)
    assert row.status == NotificationStatus.SENT and row.attempts == 1
    # ...and the stale sender can no longer change the row.
    from uidhub.notifications.outbox import SendOutcome

    await first._record(claimed[0], lease, SendOutcome(sent=False, error="stale"))
    row = await load(db, row_id)
    assert row.status == NotificationStatus.SENT and row.attempts == 1 and row.last_error is None


async def test_run_forever_wakes_on_bus_and_stops_cleanly(db: Database, smtp: SmtpServer) -> None:
    bus = Bus()
    # A long poll: only the bus wake-up can make the delivery quick.
    sender = OutboxSender(db, make_settings(smtp.port, sender_poll_seconds=30), bus)
    task = sender.start()
    assert sender.start() is task
    await asyncio.sleep(0.2)  # first pass done, now waiting on the bus
    [row_id] = await add_notifications(db)
    await bus.publish("outbox")
    deadline = asyncio.get_running_loop().time() + 5
    while (await load(db, row_id)).status != NotificationStatus.SENT:
        assert asyncio.get_running_loop().time() < deadline, "the bus wake-up did not deliver"
        await asyncio.sleep(0.02)
    await sender.stop()
    assert task.done()
    assert len(smtp.handler.envelopes) == 1


async def test_a_wake_up_during_a_pass_is_not_lost(db: Database, smtp: SmtpServer) -> None:
    """An email committed while a pass is running (after its claim) is sent at once, not a poll interval later."""
    bus = Bus()
    sender = OutboxSender(db, make_settings(smtp.port, sender_poll_seconds=30), bus)
    in_pass, resume = asyncio.Event(), asyncio.Event()
    original = sender.run_once

    async def first_pass_waits() -> int:
        processed = await original()
        if not in_pass.is_set():
            in_pass.set()
            await resume.wait()
        return processed

    sender.run_once = first_pass_waits  # type: ignore[method-assign]
    task = sender.start()
    await asyncio.wait_for(in_pass.wait(), 5)
    [row_id] = await add_notifications(db)
    await bus.publish("outbox")  # the sender is still in its pass, not yet waiting
    resume.set()
    deadline = asyncio.get_running_loop().time() + 5
    while (await load(db, row_id)).status != NotificationStatus.SENT:
        assert asyncio.get_running_loop().time() < deadline, "the wake-up sent during the pass was lost"
        await asyncio.sleep(0.02)
    await sender.stop()
    assert task.done()


# -- several senders ---------------------------------------------------------


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    base_url = os.environ.get("UIDHUB_TEST_POSTGRES_URL")
    if not base_url:
        pytest.skip("UIDHUB_TEST_POSTGRES_URL is not set")
    url = make_url(base_url)
    name = f"uidhub_outbox_{uuid.uuid4().hex[:12]}"
    admin_dsn = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def backend_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/shared.db"
        return
    async with postgres_database() as url:
        yield url


class CountingSender(OutboxSender):
    """Counts what this sender processed, to show that both senders really competed for rows."""

    processed = 0

    async def run_once(self) -> int:
        count = await super().run_once()
        self.processed += count
        return count


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_senders_deliver_every_message_exactly_once(backend: str, tmp_path: Path, smtp: SmtpServer) -> None:
    async with backend_url(backend, tmp_path) as url:
        setup = Database(url)
        db_a, db_b = Database(url), Database(url)
        try:
            await create_schema(setup)
            ids = await add_notifications(setup, 200)
            settings = make_settings(smtp.port)
            senders = [CountingSender(db_a, settings, batch_size=7), CountingSender(db_b, settings, batch_size=7)]
            for sender in senders:
                sender.start()
            try:
                deadline = asyncio.get_running_loop().time() + 90
                while True:
                    async with setup.read() as session:
                        sent = await session.scalar(
                            select(func.count())
                            .select_from(EmailNotification)
                            .where(EmailNotification.status == NotificationStatus.SENT)
                        )
                    if sent == len(ids):
                        break
                    assert asyncio.get_running_loop().time() < deadline, f"only {sent} of {len(ids)} sent"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.3)  # let any (wrong) duplicate arrive before counting
            finally:
                await asyncio.gather(*(sender.stop() for sender in senders))

            async with setup.read() as session:
                rows = (await session.scalars(select(EmailNotification))).all()
            assert {row.status for row in rows} == {NotificationStatus.SENT}
            assert {row.attempts for row in rows} == {1}
            received = Counter(smtp.handler.message_ids())
            assert set(received) == {row.message_id for row in rows}
            assert max(received.values()) == 1
            assert len(smtp.handler.envelopes) == len(ids)
            assert sum(sender.processed for sender in senders) == len(ids)
            assert all(sender.processed > 0 for sender in senders)
        finally:
            for database in (setup, db_a, db_b):
                await database.dispose()


# -- a slow or silent server after DATA (issue 17, item 6) -------------------------------


class SlowAfterDataHandler(RecordingHandler):
    """Stores the message, then answers the end of DATA only after `delay` seconds (None: not until released)."""

    def __init__(self, delay: float | None) -> None:
        super().__init__()
        self.delay = delay
        self.released = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        if self.delay is not None:
            await asyncio.sleep(self.delay)
        else:
            # The client gives up first; the test's teardown releases us (a minute at most).
            await asyncio.to_thread(self.released.wait, 60)
        return answer


@pytest.fixture
def slow_smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(SlowAfterDataHandler(delay=1.5))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def silent_smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(SlowAfterDataHandler(delay=None))
    server.start()
    try:
        yield server
    finally:
        assert isinstance(server.handler, SlowAfterDataHandler)
        server.handler.released.set()
        server.stop()


async def test_a_slow_final_reply_after_data_is_waited_for_and_the_email_arrives_once(
    db: Database, slow_smtp: SmtpServer
) -> None:
    """Every command times out after 0.5 s, but the reply to the end of the message is waited for (RFC 5321)."""
    [row_id] = await add_notifications(db)
    sender = OutboxSender(db, make_settings(slow_smtp.port, smtp_timeout_seconds=0.5, smtp_data_timeout_seconds=30))

    assert await sender.run_once() == 1
    row = await load(db, row_id)
    assert row.status == NotificationStatus.SENT and row.attempts == 1 and row.maybe_sent_at is None
    assert await sender.run_once() == 0
    assert slow_smtp.handler.message_ids() == [row.message_id]


async def test_no_final_reply_after_data_is_retried_once_with_the_same_message_id(
    db: Database, silent_smtp: SmtpServer
) -> None:
    """The server stores the message and never answers: maybe sent, so one retry, then FAILED for good."""
    [row_id] = await add_notifications(db)
    settings = make_settings(
        silent_smtp.port,
        smtp_timeout_seconds=0.5,
        smtp_data_timeout_seconds=1.0,
        smtp_backoff_seconds=0.05,
        smtp_max_attempts=6,
    )
    sender = OutboxSender(db, settings)

    assert await sender.run_once() == 1
    row = await load(db, row_id)
    assert row.status == NotificationStatus.PENDING and row.attempts == 1
    assert row.maybe_sent_at is not None
    assert row.last_error is not None and "may have been delivered" in row.last_error

    await run_until(sender, db, row_id, NotificationStatus.FAILED, seconds=20)
    row = await load(db, row_id)
    assert row.attempts == 2
    assert row.last_error is not None and row.last_error.startswith("delivery uncertain")
    # Passes after the backoff would have made it due again send nothing more.
    await asyncio.sleep(0.3)
    assert await sender.run_once() == 0
    assert silent_smtp.handler.message_ids() == [row.message_id, row.message_id]
