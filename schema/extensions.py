"""Schema extensions: request lifecycle and internal-error masking.

Passed to the Schema as classes or factories so every operation gets its own
instance (a shared instance would share state across concurrent requests).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from graphql import (
    BREAK,
    ArgumentNode,
    DocumentNode,
    GraphQLError,
    Node,
    ObjectFieldNode,
    OperationType,
    Visitor,
    visit,
)
from strawberry.extensions import SchemaExtension

from schema.context import Context
from uidhub.transactions import is_unavailable

log = logging.getLogger("uidhub.graphql")

#: Exceptions whose message is meant for the client.
_CLIENT_CODES = {"FORBIDDEN", "BAD_USER_INPUT", "UNAUTHENTICATED", "BAD_REQUEST"}
_SUGGESTION = "Did you mean"


class RequestLifecycle(SchemaExtension):
    """Mutations get a write session; the session closes when the operation ends.

    Queries and mutations are served over HTTP only: a websocket context lives
    as long as the connection and must not hold a session between events.
    """

    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context.context
        if isinstance(context, Context):
            # strawberry's own OperationType enum, not graphql-core's: compare the values.
            operation = OperationType(self.execution_context.operation_type.value)
            if context.websocket and operation is not OperationType.SUBSCRIPTION:
                raise GraphQLError(
                    "Queries and mutations go over HTTP POST /graphql; websockets carry subscriptions only.",
                    extensions={"code": "BAD_REQUEST"},
                )
            context.write = operation is OperationType.MUTATION
        yield

    async def on_operation(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            context = self.execution_context.context
            if isinstance(context, Context) and not context.websocket:
                await context.close()


class MaskInternalErrors(SchemaExtension):
    """Unexpected exceptions reach the client as a generic message with the request id; the log has the rest."""

    def on_operation(self):  # type: ignore[no-untyped-def]
        yield
        result = self.execution_context.result
        errors = getattr(result, "errors", None)
        if not errors:
            return
        context = self.execution_context.context
        request_id = getattr(context, "request_id", "-")
        masked: list[GraphQLError] = []
        for error in errors:
            # No schema hints for strangers: strawberry strips "Did you mean" from unknown fields only,
            # graphql-core still suggests argument names, enum values and input fields.
            if _SUGGESTION in error.message:
                error.message = error.message.split(_SUGGESTION)[0].rstrip()
            original = error.original_error
            code = (error.extensions or {}).get("code")
            if original is None or code in _CLIENT_CODES or isinstance(original, GraphQLError):
                masked.append(error)
                continue
            if error.path is None and isinstance(original, ValueError):
                # A scalar refused a literal while the document was validated (Money "1e3", a float):
                # the client's mistake, named by the argument it was given for.
                masked.append(_name_argument(error, self.execution_context.graphql_document))
                continue
            if is_unavailable(original):
                # No connection within the pool timeout, the database full or down, or a deadlock that
                # outlived its retries: a coded, retryable answer (HTTP 503), never a masked internal error.
                log.warning("request %s at %s: database unavailable: %s", request_id, error.path, original)
                masked.append(_unavailable(error, request_id, context))
                continue
            log.error("internal error in request %s at %s", request_id, error.path, exc_info=original)
            masked.append(
                GraphQLError(
                    f"Internal server error (request id {request_id}).",
                    nodes=error.nodes,
                    source=error.source,
                    positions=error.positions,
                    path=error.path,
                    original_error=None,
                    extensions={"code": "INTERNAL_SERVER_ERROR", "requestId": request_id},
                )
            )
        result.errors = masked  # type: ignore[union-attr]


def _unavailable(error: GraphQLError, request_id: str, context: Any) -> GraphQLError:
    """SERVICE_UNAVAILABLE for `error`; over HTTP the response becomes a 503 with Retry-After."""
    settings = getattr(context, "settings", None)
    retry_after = str(getattr(settings, "retry_after_seconds", 1))
    response = getattr(context, "response", None)
    if response is not None and hasattr(response, "headers") and not getattr(context, "websocket", False):
        response.status_code = 503
        response.headers["Retry-After"] = retry_after
    return GraphQLError(
        f"The database is busy or unavailable; retry in {retry_after} s (request id {request_id}).",
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={"code": "SERVICE_UNAVAILABLE", "requestId": request_id, "retryAfter": int(retry_after)},
    )


def _name_argument(error: GraphQLError, document: DocumentNode | None) -> GraphQLError:
    """The validation error with the argument path of its value literal ("input.amount") in front."""
    target = error.nodes[0] if error.nodes else None
    names: list[str] = []
    if target is not None and document is not None:

        class Finder(Visitor):
            def enter(self, node: Node, _key: Any, parent: Any, _path: Any, ancestors: list[Any]) -> Any:
                if node is target:
                    for ancestor in [*ancestors, parent]:
                        if isinstance(ancestor, ArgumentNode | ObjectFieldNode):
                            names.append(ancestor.name.value)
                    return BREAK
                return None

        visit(document, Finder())
    if not names:
        return error
    return GraphQLError(
        f"Invalid value for argument '{'.'.join(names)}': {error.message}",
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        extensions={"code": "GRAPHQL_VALIDATION_FAILED", "argument": ".".join(names)},
    )
