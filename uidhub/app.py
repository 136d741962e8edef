"""The ASGI application: GraphQL over HTTP and websockets, health checks, downloads, background tasks."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from notifications.bus import Bus, make_bus
from resolvers.auth import authenticate, bearer
from resolvers.exports import start_export_worker
from schema import build_schema
from schema.context import Context, Services
from uidhub.db import Database
from uidhub.ratelimit import RateLimiter, RateLimitMiddleware
from uidhub.settings import Settings

log = logging.getLogger("uidhub")

MAX_BODY_BYTES = 1_000_000
WS_INIT_TIMEOUT = timedelta(seconds=10)
MAX_SUBSCRIPTIONS_PER_CONNECTION = 20

BackgroundStarter = Callable[["AppState"], Awaitable[Callable[[], Awaitable[None]]]]
#: Background services (email sender, export worker) register a starter here;
#: each returns its stop function.
BACKGROUND: list[BackgroundStarter] = [start_export_worker]


class AppState:
    def __init__(self, settings: Settings, db: Database, bus: Bus) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.services = Services(settings=settings, db=db)


def _error(status: int, message: str, code: str, **headers: str) -> JSONResponse:
    return JSONResponse({"data": None, "errors": [{"message": message, "extensions": {"code": code}}]},
                        status_code=status, headers=headers or None)


class UidhubGraphQL(GraphQL):
    """Strawberry's ASGI view with our context and websocket authentication."""

    def __init__(self, state: AppState, **kwargs: Any) -> None:
        super().__init__(
            build_schema(introspection=state.settings.introspection),
            graphql_ide="graphiql" if state.settings.graphiql else None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=WS_INIT_TIMEOUT,
            max_subscriptions_per_connection=MAX_SUBSCRIPTIONS_PER_CONNECTION,
            keep_alive=True,
            keep_alive_interval=15,
            **kwargs,
        )
        self.state = state

    async def get_context(self, request: Any, response: Any) -> Context:  # type: ignore[override]
        if isinstance(request, WebSocket):
            return Context(self.state.services, request=request, response=response, websocket=True)
        scope_state = request.scope.get("state", {})
        return Context(
            self.state.services,
            request=request,
            response=response,
            actor=scope_state.get("actor"),
            request_id=scope_state.get("request_id"),
        )

    async def on_ws_connect(self, context: Context) -> Any:  # type: ignore[override]
        params = context.connection_params or {}
        value = params.get("authorization") or params.get("Authorization")
        token = bearer(value) if isinstance(value, str) else None
        async with self.state.db.read() as session:
            actor = await authenticate(session, token)
        if actor is None:
            raise ConnectionRejectionError({"message": "Invalid or missing token."})
        context.actor = actor
        return None


class GraphQLEndpoint:
    """Checks what strawberry should never see: oversized or malformed bodies and missing tokens."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.view = UidhubGraphQL(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.view(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        response = await self._check(scope, receive, request_id)
        if isinstance(response, Response):
            await response(scope, receive, send)
            return
        body = response

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.view(scope, replay, send)

    async def _check(self, scope: Scope, receive: Receive, request_id: str) -> Response | bytes:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _error(413, f"Request body above {MAX_BODY_BYTES} bytes.", "PAYLOAD_TOO_LARGE")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return Response(status_code=400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return _error(413, f"Request body above {MAX_BODY_BYTES} bytes.", "PAYLOAD_TOO_LARGE")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if "json" in headers.get("content-type", "application/json"):
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                return _error(400, "The request body is not valid JSON.", "BAD_REQUEST")
            if not isinstance(parsed, dict) or not isinstance(parsed.get("query"), str):
                return _error(400, 'The body must be a JSON object with a "query" string.', "BAD_REQUEST")
        token = bearer(headers.get("authorization"))
        try:
            async with self.state.db.read() as session:
                actor = await authenticate(session, token)
        except (SQLAlchemyError, OSError):
            log.exception("request %s: database unavailable", request_id)
            return _error(503, f"The database is unavailable (request id {request_id}).", "SERVICE_UNAVAILABLE")
        if actor is None:
            return _error(401, "A valid bearer token is required.", "UNAUTHENTICATED", **{"WWW-Authenticate": "Bearer"})
        scope.setdefault("state", {})
        scope["state"]["actor"] = actor
        scope["state"]["request_id"] = request_id
        return body


async def healthz(_request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app(settings: Settings | None = None, *, db: Database | None = None) -> Starlette:
    settings = settings or Settings()
    database = db or Database(settings.database_url)
    bus = make_bus(settings.redis_url)
    database.bus = bus
    database.settings = settings
    state = AppState(settings, database, bus)
    endpoint = GraphQLEndpoint(state)
    limiter = RateLimiter(settings)

    async def readyz(_request: Request) -> Response:
        ok = await database.ping()
        return PlainTextResponse("ready" if ok else "database unavailable", status_code=200 if ok else 503)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        from uidhub.background import start_housekeeping, start_outbox

        await bus.start()
        stops = [await start(state) for start in (start_outbox, start_housekeeping, *BACKGROUND)]
        try:
            yield
        finally:
            for stop in reversed(stops):
                with contextlib.suppress(Exception):
                    await stop()
            await bus.close()
            await limiter.close()
            await database.dispose()

    from uidhub import routes  # domain HTTP routes (downloads) register themselves

    app = Starlette(
        routes=[
            Route("/graphql", endpoint, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *routes.extra_routes(state),
        ],
        lifespan=lifespan,
        middleware=[Middleware(RateLimitMiddleware, limiter=limiter)],
    )
    app.state.uidhub = state
    return app
