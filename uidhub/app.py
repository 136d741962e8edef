"""The ASGI application: GraphQL over HTTP and websockets, health checks, downloads, background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import timedelta
from typing import Any

from cross_web import HTTPException
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http.exceptions import NonJsonMessageReceived, NonTextMessageReceived
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from uidhub import gctune, observe, routes, wire
from uidhub.background import STARTERS
from uidhub.compiled import CompiledReads
from uidhub.dashboard import routes as dashboard_routes
from uidhub.db import Database
from uidhub.logs import current_request_id
from uidhub.ratelimit import RateLimiter, RateLimitMiddleware
from uidhub.resolvers.auth import ActorCache, authenticate, authenticate_cached, bearer
from uidhub.runtime import Runtime
from uidhub.schema import build_schema
from uidhub.schema.context import Context
from uidhub.settings import Settings
from uidhub.tokenwatch import TokenWatch
from uidhub.transactions import retry_transaction

log = logging.getLogger("uidhub")

MAX_BODY_BYTES = 1_000_000
#: A websocket message is refused past the size of an HTTP body (close 4400), before it is parsed.
MAX_WS_MESSAGE_CHARS = MAX_BODY_BYTES
WS_INIT_TIMEOUT = timedelta(seconds=10)
MAX_SUBSCRIPTIONS_PER_CONNECTION = 20


class AppState:
    """The runtime plus what only the ASGI app has: observability, the HTTP actor cache, the watch over tokens."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.observability = observe.setup(settings, runtime.db)
        #: Token → actor for a few seconds: a request pays no session of its own to authenticate.
        self.actor_cache = ActorCache(settings.token_cache_seconds)
        # Each pass of the watch (at once on a revocation's Redis wake-up) also empties the cache.
        self.token_watch = TokenWatch(
            runtime.db.background, runtime.bus, settings.token_recheck_seconds, on_pass=self.actor_cache.clear
        )


def _error(status: int, message: str, code: str, **headers: str) -> JSONResponse:
    """A request error in the GraphQL-over-HTTP shape: `{"errors": [{"message", "extensions": {"code"}}]}`."""
    return JSONResponse(
        {"errors": [{"message": message, "extensions": {"code": code}}]}, status_code=status, headers=headers or None
    )


#: extensions.code of strawberry's own HTTP errors, by status.
_HTTP_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 415: "UNSUPPORTED_MEDIA_TYPE"}


class CodedHTTPException(HTTPException):
    """An HTTP request error with its extensions.code."""

    def __init__(self, status_code: int, reason: str, code: str) -> None:
        super().__init__(status_code, reason)
        self.code = code


class JSONTooDeep(json.JSONDecodeError):
    """JSON nested past the recursion limit: strawberry treats it as any undecodable message (4400, 400)."""


def decode_json(data: str | bytes) -> object:
    try:
        return json.loads(data)
    except RecursionError:
        raise JSONTooDeep("JSON nested too deeply", "", 0) from None


class LimitedWebSocketAdapter(ASGIWebSocketAdapter):
    """Messages above MAX_WS_MESSAGE_CHARS close the socket with 4400 before they are parsed."""

    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object, None]:
        try:
            while self.ws.application_state != WebSocketState.DISCONNECTED:
                text = await self.ws.receive_text()
                if len(text) > MAX_WS_MESSAGE_CHARS:
                    await self.close(4400, f"Message above {MAX_WS_MESSAGE_CHARS} characters")
                    return
                try:
                    message = self.view.decode_json(text)
                except json.JSONDecodeError as error:  # too deep included: the handler closes with 4400
                    if ignore_parsing_errors:
                        continue
                    raise NonJsonMessageReceived from error
                if not _valid_strings(message):
                    await self.close(4400, "Message with a lone UTF-16 surrogate")
                    return
                yield message
        except KeyError as error:
            raise NonTextMessageReceived from error
        except WebSocketDisconnect:
            pass


