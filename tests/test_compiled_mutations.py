"""Compiled balance changes (uidhub.compiled, COMPILED_MUTATION_FIELDS) answer what ordinary execution answers.

Two twin pools (CMP-A and CMP-B, each a master with a sub-account, the same quota and warning threshold)
receive the same sequence of recordConsumption / deductConsumption / repayOutstanding requests: CMP-A's
through the app with the compiled path, CMP-B's through the same app with it switched off. Every answer
must be the same bytes once the twin's UID is swapped back -- successes, replays, conflicts, userErrors,
errors (those fall back), alert crossings -- and the pools must end in the same state.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.api import Api, make_token
from tests.support.quota import partner_row
from uidhub.app import create_app
from uidhub.models.enums import Role

QUOTA = """amount consumedDeducted consumedUndeducted available outstandingAmount warningThresholdPercent
  warningLevel belowWarningLevel __typename"""

#: Selections of the payload: every Quota scalar, nested objects, aliases, a fragment, __typename.
SELECTIONS = [
    "quota { consumedUndeducted available } userErrors { code }",
    f"quota {{ {QUOTA} account {{ uid accountStatus }} thresholds {{ kind value breached severity }} }} "
    "userErrors { code message field }",
    "__typename ok: userErrors { field message code } q: quota { ...Q }",
]
FRAGMENT = f"fragment Q on Quota {{ {QUOTA} account {{ uid subAccounts {{ uid }} }} }}"

#: (operation, uid suffix, amount, key suffix, role): the same for both twins.
STEPS: list[tuple[str, str, str, str, str]] = [
    ("recordConsumption", "", "10.00", "k1", "admin"),
    ("recordConsumption", "", "10.00", "k1", "admin"),  # replay: the first result again
    ("recordConsumption", "", "11.00", "k1", "admin"),  # same key, another input: IDEMPOTENCY_CONFLICT
    ("recordConsumption", "-S", "15.50", "k2", "admin"),  # a sub-account spends from its master's pool
    ("deductConsumption", "", "5.00", "k3", "admin"),
    ("deductConsumption", "", "500.00", "k4", "admin"),  # more than is undeducted: a userError
    ("repayOutstanding", "", "1.00", "k5", "admin"),
    ("recordConsumption", "", "0.00", "k6", "admin"),  # not positive
    ("recordConsumption", "", "0.001", "k7", "admin"),  # not a Money value: an error (falls back)
    ("recordConsumption", "", "30.00", "k8", "admin"),  # below the warning level: a crossing
    ("recordConsumption", "", "1.00", "k9", "viewer"),  # FORBIDDEN (falls back)
    ("recordConsumption", "-NOPE", "1.00", "k10", "admin"),  # no such account
    ("repayOutstanding", "", "2.00", "k11", "operator"),
    ("recordConsumption", "", "100.00", "k12", "admin"),  # into outstanding
    ("repayOutstanding", "", "3.00", "k13", "admin"),
]


async def _twin(api: Api, uid: str) -> None:
    link = """mutation($uid: String!, $master: String) { linkAccount(input: {uid: $uid, masterUid: $master}) {
      userErrors { code } } }"""
    for account, master in ((uid, None), (uid + "-S", uid)):
        data = await api.gql(link, {"uid": account, "master": master})
        assert data["linkAccount"]["userErrors"] == [], data
    setup = [
        (
            'mutation($uid: String!, $key: String!) { setQuotaAmount(input: {uid: $uid, amount: "100.00", '
            "idempotencyKey: $key}) { userErrors { code } } }",
            "setQuotaAmount",
        ),
        (
            "mutation($uid: String!) { setWarningThreshold(input: {uid: $uid, percent: 50}) { userErrors { code } } }",
            "setWarningThreshold",
        ),
    ]
    for query, name in setup:
        data = await api.gql(query, {"uid": uid, "key": f"setup-{uid}"} if "$key" in query else {"uid": uid})
        assert data[name]["userErrors"] == [], data


def _request(step: tuple[str, str, str, str, str], twin: str, selection: str, literal: bool) -> dict[str, Any]:
    operation, suffix, amount, key, _role = step
    uid, idem = twin + suffix, f"{twin}-{key}"
    fragment = FRAGMENT if "...Q" in selection else ""
    if literal:  # the input written into the document
        query = (
            f'mutation {{ {operation}(input: {{uid: "{uid}", amount: "{amount}", idempotencyKey: "{idem}"}}) '
            f"{{ {selection} }} }} {fragment}"
        )
        return {"query": query}
    query = f"mutation Balance($input: AmountInput!) {{ {operation}(input: $input) {{ {selection} }} }} {fragment}"
    return {"query": query, "variables": {"input": {"uid": uid, "amount": amount, "idempotencyKey": idem}}}


@pytest.mark.parametrize("literal", [False, True], ids=["variables", "literal"])
async def test_balance_changes_answer_the_same_bytes_on_both_paths(api: Api, literal: bool) -> None:
    partner = await partner_row(api.db)
    for role in ("viewer", "operator"):
        api.tokens[role] = await make_token(api.db, partner, Role[role.upper()])
    await _twin(api, "CMP-A")
    await _twin(api, "CMP-B")
    compiled = api.client._transport.app.state.compiled_reads  # type: ignore[attr-defined]
    off = create_app(api.settings.model_copy(update={"compiled_reads": False}), db=api.db)
    answered = 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=off), base_url="http://test") as ordinary:
        for index, step in enumerate(STEPS):
            selection = SELECTIONS[index % len(SELECTIONS)]
            headers = {"Authorization": f"Bearer {api.tokens[step[4]]}"}
            before = compiled.compiled
            fast = await api.client.post("/graphql", json=_request(step, "CMP-A", selection, literal), headers=headers)
            slow = await ordinary.post("/graphql", json=_request(step, "CMP-B", selection, literal), headers=headers)
            assert fast.status_code == slow.status_code, step
            assert fast.content.decode().replace("CMP-A", "CMP-B") == slow.content.decode(), (step, fast.text)
            answered += compiled.compiled - before
    # Errors (a bad Money literal or variable, FORBIDDEN) are ordinary execution's; everything else compiled.
    assert answered == len(STEPS) - 2, answered
    # The twins end the same: balances, ledger and alert events.
    state = """query($uid: String!) { endUser(uid: $uid) { quota { amount consumedDeducted consumedUndeducted
      available belowWarningLevel adjustments(first: 50) { totalCount } } } }"""
    twins = [await api.gql(state, {"uid": uid}) for uid in ("CMP-A", "CMP-B")]
    assert twins[0] == twins[1]
    events = "{ alertEvents(first: 50) { edges { node { kind account { uid } } } } }"
    kinds: dict[str, list[str]] = {"CMP-A": [], "CMP-B": []}
    for edge in (await api.gql(events))["alertEvents"]["edges"]:
        uid = edge["node"]["account"]["uid"]
        if uid in kinds:
            kinds[uid].append(edge["node"]["kind"])
    assert kinds["CMP-A"] == kinds["CMP-B"] and kinds["CMP-A"], kinds


async def test_a_compiled_balance_change_run_again_by_ordinary_execution_is_a_replay(api: Api) -> None:
    """What a fallback after the commit does: ordinary execution runs the same request again. The idempotency
    key makes that a replay -- the same bytes, the pool moved once."""
    await _twin(api, "CMP-A")
    compiled = api.client._transport.app.state.compiled_reads  # type: ignore[attr-defined]
    off = create_app(api.settings.model_copy(update={"compiled_reads": False}), db=api.db)
    body = _request(("recordConsumption", "", "7.00", "once", "admin"), "CMP-A", SELECTIONS[1], False)
    headers = {"Authorization": f"Bearer {api.tokens['admin']}"}
    before = compiled.compiled
    first = await api.client.post("/graphql", json=body, headers=headers)
    assert compiled.compiled == before + 1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=off), base_url="http://test") as ordinary:
        again = await ordinary.post("/graphql", json=body, headers=headers)
    assert again.content == first.content
    data = await api.gql('{ endUser(uid: "CMP-A") { quota { consumedUndeducted } } }')
    assert data["endUser"]["quota"]["consumedUndeducted"] == "7.00"


async def test_documents_with_more_than_one_balance_change_are_ordinary_executions(api: Api) -> None:
    await _twin(api, "CMP-A")
    compiled = api.client._transport.app.state.compiled_reads  # type: ignore[attr-defined]
    query = """mutation { a: recordConsumption(input: {uid: "CMP-A", amount: "1.00", idempotencyKey: "two-a"}) {
        quota { consumedUndeducted } }
      b: recordConsumption(input: {uid: "CMP-A", amount: "2.00", idempotencyKey: "two-b"}) {
        quota { consumedUndeducted } } }"""
    before = (compiled.compiled, compiled.fallbacks)
    data = await api.gql(query)
    # Serially, as the spec runs mutation fields: the second sees the first.
    assert data == {"a": {"quota": {"consumedUndeducted": "1.00"}}, "b": {"quota": {"consumedUndeducted": "3.00"}}}
    assert (compiled.compiled, compiled.fallbacks) == (before[0], before[1] + 1)
