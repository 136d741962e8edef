"""Export tasks: starting them, the background worker that writes the files, and who may see them.

Life of a task. `start_export` validates the input and inserts a PENDING row in the caller's transaction (the
filter is stored as JSON in `params`), then wakes the worker through the bus topic "exports". The worker
(`uidhub.export_worker.ExportWorker`, one of the loops of `uidhub.background`) claims the oldest PENDING task in
a short write transaction (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so several workers take disjoint tasks; SQLite:
`BEGIN IMMEDIATE` serialises claims), marks it RUNNING and streams its rows into `notifications.export_writer`.

One snapshot. Every row of a file comes from ONE read transaction: REPEATABLE READ on PostgreSQL (the snapshot is
taken at its first statement), a plain read transaction on SQLite (in WAL mode a reader sees the database as of
its first read until it ends). The row count used for progress and the rows themselves therefore agree, and
accounts changing meanwhile never produce a file that is half before and half after a change. Rows are fetched
with `yield_per` from a server-side cursor, so memory stays flat whatever the export size.

Progress and wake-ups. Progress is written in its own short write transactions (about fifty per export) and every
change of a task publishes "export:{id}" after commit, which wakes `exportTaskUpdated` subscribers.

Fairness. A partner may have at most `export_max_queued_per_partner` tasks PENDING or RUNNING at once; past that,
`startExport` answers TOO_MANY_EXPORTS and queues nothing. The worker does not take the oldest task of all: it takes
partners in turn (round-robin over the partners with pending tasks, starting after the partner it served last, and
preferring partners with fewer tasks running), the oldest task first within a partner, and never starts a task of a
partner that already has `export_max_running_per_partner` running (across all workers: on PostgreSQL claims take
turns under an advisory lock, so the counts they read are exact). So one partner's 300 queued exports delay
another partner's single export by one export of each partner ahead of it in the turn, not by 300.

Crashes. A task found RUNNING at start-up belonged to a worker that died: it is put back to PENDING once
(`MAX_ATTEMPTS`), and marked FAILED after that. On PostgreSQL a running export holds a transaction-level advisory
lock on its task id, and recovery skips tasks whose lock is held, so another live worker's task is never stolen.
(SQLite deployments run one process, so every RUNNING task at start-up is orphaned.)

Expiry. Finished files live `export_ttl_hours`; a periodic sweep deletes expired files and clears `file_path`, after
which the task has no download URL and the download answers 404.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models import Account, ExportTask, Partner, QuotaAdjustment, QuotaPool
from uidhub.models.base import utcnow
from uidhub.models.enums import (
    ErrorCode,
    ExportFormat,
    ExportKind,
    ExportStatus,
    Language,
    OperationMethod,
    PartnerKind,
    Role,
)
from uidhub.models.rules import PolicyView
from uidhub.notifications import i18n
from uidhub.notifications import log as event_log
from uidhub.resolvers import accounts
from uidhub.resolvers.actor import Actor, Permission
from uidhub.resolvers.errors import UserError, UserErrors, invalid, not_found
from uidhub.resolvers.pagination import Page, newest_first
from uidhub.resolvers.quota import SIX_MONTHS

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

WAKE_TOPIC = "exports"
CURSOR_KIND = "ex"
FINISHED = frozenset({ExportStatus.SUCCEEDED, ExportStatus.FAILED})
#: A SELECT of any number of columns (SQLAlchemy types a select by its column tuple).
AnySelect = Select[*tuple[Any, ...]]
UNFINISHED = (ExportStatus.PENDING, ExportStatus.RUNNING)
#: Default of `start_export`'s limit (the app passes the setting export_max_queued_per_partner).
MAX_QUEUED_PER_PARTNER = 20

CONTENT_TYPES = {
    ExportFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ExportFormat.CSV: "text/csv; charset=utf-8",
}
EXTENSIONS = {ExportFormat.XLSX: "xlsx", ExportFormat.CSV: "csv"}


def topic(task_id: int) -> str:
    return f"export:{task_id}"


# ---------------------------------------------------------------- visibility


def task_scope(actor: Actor) -> ColumnElement[bool]:
    """The tasks an actor may see: its partner's; an END_USER token only those it started for its own account."""
    condition = ExportTask.partner_id == actor.partner_id
    if actor.account_id is not None:
        condition = condition & (ExportTask.scope_account_id == actor.account_id)
    return condition


