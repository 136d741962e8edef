"""Tenancy walk: every EndUser-typed field of the served schema, read with END_USER tokens of a sub-account and
of a master, and with a VIEWER of the same partner as the control.

The walk is built from the served schema (graphql-core introspection of `build_schema()`), not from a list: for
every root field of Query and Subscription it finds the shortest path to every field whose (unwrapped) type is
EndUser, builds a query for it, and selects at its end a generated selection of EndUser (every field without
required arguments, nested a few levels). A field added later is walked without touching this file; an
EndUser-typed field the walk cannot reach from a Query or Subscription root fails the test unless it is listed in
MUTATION_ONLY with the reason it is safe.

Every account of the fixture carries a marker word in its UID, nickname, email, remarks, business manager, credit
alert email and order descriptions, so "never sees the master" is checked on the whole response text: the
END_USER of SUB-ONE must never see MASTERONE (its master), SUBTWO (a sibling), MASTERTWO or SUBTHREE; the END_USER
of MASTERONE must never see MASTERTWO or SUBTHREE, and every account it is shown is its own or a sub-account's.
The VIEWER must see every marker through the same paths: the walk really reaches the master's data.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    Undefined,
    get_named_type,
    is_leaf_type,
)
from sqlalchemy import select

from tests.support.accounts import link
from tests.support.api import Api, make_token
from tests.support.exports import drain, start_ok, task
from tests.support.live import WsClient, serve_in_loop
from uidhub.app import create_app
from uidhub.models import Account
from uidhub.models.enums import Role
from uidhub.resolvers.auth import authenticate
from uidhub.schema import MAX_DEPTH, build_schema
from uidhub.schema.common import from_global_id, to_global_id

TARGET = "EndUser"

#: EndUser-typed fields reachable only from Mutation: each returns an account the mutation itself found through
#: the actor's scope (resolvers.accounts.find/get over Actor.account_scope), so there is nothing to walk.
MUTATION_ONLY = {
    ("EndUserPayload", "endUser"): "scoped get(); also walked through setCreditAlert (walk_end_user_mutations)",
    ("PolicyChangeResult", "endUser"): "freezePayg/unfreezePayg: accounts selected with account_scope",
    ("PolicyChangePayload", "affectedAccounts"): "freezePayg/unfreezePayg: accounts selected with account_scope",
}

MARKERS = ("MASTERONE", "SUBONE", "SUBTWO", "MASTERTWO", "SUBTHREE", "OTHERPARTNER")
UID = {m: f"uid-{m}" for m in MARKERS}

#: What each token may be shown (UIDs of EndUser objects) and the markers that must never appear.
ALLOWED = {
    "eu_sub": {UID["SUBONE"]},
    "eu_master": {UID["MASTERONE"], UID["SUBONE"], UID["SUBTWO"]},
    "viewer": {UID[m] for m in MARKERS if m != "OTHERPARTNER"},
}
FORBIDDEN = {
    "eu_sub": ("MASTERONE", "SUBTWO", "MASTERTWO", "SUBTHREE", "OTHERPARTNER"),
    "eu_master": ("MASTERTWO", "SUBTHREE", "OTHERPARTNER"),
    "viewer": ("OTHERPARTNER",),
}
LEAF_DEPTH = 2
PAGE = 100
CONTROL_PAGE = 20

# ---------------------------------------------------------------- the walk, from the schema


@dataclass(frozen=True)
class Step:
    name: str
    field: GraphQLField
    on: str | None = None  # type condition when stepping out of an interface (node(id:))


@dataclass(frozen=True)
class Path:
    root: str  # "Query" or "Subscription"
    steps: tuple[Step, ...]
    target: tuple[str, str]  # the EndUser-typed field this path ends on: (parent type, field)

    def describe(self) -> str:
        parts = [f"{s.name}" + (f"(...on {s.on})" if s.on else "") for s in self.steps]
        return f"{self.root}." + ".".join(parts)


def _out_steps(schema: GraphQLSchema, t: Any) -> Iterator[tuple[str, str | None, GraphQLObjectType, GraphQLField]]:
    if isinstance(t, GraphQLInterfaceType):
        for impl in schema.get_possible_types(t):
            for name, f in impl.fields.items():
                yield name, impl.name, impl, f
    else:
        for name, f in t.fields.items():
            yield name, None, t, f


def _required(arg: Any) -> bool:
    return isinstance(arg.type, GraphQLNonNull) and arg.default_value is Undefined


def end_user_fields(schema: GraphQLSchema) -> set[tuple[str, str]]:
    """Every (type, field) of the schema whose unwrapped type is EndUser."""
    found = set()
    for name, t in schema.type_map.items():
        if name.startswith("__") or not isinstance(t, GraphQLObjectType):
            continue
        for fname, f in t.fields.items():
            if get_named_type(f.type).name == TARGET:
                found.add((name, fname))
    return found


def walk(schema: GraphQLSchema) -> list[Path]:
    """From every Query and Subscription root field, the shortest path to every reachable EndUser-typed field."""
    paths: list[Path] = []
    for root in (schema.query_type, schema.subscription_type):
        assert root is not None
        for root_name, root_field in root.fields.items():
            first = Step(root_name, root_field)
            start = get_named_type(root_field.type)
            found: dict[tuple[str, str], tuple[Step, ...]] = {}
            if start.name == TARGET:
                found[(root.name, root_name)] = (first,)
            if isinstance(start, GraphQLInterfaceType) and TARGET in {t.name for t in schema.get_possible_types(start)}:
                found[(root.name, f"{root_name}(...on {TARGET})")] = (Step(root_name, root_field, on=None),)
            queue: deque[tuple[Any, tuple[Step, ...]]] = deque([(start, (first,))])
            seen = {start.name}
            while queue:
                t, steps = queue.popleft()
                if is_leaf_type(t):
                    continue
                for name, on, owner, f in _out_steps(schema, t):
                    named = get_named_type(f.type)
                    step = Step(name, f, on)
                    if named.name == TARGET and (owner.name, name) not in found:
                        found[(owner.name, name)] = (*steps, step)
                    if not is_leaf_type(named) and named.name not in seen:
                        seen.add(named.name)
                        queue.append((named, (*steps, step)))
            paths.extend(Path(root.name, steps, target) for target, steps in found.items())
    return paths


def leaf(schema: GraphQLSchema, type_name: str, depth: int) -> str:
    """A selection of every field without required arguments, objects nested `depth` levels (connections free)."""
    t = schema.type_map[type_name]
    if isinstance(t, GraphQLInterfaceType):
        return "__typename id"
    parts = ["__typename"]
    for name, f in t.fields.items():
        if any(_required(a) for a in f.args.values()):
            continue
        named = get_named_type(f.type)
        if is_leaf_type(named):
            parts.append(name)
        elif named.name == "PageInfo" or depth == 0:
            continue
        elif named.name.endswith(("Connection", "Edge")):  # default page size: the fixture's lists are short
            parts.append(f"{name} {{ {leaf(schema, named.name, depth)} }}")
        else:
            parts.append(f"{name} {{ {leaf(schema, named.name, depth - 1)} }}")
    return " ".join(parts)


def _leaf_depth(path: Path) -> int:
    """As deep a leaf as the depth limit leaves room for: a LEAF_DEPTH leaf is five fields deep."""
    room = MAX_DEPTH - len(path.steps)
    return max(0, min(LEAF_DEPTH, (room - 1) // 3))


def build_query(schema: GraphQLSchema, path: Path, root_args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The document for one path: arguments as variables, the generated EndUser selection at its end."""
    variables: dict[str, Any] = {}
    declared: list[str] = []
    inner = leaf(schema, TARGET, _leaf_depth(path))
    for index in range(len(path.steps) - 1, -1, -1):
        step = path.steps[index]
        args: list[str] = []
        for arg_name, arg in step.field.args.items():
            value = root_args.get(arg_name) if index == 0 else None
            if value is None and arg_name == "first":
                value = PAGE
            if value is None:
                if _required(arg):
                    raise AssertionError(f"{path.describe()}: no value for required argument {step.name}({arg_name})")
                continue
            var = f"v{index}_{arg_name}"
            variables[var] = value
            declared.append(f"${var}: {arg.type}")
            args.append(f"{arg_name}: ${var}")
        rendered = f"{step.name}({', '.join(args)})" if args else step.name
        if index == 0 and path.target[1].endswith(f"(...on {TARGET})"):
            inner = f"... on {TARGET} {{ {inner} }}"
        inner = f"{rendered} {{ {inner} }}"
        if step.on:
            inner = f"... on {step.on} {{ {inner} }}"
    keyword = "subscription" if path.root == "Subscription" else "query"
    header = f"{keyword}({', '.join(declared)})" if declared else keyword
    return f"{header} {{ {inner} }}", variables


