"""What the app adds for operators: request ids in logs, metrics and tracing, each only when switched on.

`create_app` asks this module for its schema extensions, middleware, routes
and lifespan part, so the app factory needs only a few lines for all three
concerns (uidhub.logs, uidhub.metrics, uidhub.tracing).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextvars import Token
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from strawberry.extensions import SchemaExtension

from uidhub import logs, metrics, tracing
from uidhub.db import Database
from uidhub.settings import Settings


class LogContext(SchemaExtension):
    """Puts the operation name and the partner UID in the log context while an operation runs."""

    _partner: Token[str | None] | None = None
    _operation: Token[str | None] | None = None

    def on_operation(self):  # type: ignore[no-untyped-def]
        actor = getattr(self.execution_context.context, "actor", None)
        self._partner = logs.partner_var.set(actor.partner_uid if actor is not None else None)
        self._operation = logs.operation_var.set(self.execution_context.operation_name)
        try:
            yield
        finally:
            # A subscription's stream may be closed from another task's context, where the tokens do not apply.
            with contextlib.suppress(ValueError):
                logs.operation_var.reset(self._operation)
                logs.partner_var.reset(self._partner)

    def on_execute(self):  # type: ignore[no-untyped-def]
        # Parsed by now: a document's only operation is named even when the request did not name it.
        logs.operation_var.set(metrics._operation(self.execution_context)[1])
        yield


@dataclass
class Observability:
    settings: Settings
    db: Database
    tracing: tracing.Tracing | None

    @property
    def metrics(self) -> bool:
        return self.settings.metrics

    def schema_extensions(self) -> list[Any]:
        """First in the schema's list, so they wrap the limits and the error masking."""
        extensions: list[Any] = []
        if self.metrics:
            extensions.append(metrics.MetricsExtension)
        if self.tracing is not None:
            extensions.append(tracing.TracingExtension)
        extensions.append(LogContext)
        return extensions

    def middleware(self) -> list[Middleware]:
        """Outermost first: the request id exists before anything is counted, traced or logged."""
        stack = [Middleware(logs.RequestContext)]
        if self.metrics:
            stack.append(Middleware(metrics.MetricsMiddleware))
        if self.tracing is not None:
            stack.append(Middleware(tracing.TracingMiddleware, tracing=self.tracing))
        return stack

    def routes(self) -> list[BaseRoute]:
        # With a metrics port of its own, /metrics stays off the public port.
        if self.metrics and not self.settings.metrics_port:
            return [Route("/metrics", metrics.metrics_endpoint(self.db), methods=["GET"])]
        return []

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        if not self.metrics:
            yield
            return
        async with metrics.running(self.settings, self.db):
            yield


def setup(settings: Settings, db: Database, *, tracer_provider: Any = None) -> Observability:
    """Switch on what the settings (and OTEL_EXPORTER_OTLP_ENDPOINT) ask for."""
    if settings.metrics:
        metrics.setup(settings, db)
    return Observability(settings, db, tracing.setup(db, tracer_provider))
