"""The committed SDL is the served schema, it keeps the contract, and everything in it is described."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from graphql import GraphQLEnumType, GraphQLInputObjectType, GraphQLObjectType, build_schema

from schema import build_schema as build_served

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_CHECK = ROOT.parent / "shared" / "contract" / "check_contract.py"


def test_committed_sdl_is_current() -> None:
    committed = (ROOT / "schema" / "schema.graphql").read_text(encoding="utf-8")
    assert committed == build_served().as_str() + "\n", "run `uidhub export-schema --output schema/schema.graphql`"


@pytest.mark.skipif(not CONTRACT_CHECK.exists(), reason="../shared/contract is not beside this checkout")
def test_contract_check_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(CONTRACT_CHECK), str(ROOT / "schema" / "schema.graphql")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "contract: ok" in result.stdout


def test_every_type_field_argument_and_enum_value_is_described() -> None:
    schema = build_schema(build_served().as_str())
    missing: list[str] = []
    for name, named in schema.type_map.items():
        if name.startswith("__") or name in {"String", "Int", "Float", "Boolean", "ID"}:
            continue
        if not named.description:
            missing.append(name)
        if isinstance(named, GraphQLObjectType):
            for field_name, field in named.fields.items():
                if not field.description:
                    missing.append(f"{name}.{field_name}")
                for arg_name, arg in field.args.items():
                    if not arg.description:
                        missing.append(f"{name}.{field_name}({arg_name})")
        elif isinstance(named, GraphQLInputObjectType):
            missing.extend(f"{name}.{f}" for f, v in named.fields.items() if not v.description)
        elif isinstance(named, GraphQLEnumType):
            missing.extend(f"{name}.{v}" for v, d in named.values.items() if not d.description)
    assert missing == []


def _descriptions(schema: object) -> list[tuple[str, str]]:
    """(where, description) of every type, field, argument, input field and enum value of our own."""
    found: list[tuple[str, str]] = []
    for name, named in schema.type_map.items():  # type: ignore[attr-defined]
        if name.startswith("__") or name in {"String", "Int", "Float", "Boolean", "ID"}:
            continue
        found.append((name, named.description or ""))
        if isinstance(named, GraphQLObjectType):
            for field_name, field in named.fields.items():
                found.append((f"{name}.{field_name}", field.description or ""))
                found.extend((f"{name}.{field_name}({a})", arg.description or "") for a, arg in field.args.items())
        elif isinstance(named, GraphQLInputObjectType):
            found.extend((f"{name}.{f}", v.description or "") for f, v in named.fields.items())
        elif isinstance(named, GraphQLEnumType):
            found.extend((f"{name}.{v}", d.description or "") for v, d in named.values.items())
    return found


def test_descriptions_start_with_a_capital() -> None:
    """Schema linters (graphql-schema-linter) flag descriptions that start lower-case."""
    schema = build_schema(build_served().as_str())
    assert [where for where, text in _descriptions(schema) if text[:1].islower()] == []


def test_custom_scalars_are_specified_by_a_url() -> None:
    """@specifiedBy lets codegen and clients find each scalar's format (GraphQL spec, 2021)."""
    schema = build_schema(build_served().as_str())
    for name in ("Money", "DateTime"):
        url = schema.type_map[name].specified_by_url  # type: ignore[union-attr]
        assert url and url.startswith("https://"), name


def test_every_node_type_resolves_through_the_one_registry() -> None:
    """node(id:) has one mechanism: each type implementing Node registers its resolver, none is left out."""
    from graphql import GraphQLObjectType

    from schema import build_schema
    from schema.registry import registered_types

    graphql_schema = build_schema()._schema
    node_types = {
        name
        for name, type_ in graphql_schema.type_map.items()
        if isinstance(type_, GraphQLObjectType) and any(i.name == "Node" for i in type_.interfaces)
    }
    assert node_types == registered_types()
