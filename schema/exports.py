"""Export tasks: the type, startExport, the task queries and the exportTaskUpdated subscription.

The worker that writes the files lives in `resolvers.exports`; the download route in `uidhub.routes`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Annotated

import strawberry
from graphql import GraphQLError
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import ExportTask as TaskRow
from uidhub.models.base import utcnow
from uidhub.models.enums import ExportFormat, ExportKind, ExportStatus, Language
from uidhub.resolvers import accounts as account_ops
from uidhub.resolvers import exports as ops
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.pagination import Page
from uidhub.schema.accounts import ARG_AFTER, ARG_FIRST, EndUserFilter, EndUserOrder, OrderDirection
from uidhub.schema.common import INPUT_ARG, Node, PageInfo, UserError, from_global_id, mutate, parse_pk, to_global_id
from uidhub.schema.context import Info
from uidhub.schema.registry import register_node

TYPE_NAME = "ExportTask"


def parse_task_id(value: str) -> int | None:
    """A task's primary key from its global id (or, for convenience, its plain integer id)."""
    if (pk := parse_pk(value)) is not None:
        return pk
    parsed = from_global_id(value)
    if parsed is None or parsed[0] != TYPE_NAME:
        return None
    return parsed[1]


def download_url(row: TaskRow) -> str | None:
    if row.status is not ExportStatus.SUCCEEDED or row.file_path is None:
        return None
    if row.expires_at is None or row.expires_at <= utcnow():
        return None
    return f"/exports/{to_global_id(TYPE_NAME, row.id)}/download"


@strawberry.type(description="A background export: its progress and, when done, where to download the file.")
class ExportTask(Node):
    kind: ExportKind = strawberry.field(description="What is exported.")
    format: ExportFormat = strawberry.field(description="XLSX or CSV.")
    language: Language = strawberry.field(description="Language of headers and labels.")
    status: ExportStatus = strawberry.field(description="PENDING, RUNNING, SUCCEEDED or FAILED.")
    progress: float = strawberry.field(description="0.0 to 1.0")
    row_count: int | None = strawberry.field(description="Data rows written (the header not counted); set when done.")
    file_name: str | None = strawberry.field(description="The file's name, as the download names it.")
    download_url: str | None = strawberry.field(description="Relative URL; GET it with the same bearer token.")
    error: str | None = strawberry.field(description="Why the export failed.")
    created_at: datetime = strawberry.field(description="When the export was requested.")
    finished_at: datetime | None = strawberry.field(description="When it succeeded or failed.")
    expires_at: datetime | None = strawberry.field(description="When the file is deleted (SUCCEEDED tasks).")

    @classmethod
    def of(cls, row: TaskRow) -> ExportTask:
        return cls(
            id=to_global_id(TYPE_NAME, row.id),
            kind=row.kind,
            format=row.format,
            language=row.language,
            status=row.status,
            progress=float(row.progress or 0.0),
            row_count=row.row_count,
            file_name=row.file_name if row.status is ExportStatus.SUCCEEDED else None,
            download_url=download_url(row),
            error=row.error,
            created_at=row.created_at,
            finished_at=row.finished_at,
            expires_at=row.expires_at,
        )


async def _resolve_node(info: Info, pk: int) -> ExportTask | None:
    session = await info.context.session()
    row = await ops.find_task(session, info.context.require_actor(), pk)
    return ExportTask.of(row) if row is not None else None


register_node(TYPE_NAME, _resolve_node)


@strawberry.type(description="An edge of an ExportTaskConnection.")
class ExportTaskEdge:
    cursor: str = strawberry.field(description="Pass as `after` to continue after this task.")
    node: ExportTask = strawberry.field(description="The task.")


@strawberry.type(description="Export tasks, newest first.")
class ExportTaskConnection:
    edges: list[ExportTaskEdge] = strawberry.field(description="This page's tasks.")
    page_info: PageInfo = strawberry.field(description="Paging state.")
    _page: strawberry.Private[Page[TaskRow]]

    @strawberry.field(description="Tasks matching the arguments, over all pages.")
    async def total_count(self) -> int:
        return await self._page.count()


