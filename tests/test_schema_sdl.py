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
