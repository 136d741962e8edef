"""GraphQL types, inputs, scalars and errors, and the Schema."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import DisableIntrospection
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from schema import enums as _enums  # noqa: F401  (registers enum descriptions)
from schema.execution import ReleaseBeforeSend, SharedResultExecutionContext
from schema.extensions import MaskInternalErrors, RequestLifecycle, log_errors
from schema.limits import MAX_ALIASES, MAX_DEPTH, MAX_SELECTIONS, MAX_TOKENS, Limiter
from schema.root import Mutation, Query, Subscription
from schema.scalars import SCALAR_MAP

__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_SELECTIONS", "MAX_TOKENS", "UidhubSchema", "build_schema"]


def _has_fields(cls: type) -> bool:
    definition = getattr(cls, "__strawberry_definition__", None)
    return bool(definition and definition.fields)


class UidhubSchema(strawberry.Schema):
    """strawberry's Schema with our error log: client mistakes without tracebacks, internal errors with them."""

    limiter: Limiter

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        log_errors(errors, execution_context)


def build_schema(*, introspection: bool = True, extra_extensions: Sequence[Any] = ()) -> UidhubSchema:
    """The served schema. Extensions are classes or factories: one instance per operation.

    The limits and the parse and validation caches live in one Limiter built here, once: the
    validation rules are the same objects for every request, so the validation cache hits.
    `extra_extensions` (metrics, tracing, log context) come first: they wrap the others.
    """
    limiter = Limiter()
    extensions: list[Any] = [
        *extra_extensions,
        MaskInternalErrors,
        limiter.extension,
        RequestLifecycle,
        ReleaseBeforeSend,
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    schema = UidhubSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription if _has_fields(Subscription) else None,
        extensions=extensions,
        execution_context_class=SharedResultExecutionContext,
        config=StrawberryConfig(auto_camel_case=True, disable_field_suggestions=True, scalar_map=SCALAR_MAP),
    )
    schema.limiter = limiter
    return schema
