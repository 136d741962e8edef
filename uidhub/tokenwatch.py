"""Revoked tokens stop working at once, open websockets included.

HTTP requests authenticate through a short-lived actor cache
(`resolvers.auth.ActorCache`, `token_cache_seconds`): every pass here empties
it, so with Redis the next request after the revocation's wake-up gets 401,
and without Redis one within `token_cache_seconds` does. A websocket authenticates once, in
`connection_init`, and then lives for hours; so each server process keeps
the open websockets by token id and, on every pass, asks the database which
of those tokens are revoked, and closes their sockets with 4403 (as a bad
token at connect time).

When does a pass run? At once when the revocation's wake-up
(`REVOKED_TOPIC`, published by `uidhub revoke-token` after its commit)
reaches this process: through Redis when `UIDHUB_REDIS_URL` is set, which
reaches every worker and host. Without Redis the CLI's wake-up cannot reach
a server process, so a pass also runs every `token_recheck_seconds`
(default 5): that is the bound on how long a revoked token's websocket
stays open, on every worker, whatever happens to the wake-up. A pass costs
one indexed query per process, and none while no websocket is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from starlette.websockets import WebSocketState

from uidhub.models import ApiToken
from uidhub.notifications.bus import Wakeup
from uidhub.resolvers.auth import REVOKED_TOPIC

if TYPE_CHECKING:
    from uidhub.db import Database
    from uidhub.notifications.bus import Bus

log = logging.getLogger(__name__)

CLOSE_CODE = 4403
CLOSE_REASON = "Token revoked"
#: Token ids per query (an IN list stays well under every backend's parameter limit).
CHUNK = 500
#: Registrations between two prunes of closed sockets outside the passes (a long re-check interval with Redis).
PRUNE_EVERY = 256


def _gone(websocket: Any) -> bool:
    return WebSocketState.DISCONNECTED in (websocket.application_state, websocket.client_state)


class TokenWatch:
    """The open websockets of this process by token id, closed when their token is revoked."""

    def __init__(
        self, db: Database, bus: Bus | None, interval: float, on_pass: Callable[[], None] | None = None
    ) -> None:
        self.db = db
        #: Called at the start of every pass: the HTTP actor cache forgets every token (uidhub.app).
        self.on_pass = on_pass
        self.bus = bus
        self.interval = interval
        self._open: dict[int, set[Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._registered = 0

    def register(self, token_id: int | None, websocket: Any) -> None:
        """Watch `websocket` (authenticated with `token_id`) until it closes."""
        if token_id is None or websocket is None:
            return
        self._open.setdefault(token_id, set()).add(websocket)
        self._registered += 1
        if self._registered % PRUNE_EVERY == 0:  # closed sockets are not kept until the next pass
            self._prune()

    @property
    def open_count(self) -> int:
        return sum(len(sockets) for sockets in self._open.values())

    def _prune(self) -> list[int]:
        """Forget closed sockets; the ids of tokens that still have open ones."""
        for token_id in list(self._open):
            alive = {ws for ws in self._open[token_id] if not _gone(ws)}
            if alive:
                self._open[token_id] = alive
            else:
                del self._open[token_id]
        return sorted(self._open)

    async def _revoked(self, token_ids: Sequence[int]) -> set[int]:
        revoked: set[int] = set()
        async with self.db.read() as session:
            for start in range(0, len(token_ids), CHUNK):
                chunk = list(token_ids[start : start + CHUNK])
                rows = await session.scalars(
                    select(ApiToken.id).where(ApiToken.id.in_(chunk), ApiToken.revoked_at.is_not(None))
                )
                revoked.update(rows.all())
        return revoked

    async def check_once(self) -> int:
        """Close the websockets of revoked tokens; returns how many were closed."""
        token_ids = self._prune()
        if not token_ids:
            return 0
        closed = 0
        for token_id in sorted(await self._revoked(token_ids)):
            for websocket in self._open.pop(token_id, set()):
                # Already closing (the client left meanwhile): nothing to do.
                with contextlib.suppress(RuntimeError, OSError):
                    await websocket.close(code=CLOSE_CODE, reason=CLOSE_REASON)
                    closed += 1
        if closed:
            log.info("closed %d websocket(s) of revoked tokens", closed)
        return closed

    def start(self) -> None:
        async def one_pass() -> bool:
            if self.on_pass is not None:
                self.on_pass()
            await self.check_once()
            return False

        wakeup = Wakeup(self.bus, REVOKED_TOPIC, self.interval)
        self._task = asyncio.create_task(wakeup.run_passes(one_pass, "token watch"), name="uidhub-token-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
