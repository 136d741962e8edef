"""Node types of later domains: each registers a resolver for its type name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

NodeResolver = Callable[[Any, int], Awaitable[Any]]
_RESOLVERS: dict[str, NodeResolver] = {}


def register_node(type_name: str, resolver: NodeResolver) -> None:
    _RESOLVERS[type_name] = resolver


async def resolve_domain_node(info: Any, type_name: str, pk: int) -> Any:
    resolver = _RESOLVERS.get(type_name)
    return await resolver(info, pk) if resolver else None