def terminal_values(data: Any, path: Path) -> list[dict[str, Any]]:
    """The EndUser objects a response holds at the end of `path`."""
    current: list[Any] = [data]
    for step in path.steps:
        nxt: list[Any] = []
        for value in current:
            if isinstance(value, dict) and value.get(step.name) is not None:
                item = value[step.name]
                nxt.extend(item if isinstance(item, list) else [item])
            elif isinstance(value, list):
                nxt.extend(v[step.name] for v in value if isinstance(v, dict) and v.get(step.name) is not None)
        current = [v for c in nxt for v in (c if isinstance(c, list) else [c])]
    return [v for v in current if isinstance(v, dict) and v.get("__typename") == TARGET]


def end_users_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every EndUser object anywhere in a response."""
    if isinstance(value, dict):
        if value.get("__typename") == TARGET:
            yield value
        for v in value.values():
            yield from end_users_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from end_users_in(v)


# ---------------------------------------------------------------- the accounts


BASIC = "mutation($i: UpdateBasicInfoInput!) { updateBasicInfo(input: $i) { userErrors { code message } } }"
CREDIT = "mutation($i: SetCreditAlertInput!) { setCreditAlert(input: $i) { userErrors { code message } } }"
WARNING = "mutation($i: SetWarningThresholdInput!) { setWarningThreshold(input: $i) { userErrors { code message } } }"
ORDER = "mutation($i: PlaceOrderInput!) { placeOrder(input: $i) { userErrors { code message } } }"
CONSUME = "mutation($i: AmountInput!) { recordConsumption(input: $i) { userErrors { code message } } }"
STATUS = "mutation($i: ChangeAccountStatusInput!) { changeAccountStatus(input: $i) { userErrors { code message } } }"
THRESHOLD = "mutation($i: AddQuotaThresholdInput!) { addQuotaThreshold(input: $i) { userErrors { code message } } }"
PURCHASE = "mutation($i: SetPurchaseControlInput!) { setPurchaseControl(input: $i) { userErrors { code message } } }"


async def mutate(api: Api, query: str, i: dict[str, Any], *, token: str | None = None, as_: str = "admin") -> None:
    data = await api.gql(query, {"i": i}, token=token, as_=as_)
    (payload,) = data.values()
    assert payload["userErrors"] == [], payload


async def link_marked(
    api: Api, marker: str, *, master: str | None = None, quota: str | None = None, as_: str = "admin"
) -> None:
    """Link the account of `marker` with marked nickname, email, remarks and business manager."""
    await link(
        api,
        UID[marker],
        nickname=f"nick-{marker}",
        email=f"mail-{marker}@example.com",
        masterUid=UID[master] if master else None,
        quotaAmount=quota,
        as_=as_,
    )
    await mutate(
        api, BASIC, {"uid": UID[marker], "remarks": f"remarks-{marker}", "businessManager": f"bm-{marker}"}, as_=as_
    )


@dataclass
class World:
    api: Api
    tokens: dict[str, str] = field(default_factory=dict)
    keys: Iterator[int] = field(default_factory=itertools.count)


async def build_world(api: Api) -> World:
    """Two masters with sub-accounts, orders, alerts, cascades and a purchase ban on P-MAIN; one P-OTHER account."""
    world = World(api)
    await link_marked(api, "MASTERONE", quota="100.00")
    await link_marked(api, "SUBONE", master="MASTERONE")
    await link_marked(api, "SUBTWO", master="MASTERONE")
    await link_marked(api, "MASTERTWO", quota="100.00")
    await link_marked(api, "SUBTHREE", master="MASTERTWO")
    await link_marked(api, "OTHERPARTNER", quota="100.00", as_="other")
    main = await _partner(api, "P-MAIN")
    world.tokens = {
        "eu_sub": await make_token(api.db, main, Role.END_USER, account_uid=UID["SUBONE"]),
        "eu_master": await make_token(api.db, main, Role.END_USER, account_uid=UID["MASTERONE"]),
        "viewer": await make_token(api.db, main, Role.VIEWER),
    }
    for marker in ("MASTERONE", "SUBONE", "SUBTWO", "MASTERTWO", "SUBTHREE"):
        await mutate(
            api,
            ORDER,
            {
                "uid": UID[marker],
                "billingMethod": "PAYG",
                "amount": "1.00",
                "description": f"order-{marker}",
                "idempotencyKey": f"o-{marker}",
            },
        )
    for marker in ("MASTERONE", "MASTERTWO"):
        await mutate(api, WARNING, {"uid": UID[marker], "percent": 50})
        # A breach that waits for approval: a pending action naming the master.
        await mutate(
            api,
            THRESHOLD,
            {
                "uid": UID[marker],
                "threshold": {
                    "kind": "AVAILABLE_BELOW",
                    "amount": "50.00",
                    "action": "FREEZE_PAYG",
                    "requiresApproval": True,
                },
            },
        )
        await mutate(
            api,
            CREDIT,
            {"uid": UID[marker], "enabled": True, "threshold": "90.00", "email": f"alert-{marker}@example.com"},
        )
    # The master's END_USER token acts on its sub-account: the sub's entry names the master as operator.
    await mutate(
        api,
        CREDIT,
        {"uid": UID["SUBONE"], "enabled": True, "threshold": "95.00", "email": f"alert-{'SUBONE'}@example.com"},
        token=world.tokens["eu_master"],
    )
    await mutate(
        api,
        CREDIT,
        {"uid": UID["SUBTHREE"], "enabled": True, "threshold": "95.00", "email": "alert-SUBTHREE@example.com"},
    )
    for marker in ("MASTERONE", "MASTERTWO"):  # warning and credit alerts BREACHED, emails queued
        await mutate(api, CONSUME, {"uid": UID[marker], "amount": "60.00", "idempotencyKey": f"c-{marker}"})
    for status in ("TO_BE_CONFIRMED", "NORMAL"):  # cascades: the subs' entries name their master (cascadeFrom)
        for marker in ("MASTERONE", "MASTERTWO"):
            await mutate(api, STATUS, {"uid": UID[marker], "status": status})
    await mutate(api, PURCHASE, {"uid": UID["MASTERONE"], "status": "BANNED"})  # blocks SUBONE's orders
    return world


async def _partner(api: Api, uid: str) -> Any:
    from uidhub.models import Partner

    async with api.db.read() as session:
        return await session.scalar(select(Partner).where(Partner.uid == uid))


async def node_ids(api: Api) -> dict[str, list[str]]:
    """Global ids for node(id:), by type: the objects of a sub-account, its master, another master and P-OTHER.

    Audit entries: the kinds that name another account (the link, cascades, a change by the master's token).
    """
    query = """query($uid: String!) { endUser(uid: $uid) { id instances { id }
                 auditEntries(first: 100, actions: [ACCOUNT_LINKED, ACCOUNT_STATUS_CHANGED, CREDIT_ALERT_CHANGED]) {
                   edges { node { id } } } }
               alertEvents(uid: $uid) { edges { node { id } } } }"""
    ids: dict[str, set[str]] = defaultdict(set)

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                parsed = from_global_id(item) if key == "id" and isinstance(item, str) else None
                if parsed is not None:
                    ids[parsed[0]].add(item)
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    for marker, as_ in (("SUBONE", "admin"), ("MASTERONE", "admin"), ("MASTERTWO", "admin"), ("OTHERPARTNER", "other")):
        collect(await api.gql(query, {"uid": UID[marker]}, as_=as_))
    return {k: sorted(v) for k, v in ids.items()}


def root_variants(path: Path, ids: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Concrete root arguments for a path: several accounts for a uid, every id of the right type for node(id:)."""
    root = path.steps[0]
    if path.root == "Subscription":
        return [{"afterId": to_global_id("AuditEntry" if root.name == "accountEvents" else "QuotaAlertEvent", 0)}]
    required = {n for n, a in root.field.args.items() if _required(a)}
    if not required:
        return [{}]
    if required == {"id"} and root.name == "node":
        node_type = (
            TARGET
            if path.target[1].endswith(f"(...on {TARGET})")
            else (path.steps[1].on if len(path.steps) > 1 else None)
        )
        assert node_type is not None, path.describe()
        return [{"id": i} for i in ids.get(node_type, [])]
    if required == {"uid"}:
        return [{"uid": UID[m]} for m in ("SUBONE", "MASTERONE", "MASTERTWO")]
    if required == {"uid", "billingMethod", "amount"}:
        return [{"uid": UID[m], "billingMethod": "PAYG", "amount": "1.00"} for m in ("SUBONE", "MASTERONE")]
    raise AssertionError(f"{path.describe()}: add root arguments for {sorted(required)} to root_variants")


# ---------------------------------------------------------------- checks


@dataclass
class Seen:
    """What the walk saw, per token."""

    by_target: dict[tuple[str, tuple[str, str]], set[str]] = field(default_factory=lambda: defaultdict(set))
    text: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    runs: int = 0

    def record(self, who: str, path: Path, data: Any, label: str) -> None:
        text = json.dumps(data, ensure_ascii=False)
        self.runs += 1
        self.text[who].append(text)
        for marker in FORBIDDEN[who]:
            assert marker not in text, f"{who} saw {marker} through {label}: {text[:2000]}"
        for user in end_users_in(data):
            assert user["uid"] in ALLOWED[who] or user["uid"] == "", f"{who} was shown {user['uid']} via {label}"
            if user["uid"] == "":  # the limited view: nothing of the hidden account
                assert user.get("nickname") is None and user.get("email") is None and user.get("remarks") is None
        for user in terminal_values(data, path):
            self.by_target[(who, path.target)].add(user["uid"])


async def test_end_user_tokens_never_see_outside_their_scope_on_any_end_user_field(api: Api) -> None:
    schema = build_schema()._schema
    world = await build_world(api)
    ids = await node_ids(api)
    paths = walk(schema)
    targets = end_user_fields(schema)
    walked = {p.target for p in paths}

    # Every EndUser-typed field is walked, or listed with the reason it needs no walk.
    unwalked = {t for t in targets if t not in walked} - set(MUTATION_ONLY)
    assert not unwalked, f"EndUser-typed fields no Query/Subscription path reaches; walk them or justify: {unwalked}"
    assert set(MUTATION_ONLY) <= targets, "MUTATION_ONLY names a field that no longer exists"

    seen = Seen()
    for path in (p for p in paths if p.root == "Query"):
        for variant in root_variants(path, ids):
            query, variables = build_query(schema, path, variant)
            for who, token in world.tokens.items():
                if who == "viewer":  # the control reads every account of the partner: its first pages suffice
                    variables = {k: (CONTROL_PAGE if k.endswith("_first") else v) for k, v in variables.items()}
                body = await api.gql(query, variables, token=token, errors=True)
                for error in body.get("errors") or []:  # END_USER: a refusal or an unknown UID, nothing else
                    assert who != "viewer" and error.get("extensions", {}).get("code") in {"FORBIDDEN", "NOT_FOUND"}, (
                        path.describe(),
                        query,
                        body,
                    )
                seen.record(who, path, body.get("data"), f"{path.describe()} {variant}")

    await walk_end_user_mutations(api, world, schema, seen)
    await walk_subscriptions(api, world, schema, [p for p in paths if p.root == "Subscription"], seen)

    # The control: the VIEWER reaches every account through the same paths, and every walked field with data.
    viewer_text = "\n".join(seen.text["viewer"])
    for marker in ("MASTERONE", "SUBONE", "SUBTWO", "MASTERTWO", "SUBTHREE"):
        assert marker in viewer_text
    for target in walked:
        if target[1].startswith("node("):
            continue
        assert seen.by_target[("viewer", target)] - {""}, f"the walk never reached data at {target} as VIEWER"
    # The paths of the report: the sub-account's pool owner and cascade source are the master for the VIEWER,
    # hidden from the sub-account's END_USER token, visible to the master's own.
    for target in (("Quota", "account"), ("AuditEntry", "cascadeFrom"), ("EndUser", "master")):
        assert UID["MASTERONE"] in seen.by_target[("viewer", target)], target
        assert UID["MASTERONE"] not in seen.by_target[("eu_sub", target)], target
        assert UID["MASTERONE"] in seen.by_target[("eu_master", target)], target
    assert "" in seen.by_target[("eu_sub", ("Quota", "account"))]  # the limited view of the pool's owner
    # The master's END_USER sees its sub-accounts, not only itself.
    assert {UID["SUBONE"], UID["SUBTWO"]} <= seen.by_target[("eu_master", ("EndUser", "subAccounts"))]
    eu_sub_text = "\n".join(seen.text["eu_sub"])
    assert "SUBONE" in eu_sub_text and "alert-SUBONE@example.com" in eu_sub_text
    assert seen.runs > 300


async def walk_end_user_mutations(api: Api, world: World, schema: GraphQLSchema, seen: Seen) -> None:
    """The mutations an END_USER token may run return EndUserPayload.endUser: its generated selection too.

    The credit alerts are set to what they already are, so nothing changes (and no entry is written).
    """
    mutation = schema.mutation_type
    assert mutation is not None
    field_ = mutation.fields["setCreditAlert"]
    payload = get_named_type(field_.type)
    assert isinstance(payload, GraphQLObjectType)
    path = Path(
        "Mutation",
        (Step("setCreditAlert", field_), Step("endUser", payload.fields["endUser"])),
        ("EndUserPayload", "endUser"),
    )
    query = (
        f"mutation($i: SetCreditAlertInput!) {{ setCreditAlert(input: $i) {{ userErrors {{ code }} "
        f"endUser {{ {leaf(schema, TARGET, LEAF_DEPTH)} }} }} }}"
    )
    for who, marker, threshold in (("eu_sub", "SUBONE", "95.00"), ("eu_master", "MASTERONE", "90.00")):
        variables = {
            "i": {"uid": UID[marker], "enabled": True, "threshold": threshold, "email": f"alert-{marker}@example.com"}
        }
        data = await api.gql(query, variables, token=world.tokens[who])
        assert data["setCreditAlert"]["userErrors"] == [] and data["setCreditAlert"]["endUser"]["uid"] == UID[marker]
        seen.record(who, path, data, f"setCreditAlert({marker})")


async def walk_subscriptions(api: Api, world: World, schema: GraphQLSchema, paths: list[Path], seen: Seen) -> None:
    """Each subscription path over a real websocket: the full replay, then one live cascade from MASTERONE."""
    assert {p.steps[0].name for p in paths} >= {"accountEvents", "quotaThresholdBreached"}
    app = create_app(api.settings, db=api.db)
    # The control follows MASTERONE and SUBONE only (the END_USER tokens follow everything they may see).
    control_uids = [UID["MASTERONE"], UID["SUBONE"]]
    counts_query = """{ alertEvents(states: [BREACHED]) { totalCount }
      auditEntries { totalCount } a: auditEntries(uid: "uid-MASTERONE") { totalCount }
      b: auditEntries(uid: "uid-SUBONE") { totalCount } }"""
    async with serve_in_loop(app) as (address, _server):
        for who, token in world.tokens.items():
            counts = await api.gql(counts_query, token=token)
            audit = (
                counts["a"]["totalCount"] + counts["b"]["totalCount"]
                if who == "viewer"
                else counts["auditEntries"]["totalCount"]
            )
            replay = {"accountEvents": audit, "quotaThresholdBreached": counts["alertEvents"]["totalCount"]}
            client = await WsClient.open(address, token)
            try:
                ops: dict[str, Path] = {}
                for n, path in enumerate(paths):
                    (variant,) = root_variants(path, {})
                    if who == "viewer" and path.steps[0].name == "accountEvents":
                        variant = {**variant, "uids": control_uids}
                    query, variables = build_query(schema, path, variant)
                    await client.subscribe(str(n), query, variables)
                    ops[str(n)] = path
                expected = {op: replay[p.steps[0].name] for op, p in ops.items()}
                await receive_all(client, ops, expected, seen, who, "replay")
                assert all(expected[op] > 0 for op in ops)
                # One live change: MASTERONE and its two subs get an entry each (the subs' with cascadeFrom).
                await mutate(api, STATUS, {"uid": UID["MASTERONE"], "status": "TO_BE_CONFIRMED"})
                live = {"eu_sub": 1, "eu_master": 3, "viewer": 2}[who]
                await receive_all(
                    client,
                    ops,
                    {op: live if p.steps[0].name == "accountEvents" else 0 for op, p in ops.items()},
                    seen,
                    who,
                    "live",
                )
                await mutate(api, STATUS, {"uid": UID["MASTERONE"], "status": "NORMAL"})
                await receive_all(
                    client,
                    ops,
                    {op: live if p.steps[0].name == "accountEvents" else 0 for op, p in ops.items()},
                    seen,
                    who,
                    "live",
                )
            finally:
                await client.close()


async def receive_all(
    client: WsClient, ops: dict[str, Path], expected: dict[str, int], seen: Seen, who: str, phase: str
) -> None:
    remaining = dict(expected)
    while any(remaining.values()):
        message = await client.receive(timeout=30)
        assert message["type"] == "next", message
        op = message["id"]
        assert remaining[op] > 0, f"{who}: more {phase} messages than expected on {ops[op].describe()}"
        remaining[op] -= 1
        payload = message["payload"]
        assert not payload.get("errors"), payload
        seen.record(who, ops[op], payload["data"], f"{ops[op].describe()} ({phase})")


# ---------------------------------------------------------------- exports and the rule itself


async def test_end_user_exports_stay_in_scope(api: Api) -> None:
    """END_USER tokens may export: the END_USERS file of a sub-account's token names no master (UID column blank)."""
    world = await build_world(api)
    files: dict[str, str] = {}
    for who, token in world.tokens.items():
        for kind in ("END_USERS", "QUOTA_ADJUSTMENTS"):
            extra = {"uid": UID["SUBONE"] if who == "eu_sub" else UID["MASTERONE"]} if kind != "END_USERS" else {}
            started = await start_ok(api, {"kind": kind, "format": "CSV", "language": "EN", **extra}, token=token)
            assert await drain(api) == 1
            done = await task(api, started["id"], token=token)
            assert done is not None and done["status"] == "SUCCEEDED", done
            response = await api.client.get(done["downloadUrl"], headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
            files[f"{who}:{kind}"] = response.content.decode("utf-8-sig")
    for key, text in files.items():
        who = key.split(":")[0]
        for marker in FORBIDDEN[who]:
            assert marker not in text, f"{key} export names {marker}:\n{text}"
    assert "uid-SUBONE" in files["eu_sub:END_USERS"]
    assert "uid-MASTERONE" in files["viewer:END_USERS"] and "uid-SUBTWO" in files["eu_master:END_USERS"]


async def test_python_and_sql_scope_agree(api: Api) -> None:
    """Actor.sees (rows loaded by id) and Actor.account_scope (queries) are one rule: they select the same rows."""
    world = await build_world(api)
    async with api.db.read() as session:
        rows = (await session.scalars(select(Account))).all()
        for token in (*world.tokens.values(), api.tokens["admin"], api.tokens["other"]):
            actor = await authenticate(session, token)
            assert actor is not None
            in_sql = set((await session.scalars(select(Account.id).where(actor.account_scope()))).all())
            assert in_sql == {r.id for r in rows if actor.sees(r)}
            assert in_sql  # every actor of the fixture sees something


async def test_partner_alert_emails_are_hidden_from_end_user_tokens(api: Api) -> None:
    world = await build_world(api)
    query = '{ viewer { partner { id alertEmails } } endUser(uid: "uid-SUBONE") { partner { alertEmails } } }'
    by_id = "query($id: ID!) { node(id: $id) { ... on Partner { alertEmails } } }"
    for who, expected in (("eu_sub", []), ("eu_master", []), ("viewer", ["ops@example.com"])):
        data = await api.gql(query, token=world.tokens[who])
        assert data["viewer"]["partner"]["alertEmails"] == expected, who
        assert data["endUser"]["partner"]["alertEmails"] == expected, who
        node = await api.gql(by_id, {"id": data["viewer"]["partner"]["id"]}, token=world.tokens[who])
        assert node["node"]["alertEmails"] == expected, who
    data = await api.gql(query, as_="admin")
    assert data["viewer"]["partner"]["alertEmails"] == ["ops@example.com"]


async def test_the_sub_account_token_still_sees_its_own_account_in_full(api: Api) -> None:
    world = await build_world(api)
    marker = "SUBONE"
    query = """query($uid: String!) { endUser(uid: $uid) { uid nickname email remarks businessManager
      master { uid } creditAlert { email } instances { description account { uid } }
      quota { amount available account { id uid nickname email remarks subAccounts { uid } auditEntries { totalCount }
              instances { id } creditAlert { email } master { uid } } }
      auditEntries(first: 100) { edges { node { action after operator { uid role } cascadeFrom { uid } } } } } }"""
    data = (await api.gql(query, {"uid": UID[marker]}, token=world.tokens["eu_sub"]))["endUser"]
    assert (data["uid"], data["nickname"], data["email"], data["remarks"]) == (
        UID[marker],
        f"nick-{marker}",
        f"mail-{marker}@example.com",
        f"remarks-{marker}",
    )
    assert data["master"] is None
    assert data["creditAlert"] == {"email": "alert-SUBONE@example.com"}
    assert data["instances"] == [{"description": "order-SUBONE", "account": {"uid": UID[marker]}}]
    assert data["quota"]["amount"] == "100.00"  # the pool it spends from, numbers included
    assert data["quota"]["account"] == {
        "id": to_global_id("EndUser", 0),
        "uid": "",
        "nickname": None,
        "email": None,
        "remarks": None,
        "subAccounts": [],
        "auditEntries": {"totalCount": 0},
        "instances": [],
        "creditAlert": None,
        "master": None,
    }
    entries = [e["node"] for e in data["auditEntries"]["edges"]]
    linked = next(e for e in entries if e["action"] == "ACCOUNT_LINKED")
    assert linked["after"]["masterUid"] is None and linked["after"]["uid"] == UID[marker]
    cascaded = [e for e in entries if e["action"] == "ACCOUNT_STATUS_CHANGED"]
    assert cascaded and all(e["cascadeFrom"] is None for e in cascaded)
    by_master_token = next(e for e in entries if e["action"] == "CREDIT_ALERT_CHANGED")
    assert by_master_token["operator"] is None  # the master's END_USER token acted: not shown to the sub
    # The master's own token sees the same entry's operator (itself) and the cascade source.
    data = (await api.gql(query, {"uid": UID[marker]}, token=world.tokens["eu_master"]))["endUser"]
    entries = [e["node"] for e in data["auditEntries"]["edges"]]
    assert next(e for e in entries if e["action"] == "CREDIT_ALERT_CHANGED")["operator"] == {
        "uid": UID["MASTERONE"],
        "role": "END_USER",
    }
    assert {e["cascadeFrom"]["uid"] for e in entries if e["action"] == "ACCOUNT_STATUS_CHANGED"} == {UID["MASTERONE"]}
    assert data["master"] == {"uid": UID["MASTERONE"]}
