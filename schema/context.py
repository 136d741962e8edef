"""The per-request context: actor, one session, DataLoaders.

HTTP: one session per request, opened on first use and closed when the
operation ends; a mutation's session writes (BEGIN IMMEDIATE on SQLite) and
each mutation field commits or rolls back on its own. Websockets: the context
lives as long as the connection, so it holds no session; every subscription
event opens its own short one (`Context.event_scope`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from strawberry.types import Info as StrawberryInfo

from uidhub.db import Database
from uidhub.models import Account
from uidhub.notifications.bus import Bus
from uidhub.notifications.feed import SharedScope
from uidhub.resolvers.actor import Actor
from uidhub.runtime import Runtime
from uidhub.schema.dataloaders import Loaders, ScopedAccounts
from uidhub.settings import Settings

#: The child context of the subscription event being resolved in this task.
_EVENT_SCOPE: ContextVar[Context | None] = ContextVar("uidhub_event_scope", default=None)


def current_shared_scope() -> SharedScope | None:
    """The feed batch whose rows this task is resolving, if any (see Context.shared_scope)."""
    child = _EVENT_SCOPE.get()
    return child._shared if child is not None else None


async def end_event_transaction() -> None:
    """End the read transaction of the subscription event resolved in this task, before its result is sent.

    A send waits on the client's socket for as long as the client does not
    read; a session still in a transaction meanwhile would keep its pooled
    connection "idle in transaction", and a few stalled dashboards would
    starve every request. The session itself stays (expire_on_commit=False
    keeps its rows and the DataLoader cache usable); its next query checks a
    connection out again.
    """
    child = _EVENT_SCOPE.get()
    if child is not None:
        await child.end_transaction()


class Context:
    def __init__(
        self,
        runtime: Runtime,
        *,
        request: Any = None,
        response: Any = None,
        actor: Actor | None = None,
        websocket: bool = False,
        request_id: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.request = request
        self.response = response
        self.actor = actor
        self.websocket = websocket
        self.request_id = request_id or uuid.uuid4().hex[:16]
        self.write = False
        #: A read that needs no transaction (uidhub.db.Database.session): the compiled read path's.
        self.autocommit = False
        self.connection_params: dict[str, Any] | None = None
        self._session: AsyncSession | None = None
        self._loaders: Loaders | None = None
        self._shared: SharedScope | None = None
        self._visible_uids: frozenset[str] | None = None

    @property
    def db(self) -> Database:
        return self.runtime.db

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def bus(self) -> Bus:
        return self.runtime.bus

    def require_actor(self) -> Actor:
        if self.actor is None:  # the ASGI layer refuses these before execution; a guard
            raise PermissionError("unauthenticated")
        return self.actor

    def _event_child(self) -> Context:
        child = _EVENT_SCOPE.get()
        if child is None:
            raise RuntimeError("a websocket context resolves fields only inside an event scope")
        return child

    async def session(self) -> AsyncSession:
        if self._shared is not None:
            return self._shared.session
        if self.websocket:
            return await self._event_child().session()
        if self._session is None:
            self._session = self.db.session(write=self.write, autocommit=self.autocommit)
        return self._session

    @property
    def loaders(self) -> Loaders:
        if self._shared is not None:
            if self._shared.loaders is None:
                self._shared.loaders = Loaders(self.session)
            return self._shared.loaders
        if self.websocket:
            return self._event_child().loaders
        if self._loaders is None:
            self._loaders = Loaders(self.session)
        return self._loaders

    @property
    def accounts(self) -> ScopedAccounts:
        """Accounts by id through the viewer's scope (`Actor.sees`): out-of-scope ids load as None."""
        return ScopedAccounts(self.loaders.account_row, self.require_actor().sees)

    async def visible_uids(self) -> frozenset[str] | None:
        """The UIDs an END_USER token may see (its account and its sub-accounts); None for other roles.

        Loaded once per request (per event for subscriptions): used to mask the
        UIDs an audit entry carries in its values and operator (a sub-account's
        link entry names its master; its master's END_USER token may have acted on it).
        """
        actor = self.require_actor()
        if actor.account_id is None:
            return None
        if self.websocket and self._shared is None:
            return await self._event_child().visible_uids()
        if self._visible_uids is None:
            session = await self.session()
            rows = await session.scalars(select(Account.uid).where(actor.account_scope()))
            self._visible_uids = frozenset(rows.all())
        return self._visible_uids

    def reset_loaders(self) -> None:
        self._loaders = None
        self._visible_uids = None

    async def end_transaction(self) -> None:
        """Commit (a read: nothing to write) so that the session hands its connection back to the pool."""
        session = self._shared.session if self._shared is not None else self._session
        if session is not None and session.in_transaction():
            await session.commit()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._loaders = None

    @asynccontextmanager
    async def event_scope(self) -> AsyncIterator[Context]:
        """A short-lived child context (own session and loaders) for one batch of subscription events.

        While it is open, fields resolved in this task through the connection's
        context use the child's session: strawberry runs each subscription in a
        task of its own, so concurrent subscriptions never share a session.
        """
        child = Context(self.runtime, actor=self.actor, request_id=self.request_id)
        token = _EVENT_SCOPE.set(child)
        try:
            yield child
        finally:
            with contextlib.suppress(ValueError):  # closed from another task's context
                _EVENT_SCOPE.reset(token)
            await child.close()

    @asynccontextmanager
    async def shared_scope(self, scope: SharedScope) -> AsyncIterator[Context]:
        """Like `event_scope`, over a feed batch's session and loaders shared with other subscribers.

        The child carries this connection's actor, so visibility is still
        decided per subscriber; only rows and their loaded relations are shared.
        The session is closed by the feed when the last subscriber releases it.
        """
        child = Context(self.runtime, actor=self.actor, request_id=self.request_id)
        child._shared = scope
        token = _EVENT_SCOPE.set(child)
        try:
            yield child
        finally:
            with contextlib.suppress(ValueError):
                _EVENT_SCOPE.reset(token)


Info = StrawberryInfo[Context, None]
