"""Bad input that used to reach an internal error (issue 10): one table over real HTTP, one over real websockets.

Every row must be answered with a coded client error (a GraphQL error whose extensions.code is not
INTERNAL_SERVER_ERROR, a userError, or an HTTP 4xx in the GraphQL-over-HTTP JSON shape) and must
change nothing in the database.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.accounts import link
from tests.support.api import Api, make_partner, make_token
from tests.support.live import PROTOCOL, serve_in_loop
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.models import Base
from uidhub.models.enums import Role
from uidhub.resolvers.audit import CURSOR_KIND as AUDIT_CURSOR
from uidhub.resolvers.pagination import encode_cursor
from uidhub.resolvers.quota import ADJUSTMENT_CURSOR
from uidhub.settings import Settings

HUGE = 2**63
NODE_TYPES = [
    "EndUser",
    "Partner",
    "AuditEntry",
    "ExportTask",
    "QuotaAdjustment",
    "QuotaAlertEvent",
    "EmailNotification",
    "Instance",
]
EDGE_DATES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59+14:00",
    "9999-12-31T23:59:59-14:00",
]


def global_id(type_name: str, pk: int | str) -> str:
    return base64.urlsafe_b64encode(f"{type_name}:{pk}".encode()).decode().rstrip("=")


@dataclass
class Row:
    """One bad request: a GraphQL operation (query + variables) or a raw HTTP request."""

    name: str
    query: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    method: str = "POST"
    path: str = "/graphql"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None  # an exact HTTP status where the row asks for one


SEARCH = "query($s: String) { endUsers(filter: {search: $s}) { totalCount } }"
UPDATE = (
    'mutation($n: String) { updateBasicInfo(input: {uid: "BAD-1", nickname: $n}) '
    "{ userErrors { code } endUser { nickname } } }"
)
LINK = 'mutation($e: String) { linkAccount(input: {uid: "BAD-NEW", email: $e}) { userErrors { code } } }'
LINK_MONEY = 'mutation($a: Money) { linkAccount(input: {uid: "BAD-NEW", quotaAmount: $a}) { userErrors { code } } }'
NODE = "query($id: ID!) { node(id: $id) { id } }"
TASK = "query($id: ID!) { exportTask(id: $id) { id } }"


def _rows() -> list[Row]:
    rows = [
        Row("search NUL", SEARCH, {"s": "\u0000"}),
        Row("search NUL percent", SEARCH, {"s": "\u0000%"}),
        Row("search 100k characters", SEARCH, {"s": "x" * 100_000}),
        Row(
            "lone surrogate in a variable",
            body=json.dumps({"query": UPDATE, "variables": {"n": "\ud800"}}).encode(),
            status=400,
        ),
        Row("control character in linkAccount.email", LINK, {"e": "ops\u0000@example.com"}),
        Row("bell character in linkAccount.email", LINK, {"e": "ops\u0007@example.com"}),
        Row("non-ASCII digits in Money", LINK_MONEY, {"a": "１２.５０"}),
        Row("Arabic-Indic digits in Money", LINK_MONEY, {"a": "١٢"}),
        Row("Money with a leading space", LINK_MONEY, {"a": " 12.50"}),
        Row("Money with a trailing newline", LINK_MONEY, {"a": "12.50\n"}),
    ]
    for date in EDGE_DATES:
        rows += [
            Row(
                f"endUsers linkedAfter {date}",
                "query($d: DateTime) { endUsers(filter: {linkedAfter: $d}) { totalCount } }",
                {"d": date},
            ),
            Row(
                f"auditEntries since {date}",
                "query($d: DateTime) { auditEntries(since: $d) { totalCount } }",
                {"d": date},
            ),
            Row(
                f"adjustments since {date}",
                'query($d: DateTime) { endUser(uid: "BAD-1") { quota { adjustments(since: $d) { totalCount } } } }',
                {"d": date},
            ),
            Row(
                f"startExport since {date}",
                "mutation($d: DateTime) { startExport(input: {kind: QUOTA_ADJUSTMENTS, "
                'uid: "BAD-1", since: $d}) { userErrors { code } } }',
                {"d": date},
            ),
        ]
    for type_name in NODE_TYPES:
        rows.append(Row(f"node {type_name} id 2^63", NODE, {"id": global_id(type_name, HUGE)}))
    rows += [
        Row("exportTask plain id past BIGINT", TASK, {"id": "99999999999999999999999"}),
        Row("exportTask global id past BIGINT", TASK, {"id": global_id("ExportTask", HUGE)}),
        Row(
            "auditEntries cursor past BIGINT",
            "query($a: String) { auditEntries(after: $a) { totalCount } }",
            {"a": encode_cursor(AUDIT_CURSOR, [HUGE])},
        ),
        Row(
            "adjustments cursor past BIGINT",
            'query($a: String) { endUser(uid: "BAD-1") { quota { adjustments(after: $a) { totalCount } } } }',
            {"a": encode_cursor(ADJUSTMENT_CURSOR, [HUGE])},
        ),
        Row(
            "endUsers cursor past BIGINT",
            "query($a: String) { endUsers(after: $a, orderBy: {field: "
            "AVAILABLE_QUOTA, direction: DESC}) { totalCount } }",
            {"a": encode_cursor("eu:AVAILABLE_QUOTA:d", [HUGE, "BAD-1"])},
        ),
        Row("download id past BIGINT", method="GET", path="/exports/99999999999999999999999/download", status=404),
        Row("deeply nested JSON body", body=b"[" * 100_000 + b"]" * 100_000, status=400),
        Row(
            "deeply nested JSON variables",
            body=b'{"query": "{ viewer { method } }", "variables": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
            status=400,
        ),
        Row("subscription over HTTP POST", "subscription { quotaThresholdBreached { id } }", status=400),
    ]
    return rows


ROWS = _rows()


async def fingerprint(db: Database) -> dict[str, Any]:
    """Row counts of every table and the seeded account's editable fields: what a bad request must not change."""
    async with db.read() as session:
        counts = {
            t.name: await session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables
        }
        account = (await session.execute(select(Base.metadata.tables["accounts"]))).mappings().all()
    return {"counts": counts, "accounts": [dict(a) for a in account]}


