"""Request limits, error masking and switches (RULES.md "Request limits")."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import uidhub.resolvers.accounts
from tests.support.accounts import link, one
from tests.support.api import Api, make_api
from tests.support.db import sqlite_url_for
from uidhub.db import Database


async def assert_refused(api: Api, query: str, uid: str) -> dict:
    response = await api.post(query, token=api.tokens["admin"])
    assert response.status_code in (200, 400), response.text
    body = response.json()
    assert body.get("data") is None and body["errors"], body
    assert await one(api, uid) is None, "refused before anything ran"
    return body


def nested_master(levels: int) -> str:
    return "master { " * levels + "uid" + " }" * levels


async def test_depth_limit(sqlite_api: Api) -> None:
    api = sqlite_api
    # linkAccount(1) > endUser(2) > master(3..) : depth 12 is allowed, 13 refused.
    ok = 'mutation { linkAccount(input: {uid: "OK"}) { endUser { ' + nested_master(10) + " } } }"
    data = await api.gql(ok)
    assert data["linkAccount"]["endUser"]["master"] is None
    deep = 'mutation { linkAccount(input: {uid: "DEEP"}) { endUser { ' + nested_master(11) + " } } }"
    body = await assert_refused(api, deep, "DEEP")
    assert "depth" in body["errors"][0]["message"].lower()


async def test_alias_limit(sqlite_api: Api) -> None:
    api = sqlite_api
    fields = " ".join(f'a{i}: linkAccount(input: {{uid: "AL{i}"}}) {{ userErrors {{ code }} }}' for i in range(51))
    body = await assert_refused(api, "mutation { " + fields + " }", "AL0")
    assert "alias" in body["errors"][0]["message"].lower()
    fields = " ".join(f'a{i}: linkAccount(input: {{uid: "AL{i}"}}) {{ userErrors {{ code }} }}' for i in range(50))
    data = await api.gql("mutation { " + fields + " }")
    assert len(data) == 50 and await one(api, "AL49") is not None


async def test_token_limit(sqlite_api: Api) -> None:
    api = sqlite_api
    padding = " __typename" * 5000
    body = await assert_refused(
        api, 'mutation { linkAccount(input: {uid: "TOK"}) { userErrors { code }' + padding + " } }", "TOK"
    )
    assert "token" in body["errors"][0]["message"].lower()
    # 4,900 tokens or so are served.
    many = " __typename @include(if: true)" * 300  # 8 tokens each
    query = 'mutation { linkAccount(input: {uid: "TOK"}) { userErrors { code' + many + " }" + many + " } }"
    data = await api.gql(query)
    assert data["linkAccount"]["userErrors"] == []


async def test_body_size_limit(sqlite_api: Api) -> None:
    api = sqlite_api
    headers = {"Authorization": f"Bearer {api.tokens['admin']}", "Content-Type": "application/json"}
    query = 'mutation { linkAccount(input: {uid: "BIG"}) { userErrors { code } } }'
    big = json.dumps({"query": query, "variables": {"pad": "x" * 1_000_001}}).encode()
    response = await api.client.post("/graphql", content=big, headers=headers)
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    response = await api.client.post("/graphql", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert await one(api, "BIG") is None
    # Just below the limit is served.
    small = json.dumps({"query": query, "variables": {"pad": "x" * 900_000}}).encode()
    response = await api.client.post("/graphql", content=small, headers=headers)
    assert response.status_code == 200 and await one(api, "BIG") is not None


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'{"query": 5}', b'"query"'])
async def test_malformed_json_is_400(sqlite_api: Api, body: bytes) -> None:
    response = await sqlite_api.client.post(
        "/graphql",
        content=body,
        headers={"Authorization": f"Bearer {sqlite_api.tokens['admin']}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"]


async def test_no_field_suggestions(sqlite_api: Api) -> None:
    api = sqlite_api
    for query in (
        '{ endUser(uid: "x") { nicknam } }',
        "{ endUsr { totalCount } }",
        '{ endUsers(filtr: {search: "x"}) { totalCount } }',
        "{ endUsers(orderBy: {field: UUID}) { totalCount } }",
        "{ endUsers(filter: {accountStatus: [NORMAL]}) { totalCount } }",
        "query($o: EndUserOrder) { endUsers(orderBy: $o) { totalCount } }",
        'mutation { linkAccount(input: {uid: "x", nicknam: "y"}) { userErrors { code } } }',
    ):
        body = await api.gql(query, {"o": {"field": "UUID"}}, errors=True)
        assert body["errors"], query
        for error in body["errors"]:
            assert "did you mean" not in error["message"].lower(), error


async def test_internal_error_is_masked(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret detail: password=hunter2")

    monkeypatch.setattr(uidhub.resolvers.accounts, "summary", boom)
    with caplog.at_level(logging.ERROR, logger="uidhub.graphql"):
        response = await sqlite_api.post("{ summary { accounts } viewer { method } }", token=sqlite_api.tokens["admin"])
    assert response.status_code == 200
    body = response.json()
    [error] = body["errors"]
    assert "secret" not in json.dumps(body) and "RuntimeError" not in json.dumps(body)
    request_id = error["extensions"]["requestId"]
    assert request_id and request_id in error["message"]
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert body["data"] is None or body["data"].get("summary") is None
    assert request_id in caplog.text and "hunter2" in caplog.text, "the log keeps the details"

    # A mutation that fails internally changes nothing.
    async def link_boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(uidhub.resolvers.accounts, "link_account", link_boom)
    body = await sqlite_api.gql('mutation { linkAccount(input: {uid: "Z"}) { userErrors { code } } }', errors=True)
    assert "disk on fire" not in json.dumps(body)
    assert await one(sqlite_api, "Z") is None


@pytest.fixture
async def locked_api(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Api]:
    (tmp_path / "locked").mkdir()
    db = Database(sqlite_url_for(sqlite_template, tmp_path / "locked"))
    try:
        async for value in make_api(db, tmp_path / "locked", introspection=False, graphiql=False):
            yield value
    finally:
        await db.dispose()


async def test_introspection_and_graphiql_switch(locked_api: Api, sqlite_api: Api) -> None:
    query = "{ __schema { queryType { name } } }"
    assert (await sqlite_api.gql(query))["__schema"]["queryType"]["name"] == "Query"
    body = await locked_api.gql(query, errors=True)
    assert body["errors"] and not body.get("data")
    body = await locked_api.gql('{ __type(name: "EndUser") { name } }', errors=True)
    assert body["errors"]
    # Ordinary queries still work (and __typename is not introspection).
    await link(locked_api, "U1")
    assert (await locked_api.gql('{ endUser(uid: "U1") { __typename uid } }'))["endUser"]["__typename"] == "EndUser"

    ide = await sqlite_api.client.get("/graphql", headers={"Accept": "text/html"})
    assert ide.status_code == 200 and "graphiql" in ide.text.lower()
    ide = await locked_api.client.get("/graphql", headers={"Accept": "text/html"})
    assert ide.status_code != 200 or "graphiql" not in ide.text.lower()