async def find_task(session: AsyncSession, actor: Actor, task_id: int) -> ExportTask | None:
    """The task if the actor may see it; another partner's (or account's) task is as if it did not exist."""
    return await session.scalar(
        select(ExportTask).where(ExportTask.id == task_id, task_scope(actor)).execution_options(populate_existing=True)
    )


def is_downloadable(task: ExportTask, now: datetime | None = None) -> bool:
    """SUCCEEDED, not expired, and its file still on disk."""
    now = now or utcnow()
    return (
        task.status is ExportStatus.SUCCEEDED
        and task.file_path is not None
        and task.expires_at is not None
        and task.expires_at > now
        and os.path.isfile(task.file_path)
    )


async def list_tasks(
    session: AsyncSession, actor: Actor, *, first: int | None, after: str | None, status: ExportStatus | None
) -> Page[ExportTask]:
    """The actor's tasks, newest first (keyset on id)."""
    actor.require(Permission.READ)
    conditions: list[ColumnElement[bool]] = [task_scope(actor)]
    if status is not None:
        conditions.append(ExportTask.status == status)
    return await newest_first(session, ExportTask, conditions, first=first, after=after, cursor_kind=CURSOR_KIND)


# ---------------------------------------------------------------- starting


async def start_export(
    session: AsyncSession,
    actor: Actor,
    *,
    kind: ExportKind,
    fmt: ExportFormat,
    language: Language,
    query: accounts.EndUserQuery | None = None,
    sort: accounts.EndUserSort | None = None,
    uid: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    max_queued: int = MAX_QUEUED_PER_PARTNER,
) -> ExportTask:
    """Validate and queue an export; the worker writes the file. Inputs that do not belong to `kind` are refused.

    A partner with `max_queued` tasks PENDING or RUNNING gets TOO_MANY_EXPORTS.
    """
    actor.require(Permission.EXPORT)
    errors: list[UserError] = []
    params: dict[str, Any]
    if kind is ExportKind.END_USERS:
        for name, value in (("uid", uid), ("since", since), ("until", until)):
            if value is not None:
                errors.append(
                    UserError(
                        ErrorCode.INVALID_INPUT, f"{name} applies to QUOTA_ADJUSTMENTS exports only.", ("input", name)
                    )
                )
        if errors:
            raise UserErrors(errors)
        query = query or accounts.EndUserQuery()
        sort = sort or accounts.EndUserSort()
        accounts.filter_conditions(actor, query)  # the same checks as endUsers (e.g. at most 100 uids)
        accounts.sort_expr(sort.field)
        params = {"filter": query.to_json(), "sort": {"field": sort.field, "descending": sort.descending}}
    else:
        if query is not None:
            errors.append(
                UserError(ErrorCode.INVALID_INPUT, "filter applies to END_USERS exports only.", ("input", "filter"))
            )
        if uid is None:
            errors.append(
                UserError(
                    ErrorCode.INVALID_INPUT,
                    "A QUOTA_ADJUSTMENTS export needs the uid of the account.",
                    ("input", "uid"),
                )
            )
        if since is not None and until is not None and since >= until:
            errors.append(UserError(ErrorCode.INVALID_INPUT, "since must be before until.", ("input", "since")))
        if errors:
            raise UserErrors(errors)
        assert uid is not None
        account = await accounts.find(session, actor, uid)
        if account is None:
            raise not_found("account", uid, "input", "uid")
        window_start = since if since is not None else utcnow() - SIX_MONTHS
        if until is not None and window_start >= until:
            raise invalid("until must be after the start of the window (six months back by default).", "input", "until")
        params = {
            "uid": account.uid,
            "pool_id": account.pool_id,
            "since": window_start.isoformat(),
            "until": until.isoformat() if until is not None else None,
        }
    await _check_queue_room(session, actor.partner_id, max_queued)
    task = ExportTask(
        partner_id=actor.partner_id,
        scope_account_id=actor.account_id,
        kind=kind,
        format=fmt,
        language=language,
        params=params,
        status=ExportStatus.PENDING,
        progress=0.0,
        attempts=0,
        operator_uid=actor.operator_uid,
        created_at=utcnow(),
    )
    session.add(task)
    await session.flush()
    event_log.add_topic(session, WAKE_TOPIC)
    event_log.add_topic(session, topic(task.id))
    return task