@strawberry.input(description="What to export. Fields of the other kind are refused (INVALID_INPUT).")
class StartExportInput:
    kind: ExportKind = strawberry.field(description="END_USERS or QUOTA_ADJUSTMENTS.")
    format: ExportFormat = strawberry.field(default=ExportFormat.XLSX, description="File format.")
    language: Language = strawberry.field(default=Language.EN, description="Language of headers and labels.")
    filter: EndUserFilter | None = strawberry.field(default=None, description="END_USERS: which accounts.")
    uid: str | None = strawberry.field(default=None, description="QUOTA_ADJUSTMENTS: whose quota.")
    since: datetime | None = strawberry.field(
        default=None, description="QUOTA_ADJUSTMENTS: from (inclusive); default six months back."
    )
    until: datetime | None = strawberry.field(default=None, description="QUOTA_ADJUSTMENTS: until (exclusive).")
    order_by: EndUserOrder | None = strawberry.field(
        default=None, description="END_USERS: row order, as endUsers' orderBy (default LINKED_AT descending)."
    )


@strawberry.type(description="Result of startExport.")
class ExportPayload:
    task: ExportTask | None = strawberry.field(description="The queued task (PENDING); null on errors.")
    user_errors: list[UserError] = strawberry.field(description="Why nothing was queued; empty on success.")


@strawberry.type
class ExportQueries:
    @strawberry.field(description="One export task; null when it does not exist or is not yours.")
    async def export_task(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="The task's id.")]
    ) -> ExportTask | None:
        pk = parse_task_id(id)
        if pk is None:
            return None
        return await _resolve_node(info, pk)

    @strawberry.field(description="The viewer's partner's export tasks, newest first.")
    async def export_tasks(
        self,
        info: Info,
        first: Annotated[int | None, ARG_FIRST] = 20,
        after: Annotated[str | None, ARG_AFTER] = None,
        status: Annotated[ExportStatus | None, strawberry.argument(description="Only tasks in this status.")] = None,
    ) -> ExportTaskConnection:
        session = await info.context.session()
        page = await ops.list_tasks(session, info.context.require_actor(), first=first, after=after, status=status)
        return ExportTaskConnection(
            edges=[
                ExportTaskEdge(cursor=c, node=ExportTask.of(r)) for r, c in zip(page.items, page.cursors, strict=True)
            ],
            page_info=PageInfo.of(page),
            _page=page,
        )


@strawberry.type
class ExportMutations:
    @strawberry.mutation(description="Queue an export; it returns at once with a PENDING task.")
    async def start_export(self, info: Info, input: Annotated[StartExportInput, INPUT_ARG]) -> ExportPayload:
        sort = (
            account_ops.EndUserSort(
                field=input.order_by.field.name, descending=input.order_by.direction is OrderDirection.DESC
            )
            if input.order_by is not None
            else None
        )

        async def op(session: AsyncSession, actor: Actor) -> ExportPayload:
            row = await ops.start_export(
                session,
                actor,
                kind=input.kind,
                fmt=input.format,
                language=input.language,
                query=input.filter.to_query() if input.filter is not None else None,
                sort=sort,
                uid=input.uid,
                since=input.since,
                until=input.until,
                max_queued=info.context.settings.export_max_queued_per_partner,
            )
            return ExportPayload(task=ExportTask.of(row), user_errors=[])

        return await mutate(info, op, lambda errors: ExportPayload(task=None, user_errors=errors))


def _state(row: TaskRow) -> tuple[object, ...]:
    return (row.status, row.progress, row.row_count, row.file_name, row.file_path, row.error, row.finished_at)


@strawberry.type
class ExportSubscriptions:
    @strawberry.subscription(
        description="The task on every status or progress change, ending after SUCCEEDED or FAILED. "
        "A finished task sends its final state once. Another partner's task is a NOT_FOUND error."
    )
    async def export_task_updated(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="The task's id.")]
    ) -> AsyncGenerator[ExportTask, None]:
        actor = info.context.require_actor()
        actor.require(Permission.READ)
        pk = parse_task_id(id)
        settings = info.context.settings
        bus = info.context.bus
        last: tuple[object, ...] | None = None
        while True:
            async with info.context.event_scope() as scope:
                session = await scope.session()
                row = await ops.find_task(session, actor, pk) if pk is not None else None
                if row is None:
                    raise GraphQLError(f"No export task {id!r}.", extensions={"code": "NOT_FOUND"})
                state = _state(row)
                if state != last:
                    last = state
                    yield ExportTask.of(row)
                if row.status in ops.FINISHED:
                    return
            # Changes wake us through the bus; a lost wake-up costs at most one resync interval.
            if bus is not None:
                await bus.wait(ops.topic(row.id), settings.resync_seconds)
            else:
                await asyncio.sleep(settings.resync_seconds)
