from tests.support.api import Api


async def test_viewer(api: Api) -> None:
    data = await api.gql("{ viewer { operator { uid role } partner { uid kind } method } }")
    assert data["viewer"]["partner"]["uid"] == "P-MAIN"
    assert data["viewer"]["method"] == "PLATFORM"


async def test_link_and_list(api: Api) -> None:
    data = await api.gql(
        'mutation { linkAccount(input: {uid: "U1", nickname: "n", quotaAmount: "10.50"}) '
        "{ endUser { uid quota { amount available } auditEntries { totalCount edges { node { action } } } } "
        "userErrors { code } } }"
    )
    assert data["linkAccount"]["userErrors"] == []
    eu = data["linkAccount"]["endUser"]
    assert eu["quota"]["amount"] == "10.50"
    data = await api.gql("{ endUsers { totalCount edges { node { uid master { uid } subAccounts { uid } } } } }")
    assert data["endUsers"]["totalCount"] == 1
