"""JSON log lines with the request context, and OpenTelemetry spans (the otel extra, an in-memory exporter)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.api import make_api
from tests.support.live import ROOT
from uidhub import logs, tracing
from uidhub.db import Database


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines (as UIDHUB_LOG_FORMAT=json configures it) into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_json_log_lines_carry_request_id_operation_and_partner(
    sqlite_db: Database, tmp_path: Path, json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uidhub.schema import accounts

    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(accounts.ops, "summary", broken)
    async for api in make_api(sqlite_db, tmp_path):
        response = await api.post("query Portfolio { summary { accounts } }", token=api.tokens["admin"])
        body = response.json()
        request_id = response.headers["x-request-id"]
        assert body["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        assert request_id in body["errors"][0]["message"]  # the client's id is the log's id
        token = api.tokens["admin"]
    lines = [line for line in json_log.getvalue().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # one JSON object per line
    mine = [r for r in records if r["request_id"] == request_id]
    assert mine, records
    error = next(r for r in mine if r["logger"] == "uidhub.graphql")
    assert error["level"] == "ERROR"
    assert error["operation"] == "Portfolio"
    assert error["partner"] == "P-MAIN"
    assert "RuntimeError: boom" in error["exc_info"]
    assert set(error) >= {"time", "level", "logger", "message", "request_id", "operation", "partner"}
    assert token not in json_log.getvalue()


def test_json_formatter_keeps_one_record_on_one_line() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "two\nlines \u2028 and 漢字", None, None)
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line)["message"] == "two\nlines \u2028 and 漢字"


@pytest.mark.parametrize("access_log", [True, False])
def test_uvicorn_access_log_flag_is_honoured(access_log: bool) -> None:
    """`uvicorn uidhub.asgi:app --no-access-log`: uidhub's own log setup (uidhub.asgi) must not turn it back on."""
    script = (
        "import logging, uvicorn\n"
        f"uvicorn.Config('uidhub.asgi:app', access_log={access_log})  # configures logging as uvicorn's CLI does\n"
        "from uidhub import logs\n"
        "logs.configure(force=False)\n"
        "logging.getLogger('uvicorn.access').info('ACCESS-LINE')\n"
        "logging.getLogger('uidhub').warning('APP-LINE')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "APP-LINE" in done.stderr
    assert ("ACCESS-LINE" in done.stderr) is access_log, done.stderr


def test_tracing_off_imports_nothing(tmp_path: Path) -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT no opentelemetry module is even imported."""
    code = (
        "import sys\n"
        "from uidhub.app import create_app\n"
        "from uidhub.settings import Settings\n"
        f"create_app(Settings(database_url='sqlite+aiosqlite:///{tmp_path}/x.db', metrics=True))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture
def spans() -> Iterator[Any]:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)


async def test_a_request_is_one_operation_span_with_its_database_spans(
    db: Database, tmp_path: Path, spans: Any
) -> None:
    from opentelemetry.trace import SpanKind

    async for api in make_api(db, tmp_path):
        spans.clear()  # the fixture's own inserts
        response = await api.post(
            "query ListPage { endUsers(first: 5) { totalCount edges { node { uid } } } }", token=api.tokens["admin"]
        )
        assert "errors" not in response.json()
    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in finished]
    operation = servers[0]
    assert operation.name == "query ListPage"
    assert operation.attributes["graphql.operation.name"] == "ListPage"
    assert operation.attributes["uidhub.request_id"] == response.headers["x-request-id"]
    assert operation.attributes["uidhub.partner"] == "P-MAIN"
    children = [s for s in finished if s.parent is not None and s.parent.span_id == operation.context.span_id]
    assert len(children) >= 2, [s.name for s in finished]  # the token check and the list's queries
    assert all(s.kind is SpanKind.CLIENT for s in children), [(s.name, s.kind) for s in children]
    # Nothing else: no span per field, no stray roots.
    assert len(finished) == 1 + len(children)
