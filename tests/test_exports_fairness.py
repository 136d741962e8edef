"""One partner's exports do not starve another's (issue 17, item 4).

The worker takes partners in turn (oldest task first within a partner), never
runs more than `export_max_running_per_partner` of one partner at once, and
`startExport` refuses a partner's task past `export_max_queued_per_partner`
with TOO_MANY_EXPORTS, queueing nothing. Order is asserted, not timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.support.api import Api, make_api
from tests.support.exports import start, start_ok, worker
from uidhub.db import Database
from uidhub.export_worker import ExportWorker
from uidhub.models import ExportTask
from uidhub.models.enums import ExportStatus
from uidhub.schema.common import from_global_id

EXPORT = {"kind": "END_USERS", "format": "CSV"}


@pytest.fixture
async def limited_api(db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    """The app with at most 3 unfinished exports per partner and 1 running."""
    async for value in make_api(db, tmp_path, export_max_queued_per_partner=3, export_max_running_per_partner=1):
        yield value


def pk(global_id: str) -> int:
    parsed = from_global_id(global_id)
    assert parsed is not None
    return parsed[1]


async def run_in_claim_order(w: ExportWorker) -> list[int]:
    """Run the worker until nothing is pending; the task ids in the order it claimed them."""
    order: list[int] = []
    while (task_id := await w.claim()) is not None:
        order.append(task_id)
        await w.run_task(task_id)
    return order


async def unfinished(db: Database) -> dict[int, int]:
    async with db.read() as session:
        rows = await session.execute(
            select(ExportTask.partner_id, func.count())
            .where(ExportTask.status.in_([ExportStatus.PENDING, ExportStatus.RUNNING]))
            .group_by(ExportTask.partner_id)
        )
        return {partner: int(count) for partner, count in rows.all()}


async def test_a_partner_with_one_export_is_not_queued_behind_another_partners_many(api: Api) -> None:
    flood = [pk((await start_ok(api, EXPORT))["id"]) for _ in range(6)]
    single = pk((await start_ok(api, EXPORT, as_="other"))["id"])

    order = await run_in_claim_order(worker(api))

    # The other partner's task is taken as soon as the first partner has had its turn, not after all six;
    # the flooding partner's own tasks keep their order.
    assert order == [flood[0], single, *flood[1:]]
    async with api.db.read() as session:
        statuses = (await session.scalars(select(ExportTask.status))).all()
    assert set(statuses) == {ExportStatus.SUCCEEDED}


async def test_partners_take_turns_and_a_new_partner_is_served_next(api: Api) -> None:
    first = [pk((await start_ok(api, EXPORT))["id"]) for _ in range(3)]
    second = [pk((await start_ok(api, EXPORT, as_="other"))["id"]) for _ in range(3)]

    order = await run_in_claim_order(worker(api))

    assert order == [first[0], second[0], first[1], second[1], first[2], second[2]]


async def test_the_queue_limit_is_a_coded_error_and_changes_nothing(limited_api: Api) -> None:
    api = limited_api
    queued = [pk((await start_ok(api, EXPORT))["id"]) for _ in range(3)]
    before = await unfinished(api.db)

    refused = await start(api, EXPORT)

    assert refused["task"] is None
    assert [e["code"] for e in refused["userErrors"]] == ["TOO_MANY_EXPORTS"]
    assert await unfinished(api.db) == before
    # The limit is per partner: another partner still queues.
    await start_ok(api, EXPORT, as_="other")
    # A finished export frees its place.
    w = worker(api)
    task_id = await w.claim()
    assert task_id == queued[0]
    await w.run_task(task_id)
    await start_ok(api, EXPORT)


async def test_a_partner_at_its_running_limit_waits_while_others_run(limited_api: Api) -> None:
    api = limited_api
    mine = [pk((await start_ok(api, EXPORT))["id"]) for _ in range(2)]
    w = worker(api)
    assert await w.claim() == mine[0]  # now RUNNING (its worker is, say, another process)

    # Only one of this partner may run at once: nothing else of it is claimed...
    assert await worker(api).claim() is None
    # ...but another partner's task is.
    theirs = pk((await start_ok(api, EXPORT, as_="other"))["id"])
    assert await worker(api).claim() == theirs

    await w.run_task(mine[0])
    assert await worker(api).claim() == mine[1]
