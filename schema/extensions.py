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
    GraphQLSyntaxError,
    Node,
    ObjectFieldNode,
    OperationType,
    Visitor,
    visit,
)
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionContext

from schema.context import Context
from schema.limits import OPERATION_NAME_REQUIRED, PARSE_FAILED, TOO_COMPLEX, VALIDATION_FAILED
from uidhub.transactions import is_unavailable

log = logging.getLogger("uidhub.graphql")

#: Exceptions whose message is meant for the client.
_CLIENT_CODES = {
    "FORBIDDEN", "BAD_USER_INPUT", "UNAUTHENTICATED", "BAD_REQUEST", "OPERATION_NOT_ALLOWED",
    TOO_COMPLEX, PARSE_FAILED, VALIDATION_FAILED, OPERATION_NAME_REQUIRED,
}
_SUGGESTION = "Did you mean"


def is_client_error(error: GraphQLError) -> bool:
    """The client's mistake (bad document, input, role): its message is for the client, no traceback is logged."""
    original = error.original_error
    code = (error.extensions or {}).get("code")
    if code in _CLIENT_CODES or isinstance(original, GraphQLError):
        return True
    if isinstance(original, InvalidOperationTypeError | CannotGetOperationTypeError):
        return True  # a query sent over the websocket, an unknown operationName
    if original is None:
        # Document, variable and request errors have no path; with a path it is graphql-core's own
        # execution error (a null for a non-null field): a fault of ours.
        return error.path is None
    # A scalar refused a value while the document or the variables were checked (Money "1e3", a bad DateTime).
    return error.path is None and isinstance(original, ValueError)


def _client_code(error: GraphQLError) -> str:
    """extensions.code for a client error that has none yet."""
    original = error.original_error
    if isinstance(error, GraphQLSyntaxError) or isinstance(original, GraphQLSyntaxError):
        return PARSE_FAILED
    if isinstance(original, InvalidOperationTypeError | CannotGetOperationTypeError):
        return "OPERATION_NOT_ALLOWED"
    return "BAD_USER_INPUT"  # variable values and scalar input refused


def log_errors(errors: list[GraphQLError], execution_context: ExecutionContext | None) -> None:
    """Schema.process_errors: client mistakes at INFO in one line, internal errors at ERROR with the traceback.

    strawberry's default logs every error at ERROR with a traceback: a fuzz run of client mistakes
    filled the log with tracebacks that were no fault.
    """
    context = execution_context.context if execution_context is not None else None
    request_id = getattr(context, "request_id", "-")
    for error in errors:
        if is_client_error(error):
            code = (error.extensions or {}).get("code") or _client_code(error)
            log.info("client error in request %s: %s: %s", request_id, code, error.message)
        elif is_unavailable(error.original_error):
            # Answered SERVICE_UNAVAILABLE (503, retryable): the database's state, not a fault of ours.
            log.warning("request %s at %s: database unavailable: %s", request_id, error.path, error.original_error)
        else:
            log.error("internal error in request %s at %s", request_id, error.path, exc_info=error.original_error)


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
            if is_client_error(error):
                if error.path is None and isinstance(original, ValueError) and not isinstance(original, GraphQLError):
                    # A scalar refused a literal while the document was validated (Money "1e3", a float):
                    # the client's mistake, named by the argument it was given for.
                    error = _name_argument(error, self.execution_context.graphql_document)
                if not (error.extensions or {}).get("code"):
                    error.extensions = {**(error.extensions or {}), "code": _client_code(error)}
                masked.append(error)
                continue
            if is_unavailable(original):
                # No connection within the pool timeout, the database full or down, or a deadlock that
                # outlived its retries: a coded, retryable answer (HTTP 503), never a masked internal error.
                masked.append(_unavailable(error, request_id, context))
                continue
            # Logged with its traceback by Schema.process_errors (log_errors) before this runs.
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
