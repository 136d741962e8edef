"""Token lifecycle: `uidhub list-tokens` (never the secret) and `uidhub revoke-token`, and what revocation does:
the next HTTP request gets 401, open websockets of the token are closed with 4403 (through the Redis wake-up when
configured, else within `token_recheck_seconds`), other tokens' websockets stay open.

The CLI runs as a subprocess of the installed entry point against the test's database, as an operator would.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.api import make_partner, make_token
from tests.support.db import REDIS_URL, needs_redis
from tests.support.live import ACCOUNT_EVENTS, WsClient, link_over_http, serve_in_loop
from tests.test_cli import UIDHUB, assert_one_line_failure, graphql, run
from uidhub.app import create_app
from uidhub.db import Database
from uidhub.models.enums import Role
from uidhub.resolvers.auth import PREFIX_LENGTH
from uidhub.settings import Settings

#: A hang guard for a loaded CI machine, not a speed assertion.
GUARD = 30.0


def _cli(tmp_path: Path, *args: str, db_url: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`uidhub` against the test's database, with extra settings (test_cli.run without them)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("UIDHUB_")}
    full.update(env, UIDHUB_DATABASE_URL=db_url)
    return subprocess.run(
        [str(UIDHUB), *args], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=120, check=False
    )


def _token_lines(stdout: str) -> dict[str, list[str]]:
    """list-tokens' rows by id, split on runs of spaces."""
    lines = stdout.strip().splitlines()
    assert lines[0].split() == [
        "ID",
        "PREFIX",
        "PARTNER",
        "ROLE",
        "METHOD",
        "OPERATOR",
        "ACCOUNT",
        "CREATED",
        "REVOKED",
    ]
    return {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in lines[1:]}


async def test_list_tokens_shows_everything_but_the_secret_and_revoke_by_prefix_or_id(tmp_path: Path) -> None:
    assert (
        run(
            tmp_path,
            "create-partner",
            "--uid",
            "P1",
            "--name",
            "Partner One",
            "--kind",
            "DISTRIBUTOR",
            "--alert-email",
            "ops@p1.example",
        ).returncode
        == 0
    )
    assert (
        run(
            tmp_path, "create-partner", "--uid", "P2", "--name", "Partner Two", "--kind", "RESELLER", "--parent", "P1"
        ).returncode
        == 0
    )
    admin = run(tmp_path, "create-token", "--partner", "P1", "--role", "ADMIN").stdout.strip()
    bot = run(
        tmp_path,
        "create-token",
        "--partner",
        "P1",
        "--role",
        "OPERATOR",
        "--method",
        "API",
        "--operator-uid",
        "RAM-7",
        "--operator-name",
        "Ops Bot",
        "--ram",
    ).stdout.strip()
    other = run(tmp_path, "create-token", "--partner", "P2", "--role", "VIEWER").stdout.strip()
    for token in (admin, bot, other):
        assert (await graphql(tmp_path, token, "{ viewer { method } }")).status_code == 200

    listed = run(tmp_path, "list-tokens")
    assert listed.returncode == 0, listed.stderr
    for token in (admin, bot, other):
        assert token not in listed.stdout
        assert token[PREFIX_LENGTH : PREFIX_LENGTH + 6] not in listed.stdout  # nothing past the prefix
    rows = _token_lines(listed.stdout)
    assert rows["1"][1:7] == [admin[:PREFIX_LENGTH] + "…", "P1", "ADMIN", "PLATFORM", "P1 (Partner One)", "-"]
    assert rows["2"][1:7] == [bot[:PREFIX_LENGTH] + "…", "P1", "OPERATOR", "API", "RAM-7 (RAM)", "-"]
    assert rows["3"][2] == "P2" and all(row[8] == "-" for row in rows.values())  # none revoked yet
    assert set(_token_lines(run(tmp_path, "list-tokens", "--partner", "P2").stdout)) == {"3"}

    revoked = run(tmp_path, "revoke-token", "--prefix", bot[:9])  # a shorter prefix than listed is enough
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked token 2 ({bot[:PREFIX_LENGTH]}…)"
    assert (await graphql(tmp_path, bot, "{ viewer { method } }")).status_code == 401
    assert (await graphql(tmp_path, admin, "{ viewer { method } }")).status_code == 200

    assert run(tmp_path, "revoke-token", "--id", "3").returncode == 0
    response = await graphql(tmp_path, other, "{ viewer { method } }")
    assert response.status_code == 401 and response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    again = run(tmp_path, "revoke-token", "--prefix", other)  # the whole token is accepted too
    assert again.returncode == 0 and "already revoked at" in again.stdout

    rows = _token_lines(run(tmp_path, "list-tokens").stdout)
    assert rows["1"][8] == "-" and rows["2"][8] != "-" and rows["3"][8] != "-"
    assert set(_token_lines(run(tmp_path, "list-tokens", "--active").stdout)) == {"1"}

    for args in (("--id", "99"), ("--prefix", "uh_"), ("--prefix", "uh_zzzzzzzz"), ("--prefix", "abcdefghijk")):
        failed = run(tmp_path, "revoke-token", *args)
        assert_one_line_failure(failed)
        assert failed.returncode == 2
    assert_one_line_failure(run(tmp_path, "revoke-token"))  # neither --id nor --prefix
    assert_one_line_failure(run(tmp_path, "list-tokens", "--partner", "NOPE"))
    assert (await graphql(tmp_path, admin, "{ viewer { method } }")).status_code == 200


