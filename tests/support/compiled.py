"""Both read paths on the same request: the compiled one (uidhub.compiled) and ordinary execution."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from strawberry.http import process_result

from uidhub.compiled import CompiledReads
from uidhub.db import Database
from uidhub.resolvers.actor import Actor
from uidhub.resolvers.auth import authenticate
from uidhub.runtime import Runtime
from uidhub.schema import UidhubSchema, build_schema
from uidhub.schema.context import Context
from uidhub.settings import Settings


@dataclass
class Differ:
    """Runs a request through both paths and keeps the mismatches and how many were compiled."""

    runtime: Runtime
    schema: UidhubSchema = field(default_factory=build_schema)
    compiled: int = 0
    fallbacks: int = 0
    mismatches: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reads = CompiledReads(self.schema, self.runtime)

    @classmethod
    def over(cls, db: Database, settings: Settings) -> Differ:
        return cls(Runtime.open(settings, db=db))

    async def actor(self, token: str) -> Actor:
        async with self.runtime.db.read() as session:
            actor = await authenticate(session, token)
        assert actor is not None
        return actor

    async def ordinary(
        self, query: str, variables: dict[str, Any] | None, actor: Actor, operation_name: str | None = None
    ) -> dict[str, Any]:
        context = Context(self.runtime, actor=actor, request_id="differential")
        try:
            result = await self.schema.execute(
                query, variable_values=variables, context_value=context, operation_name=operation_name
            )
        finally:
            await context.close()
        return dict(process_result(result))

    async def compiled_answer(
        self, query: str, variables: dict[str, Any] | None, actor: Actor, operation_name: str | None = None
    ) -> dict[str, Any] | None:
        context = Context(self.runtime, actor=actor, request_id="differential")
        try:
            return await self.reads.execute(query, variables, operation_name, context)
        finally:
            await context.close()

    async def check(
        self, query: str, variables: dict[str, Any] | None, actor: Actor, operation_name: str | None = None
    ) -> bool:
        """Both paths on the request; True when it was compiled. A mismatch is recorded, not raised."""
        compiled = await self.compiled_answer(query, variables, actor, operation_name)
        ordinary = await self.ordinary(query, variables, actor, operation_name)
        # Every connection is back in the pool: nothing either path started outlives its request.
        assert self.runtime.db.engine.pool.checkedout() == 0, query  # type: ignore[attr-defined]
        if compiled is None:
            self.fallbacks += 1
            return False
        self.compiled += 1
        # Byte-for-byte as the HTTP layer encodes them: key order included.
        want, got = json.dumps(ordinary, sort_keys=False), json.dumps(compiled, sort_keys=False)
        if want != got:
            self.mismatches.append(f"{query}\nvariables={variables}\nordinary={want[:2000]}\ncompiled={got[:2000]}")
        return True


# ---------------------------------------------------------------- a world to query: demo data and viewers of each role


@dataclass
class World:
    """Demo data, a Differ over it, viewers of every kind, and values worth passing as arguments."""

    differ: Differ
    viewers: dict[str, Actor]
    uids: list[str]
    node_ids: list[str]
    cursors: list[str]


async def build_world(db: Database, settings: Settings, accounts: int = 40) -> World:
    # lazy: test helpers that build data import the app's demo and token code only when a world is built
    from sqlalchemy import select

    from tests.support.api import make_token
    from uidhub.demo import DISTRIBUTOR_UID, load_demo
    from uidhub.models import Account, Partner
    from uidhub.models.enums import PartnerKind, Role
    from uidhub.schema.common import to_global_id

    demo = await load_demo(db, settings, accounts=accounts)
    assert demo.token is not None
    async with db.read() as session:
        partners = {p.uid: p for p in (await session.scalars(select(Partner))).all()}
        rows = list((await session.scalars(select(Account).order_by(Account.id))).all())
    distributor = partners[DISTRIBUTOR_UID]
    other = next(p for p in partners.values() if p.kind is PartnerKind.RESELLER)
    agency = next(p for p in partners.values() if p.kind is PartnerKind.AGENCY)
    sub = next(r for r in rows if r.master_id is not None)
    master = next(r for r in rows if r.id == sub.master_id)
    differ = Differ.over(db, settings)
    tokens = {
        "admin": demo.token,
        "operator": await make_token(db, distributor, Role.OPERATOR),
        "viewer": await make_token(db, distributor, Role.VIEWER),
        "billing": await make_token(db, distributor, Role.BILLING),
        "end_user_master": await make_token(db, distributor, Role.END_USER, account_uid=master.uid),
        "end_user_sub": await make_token(db, distributor, Role.END_USER, account_uid=sub.uid),
        "other_partner": await make_token(db, other, Role.ADMIN),
        "agency": await make_token(db, agency, Role.ADMIN),
    }
    viewers = {name: await differ.actor(token) for name, token in tokens.items()}
    uids = [r.uid for r in rows[:12]] + [master.uid, sub.uid, "no-such-uid", ""]
    node_ids = [str(to_global_id("EndUser", r.id)) for r in rows[:6]]
    node_ids += [str(to_global_id("EndUser", 0)), str(to_global_id("Partner", distributor.id)), "not-an-id", ""]
    cursors = ["not-a-cursor", ""]
    for order in ORDERS:
        for viewer in ("admin", "end_user_master"):
            answer = await differ.ordinary(
                "query($o: EndUserOrder) { endUsers(first: 4, orderBy: $o) { edges { cursor } } }",
                {"o": order},
                viewers[viewer],
            )
            cursors += [edge["cursor"] for edge in answer["data"]["endUsers"]["edges"]]
    answer = await differ.ordinary("{ auditEntries(first: 3) { edges { cursor } } }", None, viewers["admin"])
    cursors += [edge["cursor"] for edge in answer["data"]["auditEntries"]["edges"]]
    return World(differ, viewers, uids, node_ids, cursors)


ORDERS = [
    {"field": f, "direction": d} for f in ("LINKED_AT", "UID", "NICKNAME", "AVAILABLE_QUOTA") for d in ("ASC", "DESC")
]


# ---------------------------------------------------------------- generated requests


def _enum_names(enum: Any) -> list[str]:
    return [member.name for member in enum]


@dataclass
class Request:
    query: str
    variables: dict[str, Any]
    viewer: str


class _Doc:
    """What a generated document needs besides its operation: variable declarations, values and fragments."""

    def __init__(self) -> None:
        self.declared: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.fragments: list[str] = []
        self.counter = 0

    def variable(self, type_: str, value: Any) -> str:
        self.counter += 1
        name = f"v{self.counter}"
        self.declared[name] = type_
        if value is not None:
            self.values[name] = value
        return f"${name}"

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


def _directed(field: str, directive: str) -> str:
    """The field with the directive after its name and arguments, before its selection set."""
    head, brace, rest = field.partition(" {")
    return f"{head} {directive}{brace}{rest}"


def strategies() -> Any:
    """The `requests(world)` strategy, built lazily so that importing this module needs no hypothesis."""
    from hypothesis import strategies as st

    from uidhub.models.enums import (
        AccountStatus,
        AccountType,
        AuditAction,
        CreditControlStatus,
        PaygFreezeStatus,
        PurchaseControl,
    )

    end_user_scalars = [
        "id",
        "uid",
        "accountType",
        "nickname",
        "businessManager",
        "remarks",
        "email",
        "accountStatus",
        "linkedAt",
        "__typename",
    ]
    quota_scalars = [
        "amount",
        "consumedDeducted",
        "consumedUndeducted",
        "available",
        "outstandingAmount",
        "warningThresholdPercent",
        "warningLevel",
        "belowWarningLevel",
        "__typename",
    ]
    policy_scalars = [
        "paygFreezeStatus",
        "effectivePaygFreezeStatus",
        "purchaseControl",
        "effectivePurchaseControl",
        "shutdownPolicy",
        "shutdownDelayCredit",
        "creditControlStatus",
    ]
    audit_scalars = ["id", "action", "occurredAt", "method", "reason", "before", "after", "__typename"]
    audit_objects = ["operator { uid name role isRamAccount }", "account { uid nickname }", "cascadeFrom { uid }"]
    page_info = ["hasNextPage", "hasPreviousPage", "startCursor", "endCursor"]
    summary_fields = build_schema()._schema.type_map["PortfolioSummary"].fields  # type: ignore[union-attr]
    # Mostly small pages (the cost of a case); 20 (the default), 100 and the refused 101 and -1 too.
    firsts = st.sampled_from([None, 0, 1, 2, 2, 3, 3, 5, 5, 20, 100, 101, -1])

    @st.composite
    def fields(draw: Any, doc: _Doc, leaves: list[str], extra: list[Any] | None = None) -> str:
        """A non-empty selection of `leaves` and `extra` (sub-selection strategies), aliased and directed at random."""
        options: list[Any] = [st.just(leaf) for leaf in leaves] + list(extra or [])
        picks = draw(st.lists(st.integers(0, len(options) - 1), min_size=1, max_size=min(6, len(options)), unique=True))
        parts = []
        for index in picks:
            text = draw(options[index])
            if draw(st.integers(0, 5)) == 0 and not text.startswith("__"):
                text = f"{doc.fresh('a')}: {text}"
            directive = draw(st.integers(0, 9))
            if directive == 0:
                text = _directed(text, f"@include(if: {doc.variable('Boolean!', draw(st.booleans()))})")
            elif directive == 1:
                text = _directed(text, f"@skip(if: {draw(st.sampled_from(['true', 'false']))})")
            parts.append(text)
        return " ".join(parts)

    @st.composite
    def wrapped(draw: Any, doc: _Doc, type_name: str, selection: str) -> str:
        """A selection as written, in an inline fragment, or in a named fragment spread."""
        how = draw(st.integers(0, 3))
        if how == 1:
            return f"... on {type_name} {{ {selection} }}"
        if how == 2:
            name = doc.fresh("F")
            doc.fragments.append(f"fragment {name} on {type_name} {{ {selection} }}")
            return f"...{name}"
        if how == 3:
            return f"... {{ {selection} }} __typename"
        return selection

    def connection(doc: _Doc, node: Any, arguments: str) -> Any:
        return fields(
            doc,
            ["totalCount"],
            [
                st.builds(lambda s: f"pageInfo {{ {s} }}", fields(doc, page_info)),
                st.builds(lambda s: f"edges {{ cursor node {{ {s} }} }}", node),
                st.builds(lambda s: f"edges {{ {s} }}", st.just("cursor")),
            ],
        ).map(lambda s: f"{arguments} {{ {s} }}")

    def audit_node(doc: _Doc) -> Any:
        return fields(doc, audit_scalars, [st.just(text) for text in audit_objects])

    @st.composite
    def nested_first(draw: Any, doc: _Doc) -> str:
        first = draw(st.sampled_from([1, 2, 3]))
        return f"(first: {first})"

    @st.composite
    def end_user(draw: Any, doc: _Doc, depth: int = 0) -> str:
        extra: list[Any] = [
            st.builds(lambda s: f"policy {{ {s} }}", fields(doc, policy_scalars)),
            st.builds(
                lambda s: f"quota {{ {s} }}",
                fields(
                    doc,
                    quota_scalars,
                    [
                        st.just("account { uid nickname }"),
                        nested_first(doc).flatmap(
                            lambda a: connection(
                                doc, fields(doc, ["value", "before", "after", "operationType"]), f"adjustments{a}"
                            )
                        ),
                    ],
                ),
            ),
            st.just("master { uid nickname }"),
            st.just("partner { uid kind alertEmails }"),
            st.just("creditAlert { enabled threshold email }"),
            nested_first(doc).flatmap(lambda a: connection(doc, audit_node(doc), f"auditEntries{a}")),
        ]
        if depth == 0:
            extra.append(st.builds(lambda s: f"subAccounts {{ {s} }}", end_user(doc, 1)))
        selection = draw(fields(doc, end_user_scalars, extra))
        return draw(wrapped(doc, "EndUser", selection))

    @st.composite
    def end_user_filter(draw: Any, world: World) -> dict[str, Any]:
        options: dict[str, Any] = {
            "search": st.sampled_from(["1", "10", "Demo", "科技", "sub", "zzz", "%", "_", "a" * 201]),
            "uids": st.lists(st.sampled_from(world.uids), max_size=3),
            "accountTypes": st.lists(st.sampled_from(_enum_names(AccountType)), max_size=2, unique=True),
            "accountStatuses": st.lists(st.sampled_from(_enum_names(AccountStatus)), max_size=2, unique=True),
            "paygFreezeStatus": st.sampled_from(_enum_names(PaygFreezeStatus)),
            "purchaseControl": st.sampled_from(_enum_names(PurchaseControl)),
            "creditControlStatuses": st.lists(
                st.sampled_from(_enum_names(CreditControlStatus)), max_size=2, unique=True
            ),
            "belowWarningLevel": st.booleans(),
            "businessManager": st.sampled_from(["Alice Chen", "nobody"]),
            "linkedAfter": st.sampled_from(["2020-01-01T00:00:00+00:00", "2999-01-01T00:00:00Z"]),
            "linkedBefore": st.sampled_from(["2999-01-01T00:00:00+08:00", "2020-01-01T00:00:00Z"]),
            "includeSubAccounts": st.sampled_from([True, False, None]),
        }
        keys = draw(st.lists(st.sampled_from(sorted(options)), max_size=3, unique=True))
        return {key: draw(options[key]) for key in keys}

    @st.composite
    def root(draw: Any, doc: _Doc, world: World) -> str:
        kind = draw(st.sampled_from(["endUsers", "endUsers", "endUsers", "endUser", "node", "summary", "auditEntries"]))
        if kind == "endUsers":
            args = []
            first = draw(firsts)
            if first is not None:
                literal = draw(st.booleans())
                args.append(f"first: {first}" if literal else f"first: {doc.variable('Int', first)}")
            if draw(st.integers(0, 3)) == 0:
                args.append(f"after: {doc.variable('String', draw(st.sampled_from(world.cursors)))}")
            if draw(st.booleans()):
                args.append(f"filter: {doc.variable('EndUserFilter', draw(end_user_filter(world)))}")
            if draw(st.booleans()):
                args.append(f"orderBy: {doc.variable('EndUserOrder', draw(st.sampled_from(ORDERS)))}")
            arguments = f"endUsers({', '.join(args)})" if args else "endUsers"
            return draw(connection(doc, end_user(doc), arguments))
        if kind == "endUser":
            uid = doc.variable("String!", draw(st.sampled_from(world.uids)))
            return f"endUser(uid: {uid}) {{ {draw(end_user(doc))} }}"
        if kind == "node":
            node_id = doc.variable("ID!", draw(st.sampled_from(world.node_ids)))
            selection = draw(end_user(doc))
            return f"node(id: {node_id}) {{ __typename id ... on EndUser {{ {selection} }} }}"
        if kind == "summary":
            totals = sorted(summary_fields)
            return f"summary {{ {draw(fields(doc, totals))} }}"
        args = [f"first: {draw(st.sampled_from([1, 3, 10, 101]))}"]
        if draw(st.booleans()):
            args.append(f"uid: {doc.variable('String', draw(st.sampled_from(world.uids)))}")
        if draw(st.booleans()):
            actions = draw(st.lists(st.sampled_from(_enum_names(AuditAction)), min_size=1, max_size=2, unique=True))
            args.append(f"actions: {doc.variable('[AuditAction!]', actions)}")
        if draw(st.integers(0, 3)) == 0:
            args.append(f"after: {doc.variable('String', draw(st.sampled_from(world.cursors)))}")
        return draw(connection(doc, audit_node(doc), f"auditEntries({', '.join(args)})"))

    @st.composite
    def requests(draw: Any, world: World) -> Request:
        doc = _Doc()
        roots = [draw(root(doc, world)) for _ in range(draw(st.sampled_from([1, 1, 1, 2])))]
        body = " ".join(f"r{n}: {text}" for n, text in enumerate(roots)) if len(roots) > 1 else roots[0]
        declared = ", ".join(f"${name}: {type_}" for name, type_ in doc.declared.items())
        head = f"query Generated({declared})" if declared else "query Generated"
        query = "\n".join([f"{head} {{ {body} }}", *doc.fragments])
        return Request(query, doc.values, draw(st.sampled_from(sorted(world.viewers))))

    return requests