async def _check_queue_room(session: AsyncSession, partner_id: int, max_queued: int) -> None:
    """Refuse a new task when the partner already has `max_queued` unfinished ones.

    On PostgreSQL the partner's row is locked first, so two concurrent starts of one partner count one after the
    other and cannot both take the last place (SQLite's BEGIN IMMEDIATE serialises them already).
    """
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(select(Partner.id).where(Partner.id == partner_id).with_for_update())
    unfinished = await session.scalar(
        select(func.count())
        .select_from(ExportTask)
        .where(ExportTask.partner_id == partner_id, ExportTask.status.in_(UNFINISHED))
    )
    if int(unfinished or 0) >= max_queued:
        raise UserErrors.one(
            ErrorCode.TOO_MANY_EXPORTS,
            f"Your partner already has {max_queued} exports queued or running; wait until one finishes.",
        )


# ---------------------------------------------------------------- rows


def scope_actor(task: ExportTask) -> Actor:
    """The visibility the task was started with: its partner, and the END_USER's own account if any.

    Only `partner_id` and `account_id` matter to `Actor.account_scope`, which is all the worker uses.
    """
    return Actor(
        partner_id=task.partner_id,
        partner_uid="",
        partner_kind=PartnerKind.DISTRIBUTOR,
        role=Role.END_USER if task.scope_account_id is not None else Role.VIEWER,
        method=OperationMethod.SYSTEM,
        operator_uid=task.operator_uid or "",
        operator_name="",
        is_ram=False,
        account_id=task.scope_account_id,
    )


M = accounts.Master
END_USER_SELECT = (
    Account.uid,
    Account.nickname,
    Account.account_type,
    Account.status,
    Account.business_manager,
    Account.remarks,
    Account.linked_at,
    Account.payg_freeze,
    Account.purchase_control,
    M.payg_freeze.label("master_freeze"),
    M.purchase_control.label("master_purchase"),
    QuotaPool.shutdown_policy,
    QuotaPool.delay_credit_cents,
    QuotaPool.credit_control_status,
    QuotaPool.amount_cents,
    QuotaPool.deducted_cents,
    QuotaPool.undeducted_cents,
    QuotaPool.warning_percent,
)


def end_user_queries(task: ExportTask) -> tuple[Select[Any], AnySelect]:
    """(count, rows) for an END_USERS task: the query `endUsers` pages through, with master and pool joined in."""
    actor = scope_actor(task)
    query = accounts.EndUserQuery.from_json(task.params.get("filter") or {})
    sort_params = task.params.get("sort") or {}
    sort = accounts.EndUserSort(
        field=sort_params.get("field", "LINKED_AT"), descending=bool(sort_params.get("descending", True))
    )
    # The master's UID only where the exporter may see the master: an END_USER token of a
    # sub-account may not (its effective freeze and purchase control still read the master).
    master_uid = case((actor.account_scope(M), M.uid), else_=None).label("master_uid")
    rows: AnySelect = accounts.filtered_query(actor, query, sort).with_only_columns(*END_USER_SELECT, master_uid)
    count: Select[Any] = accounts.counted(actor, query)
    return count, rows


