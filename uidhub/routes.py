"""HTTP routes beyond GraphQL (export downloads are added by the exports work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from uidhub.app import AppState


def extra_routes(state: AppState) -> list[BaseRoute]:
    return []
