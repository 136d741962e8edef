"""Schema extensions: request lifecycle and internal-error masking.

Passed to the Schema as classes or factories so every operation gets its own
instance (a shared instance would share state across concurrent requests).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from graphql import GraphQLError, OperationType
from strawberry.extensions import SchemaExtension

from schema.context import Context

log = logging.getLogger("uidhub.graphql")

#: Exceptions whose message is meant for the client.
_CLIENT_CODES = {"FORBIDDEN", "BAD_USER_INPUT", "UNAUTHENTICATED", "BAD_REQUEST"}


class RequestLifecycle(SchemaExtension):
    """Mutations get a write session; the session closes when the operation ends.

    Queries and mutations are served over HTTP only: a websocket context lives
    as long as the connection and must not hold a session between events.
    """

    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context.context
        if isinstance(context, Context):
            operation = self.execution_context.operation_type
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
            original = error.original_error
            code = (error.extensions or {}).get("code")
            if original is None or code in _CLIENT_CODES or isinstance(original, GraphQLError):
                masked.append(error)
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
