"""schema: enum values serialize to strawberry's own names through the lookup built at schema construction."""

from __future__ import annotations

import pytest
from strawberry.schema.schema_converter import CustomGraphQLEnumType

from uidhub.schema import build_schema

SCHEMA = build_schema()
ENUMS = [t for t in SCHEMA._schema.type_map.values() if isinstance(t, CustomGraphQLEnumType)]


def test_every_enum_type_has_the_lookup() -> None:
    assert len(ENUMS) >= 20
    assert all("serialize" in vars(t) for t in ENUMS)


@pytest.mark.parametrize("type_", ENUMS, ids=lambda t: t.name)
def test_lookup_answers_what_strawberry_answers(type_: CustomGraphQLEnumType) -> None:
    for member in type_.wrapped_cls:
        # The class's own (strawberry's) serializer, bypassing the instance's lookup.
        assert type_.serialize(member) == CustomGraphQLEnumType.serialize(type_, member)
        assert type_.serialize(member.value) == CustomGraphQLEnumType.serialize(type_, member.value)


def test_a_value_of_no_member_still_fails() -> None:
    with pytest.raises(Exception, match="cannot represent"):
        ENUMS[0].serialize("NO_SUCH_VALUE")
