"""A bounded fuzz run against POST /graphql: no server error, no INTERNAL_SERVER_ERROR, no traceback logged.

Documents come from hypothesis-graphql (what schemathesis builds its GraphQL
support on), generated from the served schema: valid queries and mutations
with arbitrary argument values (our custom scalars get both well-formed and
garbage values, dates at the edges of the calendar included), and documents
with one schema violation each. They run in order against the demo data
with an ADMIN token. Every answer must be a GraphQL answer below 500 without
INTERNAL_SERVER_ERROR, and the log must hold no traceback: all of these are
client mistakes, which are logged without one.

Generation is derandomized, so a run is repeatable; the size is bounded by
FUZZ_EXAMPLES (override with UIDHUB_FUZZ_EXAMPLES for a longer run).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, nodes, queries

from schema import build_schema
from uidhub import logs
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.demo import load_demo
from uidhub.settings import Settings

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = int(os.environ.get("UIDHUB_FUZZ_EXAMPLES", "120"))

MONEY = st.one_of(
    st.decimals(min_value=-10**13, max_value=10**13, places=2, allow_nan=False).map(lambda d: nodes.String(f"{d}")),
    st.integers(min_value=-10**15, max_value=10**15).map(nodes.Int),
    st.text(max_size=20).map(nodes.String),
)
DATETIME = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC])).map(lambda d: nodes.String(d.isoformat())),
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-02-30T00:00:00Z"]).map(
        nodes.String
    ),
    st.text(max_size=30).map(nodes.String),
)
JSON = st.one_of(st.text(max_size=10).map(nodes.String), st.integers().map(nodes.Int))
SCALARS = {"Money": MONEY, "DateTime": DATETIME, "JSON": JSON}


def generate(strategy: st.SearchStrategy[str], count: int) -> list[str]:
    """`count` documents from `strategy`, the same ones on every run."""
    found: list[str] = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(document: str) -> None:
        found.append(document)

    collect()
    return found


def documents() -> list[str]:
    schema = build_schema()._schema
    return [
        *generate(queries(schema, custom_scalars=SCALARS), FUZZ_EXAMPLES),
        *generate(mutations(schema, custom_scalars=SCALARS), FUZZ_EXAMPLES),
        *generate(queries(schema, custom_scalars=SCALARS, mode=Mode.NEGATIVE), FUZZ_EXAMPLES // 2),
        *generate(mutations(schema, custom_scalars=SCALARS, mode=Mode.NEGATIVE), FUZZ_EXAMPLES // 2),
    ]


class Tracebacks(logging.Handler):
    """Keeps every record that carries a traceback, with the request it belongs to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(logs.ContextFilter())
        self.found: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.exc_text:
            self.found.append(record)


@pytest.fixture
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
async def demo(sqlite_db: Database, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    config = Settings(database_url=sqlite_db.url, export_dir=str(tmp_path / "exports"))
    result = await load_demo(sqlite_db, config, accounts=20)
    assert result.token is not None
    app = create_app(config, db=sqlite_db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fuzz") as client:
        yield client, result.token


def _internal(body: Any) -> bool:
    errors = body.get("errors") if isinstance(body, dict) else None
    return any((e.get("extensions") or {}).get("code") == "INTERNAL_SERVER_ERROR" for e in errors or [])


async def test_fuzzed_documents_get_no_server_error_and_log_no_traceback(
    demo: tuple[httpx.AsyncClient, str], tracebacks: Tracebacks
) -> None:
    client, token = demo
    by_request: dict[str, str] = {}
    failures: list[str] = []
    docs = documents()
    for document in docs:
        response = await client.post("/graphql", json={"query": document},
                                     headers={"Authorization": f"Bearer {token}"})
        by_request[response.headers.get("x-request-id", "")] = document
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 500 or body is None or _internal(body):
            failures.append(f"{response.status_code} {response.text[:300]}\n  for {document[:500]}")
    for record in tracebacks.found:
        request = getattr(record, "request_id", "-")
        failures.append(f"traceback logged by {record.name} ({record.getMessage()[:200]})"
                        f"\n  for {by_request.get(request, '?')[:500]}")
    assert len(docs) >= FUZZ_EXAMPLES * 3
    assert not failures, f"{len(failures)} of {len(docs)} documents:\n\n" + "\n\n".join(failures[:40])
