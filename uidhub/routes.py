"""HTTP routes beyond GraphQL: export downloads."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from uidhub.resolvers import exports
from uidhub.resolvers.actor import Permission
from uidhub.resolvers.auth import authenticate, bearer
from uidhub.resolvers.pagination import InvalidArgument
from uidhub.schema.exports import parse_task_id

if TYPE_CHECKING:
    from uidhub.runtime import Runtime


def content_disposition(file_name: str, ascii_fallback: str) -> str:
    """`attachment` with the name as is when it is plain ASCII; else an ASCII `filename` plus RFC 5987 `filename*`.

    Clients that ignore `filename*` (curl -OJ, some download managers) save under the fallback, so it must say
    what the file is (`uid-list-20261201-075328.xlsx`), not be the localized name with every letter replaced.
    """
    if all(0x20 <= ord(c) < 0x7F and c not in '"\\' for c in file_name):
        return f'attachment; filename="{file_name}"'
    return f"attachment; filename=\"{ascii_fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"


def _coded(status: int, message: str, code: str, **headers: str) -> Response:
    """The GraphQL-over-HTTP error shape, as /graphql answers its request errors."""
    return JSONResponse(
        {"errors": [{"message": message, "extensions": {"code": code}}]}, status_code=status, headers=headers or None
    )


def _not_found() -> Response:
    return _coded(404, "No such export file.", "NOT_FOUND")


def extra_routes(runtime: Runtime) -> list[BaseRoute]:
    async def download(request: Request) -> Response:
        """GET /exports/{id}/download: the finished file, for the partner (and END_USER account) that started it.

        Another partner's task, another END_USER account's task, an unfinished, missing or expired file: 404,
        indistinguishable from a task that does not exist.
        """
        token = bearer(request.headers.get("authorization"))
        async with runtime.db.read() as session:
            actor = await authenticate(session, token)
            if actor is None:
                return _coded(
                    401, "A valid bearer token is required.", "UNAUTHENTICATED", **{"WWW-Authenticate": "Bearer"}
                )
            if not actor.can(Permission.EXPORT):
                return _not_found()
            try:
                pk = parse_task_id(request.path_params["task_id"])
            except InvalidArgument:  # an id past BIGINT names no task
                pk = None
            task = await exports.find_task(session, actor, pk) if pk is not None else None
        if task is None or not exports.is_downloadable(task) or task.file_path is None:
            return _not_found()
        fallback = exports.ascii_file_name(task, runtime.settings.tz)
        disposition = content_disposition(task.file_name or fallback, fallback)
        return FileResponse(
            task.file_path,
            media_type=exports.CONTENT_TYPES[task.format],
            headers={"Content-Disposition": disposition, "Cache-Control": "no-store"},
        )

    return [Route("/exports/{task_id}/download", download, methods=["GET"])]
