"""The in-process GraphQL client and the factories of partners, tokens and apps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from uidhub.app import create_app
from uidhub.db import Database
from uidhub.models import Partner
from uidhub.models.enums import OperationMethod, PartnerKind, Role
from uidhub.resolvers.auth import create_token
from uidhub.runtime import Runtime
from uidhub.settings import Settings


@dataclass
class Api:
    """A GraphQL client over the real ASGI app (in-process)."""

    client: httpx.AsyncClient
    db: Database
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)
    #: The app's runtime (make_api): `db` is its database view, so writes through it wake the app's subscribers.
    runtime: Runtime | None = None

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, token: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)

    async def gql(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        as_: str = "admin",
        errors: bool = False,
    ) -> dict[str, Any]:
        response = await self.post(query, variables, token or self.tokens[as_])
        body = response.json()
        if not errors:
            assert "errors" not in body, body
            return body["data"]
        return body


async def make_partner(
    db: Database, uid: str, kind: PartnerKind = PartnerKind.DISTRIBUTOR, alert_emails: list[str] | None = None
) -> Partner:
    async with db.write() as session:
        partner = Partner(uid=uid, name=f"Partner {uid}", kind=kind, alert_emails=alert_emails or ["ops@example.com"])
        session.add(partner)
    return partner


async def make_token(
    db: Database,
    partner: Partner,
    role: Role = Role.ADMIN,
    *,
    method: OperationMethod = OperationMethod.PLATFORM,
    account_uid: str | None = None,
    is_ram: bool = False,
    operator_uid: str | None = None,
) -> str:
    from sqlalchemy import select

    from uidhub.models import Account

    async with db.write() as session:
        account = None
        if account_uid is not None:
            account = await session.scalar(select(Account).where(Account.uid == account_uid))
        return await create_token(
            session,
            partner=partner,
            role=role,
            method=method,
            account=account,
            is_ram=is_ram,
            operator_uid=operator_uid,
        )


#: The suite's in-process clients send far faster than any console; the rate limits have their own tests.
NO_REQUEST_RATE_LIMITS = {"rate_limit_token_burst": 0, "rate_limit_ip_burst": 0}
#: Every request looks its token up (the cache's entries expire on the clock, which would make the statement
#: counts of a slow run differ from a fast one's); tests/test_token_cache.py switches the cache on.
NO_TOKEN_CACHE = {"token_cache_seconds": 0}


async def make_api(db: Database, tmp_path: Path, **settings: Any) -> AsyncIterator[Api]:
    config = Settings(
        database_url=db.url,
        export_dir=str(tmp_path / "exports"),
        **{**NO_REQUEST_RATE_LIMITS, **NO_TOKEN_CACHE, **settings},
    )
    app = create_app(config, db=db)
    runtime: Runtime = app.state.uidhub.runtime
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        api = Api(client=client, db=runtime.db, settings=config, runtime=runtime)
        partner = await make_partner(db, "P-MAIN")
        other = await make_partner(db, "P-OTHER")
        api.tokens["admin"] = await make_token(db, partner, Role.ADMIN)
        api.tokens["other"] = await make_token(db, other, Role.ADMIN)
        yield api