async def test_an_ambiguous_prefix_revokes_nothing(tmp_path: Path) -> None:
    assert run(tmp_path, "create-partner", "--uid", "P1", "--name", "P", "--kind", "DISTRIBUTOR").returncode == 0
    tokens = [run(tmp_path, "create-token", "--partner", "P1", "--role", "VIEWER").stdout.strip() for _ in range(2)]
    failed = run(tmp_path, "revoke-token", "--prefix", "uh_")  # too short: it would match every token
    assert_one_line_failure(failed)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    try:
        from sqlalchemy import update

        from uidhub.models import ApiToken

        async with db.write() as session:  # two tokens sharing a prefix (48 random bits: rare, but possible)
            await session.execute(update(ApiToken).values(prefix="uh_SAMEPREF"))
    finally:
        await db.dispose()
    failed = run(tmp_path, "revoke-token", "--prefix", "uh_SAMEPREF")
    assert_one_line_failure(failed)
    assert "matches 2 tokens (ids 1, 2)" in failed.stderr
    for token in tokens:
        assert (await graphql(tmp_path, token, "{ viewer { method } }")).status_code == 200


async def _revocation_closes_open_websockets(
    db: Database, tmp_path: Path, settings: Settings, cli_env: dict[str, str]
) -> None:
    main = await make_partner(db, "P-MAIN")
    admin = await make_token(db, main, Role.ADMIN)
    doomed = await make_token(db, main, Role.VIEWER)
    kept = await make_token(db, main, Role.VIEWER)
    app = create_app(settings, db=db)
    async with serve_in_loop(app) as (address, _server):
        watched = await WsClient.open(address, doomed)
        await watched.subscribe("1", ACCOUNT_EVENTS)
        second = await WsClient.open(address, doomed)  # every socket of the token goes
        bystander = await WsClient.open(address, kept)
        await bystander.subscribe("1", ACCOUNT_EVENTS)
        await link_over_http(address, admin, "U-1")  # two entries: ACCOUNT_LINKED and QUOTA_CREATED
        for client in (watched, bystander, watched, bystander):
            assert (await client.next_data())["accountEvents"]["account"]["uid"] == "U-1"

        revoked = _cli(tmp_path, "revoke-token", "--prefix", doomed[:PREFIX_LENGTH], db_url=db.url, env=cli_env)
        assert revoked.returncode == 0, revoked.stderr
        for client in (watched, second):
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # pings are answered; anything else before the close would be a bug
                    message = await client.receive(timeout=GUARD)
                    raise AssertionError(f"unexpected message after the revocation: {message}")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403

        # A new socket or request with the revoked token is refused; the other token's socket still delivers.
        late = await WsClient.open(address, doomed, ack=False)
        with pytest.raises(ConnectionClosed) as closed:
            await late.receive(timeout=GUARD)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        async with httpx.AsyncClient(timeout=GUARD) as http:
            response = await http.post(
                f"http://{address}/graphql",
                json={"query": "{ viewer { method } }"},
                headers={"Authorization": f"Bearer {doomed}"},
            )
        assert response.status_code == 401
        await link_over_http(address, admin, "U-2")
        for _ in range(2):
            assert (await bystander.next_data())["accountEvents"]["account"]["uid"] == "U-2"
        await bystander.close()
        assert app.state.uidhub.token_watch.open_count <= 1  # the revoked token's sockets are forgotten


async def test_revoked_token_websockets_close_4403_on_the_periodic_recheck(db: Database, tmp_path: Path) -> None:
    """Without Redis the CLI cannot wake the server: the re-check every token_recheck_seconds closes them."""
    settings = Settings(database_url=db.url, export_dir=str(tmp_path / "exports"), token_recheck_seconds=0.5)
    await _revocation_closes_open_websockets(db, tmp_path, settings, {})


@needs_redis
async def test_revoked_token_websockets_close_4403_at_once_through_redis(db: Database, tmp_path: Path) -> None:
    """With Redis the CLI's wake-up reaches the server: closed long before the (here, hour-long) re-check."""
    assert REDIS_URL is not None
    settings = Settings(
        database_url=db.url, export_dir=str(tmp_path / "exports"), redis_url=REDIS_URL, token_recheck_seconds=3600
    )
    await _revocation_closes_open_websockets(db, tmp_path, settings, {"UIDHUB_REDIS_URL": REDIS_URL})
