"""GraphQL types, inputs, scalars and errors, and the Schema."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import DisableIntrospection
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema_converter import CustomGraphQLEnumType
from strawberry.types import ExecutionContext

from uidhub.schema import enums as _enums  # noqa: F401  (registers enum descriptions)
from uidhub.schema.execution import ReleaseBeforeSend, SharedResultExecutionContext
from uidhub.schema.extensions import MaskInternalErrors, RequestLifecycle, log_errors
from uidhub.schema.limits import MAX_ALIASES, MAX_DEPTH, MAX_SELECTIONS, MAX_TOKENS, Limiter
from uidhub.schema.root import Mutation, Query, Subscription
from uidhub.schema.scalars import SCALAR_MAP

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
    for type_ in schema._schema.type_map.values():
        if isinstance(type_, CustomGraphQLEnumType):
            _serialize_members_by_lookup(type_)
    return schema


def _serialize_members_by_lookup(type_: CustomGraphQLEnumType) -> None:
    """Serialize the enum's own members by one dict lookup; anything else as strawberry does.

    strawberry's serializer scans the type's values comparing `.value` (a Python property) on every call:
    a list page serializes hundreds of enum values. The mapping is built from that same scan, once, so the
    answer is strawberry's own (tests/test_enum_serialize.py compares both for every member of every enum).
    """
    slow = type_.serialize
    wrapped: Any = type_.wrapped_cls
    names: dict[Any, Any] = {member: slow(member) for member in wrapped}

    def serialize(value: Any) -> Any:
        if type(value) is wrapped:
            return names[value]
        return slow(value)

    #: What the compiled read path inlines (uidhub.compiled): this class's members and their names.
    serialize.members = (wrapped, names)  # type: ignore[attr-defined]
    type_.serialize = serialize  # type: ignore[method-assign,assignment]