def assert_coded_client_error(row: Row, status: int, text: str) -> None:
    assert status < 500, f"{row.name}: HTTP {status}: {text[:300]}"
    if row.status is not None:
        assert status == row.status, f"{row.name}: HTTP {status}: {text[:300]}"
    body = json.loads(text)  # always JSON, never a plain-text error
    errors = body.get("errors")
    if errors:
        for error in errors:
            code = error.get("extensions", {}).get("code")
            assert code and code != "INTERNAL_SERVER_ERROR", f"{row.name}: {error}"
        return
    assert status < 400, f"{row.name}: HTTP {status} without coded errors: {text[:300]}"
    # No GraphQL error: then the mutation's payload must carry a userError.
    payloads = [v for v in (body.get("data") or {}).values() if isinstance(v, dict)]
    assert any(p.get("userErrors") for p in payloads), f"{row.name}: accepted: {text[:300]}"


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_bad_input_is_a_coded_client_error(api: Api, row: Row) -> None:
    await link(api, "BAD-1", nickname="before", email="ops@example.com", quotaAmount="100.00")
    before = await fingerprint(api.db)
    headers = {"Authorization": f"Bearer {api.tokens['admin']}", **row.headers}
    if row.query is not None:
        body = json.dumps({"query": row.query, "variables": row.variables}).encode()
    else:
        body = row.body or b""
    if row.method == "GET":
        response = await api.client.get(row.path, headers=headers)
    else:
        response = await api.client.post(
            row.path, content=body, headers={"Content-Type": "application/json", **headers}
        )
    assert_coded_client_error(row, response.status_code, response.text)
    assert await fingerprint(api.db) == before, f"{row.name} changed something"


# ---------------------------------------------------------------- websockets


@pytest.fixture
async def ws_url(sqlite_db: Database, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    settings = Settings(database_url=sqlite_db.url, export_dir=str(tmp_path / "exports"))
    partner = await make_partner(sqlite_db, "P-MAIN")
    token = await make_token(sqlite_db, partner, Role.ADMIN)
    async with serve_in_loop(create_app(settings, db=sqlite_db)) as (address, _server):
        yield f"ws://{address}/graphql", token


def _subscribe(padding: int) -> str:
    return json.dumps(
        {
            "id": "1",
            "type": "subscribe",
            "payload": {
                "query": "subscription($p: String) { quotaThresholdBreached { id } }",
                "variables": {"p": "x" * padding},
            },
        }
    )


WS_ROWS = {
    "1 MB subscribe": _subscribe(1_000_000),
    "5 MB subscribe": _subscribe(5_000_000),
    "deeply nested JSON": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("name", list(WS_ROWS))
async def test_bad_websocket_message_closes_with_a_code(ws_url: tuple[str, str], name: str) -> None:
    url, token = ws_url
    async with connect(url, subprotocols=[PROTOCOL], max_size=None, open_timeout=10) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
        await ws.send(WS_ROWS[name])
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)  # a hang guard: refused at once, not after a 20 s silence
    assert closed.value.rcvd is not None, "closed without a code"
    assert closed.value.rcvd.code in (4400, 1009), closed.value.rcvd
