"""Prometheus metrics (`UIDHUB_METRICS=true`): GET /metrics, or a port of its own (`UIDHUB_METRICS_PORT`).

Off by default, and off means off: no extension in the schema, no
middleware, no event listener; the hooks called from the outbox, the export
worker and the live feed return at once on a `None` check.

Counters, histograms and live gauges are per process. Under
`uidhub serve --workers N` prometheus_client's multiprocess mode
(`PROMETHEUS_MULTIPROC_DIR`, prepared by the CLI before the workers start)
keeps them in files that any worker's scrape adds up, so a scrape sees the
whole server whichever worker answers it. Gauges that describe the database
(emails by status, the oldest pending email, export tasks by status) are read
from it at scrape time instead: they are facts about shared rows, not about a
process, and must not be summed over workers.

Label sets are bounded: operation types are four, error codes are our own
upper-case codes (anything else is OTHER), and operation names are the first
`MAX_OPERATION_NAMES` distinct names a process sees; later ones, and names
that do not look like GraphQL names, count as "other"; operations without a
name count as "anonymous".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from graphql import OperationDefinitionNode
from sqlalchemy import event, func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from uidhub.db import Database
from uidhub.models.enums import ExportStatus, NotificationStatus, WebhookDeliveryStatus
from uidhub.models.tables import EmailNotification, ExportTask, WebhookDelivery
from uidhub.notifications import signals

if TYPE_CHECKING:
    from prometheus_client.registry import Collector, CollectorRegistry
    from sqlalchemy.ext.asyncio import AsyncEngine

    from uidhub.settings import Settings

log = logging.getLogger(__name__)

MAX_OPERATION_NAMES = 50
POOL_SAMPLE_SECONDS = 5.0
#: A BEGIN IMMEDIATE that took longer than this waited for another writer's lock.
SQLITE_BUSY_THRESHOLD = 0.005
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Set by `uidhub serve` when it serves the metrics port itself, so workers do not try to bind it too.
PORT_OWNER_ENV = "UIDHUB_METRICS_PORT_OWNER"

_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,63}$")
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,47}$")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DELAY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_EXPORT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The process's metric objects, created once (prometheus_client registers them globally)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "uidhub_graphql_requests",
            "GraphQL operations executed over HTTP, by operation type and name.",
            ["type", "operation"],
        )
        self.duration = Histogram(
            "uidhub_graphql_request_duration_seconds",
            "Time from parsing to result of a GraphQL operation over HTTP.",
            ["type", "operation"],
            buckets=_LATENCY_BUCKETS,
        )
        self.errors = Counter(
            "uidhub_graphql_errors", "GraphQL errors in results (HTTP and websocket), by extensions.code.", ["code"]
        )
        self.http = Counter(
            "uidhub_http_responses",
            "HTTP responses by route and status (rejections before GraphQL included).",
            ["route", "status"],
        )
        self.ws_connections = Gauge(
            "uidhub_websocket_connections", "Open websocket connections.", multiprocess_mode="livesum"
        )
        self.subscriptions = Gauge(
            "uidhub_active_subscriptions", "Running GraphQL subscriptions.", multiprocess_mode="livesum"
        )
        self.events = Counter("uidhub_subscription_events", "Subscription results sent to clients.")
        self.event_delay = Histogram(
            "uidhub_subscription_event_delay_seconds",
            "From an event's commit (its stored timestamp) to its hand-over to the subscription.",
            buckets=_DELAY_BUCKETS,
        )
        self.email_attempts = Counter("uidhub_email_send_attempts", "SMTP send attempts by the outbox.")
        self.email_failures = Counter(
            "uidhub_email_send_failures", "Failed SMTP send attempts (retried or final).", ["final"]
        )
        self.emails_sent = Counter("uidhub_emails_sent", "Emails accepted by the SMTP server.")
        self.webhook_attempts = Counter(
            "uidhub_webhook_attempts",
            "Webhook POSTs by outcome (delivered: a 2xx; failed: retried or given up).",
            ["outcome"],
        )
        self.webhooks_given_up = Counter("uidhub_webhook_deliveries_given_up", "Webhook deliveries that ended FAILED.")
        self.exports = Counter("uidhub_export_tasks_finished", "Export tasks finished, by status.", ["status"])
        self.export_duration = Histogram(
            "uidhub_export_duration_seconds",
            "Export task run time, from start to finish.",
            ["status"],
            buckets=_EXPORT_BUCKETS,
        )
        self.pool = Gauge(
            "uidhub_db_pool_connections",
            "Database pool connections by state (in_use, idle).",
            ["state"],
            multiprocess_mode="livesum",
        )
        self.sqlite_busy = Counter(
            "uidhub_sqlite_busy_waits",
            f"SQLite write transactions that waited over {SQLITE_BUSY_THRESHOLD}s for the lock.",
        )
        self.sqlite_lock_wait = Histogram(
            "uidhub_sqlite_write_lock_wait_seconds",
            "Time a SQLite BEGIN IMMEDIATE waited for the write lock.",
            buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0),
        )
        self._names: set[str] = set()

    def operation_label(self, name: str | None) -> str:
        if not name:
            return "anonymous"
        if name in self._names:
            return name
        if len(self._names) >= MAX_OPERATION_NAMES or not _NAME.match(name):
            return "other"
        self._names.add(name)
        return name


_metrics: Metrics | None = None


def enable() -> Metrics:
    """Create the metric objects (once per process) and switch the hooks on."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
        # Background work reports through notifications.signals, which knows nothing of Prometheus.
        signals.LISTENERS.email_attempted = email_attempted
        signals.LISTENERS.export_finished = export_finished
        signals.LISTENERS.event_handed_over = event_handed_over
        signals.LISTENERS.webhook_attempted = webhook_attempted
    return _metrics