def end_user_row(r: Any) -> dict[str, Any]:
    view = PolicyView(
        own_freeze=r.payg_freeze,
        own_purchase=r.purchase_control,
        master_freeze=r.master_freeze,
        master_purchase=r.master_purchase,
        policy=r.shutdown_policy,
        delay_credit_cents=r.delay_credit_cents,
        credit=r.credit_control_status,
    )
    return {
        "uid": r.uid,
        "nickname": r.nickname,
        "account_type": r.account_type,
        "status": r.status,
        "business_manager": r.business_manager,
        "remarks": r.remarks,
        "linked_time": r.linked_at,
        "master_uid": r.master_uid,
        "effective_payg_freeze": view.freeze,
        "effective_purchase_control": view.purchase,
        "shutdown_policy": view.policy,
        "credit_control_status": view.credit,
        "quota_amount": r.amount_cents,
        "available_quota": r.amount_cents - r.deducted_cents - r.undeducted_cents,
        "warning_percent": r.warning_percent,
    }


def adjustment_queries(task: ExportTask) -> tuple[Select[Any], AnySelect]:
    """(count, rows) for a QUOTA_ADJUSTMENTS task: the pool's records in the window, newest first."""
    params = task.params
    conditions = [
        QuotaAdjustment.pool_id == int(params["pool_id"]),
        QuotaAdjustment.occurred_at >= datetime.fromisoformat(params["since"]),
    ]
    if params.get("until"):
        conditions.append(QuotaAdjustment.occurred_at < datetime.fromisoformat(params["until"]))
    rows: AnySelect = (
        select(
            QuotaAdjustment.operation_type,
            QuotaAdjustment.occurred_at,
            QuotaAdjustment.before_cents,
            QuotaAdjustment.value_cents,
            QuotaAdjustment.after_cents,
            QuotaAdjustment.method,
            QuotaAdjustment.operator_uid,
            QuotaAdjustment.operator_name,
            QuotaAdjustment.operator_is_ram,
        )
        .where(*conditions)
        .order_by(QuotaAdjustment.id.desc())
    )
    count: Select[Any] = select(func.count()).select_from(QuotaAdjustment).where(*conditions)
    return count, rows


def operator_label(uid: str | None, name: str | None, is_ram: bool) -> str | None:
    """ "UID (name)" for a main account, "UID (RAM)" for a RAM user, as the console shows the operator."""
    if uid is None:
        return None
    return f"{uid} (RAM)" if is_ram else f"{uid} ({name or uid})"


def adjustment_row(r: Any) -> dict[str, Any]:
    return {
        "operation_type": r.operation_type,
        "operation_time": r.occurred_at,
        "before": r.before_cents,
        "value": r.value_cents,
        "after": r.after_cents,
        "method": r.method,
        "operator": operator_label(r.operator_uid, r.operator_name, r.operator_is_ram),
    }


def display_file_name(task: ExportTask, tz: Any, now: datetime) -> str:
    """What the user sees (Content-Disposition): the sheet name in the task's language, the uid, the local time."""
    base = i18n.sheet_name(task.language, task.kind).replace(" ", "_")
    if task.kind is ExportKind.QUOTA_ADJUSTMENTS and task.params.get("uid"):
        base += "_" + str(task.params["uid"])
    base = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", base)
    return f"{base}_{now.astimezone(tz):%Y%m%d_%H%M%S}.{EXTENSIONS[task.format]}"


#: What each kind is called in the ASCII `filename=` fallback (clients without RFC 5987, such as `curl -OJ`).
ASCII_KIND_NAMES = {ExportKind.END_USERS: "uid-list", ExportKind.QUOTA_ADJUSTMENTS: "quota-adjustments"}


def ascii_file_name(task: ExportTask, tz: Any) -> str:
    """The file name in plain ASCII that still says what the file is: `uid-list-20261201-075328.xlsx`.

    It carries the same local time as the display name (both come from `finished_at`), so the two names match.
    """
    base = ASCII_KIND_NAMES[ExportKind(task.kind)]
    if task.kind is ExportKind.QUOTA_ADJUSTMENTS and task.params.get("uid"):
        base += "-" + re.sub(r"[^A-Za-z0-9._-]", "_", str(task.params["uid"]))
    when = task.finished_at or utcnow()
    return f"{base}-{when.astimezone(tz):%Y%m%d-%H%M%S}.{EXTENSIONS[task.format]}"


# ---------------------------------------------------------------- the worker
