"""Declarative base and the column types every table shares."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, MetaData
from sqlalchemy import Enum as SAEnum
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

# Ids are BIGINT on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always returned timezone-aware.

    SQLite has no timezone type and hands back naive values; normalising here
    means no code above the table ever sees a naive datetime.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        # asyncpg decodes a timestamptz as an aware datetime in UTC (tzinfo=datetime.UTC) already: the
        # normalisation above would return it unchanged, at two Python calls per value of every row read.
        # tests/test_rows.py checks what PostgreSQL hands back.
        if dialect.driver == "asyncpg":
            return None
        return super().result_processor(dialect, coltype)


class _EnumLookup(dict[Any, Any]):
    """Stored name -> enum member; an unknown name raises as SQLAlchemy's own Enum processor does."""

    def __missing__(self, key: Any) -> Any:
        raise LookupError(f"{key!r} is not among the defined enum values")


class StoredEnum(SAEnum):
    """SQLAlchemy's Enum with a result processor that is one dict lookup in C.

    The stock processor is two Python calls per value (process, then _object_value_for_elem); a list page
    reads about a thousand enum values. Same mapping (`_object_lookup`, None included), same error.
    """

    cache_ok = True

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if super(SAEnum, self).result_processor(dialect, coltype) is not None:  # a driver converting strings
            return super().result_processor(dialect, coltype)
        return _EnumLookup(self._object_lookup).__getitem__


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
