"""Which database failures a whole transaction may be retried after, which mean "busy, come back", and the retry.

Retryable (the transaction was rolled back by the database, nothing of it is
left, so running it again from the start is safe; idempotency keys make a
repeat of an already-committed keyed change replay instead of apply twice):

- PostgreSQL `deadlock_detected` (40P01) and `serialization_failure` (40001);
- SQLite "database is locked" / "database is busy" (its busy timeout ran out);
- a connection found dead before the transaction tried to commit (a pooled
  connection the server closed: without `pool_pre_ping` the first statement
  finds out, SQLAlchemy invalidates the pool, and the retry gets a new one).

Unavailable (answered as SERVICE_UNAVAILABLE, HTTP 503 with Retry-After, by
`schema.extensions.MaskInternalErrors` and `uidhub.app`): no pooled
connection within the pool timeout (`sqlalchemy.exc.TimeoutError`), the
server refusing connections (`too_many_connections` 53300, `cannot_connect_now`
57P03, connection failures 08xxx, refused sockets), and a retryable failure
that was still failing after the last attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Attempts of one transaction, the first included.
RETRY_ATTEMPTS = 3
#: The first backoff's upper bound in seconds; doubled per attempt, jittered (full jitter).
RETRY_BACKOFF_SECONDS = 0.02

_RETRY_STATES = {"40P01", "40001"}
_UNAVAILABLE_STATES = {"53300", "53000", "57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"}
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, the driver error SQLAlchemy wrapped, and their causes."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, current.__cause__, current.__context__]


def _states(error: BaseException) -> set[str]:
    return {str(s) for e in _chain(error) if (s := getattr(e, "sqlstate", None) or getattr(e, "pgcode", None))}


def is_disconnect(error: BaseException) -> bool:
    """The connection died under the statement (SQLAlchemy invalidated it)."""
    return isinstance(error, sa_exc.DBAPIError) and bool(error.connection_invalidated)


def is_conflict(error: BaseException) -> bool:
    """A deadlock, a serialization failure or SQLite's busy timeout: the database rolled the transaction back."""
    if _states(error) & _RETRY_STATES:
        return True
    if isinstance(error, sa_exc.OperationalError):
        text = str(error.orig).lower()
        return any(marker in text for marker in _SQLITE_BUSY)
    return False


def is_retryable(error: BaseException, *, committing: bool = False) -> bool:
    """Whether the whole transaction may run again (a dead connection only before its COMMIT was sent)."""
    return is_conflict(error) or (is_disconnect(error) and not committing)


def is_unavailable(error: BaseException) -> bool:
    """No connection could be had (pool timeout, server full or down), or the conflict outlived every retry."""
    if isinstance(error, sa_exc.TimeoutError) or is_conflict(error) or is_disconnect(error):
        return True
    if _states(error) & _UNAVAILABLE_STATES:
        return True
    return any(isinstance(e, ConnectionError | TimeoutError) for e in _chain(error))


async def retry_transaction(
    attempt: Callable[[], Awaitable[T]],
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
    attempts: int = RETRY_ATTEMPTS,
    what: str = "transaction",
) -> T:
    """Run `attempt` (one whole transaction, rolled back on failure) until it succeeds, at most `attempts` times.

    Only failures `retryable` accepts are retried, after a short random
    backoff so that the transactions that collided do not collide again.
    """
    for number in range(1, attempts + 1):
        try:
            return await attempt()
        except Exception as error:
            if number >= attempts or not retryable(error):
                raise
            delay = random.uniform(0, RETRY_BACKOFF_SECONDS * 2 ** (number - 1))
            log.info("%s failed (%s); attempt %d of %d in %.0f ms", what, _short(error), number + 1, attempts,
                     delay * 1000)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _short(error: BaseException) -> str:
    states = _states(error)
    return ", ".join(sorted(states)) if states else type(error).__name__