def current() -> Metrics | None:
    return _metrics


# ---------------------------------------------------------------- hooks (no-ops while off)


def email_attempted(sent: bool, final: bool) -> None:
    """One SMTP attempt recorded by the outbox; `final` marks a failure that ended in FAILED."""
    m = _metrics
    if m is None:
        return
    m.email_attempts.inc()
    if sent:
        m.emails_sent.inc()
    else:
        m.email_failures.labels(final="true" if final else "false").inc()


def webhook_attempted(delivered: bool, gave_up: bool) -> None:
    """One webhook POST recorded by the sender."""
    m = _metrics
    if m is None:
        return
    m.webhook_attempts.labels(outcome="delivered" if delivered else "failed").inc()
    if gave_up:
        m.webhooks_given_up.inc()


def export_finished(status: str, started_at: datetime | None) -> None:
    m = _metrics
    if m is None:
        return
    m.exports.labels(status=status).inc()
    if started_at is not None:
        m.export_duration.labels(status=status).observe(max(0.0, (datetime.now(UTC) - started_at).total_seconds()))


def event_handed_over(occurred_at: datetime | None) -> None:
    """A live event leaves the feed for its subscriber: observe its delay since it was stored."""
    m = _metrics
    if m is None or occurred_at is None:
        return
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    m.event_delay.observe(max(0.0, (datetime.now(UTC) - occurred_at).total_seconds()))


# ---------------------------------------------------------------- GraphQL


def _operation(execution_context: Any) -> tuple[str, str | None]:
    """(type, name) of the operation being run; ("unknown", None) before or without a parsed document."""
    document = execution_context.graphql_document
    if document is None:
        return "unknown", execution_context.operation_name
    wanted = execution_context.operation_name
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            name = definition.name.value if definition.name else None
            if wanted is None or name == wanted:
                return definition.operation.value, name
    return "unknown", wanted


def _count_errors(m: Metrics, errors: Iterable[Any] | None) -> None:
    for error in errors or ():
        code = (getattr(error, "extensions", None) or {}).get("code")
        m.errors.labels(code=code if isinstance(code, str) and _CODE.match(code) else "OTHER").inc()


def record_operation(kind: str, name: str | None, seconds: float, errors: Iterable[Any] | None = None) -> None:
    """One HTTP operation answered, counted and timed: by strawberry or by the compiled read path (uidhub.compiled)."""
    m = _metrics
    if m is None:
        return
    label = m.operation_label(name)
    m.requests.labels(type=kind, operation=label).inc()
    m.duration.labels(type=kind, operation=label).observe(seconds)
    _count_errors(m, errors)


class MetricsExtension(SchemaExtension):
    """Counts and times each HTTP operation; counts subscriptions, their results and every result's errors.

    It is the first extension, so its `on_operation` wraps the others: the
    time includes the limits and masking, and the error codes are the ones
    the client sees (after MaskInternalErrors).
    """

    def on_operation(self):
        m = _metrics
        start = time.perf_counter()
        context = self.execution_context.context
        if getattr(context, "websocket", False):
            # A websocket operation (a subscription) lasts as long as it streams.
            m.subscriptions.inc() if m else None
            try:
                yield
            finally:
                m.subscriptions.dec() if m else None
            return
        yield
        kind, name = _operation(self.execution_context)
        record_operation(
            kind, name, time.perf_counter() - start, getattr(self.execution_context.result, "errors", None)
        )

    def on_stream_result(self, result: Any):
        m = _metrics
        if m is not None:
            m.events.inc()
            _count_errors(m, getattr(result, "errors", None))
        yield


