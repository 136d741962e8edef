"""Export tasks: validation, scoping, downloads, the worker's snapshot, crash recovery, expiry, the subscription."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from tests.support.accounts import link
from tests.support.api import Api, make_partner, make_token
from tests.support.exports import (
    TASK_FIELDS,
    download,
    drain,
    end_users,
    export,
    seed_accounts,
    start,
    start_ok,
    task,
    worker,
)
from uidhub.models import Account, ExportTask
from uidhub.models.base import utcnow
from uidhub.models.enums import ExportFormat, ExportKind, ExportStatus, Language, Role
from uidhub.resolvers.auth import authenticate
from uidhub.schema import build_schema
from uidhub.schema.common import from_global_id
from uidhub.schema.context import Context

TASKS = (
    f"query($status: ExportStatus, $after: String, $first: Int) {{ exportTasks(status: $status, after: $after, "
    f"first: $first) {{ totalCount pageInfo {{ hasNextPage endCursor }} edges {{ node {{ {TASK_FIELDS} }} }} }} }}"
)
UPDATED = f"subscription($id: ID!) {{ exportTaskUpdated(id: $id) {{ {TASK_FIELDS} }} }}"


def pk(global_id: str) -> int:
    parsed = from_global_id(global_id)
    assert parsed is not None and parsed[0] == "ExportTask"
    return parsed[1]


def exists(path: str) -> bool:
    return os.path.exists(path)


def leftovers(directory: str) -> list[str]:
    return os.listdir(directory) if os.path.isdir(directory) else []


def csv_rows(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))


# ---------------------------------------------------------------- starting and listing


async def test_start_returns_pending_and_validates(api: Api) -> None:
    await link(api, "A1")
    await link(api, "X9", nickname="x")
    other = await api.gql('mutation { linkAccount(input: {uid: "OTHER-1"}) { userErrors { code } } }', as_="other")
    assert other["linkAccount"]["userErrors"] == []

    pending = await start_ok(api, {"kind": "END_USERS", "filter": {"search": "A"}})
    assert pending["progress"] == 0 and pending["downloadUrl"] is None and pending["rowCount"] is None
    assert pending["format"] == "XLSX" and pending["language"] == "EN"
    async with api.db.read() as session:
        row = await session.get(ExportTask, pk(pending["id"]))
        assert row is not None and row.params["filter"]["search"] == "A"

    missing = await start(api, {"kind": "QUOTA_ADJUSTMENTS"})
    assert missing["task"] is None and [e["code"] for e in missing["userErrors"]] == ["INVALID_INPUT"]
    for uid in ("NOPE", "OTHER-1"):  # another partner's account does not exist
        payload = await start(api, {"kind": "QUOTA_ADJUSTMENTS", "uid": uid})
        assert payload["task"] is None
        assert payload["userErrors"][0]["code"] == "NOT_FOUND" and payload["userErrors"][0]["field"] == ["input", "uid"]
    mixed = await start(api, {"kind": "END_USERS", "uid": "A1"})
    assert mixed["userErrors"][0]["code"] == "INVALID_INPUT"
    backwards = await start(
        api,
        {"kind": "QUOTA_ADJUSTMENTS", "uid": "A1", "since": "2025-02-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"},
    )
    assert backwards["userErrors"][0]["code"] == "INVALID_INPUT"

    window = await start_ok(api, {"kind": "QUOTA_ADJUSTMENTS", "uid": "A1"})
    async with api.db.read() as session:
        row = await session.get(ExportTask, pk(window["id"]))
        assert row is not None
        from datetime import datetime

        since = datetime.fromisoformat(row.params["since"])
        assert abs((utcnow() - since) - timedelta(days=183)) < timedelta(minutes=1)
        count = await session.scalar(select(func.count()).select_from(ExportTask))
    assert count == 2  # failed starts queued nothing


async def test_export_tasks_newest_first_scoped(api: Api) -> None:
    await link(api, "A1")
    ids = [(await start_ok(api, {"kind": "END_USERS", "format": "CSV"}))["id"] for _ in range(3)]
    await start_ok(api, {"kind": "END_USERS"}, as_="other")
    data = (await api.gql(TASKS, {"first": 2}))["exportTasks"]
    assert data["totalCount"] == 3
    assert [e["node"]["id"] for e in data["edges"]] == ids[::-1][:2]
    rest = (await api.gql(TASKS, {"first": 2, "after": data["pageInfo"]["endCursor"]}))["exportTasks"]
    assert [e["node"]["id"] for e in rest["edges"]] == [ids[0]] and not rest["pageInfo"]["hasNextPage"]
    await drain(api)
    done = (await api.gql(TASKS, {"status": "SUCCEEDED"}))["exportTasks"]
    assert done["totalCount"] == 3
    assert (await api.gql(TASKS, {"status": "PENDING"}))["exportTasks"]["totalCount"] == 0
    # another partner's task is invisible everywhere
    assert await task(api, ids[0], as_="other") is None
    node = await api.gql("query($id: ID!) { node(id: $id) { id ... on ExportTask { status } } }", {"id": ids[0]})
    assert node["node"] == {"id": ids[0], "status": "SUCCEEDED"}
    assert (await api.gql("query($id: ID!) { node(id: $id) { id } }", {"id": ids[0]}, as_="other"))["node"] is None


# ---------------------------------------------------------------- downloads and roles


async def test_download_permissions(api: Api) -> None:
    await seed_accounts(api)
    partner_main = await _partner(api, "P-MAIN")
    viewer = await make_token(api.db, partner_main, Role.VIEWER)
    m1_user = await make_token(api.db, partner_main, Role.END_USER, account_uid="M1")
    u2_user = await make_token(api.db, partner_main, Role.END_USER, account_uid="U2")

    done, response = await export(api, {"kind": "END_USERS", "format": "CSV", "language": "ZH"}, token=viewer)
    assert len(csv_rows(response.content)) == 5  # a VIEWER may export and download
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=") and "filename*=UTF-8''" in disposition
    assert "%E7%BB%88%E7%AB%AF%E7%94%A8%E6%88%B7" in disposition  # 终端用户, RFC 5987-encoded
    url = done["downloadUrl"]
    assert url == f"/exports/{done['id']}/download"
    assert (await download(api, url, api.tokens["admin"])).status_code == 200  # same partner, another operator
    assert (await download(api, f"/exports/{pk(done['id'])}/download", viewer)).status_code == 200
    assert (await download(api, url, api.tokens["other"])).status_code == 404
    assert (await download(api, url, m1_user)).status_code == 404  # an END_USER never gets the partner's list
    assert (await download(api, url, None)).status_code == 401
    assert (await download(api, url, "uh_not-a-token")).status_code == 401
    assert (await download(api, "/exports/999999/download", viewer)).status_code == 404
    assert (await download(api, "/exports/garbage/download", viewer)).status_code == 404

    # END_USER: exports only its own account and its subs, and only it (and its partner) may download it
    own, own_response = await export(api, {"kind": "END_USERS", "format": "CSV"}, token=m1_user)
    assert sorted(r[0] for r in csv_rows(own_response.content)[1:]) == ["M1", "S1"]
    assert [n["uid"] for n in await end_users(api, token=m1_user)] == [r[0] for r in csv_rows(own_response.content)[1:]]
    assert (await download(api, own["downloadUrl"], u2_user)).status_code == 404
    assert (await download(api, own["downloadUrl"], api.tokens["admin"])).status_code == 200
    assert await task(api, own["id"], token=u2_user) is None
    assert await task(api, done["id"], token=m1_user) is None
    assert (await api.gql(TASKS, token=m1_user))["exportTasks"]["totalCount"] == 1
    assert (await start(api, {"kind": "QUOTA_ADJUSTMENTS", "uid": "U2"}, token=m1_user))["userErrors"][0][
        "code"
    ] == "NOT_FOUND"

    # a deleted file and an expired file: 404, and no download URL any more
    async with api.db.read() as session:
        row = await session.get(ExportTask, pk(done["id"]))
        assert row is not None and row.file_path is not None
        os.unlink(row.file_path)
    assert (await download(api, url, viewer)).status_code == 404
    async with api.db.write() as session:
        await session.execute(
            update(ExportTask).where(ExportTask.id == pk(own["id"])).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert (await task(api, own["id"]))["downloadUrl"] is None  # type: ignore[index]
    assert (await download(api, own["downloadUrl"], m1_user)).status_code == 404
    async with api.db.read() as session:
        path = (await session.get(ExportTask, pk(own["id"]))).file_path  # type: ignore[union-attr]
    assert path is not None and exists(path)
    assert await worker(api).sweep() >= 1
    assert not exists(path)
    async with api.db.read() as session:
        assert (await session.get(ExportTask, pk(own["id"]))).file_path is None  # type: ignore[union-attr]


async def _partner(api: Api, uid: str) -> Any:
    from uidhub.models import Partner

    async with api.db.read() as session:
        return await session.scalar(select(Partner).where(Partner.uid == uid))


# ---------------------------------------------------------------- the worker


async def test_export_is_one_snapshot(api: Api) -> None:
    """Accounts linked, renamed and deleted while the export runs do not show: count and rows agree."""
    for i in range(12):
        await link(api, f"S{i:02d}", nickname=f"before-{i}")
    before = [n["uid"] for n in await end_users(api)]
    started = await start_ok(api, {"kind": "END_USERS", "format": "CSV"})
    w = worker(api)
    w.fetch_batch = 5  # several fetches from the server-side cursor

    async def meanwhile(_task: ExportTask) -> None:
        # Committed by other transactions after the export's snapshot was taken.
        await link(api, "NEW-1", nickname="after")
        async with api.db.write() as session:
            await session.execute(update(Account).values(nickname="after"))
            await session.execute(update(Account).where(Account.uid == "S03").values(status="DELETED"))

    w.before_rows = meanwhile
    assert await w.run_once()
    done = await task(api, started["id"])
    assert done is not None and done["status"] == "SUCCEEDED" and done["rowCount"] == 12
    response = await download(api, done["downloadUrl"], api.tokens["admin"])
    rows = csv_rows(response.content)[1:]
    assert [r[0] for r in rows] == before
    assert {r[1] for r in rows} == {f"before-{i}" for i in range(12)}
    # a new export sees the changes
    _, later = await export(api, {"kind": "END_USERS", "format": "CSV"})
    later_rows = csv_rows(later.content)[1:]
    assert "NEW-1" in [r[0] for r in later_rows] and "S03" not in [r[0] for r in later_rows]
    assert {r[1] for r in later_rows} == {"after"}


async def test_progress_is_reported(api: Api) -> None:
    for i in range(10):
        await link(api, f"P{i}")
    started = await start_ok(api, {"kind": "END_USERS", "format": "CSV"})
    seen: list[float] = []
    w = worker(api)
    original = w._update

    async def spy(task_id: int, **values: Any) -> None:
        if "progress" in values:
            seen.append(values["progress"])
        await original(task_id, **values)

    w._update = spy  # type: ignore[method-assign]
    await drain(api, w)
    assert seen[-1] == 1.0
    running = [p for p in seen[:-1] if 0 < p < 1]
    assert running == sorted(running) and len(running) >= 5  # one update per row here (10 rows, 50 steps)
    assert (await task(api, started["id"]))["rowCount"] == 10  # type: ignore[index]


async def test_crash_recovery(api: Api) -> None:
    await link(api, "A1")
    first = await start_ok(api, {"kind": "END_USERS", "format": "CSV"})
    second = await start_ok(api, {"kind": "END_USERS", "format": "CSV"})
    w = worker(api)
    # Both claimed by a worker that then "crashed"; the second had already been retried once.
    assert await w.claim() == pk(first["id"])
    assert await w.claim() == pk(second["id"])
    async with api.db.write() as session:
        await session.execute(update(ExportTask).where(ExportTask.id == pk(second["id"])).values(attempts=2))
    assert (await task(api, first["id"]))["status"] == "RUNNING"  # type: ignore[index]

    restarted = worker(api)
    assert await restarted.recover() == 2
    requeued, failed = await task(api, first["id"]), await task(api, second["id"])
    assert requeued is not None and requeued["status"] == "PENDING"
    assert failed is not None and failed["status"] == "FAILED" and "interrupted" in failed["error"]
    assert "Traceback" not in failed["error"] and failed["finishedAt"]
    assert await drain(api, restarted) == 1
    assert (await task(api, first["id"]))["status"] == "SUCCEEDED"  # type: ignore[index]
    assert await restarted.recover() == 0


async def test_failure_is_clean(api: Api) -> None:
    async with api.db.write() as session:
        partner = await _partner(api, "P-MAIN")
        broken = ExportTask(
            partner_id=partner.id,
            kind=ExportKind.QUOTA_ADJUSTMENTS,
            format=ExportFormat.XLSX,
            language=Language.EN,
            params={"uid": "gone"},
            status=ExportStatus.PENDING,
        )
        session.add(broken)
    assert await drain(api) == 1
    async with api.db.read() as session:
        row = (await session.scalars(select(ExportTask))).one()
    assert row.status is ExportStatus.FAILED and row.error and "internal error" in row.error
    assert "Traceback" not in row.error and "\n" not in row.error
    assert row.file_path is None
    assert leftovers(api.settings.export_dir) == []  # no partial file left


# ---------------------------------------------------------------- the subscription


@pytest.fixture
async def subscribe(api: Api) -> AsyncIterator[Any]:
    schema = build_schema()
    assert api.runtime is not None
    runtime = api.runtime
    streams: list[Any] = []

    async def open_(task_id: str, as_: str = "admin") -> Any:
        async with api.db.read() as session:
            actor = await authenticate(session, api.tokens[as_])
        context = Context(runtime, actor=actor, websocket=True)
        stream = await schema.subscribe(UPDATED, variable_values={"id": task_id}, context_value=context)
        streams.append(stream)
        return stream

    yield open_
    for stream in streams:
        with contextlib.suppress(Exception):
            await stream.aclose()


async def collect(stream: Any, timeout: float = 10.0) -> list[Any]:
    results: list[Any] = []

    async def run() -> None:
        async for result in stream:
            results.append(result)

    await asyncio.wait_for(run(), timeout)
    return results


async def test_subscription_on_finished_task_sends_once(api: Api, subscribe: Any) -> None:
    await link(api, "A1")
    done, _ = await export(api, {"kind": "END_USERS", "format": "CSV"})
    results = await collect(await subscribe(done["id"]))  # completes on its own
    assert len(results) == 1 and not results[0].errors
    assert results[0].data["exportTaskUpdated"] == done

    other = await collect(await subscribe(done["id"], as_="other"))
    assert len(other) == 1 and other[0].data is None
    assert other[0].errors[0].extensions["code"] == "NOT_FOUND"


async def test_subscription_follows_the_task_to_the_end(api: Api, subscribe: Any) -> None:
    for i in range(30):
        await link(api, f"L{i:02d}")
    started = await start_ok(api, {"kind": "END_USERS", "format": "XLSX"})
    stream = await subscribe(started["id"])
    results: list[Any] = []

    async def pump() -> None:
        async for result in stream:
            assert not result.errors, result.errors
            results.append(result.data["exportTaskUpdated"])

    pumping = asyncio.create_task(pump())
    for _ in range(100):  # until the subscriber has sent the PENDING state
        if results:
            break
        await asyncio.sleep(0.01)
    assert results and results[0]["status"] == "PENDING"
    w = worker(api)
    w.fetch_batch = 4

    async def slow_down(done: int) -> None:
        await asyncio.sleep(0.05)  # give the subscriber time to see each state

    original = w._update

    async def paced(task_id: int, **values: Any) -> None:
        await original(task_id, **values)
        await slow_down(0)

    w._update = paced  # type: ignore[method-assign]
    await drain(api, w)
    await asyncio.wait_for(pumping, 10)  # the subscription completed by itself
    statuses = [r["status"] for r in results]
    assert statuses[0] == "PENDING" and statuses[-1] == "SUCCEEDED"
    assert "RUNNING" in statuses
    progress = [r["progress"] for r in results]
    assert progress == sorted(progress) and len({p for p in progress if 0 < p < 1}) >= 3
    assert results[-1]["rowCount"] == 30 and results[-1]["downloadUrl"]
    assert len(results) == len({(r["status"], r["progress"]) for r in results})  # no duplicate pushes


async def test_other_partner_cannot_download_even_with_the_int_id(api: Api) -> None:
    third = await make_partner(api.db, "P-THIRD")
    token = await make_token(api.db, third, Role.ADMIN)
    await link(api, "A1")
    done, _ = await export(api, {"kind": "END_USERS", "format": "CSV"})
    assert (await download(api, f"/exports/{pk(done['id'])}/download", token)).status_code == 404


async def test_recovery_leaves_a_live_workers_task_alone(pg_api: Api) -> None:
    """PostgreSQL: a running export holds an advisory lock on its task; a restarting process does not steal it.

    (SQLite deployments run one process: there every RUNNING task at start-up is orphaned.)
    """
    api = pg_api
    await link(api, "A1")
    started = await start_ok(api, {"kind": "END_USERS", "format": "CSV"})
    w = worker(api)
    recovered: list[int] = []

    async def other_process_starts(_task: ExportTask) -> None:
        recovered.append(await worker(api).recover())

    w.before_rows = other_process_starts
    assert await w.run_once()
    assert recovered == [0]
    done = await task(api, started["id"])
    assert done is not None and done["status"] == "SUCCEEDED"
    async with api.db.read() as session:
        assert (await session.get(ExportTask, pk(started["id"]))).attempts == 1  # type: ignore[union-attr]


async def test_worker_runs_in_the_app_lifespan(api: Api, subscribe: Any) -> None:
    """The app's lifespan starts the worker; startExport wakes it and the subscription sees the task finish."""
    import httpx

    from uidhub.app import create_app

    await link(api, "A1")
    await link(api, "A2")
    app = create_app(api.settings, db=api.db)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            lifespan_api = Api(client=client, db=api.db, settings=api.settings, tokens=api.tokens)
            started = await start_ok(lifespan_api, {"kind": "END_USERS", "format": "CSV", "language": "JA"})
            results = await collect(await subscribe(started["id"]), timeout=15)
            final = results[-1].data["exportTaskUpdated"]
            assert final["status"] == "SUCCEEDED" and final["rowCount"] == 2
            response = await download(lifespan_api, final["downloadUrl"], api.tokens["admin"])
            assert response.status_code == 200 and len(csv_rows(response.content)) == 3
