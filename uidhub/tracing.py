"""OpenTelemetry tracing, an optional extra (`pip install 'uidhub[otel]'`), on when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Off costs nothing: without the variable this module never imports
opentelemetry, and no middleware, extension or event listener is installed.

On: one server span per HTTP request (health checks and scrapes excepted),
named after the GraphQL operation once it is known ("query ListPage"), with
the request id, the partner UID and the error codes as attributes; the
SQLAlchemy statements of the request (the token check included) and outgoing
httpx calls are its children. No span per field: resolvers are many and
cheap, and a span each would cost more than the request. Subscriptions get
no span (a span as long as a websocket says nothing useful).

The exporter is the OTLP/HTTP one, configured by the standard OTEL_*
variables (endpoint, headers, OTEL_SERVICE_NAME).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from uidhub.logs import request_id_var
from uidhub.metrics import _operation

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from uidhub.db import Database

log = logging.getLogger(__name__)

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
_global_provider: Any = None
_installed: Any = None


def install(provider: Any) -> None:
    """Use this provider for apps created from now on instead of the OTLP one (tests, embedding); None undoes it."""
    global _installed
    _installed = provider


def wanted() -> bool:
    return any(os.environ.get(name) for name in ENDPOINT_ENVS)


def _otlp_provider() -> TracerProvider:
    """The process's provider with a batching OTLP exporter; set globally once (httpx instruments once too)."""
    global _global_provider
    if _global_provider is not None:
        return _global_provider
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed: pip install 'uidhub[otel]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "uidhub")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    try:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    except ImportError:  # pragma: no cover - part of the extra
        log.warning("opentelemetry-instrumentation-httpx missing: outgoing HTTP calls are not traced")
    _global_provider = provider
    return provider


class Tracing:
    """Tracing for one app: its tracer and its engine's statement spans."""

    def __init__(self, provider: Any, db: Database) -> None:
        from opentelemetry import metrics
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

        self.tracer = provider.get_tracer("uidhub")
        usage = metrics.get_meter("uidhub").create_up_down_counter("db.client.connections.usage")
        EngineTracer(self.tracer, db.engine.sync_engine, usage)


def setup(db: Database, provider: Any = None) -> Tracing | None:
    """Tracing for this app when wanted (or with the given provider, as tests do); None when off."""
    if provider is None:
        provider = _installed
    if provider is None:
        if not wanted():
            return None
        provider = _otlp_provider()
    return Tracing(provider, db)


class TracingMiddleware:
    """A server span around each HTTP request, current while the app (and its database calls) runs."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracer = tracing.tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTRACED:
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        method = scope["method"]
        path = "/exports/{id}/download" if scope["path"].startswith("/exports/") else scope["path"]
        attributes = {"http.request.method": method, "url.path": path, "uidhub.request_id": request_id_var.get() or ""}
        with self.tracer.start_as_current_span(f"{method} {path}", kind=SpanKind.SERVER, attributes=attributes) as span:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, send_traced)


class TracingExtension(SchemaExtension):
    """Names the request's span after the operation and records its type, name, partner and error codes."""

    def on_operation(self):
        yield
        from opentelemetry import trace

        span = trace.get_current_span()
        if not span.is_recording():
            return
        kind, name = _operation(self.execution_context)
        span.update_name(f"{kind} {name or 'anonymous'}")
        span.set_attribute("graphql.operation.type", kind)
        span.set_attribute("graphql.operation.name", name or "")
        actor = getattr(self.execution_context.context, "actor", None)
        if actor is not None:
            span.set_attribute("uidhub.partner", actor.partner_uid)
        errors = getattr(self.execution_context.result, "errors", None) or []
        codes = sorted({str((e.extensions or {}).get("code", "")) for e in errors})
        if codes:
            span.set_attribute("graphql.error_codes", codes)