# ---------------------------------------------------------------- ASGI


_ROUTES = ("/graphql", "/healthz", "/readyz", "/metrics")


def _route(path: str) -> str:
    if path in _ROUTES:
        return path
    if path.startswith("/exports/"):
        return "/exports/{id}/download"
    return "other"


class MetricsMiddleware:
    """Counts HTTP responses by route and status, and keeps the open-websocket gauge."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = _metrics
        if m is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            accepted = False

            async def send_ws(message: Message) -> None:
                nonlocal accepted
                if message["type"] == "websocket.accept" and not accepted:
                    accepted = True
                    m.ws_connections.inc()
                await send(message)

            try:
                await self.app(scope, receive, send_ws)
            finally:
                if accepted:
                    m.ws_connections.dec()
            return
        route = _route(scope["path"])

        async def send_http(message: Message) -> None:
            if message["type"] == "http.response.start":
                m.http.labels(route=route, status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_http)


# ---------------------------------------------------------------- the database


def instrument_engine(engine: AsyncEngine) -> None:
    """Time SQLite's BEGIN IMMEDIATE: the only place a writer waits for another writer's lock."""
    if engine.dialect.name != "sqlite":
        return
    sync_engine = engine.sync_engine
    key = "uidhub_metrics_begin"

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement == "BEGIN IMMEDIATE":
            conn.info[key] = time.perf_counter()

    @event.listens_for(sync_engine, "after_cursor_execute")
    def _after(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement == "BEGIN IMMEDIATE":
            started = conn.info.pop(key, None)
            m = _metrics
            if started is not None and m is not None:
                waited = time.perf_counter() - started
                m.sqlite_lock_wait.observe(waited)
                if waited > SQLITE_BUSY_THRESHOLD:
                    m.sqlite_busy.inc()


def sample_pool(engine: AsyncEngine) -> None:
    """Set the pool gauges of this process (a pool without counts, such as NullPool, reports nothing)."""
    m = _metrics
    pool = engine.sync_engine.pool
    if m is None or not hasattr(pool, "checkedout"):
        return
    m.pool.labels(state="in_use").set(pool.checkedout())
    m.pool.labels(state="idle").set(pool.checkedin())  # type: ignore[attr-defined]


@dataclass
class Snapshot:
    """Facts about shared rows, read at scrape time."""

    emails: dict[str, int] = field(default_factory=dict)
    oldest_pending_age: float = 0.0
    exports: dict[str, int] = field(default_factory=dict)
    webhooks: dict[str, int] = field(default_factory=dict)
    ok: bool = True


async def read_snapshot(db: Database) -> Snapshot:
    """Counts by status and the oldest pending email; `ok=False` when the database did not answer."""
    snapshot = Snapshot()
    try:
        async with db.read() as session:
            for status, count in (
                await session.execute(select(EmailNotification.status, func.count()).group_by(EmailNotification.status))
            ).all():
                snapshot.emails[getattr(status, "value", str(status))] = int(count)
            oldest = await session.scalar(
                select(func.min(EmailNotification.created_at)).where(EmailNotification.status == _pending_status())
            )
            for export_status, count in (
                await session.execute(select(ExportTask.status, func.count()).group_by(ExportTask.status))
            ).all():
                snapshot.exports[getattr(export_status, "value", str(export_status))] = int(count)
            for delivery_status, count in (
                await session.execute(select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status))
            ).all():
                snapshot.webhooks[getattr(delivery_status, "value", str(delivery_status))] = int(count)
    except Exception as exc:  # a scrape still answers with the process metrics
        log.warning("metrics: could not read the database (%s)", type(exc).__name__)
        snapshot.ok = False
        return snapshot
    if oldest is not None:
        if isinstance(oldest, str):  # func.min over SQLite's text column bypasses the column type
            oldest = datetime.fromisoformat(oldest)
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        snapshot.oldest_pending_age = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
    return snapshot


def _pending_status() -> Any:
    return NotificationStatus.PENDING


class SnapshotCollector:
    """Exposes one `Snapshot` (a collector for one scrape's registry)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        s = self.snapshot
        up = GaugeMetricFamily("uidhub_database_up", "1 when the scrape could read the database.")
        up.add_metric([], 1.0 if s.ok else 0.0)
        yield up
        if not s.ok:
            return
        emails = GaugeMetricFamily("uidhub_emails", "Outbox emails by status.", labels=["status"])
        for status in NotificationStatus:
            emails.add_metric([status.value], float(s.emails.get(status.value, 0)))
        yield emails
        age = GaugeMetricFamily(
            "uidhub_email_oldest_pending_age_seconds", "Age of the oldest PENDING email (0 when none)."
        )
        age.add_metric([], s.oldest_pending_age)
        yield age
        exports = GaugeMetricFamily("uidhub_export_tasks", "Export tasks by status.", labels=["status"])
        for export_status in ExportStatus:
            exports.add_metric([export_status.value], float(s.exports.get(export_status.value, 0)))
        yield exports
        webhooks = GaugeMetricFamily("uidhub_webhook_deliveries", "Webhook deliveries by status.", labels=["status"])
        for delivery_status in WebhookDeliveryStatus:
            webhooks.add_metric([delivery_status.value], float(s.webhooks.get(delivery_status.value, 0)))
        yield webhooks


def process_registry() -> CollectorRegistry:
    """The registry holding every process's metrics: the files of all workers, or this process's own."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    if not multiprocess_mode():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition(snapshot: Snapshot) -> tuple[bytes, str]:
    """The scrape body: process (or all workers') metrics, then the database snapshot."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    extra = CollectorRegistry(auto_describe=False)
    collector: Collector = SnapshotCollector(snapshot)
    extra.register(collector)
    return generate_latest(process_registry()) + generate_latest(extra), CONTENT_TYPE_LATEST


def metrics_endpoint(db: Database) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(_request: Request) -> Response:
        sample_pool(db.engine)
        body, content_type = exposition(await read_snapshot(db))
        return Response(body, media_type=content_type)

    return metrics


# ---------------------------------------------------------------- wiring


def setup(settings: Settings, db: Database) -> None:
    """Switch metrics on for this process (idempotent per engine)."""
    enable()
    info = db.engine.sync_engine.__dict__
    if not info.get("_uidhub_metrics"):
        instrument_engine(db.engine)
        info["_uidhub_metrics"] = True


@contextlib.asynccontextmanager
async def running(settings: Settings, db: Database) -> AsyncIterator[None]:
    """Lifespan part: sample the pool regularly (other workers' scrapes read it) and serve the metrics port."""
    server = None
    if settings.metrics_port and not os.environ.get(PORT_OWNER_ENV):
        server = serve_port(settings.metrics_port, settings.database_url, host=settings.metrics_host)

    async def sample() -> None:
        while True:
            sample_pool(db.engine)
            await asyncio.sleep(POOL_SAMPLE_SECONDS)

    task = asyncio.create_task(sample(), name="uidhub-metrics-pool")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if server is not None:
            server.shutdown()
        if multiprocess_mode():
            from prometheus_client import multiprocess as mp

            mp.mark_process_dead(os.getpid())  # this worker's live gauges leave the sum


def serve_port(port: int, database_url: str, *, host: str = "127.0.0.1") -> Any:
    """Serve GET /metrics on a port of its own, in a thread (the parent of the workers, or a lone server).

    The database snapshot is read with a short-lived engine of its own per
    scrape: the thread has no event loop of the app to borrow.
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    def scrape() -> tuple[bytes, str]:
        async def read() -> Snapshot:
            database = Database(database_url)
            try:
                return await read_snapshot(database)
            finally:
                await database.dispose()

        return exposition(asyncio.run(read()))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body, content_type = scrape()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line each
            return

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    Thread(target=server.serve_forever, name="uidhub-metrics-port", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", host, server.server_address[1])
    return server


def prepare_multiprocess_dir() -> str | None:
    """For `serve --workers N>1`: a clean PROMETHEUS_MULTIPROC_DIR inherited by the workers (None if set up).

    A directory given by the operator is emptied of old files (prometheus_client
    requires that between runs); otherwise a temporary one is created, and the
    caller removes it on exit.
    """
    import tempfile
    from pathlib import Path

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.db"):
            old.unlink()
        return None
    created = tempfile.mkdtemp(prefix="uidhub-metrics-")
    os.environ[MULTIPROC_ENV] = created
    return created


@contextlib.contextmanager
def serving(settings: Settings, workers: int) -> Iterator[None]:
    """`uidhub serve`: multiprocess mode for several workers, and the metrics port served by this process.

    The parent serves the port (workers would fight over it) and reads every
    worker's files; it marks the port as taken so the workers' lifespans
    leave it alone.
    """
    if not settings.metrics:
        yield
        return
    created = prepare_multiprocess_dir() if workers > 1 else None
    server = None
    try:
        if settings.metrics_port:
            server = serve_port(settings.metrics_port, settings.database_url, host=settings.metrics_host)
            os.environ[PORT_OWNER_ENV] = str(os.getpid())
        yield
    finally:
        if server is not None:
            server.shutdown()
            os.environ.pop(PORT_OWNER_ENV, None)
        if created is not None:
            import shutil

            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(created, ignore_errors=True)
