"""Shared GraphQL pieces: Node ids, PageInfo, UserError and the mutation runner."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession

from uidhub.models.enums import ErrorCode
from uidhub.notifications import log
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.errors import UserError as DomainUserError
from uidhub.resolvers.errors import UserErrors
from uidhub.resolvers.pagination import MAX_ID, InvalidArgument, Page
from uidhub.schema.context import Info
from uidhub.transactions import is_retryable, retry_transaction

P = TypeVar("P")

#: The one `input` argument every mutation takes.
INPUT_ARG = strawberry.argument(description="The mutation's input; see the input type for each field.")


@strawberry.interface(description="An object with a globally unique, opaque id (Relay).")
class Node:
    id: strawberry.ID = strawberry.field(description="Opaque global id; pass it to `node(id:)`.")


def to_global_id(type_name: str, pk: int) -> strawberry.ID:
    return strawberry.ID(base64.urlsafe_b64encode(f"{type_name}:{pk}".encode()).decode().rstrip("="))


def parse_pk(text: str) -> int | None:
    """A primary key written in ASCII digits; None for anything else.

    str.isdigit() also takes "١٢" (which int() reads as 12) and "²" (which int() refuses).
    A number past BIGINT is the client's mistake (BAD_USER_INPUT), never a database error.
    """
    if not text.isascii() or not text.isdigit():
        return None
    if len(text) > 19 or int(text) > MAX_ID:
        raise InvalidArgument(f"`id` is out of range: ids are at most {MAX_ID}.")
    return int(text)


def from_global_id(global_id: str) -> tuple[str, int] | None:
    """(type name, primary key), or None for anything that is not one of our ids."""
    try:
        raw = base64.urlsafe_b64decode((global_id + "=" * (-len(global_id) % 4)).encode()).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    type_name, _, text = raw.partition(":")
    pk = parse_pk(text)
    return (type_name, pk) if type_name and pk is not None else None


@strawberry.type(description="Relay page information.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="More items follow this page.")
    has_previous_page: bool = strawberry.field(description="Items precede this page (an `after` cursor was given).")
    start_cursor: str | None = strawberry.field(description="Cursor of the first item of this page.")
    end_cursor: str | None = strawberry.field(description="Cursor of the last item; pass it as `after`.")

    @classmethod
    def empty(cls) -> PageInfo:
        return cls(has_next_page=False, has_previous_page=False, start_cursor=None, end_cursor=None)

    @classmethod
    def of(cls, page: Page[Any]) -> PageInfo:
        return cls(
            has_next_page=page.has_next,
            has_previous_page=page.has_previous,
            start_cursor=page.cursors[0] if page.cursors else None,
            end_cursor=page.cursors[-1] if page.cursors else None,
        )


@strawberry.type(description="A business-rule failure: nothing was changed.")
class UserError:
    code: ErrorCode = strawberry.field(description="What went wrong, for programs.")
    message: str = strawberry.field(description="What went wrong, for people.")
    field: list[str] | None = strawberry.field(
        description='Path to the input field at fault, e.g. ["input", "nickname"].'
    )

    @classmethod
    def of(cls, error: DomainUserError) -> UserError:
        return cls(code=error.code, message=error.message, field=list(error.field) if error.field else None)


def user_errors(errors: Sequence[DomainUserError]) -> list[UserError]:
    return [UserError.of(e) for e in errors]


async def mutate(
    info: Info,
    operation: Callable[[AsyncSession, Actor], Awaitable[P]],
    on_errors: Callable[[list[UserError]], P],
) -> P:
    """Run one mutation field in its own transaction, retried whole after a deadlock.

    Success commits (with the buffered log, then wakes subscribers); a
    `UserErrors` rolls back and becomes the payload's userErrors; anything
    else rolls back and propagates (FORBIDDEN, or a masked internal error).
    A deadlock, serialization failure or SQLite busy timeout rolls back and
    runs `operation` again from the start, a bounded number of times
    (`uidhub.transactions`), before anything is answered: the operation
    re-reads everything and re-claims its idempotency key, so a retry either
    applies the change once or replays a result committed meanwhile.
    DataLoaders are cleared either way so that the payload reads fresh rows.
    """
    context = info.context
    actor = context.require_actor()
    session = await context.session()
    committing = False

    async def attempt() -> P:
        nonlocal committing
        committing = False
        try:
            result = await operation(session, actor)
            committing = True
            await log.commit(session, context.bus)
        except UserErrors as exc:
            await _roll_back(session, context)
            return on_errors(user_errors(exc.errors))
        except BaseException:
            await _roll_back(session, context)
            raise
        context.reset_loaders()
        return result

    return await retry_transaction(
        attempt,
        retryable=lambda error: is_retryable(error, committing=committing),
        what=f"mutation {info.field_name} (request {context.request_id})",
    )


async def _roll_back(session: AsyncSession, context: Any) -> None:
    await session.rollback()
    log.discard(session)
    context.reset_loaders()
