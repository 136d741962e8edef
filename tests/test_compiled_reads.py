"""The compiled read path (uidhub.compiled) answers exactly what ordinary execution answers.

Every request below runs through both paths on the same data; a request the
compiled path answers must produce the same JSON, byte for byte (data, errors,
key order); a request it hands back is answered by ordinary execution anyway.
"""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import OperationDefinitionNode, OperationType, parse
from hypothesis import HealthCheck, given, settings
from sqlalchemy import event

from tests.support.api import Api
from tests.support.compiled import Request, World, build_world, strategies
from tests.support.db import StatementCounter, needs_postgres, sqlite_url_for, truncate_all
from tests.test_accounts_querycount import seed
from tests.test_readme import readme_operations
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.settings import Settings

TESTS = Path(__file__).resolve().parent

#: Generated requests per database. PostgreSQL runs as many as SQLite: its compiled reads take paths of their
#: own (autocommit, the asyncpg driver rows of uidhub.db._driver_rows, the trigram search statements).
SQLITE_CASES = 2000
POSTGRES_CASES = 2000


def suite_queries() -> list[str]:
    """Every query document written as a string constant in the test suite (list queries among them)."""
    found: list[str] = []
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            text = node.value.strip()
            if not text.startswith(("query", "{")) or len(text) < 8:
                continue
            try:
                document = parse(text)
            except Exception:
                continue
            operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
            if len(operations) == 1 and operations[0].operation is OperationType.QUERY:
                found.append(text)
    return sorted(set(found))


async def _world(url: str, tmp_path: Path, truncate: bool) -> tuple[Database, World]:
    db = Database(url)
    if truncate:  # the session's PostgreSQL database: other tests' rows out first
        await truncate_all(db)
    world = await build_world(db, Settings(database_url=url, export_dir=str(tmp_path / "exports")))
    return db, world


def _run_generated(url: str, tmp_path: Path, cases: int, truncate: bool = False) -> None:
    loop = asyncio.new_event_loop()
    db, world = loop.run_until_complete(_world(url, tmp_path, truncate))
    requests = strategies()
    seen: list[Request] = []

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests(world))
    def case(request: Request) -> None:
        seen.append(request)
        loop.run_until_complete(world.differ.check(request.query, request.variables, world.viewers[request.viewer]))
        assert not world.differ.mismatches, world.differ.mismatches[0]

    try:
        case()
    finally:
        loop.run_until_complete(db.dispose())
        loop.close()
    differ = world.differ
    assert len(seen) >= cases
    # Most generated requests are within the compiled subset; the rest (bad arguments and cursors) fall back.
    assert differ.compiled >= len(seen) * 0.6, (differ.compiled, differ.fallbacks)
    # endUsers selections within the row plans' subset (about a quarter of the cases) are answered by them.
    assert differ.reads.row_planned >= len(seen) * 0.15, (differ.reads.row_planned, differ.compiled)
    assert {request.viewer for request in seen} == set(world.viewers)


@pytest.mark.slow
def test_generated_selections_agree_on_sqlite(sqlite_template: Path, tmp_path: Path) -> None:
    _run_generated(sqlite_url_for(sqlite_template, tmp_path), tmp_path, SQLITE_CASES)


@pytest.mark.slow
@needs_postgres
def test_generated_selections_agree_on_postgres(pg_database_url: str, tmp_path: Path) -> None:
    _run_generated(pg_database_url, tmp_path, POSTGRES_CASES, truncate=True)


@pytest.fixture
async def world(sqlite_db: Database, tmp_path: Path) -> World:
    return await build_world(sqlite_db, Settings(database_url=sqlite_db.url, export_dir=str(tmp_path / "exports")))


async def test_readme_queries_agree_for_every_viewer(world: World) -> None:
    queries = [q for q in readme_operations() if parse(q).definitions[0].operation is OperationType.QUERY]  # type: ignore[attr-defined]
    compiled = 0
    for viewer in world.viewers.values():
        for query in queries:
            compiled += await world.differ.check(query, None, viewer)
    assert not world.differ.mismatches, world.differ.mismatches[0]
    # The README's list, account, summary, audit and alert queries are compiled, for every viewer.
    assert compiled >= 7 * len(world.viewers)


async def test_suite_queries_agree(world: World) -> None:
    queries = suite_queries()
    assert len(queries) >= 10
    variables: dict[str, Any] = {"first": 5, "uid": world.uids[0], "id": world.node_ids[0]}
    for query in queries:
        for viewer in ("admin", "end_user_sub", "other_partner"):
            await world.differ.check(query, variables, world.viewers[viewer])
    assert not world.differ.mismatches, world.differ.mismatches[0]
    assert world.differ.compiled >= 10


