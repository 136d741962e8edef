"""GraphQL types, inputs, scalars and errors, and the Schema."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import strawberry
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)
from strawberry.schema.config import StrawberryConfig

from schema import enums as _enums  # noqa: F401  (registers enum descriptions)
from schema.execution import ReleaseBeforeSend, SharedResultExecutionContext
from schema.extensions import MaskInternalErrors, RequestLifecycle
from schema.root import Mutation, Query, Subscription
from schema.scalars import SCALAR_MAP

MAX_DEPTH = 12
MAX_ALIASES = 50
MAX_TOKENS = 5000


def _has_fields(cls: type) -> bool:
    definition = getattr(cls, "__strawberry_definition__", None)
    return bool(definition and definition.fields)


def build_schema(*, introspection: bool = True, extra_extensions: Sequence[Any] = ()) -> strawberry.Schema:
    """The served schema. Extensions are classes or factories: one instance per operation.

    `extra_extensions` (metrics, tracing, log context) come first: they wrap the others.
    """
    extensions: list = [
        *extra_extensions,
        MaskInternalErrors,
        functools.partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
        functools.partial(MaxAliasesLimiter, max_alias_count=MAX_ALIASES),
        functools.partial(QueryDepthLimiter, max_depth=MAX_DEPTH),
        RequestLifecycle,
        ReleaseBeforeSend,
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription if _has_fields(Subscription) else None,
        extensions=extensions,
        execution_context_class=SharedResultExecutionContext,
        config=StrawberryConfig(auto_camel_case=True, disable_field_suggestions=True, scalar_map=SCALAR_MAP),
    )
