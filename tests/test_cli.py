"""The `uidhub` console script, run as a new user would: a subprocess of the installed entry point."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from uidhub.app import create_app
from uidhub.db import Database
from uidhub.settings import Settings

UIDHUB = Path(sys.executable).with_name("uidhub")


def run(tmp_path: Path, *args: str, db_url: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UIDHUB_")}
    env["UIDHUB_DATABASE_URL"] = db_url or f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    return subprocess.run(
        [str(UIDHUB), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_failure(result: subprocess.CompletedProcess) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("uidhub")


async def graphql(tmp_path: Path, token: str, query: str) -> httpx.Response:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    app = create_app(Settings(database_url=db.url, export_dir=str(tmp_path / "exports")), db=db)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/graphql", json={"query": query}, headers={"Authorization": f"Bearer {token}"})
    finally:
        await db.dispose()


@pytest.fixture(scope="module", autouse=True)
def entry_point() -> None:
    if not UIDHUB.exists():
        pytest.fail(f"{UIDHUB} is missing: pip install -e '.[test]' into the virtualenv first")


async def test_migrate_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        result = run(tmp_path, "migrate")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    assert (tmp_path / "cli.db").exists()


async def test_create_partner_and_token(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "create-partner",
        "--uid",
        "5010000000000777",
        "--name",
        "Acme Distribution",
        "--kind",
        "DISTRIBUTOR",
        "--alert-email",
        "ops@acme.example",
        "--alert-email",
        "cfo@acme.example",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5010000000000777"
    result = run(
        tmp_path,
        "create-partner",
        "--uid",
        "R1",
        "--name",
        "Reseller",
        "--kind",
        "RESELLER",
        "--parent",
        "5010000000000777",
    )
    assert result.returncode == 0, result.stderr

    result = run(
        tmp_path,
        "create-token",
        "--partner",
        "5010000000000777",
        "--role",
        "OPERATOR",
        "--method",
        "API",
        "--operator-uid",
        "RAM-1",
        "--operator-name",
        "Ops Bot",
        "--ram",
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n", "only the token on stdout"
    assert token.startswith("uh_") and len(token) > 30
    response = await graphql(
        tmp_path,
        token,
        "{ viewer { method operator { uid name isRamAccount role } partner { uid kind alertEmails } } }",
    )
    assert response.status_code == 200
    assert response.json()["data"]["viewer"] == {
        "method": "API",
        "operator": {"uid": "RAM-1", "name": "Ops Bot", "isRamAccount": True, "role": "OPERATOR"},
        "partner": {
            "uid": "5010000000000777",
            "kind": "DISTRIBUTOR",
            "alertEmails": ["ops@acme.example", "cfo@acme.example"],
        },
    }
    # The token is stored hashed: it appears nowhere in the database file.
    assert token.encode() not in (tmp_path / "cli.db").read_bytes()

    # An END_USER token for a linked account.
    link = await graphql(tmp_path, token, 'mutation { linkAccount(input: {uid: "U1"}) { userErrors { code } } }')
    assert link.json()["data"]["linkAccount"]["userErrors"] == []
    result = run(tmp_path, "create-token", "--partner", "5010000000000777", "--role", "END_USER", "--account", "U1")
    assert result.returncode == 0, result.stderr
    response = await graphql(
        tmp_path, result.stdout.strip(), "{ viewer { operator { uid role } } endUsers { totalCount } }"
    )
    assert response.json()["data"] == {
        "viewer": {"operator": {"uid": "U1", "role": "END_USER"}},
        "endUsers": {"totalCount": 1},
    }


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("bogus",),
        ("create-partner", "--uid", "X"),
        ("create-partner", "--uid", "X", "--name", "N", "--kind", "NOPE"),
        ("create-partner", "--uid", "X", "--name", "N", "--kind", "RESELLER", "--parent", "MISSING"),
        ("create-partner", "--uid", "X", "--name", "N", "--kind", "AGENCY", "--alert-email", "not-an-email"),
        ("create-token", "--partner", "MISSING", "--role", "ADMIN"),
        ("create-token", "--partner", "P1", "--role", "END_USER"),
        ("create-token", "--partner", "P1", "--role", "ADMIN", "--account", "NOPE"),
        ("create-token", "--partner", "P1", "--role", "ADMIN", "--method", "SYSTEM"),
        ("demo", "--accounts", "many"),
        ("serve", "--port", "eighty"),
    ],
)
async def test_bad_arguments(tmp_path: Path, args: tuple[str, ...]) -> None:
    assert run(tmp_path, "create-partner", "--uid", "P1", "--name", "P", "--kind", "DISTRIBUTOR").returncode == 0
    assert_one_line_failure(run(tmp_path, *args))


async def test_duplicate_partner(tmp_path: Path) -> None:
    assert run(tmp_path, "create-partner", "--uid", "P1", "--name", "P", "--kind", "DISTRIBUTOR").returncode == 0
    assert_one_line_failure(run(tmp_path, "create-partner", "--uid", "P1", "--name", "P", "--kind", "DISTRIBUTOR"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "args",
    [
        ("migrate",),
        ("create-partner", "--uid", "P", "--name", "N", "--kind", "AGENCY"),
        ("create-token", "--partner", "P", "--role", "ADMIN"),
        ("demo", "--accounts", "5"),
    ],
)
async def test_unreachable_database(tmp_path: Path, args: tuple[str, ...]) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/uidhub"
    assert_one_line_failure(run(tmp_path, *args, db_url=url))
    assert_one_line_failure(run(tmp_path, *args, db_url=f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db"))


async def test_demo(tmp_path: Path) -> None:
    result = run(tmp_path, "demo", "--accounts", "50")
    assert result.returncode == 0, result.stderr
    token_lines = [line for line in result.stdout.splitlines() if "token" in line.lower()]
    token = token_lines[0].split()[-1]
    assert token.startswith("uh_")
    assert "/graphql" in result.stdout
    response = await graphql(
        tmp_path,
        token,
        """{ viewer { partner { kind } operator { role } method }
      endUsers(first: 100) { totalCount edges { node { uid nickname businessManager remarks master { uid }
        subAccounts { uid } } } } }""",
    )
    data = response.json()["data"]
    assert data["viewer"] == {"partner": {"kind": "DISTRIBUTOR"}, "operator": {"role": "ADMIN"}, "method": "PLATFORM"}
    nodes = [e["node"] for e in data["endUsers"]["edges"]]
    assert data["endUsers"]["totalCount"] == 50 and len(nodes) == 50
    masters = [n for n in nodes if n["master"] is None]
    subs = [n for n in nodes if n["master"] is not None]
    assert subs and any(m["subAccounts"] for m in masters)
    assert all(n["nickname"] for n in nodes)
    nicknames = " ".join(n["nickname"] for n in nodes)
    assert any("\u4e00" <= c <= "\u9fff" for c in nicknames), "Chinese nicknames"
    assert any("\u3040" <= c <= "\u30ff" for c in nicknames), "Japanese nicknames"
    assert all(m["businessManager"] for m in masters)
    assert any(m["remarks"] for m in masters)
    # A history to look at: quota records, consumption, orders, crossed warnings and their queued emails.
    response = await graphql(
        tmp_path,
        token,
        """{
      endUsers(first: 100, filter: {includeSubAccounts: false}) { edges { node {
        quota { consumedDeducted consumedUndeducted adjustments { totalCount } } instances { billingMethod } } } }
      alertEvents(first: 1) { totalCount } notifications(first: 1) { totalCount edges { node { status } } } }""",
    )
    data = response.json()["data"]
    quotas = [e["node"]["quota"] for e in data["endUsers"]["edges"]]
    assert any(q["adjustments"]["totalCount"] for q in quotas)
    assert any(q["consumedDeducted"] != "0.00" and q["consumedUndeducted"] != "0.00" for q in quotas)
    assert any(e["node"]["instances"] for e in data["endUsers"]["edges"])
    assert data["alertEvents"]["totalCount"] > 0
    assert data["notifications"]["totalCount"] > 0
    assert data["notifications"]["edges"][0]["node"]["status"] == "PENDING"  # no SMTP configured
    await asyncio.sleep(0)