def _valid_strings(value: object) -> bool:
    """No string in a parsed JSON value holds a lone surrogate (JSON's "\\ud800" escape decodes to one)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    except (RecursionError, ValueError):
        return False
    return True


class UidhubGraphQL(GraphQL):
    """Strawberry's ASGI view with our context, websocket authentication and coded request errors."""

    websocket_adapter_class = LimitedWebSocketAdapter

    def __init__(self, state: AppState, **kwargs: Any) -> None:
        super().__init__(
            build_schema(
                introspection=state.runtime.settings.introspection,
                extra_extensions=state.observability.schema_extensions(),
            ),
            graphql_ide="graphiql" if state.runtime.settings.graphiql else None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=WS_INIT_TIMEOUT,
            max_subscriptions_per_connection=MAX_SUBSCRIPTIONS_PER_CONNECTION,
            keep_alive=True,
            keep_alive_interval=15,
            **kwargs,
        )
        self.state = state

    def decode_json(self, data: str | bytes) -> object:
        return decode_json(data)

    def encode_json(self, data: object) -> str:
        # Text, not bytes: strawberry sends bytes over a websocket as binary frames, which
        # graphql-transport-ws clients do not read. The same encoder as the compiled path's.
        return wire.encode(data).decode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """strawberry answers its HTTP errors in plain text: ours are JSON with extensions.code."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            response = await self.run(Request(scope=scope, receive=receive))
        except HTTPException as error:
            code = getattr(error, "code", None) or _HTTP_CODES.get(error.status_code, "BAD_REQUEST")
            response = _error(error.status_code, error.reason, code)
        await response(scope, receive, send)

    async def execute_single(
        self, request: Any, request_adapter: Any, sub_response: Any, context: Any, root_value: Any, request_data: Any
    ) -> ExecutionResult:
        """strawberry's, with subscriptions refused over HTTP (it would execute them as queries) and coded errors."""
        allowed = OperationType.from_http(request_adapter.method) - {OperationType.SUBSCRIPTION}
        if request_adapter.method == "GET" and not self.allow_queries_via_get:
            allowed -= {OperationType.QUERY}
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.SUBSCRIPTION:
                message = "Subscriptions go over the websocket (graphql-transport-ws), not HTTP."
            else:
                message = f"{error.operation_type.value} operations are not allowed over HTTP {request_adapter.method}."
            raise CodedHTTPException(400, message, "OPERATION_NOT_ALLOWED") from None
        except CannotGetOperationTypeError as error:
            raise CodedHTTPException(400, error.as_http_error_reason(), "OPERATION_NOT_FOUND") from None
        except MissingQueryError:
            raise CodedHTTPException(400, "No GraphQL query found in the request.", "BAD_REQUEST") from None

    async def create_websocket_response(self, request: WebSocket, subprotocol: str | None) -> WebSocket:
        """Accept even an unsupported subprotocol, so that strawberry can close with 4406 and the client sees why.

        A client offered only legacy `graphql-ws` and answered without it aborts the handshake
        (graphql-ws, Node's `ws`): it never learns the reason.
        """
        offered = request.scope.get("subprotocols") or []
        await request.accept(subprotocol=subprotocol or (offered[0] if offered else None))
        return request

    async def get_context(self, request: Any, response: Any) -> Context:  # type: ignore[override]
        if isinstance(request, WebSocket):
            return Context(self.state.runtime, request=request, response=response, websocket=True)
        scope_state = request.scope.get("state", {})
        return Context(
            self.state.runtime,
            request=request,
            response=response,
            actor=scope_state.get("actor"),
            request_id=scope_state.get("request_id"),
        )

    async def on_ws_connect(self, context: Context) -> Any:  # type: ignore[override]
        params = context.connection_params or {}
        value = params.get("authorization") or params.get("Authorization")
        token = bearer(value) if isinstance(value, str) else None
        async with self.state.runtime.db.read() as session:
            actor = await authenticate(session, token)
        if actor is None:
            raise ConnectionRejectionError({"message": "Invalid or missing token."})
        context.actor = actor
        self.state.token_watch.register(actor.token_id, context.request)  # closed with 4403 once revoked
        return None


