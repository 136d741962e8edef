"""How operations fail.

`UserErrors` is a business-rule failure: the mutation's transaction is rolled
back and the payload carries the errors (HTTP 200). `Forbidden` is an
operation the actor's role or partner kind may not run at all: a GraphQL
error with extensions.code FORBIDDEN and no data for that field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from uidhub.models.enums import ErrorCode


@dataclass(frozen=True)
class UserError:
    code: ErrorCode
    message: str
    field: tuple[str, ...] | None = None


class UserErrors(Exception):
    def __init__(self, errors: Sequence[UserError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = list(errors)

    @classmethod
    def one(cls, code: ErrorCode, message: str, *field: str) -> UserErrors:
        return cls([UserError(code, message, tuple(field) if field else None)])


class Forbidden(Exception):
    """The actor may not run this operation at all."""

    def __init__(self, message: str = "Your role may not perform this operation.") -> None:
        super().__init__(message)
        # graphql-core copies an original error's `extensions` onto the GraphQL error.
        self.extensions = {"code": "FORBIDDEN"}


def not_found(what: str, uid: str, *field: str) -> UserErrors:
    return UserErrors.one(ErrorCode.NOT_FOUND, f"No {what} with UID {uid!r}.", *field)


def invalid(message: str, *field: str) -> UserErrors:
    return UserErrors.one(ErrorCode.INVALID_INPUT, message, *field)
