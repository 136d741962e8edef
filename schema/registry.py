"""node(id:): every Node type registers the resolver of its type name here, next to the type.

The one mechanism for global ids: the resolver loads the row and applies the
viewer's scope (null when it does not exist or is not the viewer's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

NodeResolver = Callable[[Any, int], Awaitable[Any]]
_RESOLVERS: dict[str, NodeResolver] = {}


def register_node(type_name: str, resolver: NodeResolver) -> None:
    if type_name in _RESOLVERS and _RESOLVERS[type_name] is not resolver:
        raise ValueError(f"node type {type_name!r} is registered twice")
    _RESOLVERS[type_name] = resolver


def registered_types() -> set[str]:
    """The type names node(id:) resolves (tests compare them with the schema's Node types)."""
    return set(_RESOLVERS)


async def resolve_registered_node(info: Any, type_name: str, pk: int) -> Any:
    resolver = _RESOLVERS.get(type_name)
    return await resolver(info, pk) if resolver else None