class GraphQLEndpoint:
    """Checks what strawberry should never see: oversized or malformed bodies and missing tokens."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.view = UidhubGraphQL(state)
        # The compiled read path (uidhub.compiled); off with UIDHUB_COMPILED_READS=false, and while tracing,
        # whose spans are per strawberry operation.
        self.compiled = (
            CompiledReads(self.view.schema, state.runtime)  # type: ignore[arg-type]
            if state.runtime.settings.compiled_reads and state.observability.tracing is None
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.view(scope, receive, send)
            return
        request_id = current_request_id()
        response = await self._check(scope, receive, request_id)
        if isinstance(response, Response):
            await response(scope, receive, send)
            return
        body = response

        replayed = False
        started = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        budget = self.state.runtime.settings.request_timeout_seconds
        timeout = asyncio.timeout(budget)
        try:
            async with timeout:
                if not await self._compiled(scope, body, replay, tracked_send):
                    await self.view(scope, replay, tracked_send)
        except TimeoutError:
            if not timeout.expired():
                raise
            # Validation and execution yield to the loop, so the budget can cancel them; the
            # request's session is closed (a mutation rolled back) as the cancellation unwinds.
            log.warning("request %s cancelled after its time budget of %ss", request_id, budget)
            if not started:
                response = _error(
                    503,
                    f"The request took longer than {budget:g} s and was cancelled (request id {request_id}).",
                    "REQUEST_TIMEOUT",
                )
                await response(scope, receive, send)

    async def _compiled(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
        """Answer from the compiled read path when it covers the request; False: strawberry answers it."""
        if self.compiled is None:
            return False
        state = scope["state"]
        answer = await self.compiled.respond(body, state["actor"], state["request_id"], Request(scope))
        if answer is None:
            return False
        await Response(answer, media_type="application/json")(scope, receive, send)
        return True

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
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return _error(
                415, "POST /graphql takes a JSON body (Content-Type: application/json).", "UNSUPPORTED_MEDIA_TYPE"
            )
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "The request body is not valid JSON.", "BAD_REQUEST")
        except RecursionError:
            return _error(400, "The request body is JSON nested too deeply.", "BAD_REQUEST")
        if not isinstance(parsed, dict) or not isinstance(parsed.get("query"), str):
            return _error(400, 'The body must be a JSON object with a "query" string.', "BAD_REQUEST")
        if not _valid_strings(parsed):
            # JSON's "\\ud800" escape decodes to a lone surrogate that no database or encoder accepts.
            return _error(
                400, "The request body holds a lone UTF-16 surrogate: strings must be valid Unicode.", "BAD_REQUEST"
            )
        token = bearer(headers.get("authorization"))

        async def read_actor() -> Any:
            return await authenticate_cached(self.state.runtime.db.read, self.state.actor_cache, token)

        try:
            # Retried once on a connection the server had closed (no pre-ping): the pool is renewed by then.
            actor = await retry_transaction(read_actor, attempts=2, what=f"request {request_id} authentication")
        except (SQLAlchemyError, OSError) as exc:
            # No connection within the pool timeout, or the database down: retryable, so say when.
            log.warning("request %s: database unavailable: %s", request_id, exc)
            retry_after = str(self.state.runtime.settings.retry_after_seconds)
            return _error(
                503,
                f"The database is busy or unavailable; retry in {retry_after} s (request id {request_id}).",
                "SERVICE_UNAVAILABLE",
                **{"Retry-After": retry_after},
            )
        if actor is None:
            return _error(401, "A valid bearer token is required.", "UNAUTHENTICATED", **{"WWW-Authenticate": "Bearer"})
        scope.setdefault("state", {})
        scope["state"]["actor"] = actor
        scope["state"]["request_id"] = request_id
        return body


async def healthz(_request: Request) -> Response:
    return PlainTextResponse("ok")


def create_app(settings: Settings | None = None, *, db: Database | None = None, tune_gc: bool = False) -> Starlette:
    """The app over a new runtime for `settings`; `db` (a test's database) is used through a view carrying the bus.

    `app.state.uidhub.runtime` is that runtime: writes through its `db` wake the app's subscribers. `tune_gc`
    (a serving process, uidhub.asgi) freezes what start-up built once the lifespan has started.
    """
    runtime = Runtime.open(settings or Settings(), db=db)
    settings, database, bus = runtime.settings, runtime.db, runtime.bus
    state = AppState(runtime)
    endpoint = GraphQLEndpoint(state)
    limiter = RateLimiter(settings)

    async def readyz(_request: Request) -> Response:
        # Answered within readyz_timeout_seconds even when the database hangs: a probe must not hang.
        ok = await database.ready(settings.readyz_timeout_seconds)
        return PlainTextResponse("ready" if ok else "database unavailable", status_code=200 if ok else 503)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await bus.start()
        state.token_watch.start()
        stops = [await start(runtime) for start in STARTERS]
        stops.insert(0, state.token_watch.stop)
        if tune_gc and settings.gc_freeze:
            gctune.freeze_after_startup(settings.gc_gen0_threshold)
        try:
            async with state.observability.lifespan():
                yield
        finally:
            for stop in reversed(stops):
                with contextlib.suppress(Exception):
                    await stop()
            await limiter.close()
            await runtime.close()

    app = Starlette(
        routes=[
            Route("/graphql", endpoint, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *routes.extra_routes(runtime),
            *dashboard_routes(),  # GET /dashboard: the live operations page
            *state.observability.routes(),
        ],
        # Observability outside the rate limiter: refused requests are counted and carry a request id too.
        middleware=[*state.observability.middleware(), Middleware(RateLimitMiddleware, limiter=limiter)],
        lifespan=lifespan,
    )
    app.state.uidhub = state
    app.state.compiled_reads = endpoint.compiled  # for tests and bench/: its counters
    return app