async def test_errors_fall_back_to_ordinary_execution(world: World) -> None:
    admin = world.viewers["admin"]
    for query, variables in [
        ("{ endUsers(first: 101) { totalCount } }", None),
        ('{ endUsers(after: "garbage") { totalCount } }', None),
        ("query($f: EndUserFilter) { endUsers(filter: $f) { totalCount } }", {"f": {"search": "\x01"}}),
        ("{ endUsers { nope } }", None),
        ("query($n: Int) { endUsers(first: $n) { totalCount } }", {"n": "ten"}),
        ('{ node(id: "RW5kVXNlcjo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5") { id } }', None),
    ]:
        assert not await world.differ.check(query, variables, admin), query
        answer = await world.differ.ordinary(query, variables, admin)
        assert answer["errors"], query
    # Not covered (no error): answered by ordinary execution.
    assert not await world.differ.check("{ viewer { operator { uid } } }", None, admin)
    assert not await world.differ.check(
        "query Q { endUsers { totalCount } } mutation M { __typename }", None, admin, "M"
    )


async def test_plans_are_cached_per_document_and_operation(world: World) -> None:
    reads = world.differ.reads
    admin = world.viewers["admin"]
    query = "query A { summary { accounts } } query B { endUsers(first: 2) { totalCount } }"
    assert await world.differ.check(query, None, admin, "A")
    assert await world.differ.check(query, None, admin, "B")
    assert not await world.differ.check(query, None, admin)  # two operations, no name: ordinary says so
    planned = len(reads.plans)
    runs = reads.schema.limiter.validation_runs
    assert await world.differ.check(query, None, admin, "A")
    assert len(reads.plans) == planned
    assert reads.schema.limiter.validation_runs == runs
    assert not world.differ.mismatches


async def test_include_and_skip_variables_pick_the_plan(world: World) -> None:
    query = (
        "query($a: Boolean!) { endUsers(first: 3) { "
        "totalCount @include(if: $a) edges { node { uid @skip(if: $a) } } } }"
    )
    admin = world.viewers["admin"]
    for value in (True, False, True):
        assert await world.differ.check(query, {"a": value}, admin)
    assert not world.differ.mismatches, world.differ.mismatches[0]


# ---------------------------------------------------------------- over HTTP


LIST_PAGE = """query($first: Int!) { endUsers(first: $first) { totalCount pageInfo { hasNextPage endCursor }
  edges { cursor node { id uid nickname accountStatus linkedAt
    quota { amount available outstandingAmount warningLevel belowWarningLevel }
    policy { effectivePaygFreezeStatus effectivePurchaseControl creditControlStatus shutdownDelayCredit }
    subAccounts { uid accountStatus } } } } }"""


