"""HTTP routes beyond GraphQL: export downloads."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from resolvers import exports
from resolvers.actor import Permission
from resolvers.auth import authenticate, bearer
from resolvers.pagination import InvalidArgument

if TYPE_CHECKING:
    from uidhub.app import AppState


def content_disposition(file_name: str) -> str:
    """`attachment` with an ASCII `filename` fallback and, for non-ASCII names, RFC 5987 `filename*`."""
    ascii_name = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in file_name)
    value = f'attachment; filename="{ascii_name}"'
    if ascii_name != file_name:
        value += f"; filename*=UTF-8''{quote(file_name, safe='')}"
    return value


def _coded(status: int, message: str, code: str, **headers: str) -> Response:
    """The GraphQL-over-HTTP error shape, as /graphql answers its request errors."""
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]},
                        status_code=status, headers=headers or None)


def _not_found() -> Response:
    return _coded(404, "No such export file.", "NOT_FOUND")


def extra_routes(state: AppState) -> list[BaseRoute]:
    async def download(request: Request) -> Response:
        """GET /exports/{id}/download: the finished file, for the partner (and END_USER account) that started it.

        Another partner's task, another END_USER account's task, an unfinished, missing or expired file: 404,
        indistinguishable from a task that does not exist.
        """
        token = bearer(request.headers.get("authorization"))
        async with state.db.read() as session:
            actor = await authenticate(session, token)
            if actor is None:
                return _coded(401, "A valid bearer token is required.", "UNAUTHENTICATED",
                              **{"WWW-Authenticate": "Bearer"})
            if not actor.can(Permission.EXPORT):
                return _not_found()
            from schema.exports import parse_task_id  # schema imports resolvers, never the reverse

            try:
                pk = parse_task_id(request.path_params["task_id"])
            except InvalidArgument:  # an id past BIGINT names no task
                pk = None
            task = await exports.find_task(session, actor, pk) if pk is not None else None
        if task is None or not exports.is_downloadable(task) or task.file_path is None:
            return _not_found()
        file_name = task.file_name or f"export-{task.id}.{exports.EXTENSIONS[task.format]}"
        return FileResponse(
            task.file_path,
            media_type=exports.CONTENT_TYPES[task.format],
            headers={"Content-Disposition": content_disposition(file_name), "Cache-Control": "no-store"},
        )

    return [Route("/exports/{task_id}/download", download, methods=["GET"])]
