"""Every GraphQL example of README.md, run in order against the demo data with the demo ADMIN token.

Queries and mutations go through POST /graphql and must answer without
`errors` and without any `userErrors`; subscriptions (websocket only) are
validated against the served schema. The examples are meant to be pasted in
order by a new user, so they must work in order.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import OperationDefinitionNode, OperationType, parse, validate

from schema import build_schema
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.demo import load_demo
from uidhub.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```graphql\n(.*?)```", re.DOTALL)


def readme_operations() -> list[str]:
    """The source text of each operation of each ```graphql block, in README order."""
    operations = []
    for block in BLOCK.findall(README.read_text(encoding="utf-8")):
        document = parse(block)
        for definition in document.definitions:
            assert definition.loc is not None
            operations.append(block[definition.loc.start:definition.loc.end])
    return operations


def user_errors(value: Any, path: str = "") -> list[str]:
    """Every non-empty `userErrors` list anywhere in an answer (bulk results nest them), and every denial.

    A denied purchase check or order (`allowed: false`, e.g. ACCOUNT_NOT_ACTIVE
    after the termination example) is no userError, but the example did not work.
    """
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "userErrors" and item:
                found.append(f"{path}.{key}: {item}")
            elif key == "allowed" and item is False:
                found.append(f"{path}: denied {value.get('reasons')}")
            else:
                found.extend(user_errors(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found.extend(user_errors(item, f"{path}[{n}]"))
    return found


@pytest.fixture
async def demo(sqlite_db: Database, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    settings = Settings(database_url=sqlite_db.url, export_dir=str(tmp_path / "exports"))
    result = await load_demo(sqlite_db, settings, accounts=40)
    assert result.token is not None
    app = create_app(settings, db=sqlite_db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client, result.token


def test_the_readme_has_examples() -> None:
    operations = readme_operations()
    assert len(operations) >= 20
    assert any(op.lstrip().startswith("subscription") for op in operations)


async def test_readme_examples_work_in_order_against_the_demo_data(demo: tuple[httpx.AsyncClient, str]) -> None:
    client, token = demo
    schema = build_schema()._schema
    failures = []
    for source in readme_operations():
        document = parse(source)
        operation = document.definitions[0]
        assert isinstance(operation, OperationDefinitionNode)
        if operation.operation is OperationType.SUBSCRIPTION:
            errors = validate(schema, document)
            if errors:
                failures.append(f"{source}\n  -> {[e.message for e in errors]}")
            continue
        response = await client.post("/graphql", json={"query": source},
                                      headers={"Authorization": f"Bearer {token}"})
        body = response.json()
        problems = [e.get("message") for e in body.get("errors") or []] + user_errors(body.get("data"))
        if response.status_code != 200 or problems:
            failures.append(f"{source}\n  -> {response.status_code} {problems}")
    assert not failures, "\n\n".join(failures)