async def test_http_answers_are_the_same_bytes_with_and_without_the_compiled_path(sqlite_api: Api) -> None:
    await seed(sqlite_api, masters=30)
    off = create_app(sqlite_api.settings.model_copy(update={"compiled_reads": False}), db=sqlite_api.db)
    assert off.state.compiled_reads is None
    compiled = sqlite_api.client._transport.app.state.compiled_reads  # type: ignore[attr-defined]
    assert compiled is not None
    headers = {"Authorization": f"Bearer {sqlite_api.tokens['admin']}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=off), base_url="http://test") as plain:
        for body in [
            {"query": LIST_PAGE, "variables": {"first": 25}},
            {"query": "{ summary { accounts totalQuota } }"},
            {"query": "{ endUsers(first: 500) { totalCount } }"},
        ]:
            before = compiled.compiled
            fast = await sqlite_api.client.post("/graphql", json=body, headers=headers)
            slow = await plain.post("/graphql", json=body, headers=headers)
            assert fast.status_code == slow.status_code
            assert fast.content == slow.content
            assert fast.headers["content-type"] == slow.headers["content-type"]
            assert compiled.compiled == before + (0 if "500" in body["query"] else 1)


async def test_compiled_list_statements_do_not_grow_with_the_page(api: Api) -> None:
    await seed(api, masters=110)
    compiled = api.client._transport.app.state.compiled_reads  # type: ignore[attr-defined]
    counts = []
    for first in (10, 100):
        before = compiled.compiled
        with StatementCounter(api.db) as counter:
            data = await api.gql(LIST_PAGE, {"first": first})
        assert compiled.compiled == before + 1
        assert len(data["endUsers"]["edges"]) == first
        counts.append(counter.count)
    assert counts[0] == counts[1], counts


async def test_row_plan_selects_pools_and_masters_only_when_a_field_reads_them(api: Api) -> None:
    await seed(api, masters=5)
    compiled = api.client._transport.app.state.compiled_reads  # type: ignore[attr-defined]
    flat = "{ endUsers(first: 5) { edges { node { uid nickname accountStatus } } } }"
    with_quota = "{ endUsers(first: 5) { edges { node { uid quota { available } } } } }"
    selected = {}
    for name, query in (("flat", flat), ("quota", with_quota)):
        before = compiled.row_planned
        with StatementCounter(api.db) as counter:
            data = await api.gql(query)
        assert compiled.row_planned == before + 1, name  # answered by a row plan
        assert len(data["endUsers"]["edges"]) == 5
        (listing,) = [s for s in counter.statements if "account_listing" in s]
        selected[name] = re.split(r"\sFROM\s", listing)[0]  # the select list
    # The flat list reads no pool or master column; the quota needs the pool (and the policy's master with it).
    assert "quota_pools.amount_cents" not in selected["flat"] and "master_account." not in selected["flat"]
    assert "quota_pools.amount_cents" in selected["quota"]
    # Of the accounts, only what the selection shows (and their keys): the rest is NULL, decoded for free.
    assert "accounts.nickname" in selected["flat"] and "accounts.status" in selected["flat"]
    for unread in ("accounts.remarks", "accounts.email", "accounts.linked_at", "accounts.updated_at"):
        assert unread not in selected["flat"] and unread not in selected["quota"], unread
    assert "quota_pools.updated_at" not in selected["quota"] and "master_account.nickname" not in selected["quota"]


async def test_row_plan_reads_only_the_selected_columns_of_sub_accounts(api: Api) -> None:
    await seed(api, masters=3)
    compiled = api.client._transport.app.state.compiled_reads  # type: ignore[attr-defined]
    query = (
        "{ endUsers(first: 3, filter: {includeSubAccounts: false}) "
        "{ edges { node { uid subAccounts { accountStatus } } } } }"
    )
    before = compiled.row_planned
    with StatementCounter(api.db) as counter:
        data = await api.gql(query)
    assert compiled.row_planned == before + 1
    subs = [s for e in data["endUsers"]["edges"] for s in e["node"]["subAccounts"]]
    assert len(subs) == 6 and all(s["accountStatus"] == "NORMAL" for s in subs)
    (statement,) = [s for s in counter.statements if "master_id" in s and "account_listing" not in s]
    columns = re.split(r"\sFROM\s", statement)[0]
    assert "accounts.status" in columns and "accounts.master_id" in columns
    assert "accounts.linked_at" not in columns and "accounts.remarks" not in columns
    # Ordinary execution's loader reads whole rows (its resolvers may read any field).
    off = create_app(api.settings.model_copy(update={"compiled_reads": False}), db=api.db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=off), base_url="http://test") as plain:
        with StatementCounter(api.db) as counter:
            response = await plain.post(
                "/graphql", json={"query": query}, headers={"Authorization": f"Bearer {api.tokens['admin']}"}
            )
    assert response.json() == {"data": data}
    (statement,) = [s for s in counter.statements if "master_id" in s and "account_listing" not in s]
    assert "accounts.linked_at" in re.split(r"\sFROM\s", statement)[0]


async def test_compiled_reads_run_without_a_transaction_and_leave_no_setting_behind(pg_api: Api) -> None:
    """PostgreSQL: the compiled path's statements run in autocommit (no BEGIN/ROLLBACK round trips), and a
    search's `enable_seqscan = off` is reset before its connection goes back to the pool."""
    await seed(pg_api, masters=12)
    compiled = pg_api.client._transport.app.state.compiled_reads  # type: ignore[attr-defined]
    isolation: list[Any] = []

    def record(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "account_listing" in statement:
            isolation.append(conn.get_execution_options().get("isolation_level"))

    search = '{ endUsers(first: 5, filter: {search: "Acme"}) { totalCount edges { node { uid } } } }'
    event.listen(pg_api.db.engine.sync_engine, "before_cursor_execute", record)
    try:
        before = compiled.compiled
        for query, variables in ((LIST_PAGE, {"first": 5}), (search, None)):
            assert "errors" not in (await pg_api.post(query, variables, pg_api.tokens["admin"])).json()
        assert compiled.compiled == before + 2
    finally:
        event.remove(pg_api.db.engine.sync_engine, "before_cursor_execute", record)
    assert isolation and set(isolation) == {"AUTOCOMMIT"}, isolation
    # Every connection the pool holds now answers with the server's default.
    pool = pg_api.db.engine.pool
    held = [await pg_api.db.engine.connect() for _ in range(pool.checkedin())]  # type: ignore[attr-defined]
    try:
        for conn in held:
            assert (await conn.exec_driver_sql("SHOW enable_seqscan")).scalar_one() == "on"
    finally:
        for conn in held:
            await conn.close()
    # Ordinary execution (a mutation, a query it answers) still runs in transactions.
    isolation.clear()
    event.listen(pg_api.db.engine.sync_engine, "before_cursor_execute", record)
    try:
        await pg_api.gql("{ endUsers(first: 3) { edges { node { uid quota { forecast { daysLeft } } } } } }")
    finally:
        event.remove(pg_api.db.engine.sync_engine, "before_cursor_execute", record)
    assert isolation and "AUTOCOMMIT" not in isolation, isolation
