"""Logging for every process: one format (text or JSON lines), with the request id on each record.

Why a module of its own: `uidhub serve --workers N` runs the app in spawned
processes, which inherit no logging configuration from the parent; uvicorn
applies the `log_config` it is given in each worker, so the parent passes
`logging_config()` and every process logs alike. `uidhub.asgi` configures the
same when nothing else did (`uvicorn uidhub.asgi:app` run directly).

The request id, the GraphQL operation name and the partner UID live in
context variables, set by `RequestContext` (ASGI) and the schema extension
of `uidhub.observe`; `ContextFilter` copies them onto each record, so a log
line written anywhere below a request carries them without being passed
along. Only these identifiers are added: never a token, never an email body.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["text", "json"]

request_id_var: ContextVar[str | None] = ContextVar("uidhub_request_id", default=None)
operation_var: ContextVar[str | None] = ContextVar("uidhub_operation", default=None)
partner_var: ContextVar[str | None] = ContextVar("uidhub_partner", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
#: An incoming X-Request-Id is kept only when it looks like an id (it ends up in logs and error messages).
_INCOMING_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_HEADER = b"x-request-id"


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def current_request_id() -> str:
    """The id of the request being served in this task, or a fresh one outside any request."""
    return request_id_var.get() or new_request_id()


class ContextFilter(logging.Filter):
    """Adds request_id, operation and partner (or "-") to every record passing the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        if not hasattr(record, "operation"):
            record.operation = operation_var.get()
        if not hasattr(record, "partner"):
            record.partner = partner_var.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, operation, partner (and exc_info)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
            "operation": getattr(record, "operation", None) or operation_var.get(),
            "partner": getattr(record, "partner", None) or partner_var.get(),
        }
        if entry["request_id"] == "-":
            entry["request_id"] = None
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        # ensure_ascii keeps each record on one line whatever the message holds.
        return json.dumps(entry, ensure_ascii=True, default=str)


def logging_config(fmt: LogFormat = "text", level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for the root logger and uvicorn's loggers: one handler, one format, the context filter."""
    passthrough = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "uidhub.logs.ContextFilter"}},
        "formatters": {
            "text": {"()": "uidhub.logs.TextFormatter"},
            "json": {"()": "uidhub.logs.JsonFormatter"},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": fmt,
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {**passthrough, "level": level},
            "uvicorn.error": {**passthrough, "level": level},
            "uvicorn.access": {**passthrough, "level": level},
        },
    }


def format_from_env() -> LogFormat:
    """UIDHUB_LOG_FORMAT before the settings are validated (a bad setting is reported through the log)."""
    import os

    return "json" if os.environ.get("UIDHUB_LOG_FORMAT", "").strip().lower() == "json" else "text"


def configure(fmt: LogFormat = "text", level: str = "INFO", *, force: bool = True) -> None:
    """Apply `logging_config`; with force=False only when the root logger has no handler yet."""
    if not force and logging.getLogger().handlers:
        return
    # `uvicorn --no-access-log` leaves the access logger without handlers and not propagating; the config
    # below would turn it back on (one log line per request the operator asked not to have).
    access = logging.getLogger("uvicorn.access")
    access_off = not force and not access.handlers and not access.propagate
    logging.config.dictConfig(logging_config(fmt, level))
    if access_off:
        access.propagate = False


class RequestContext:
    """ASGI middleware: a request id per HTTP request or websocket connection, in the context and the answer.

    An `X-Request-Id` sent by a proxy is kept when it looks like an id, so
    one id follows a request through the proxy's logs and ours; the id goes
    back in the response's `X-Request-Id` header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                candidate = value.decode("latin-1")
                request_id = candidate if _INCOMING_ID.match(candidate) else None
                break
        request_id = request_id or new_request_id()
        token = request_id_var.set(request_id)
        header = (_HEADER, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
        finally:
            request_id_var.reset(token)
