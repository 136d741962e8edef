"""Partner, Operator and Viewer."""

from __future__ import annotations

import strawberry

from models import Partner as PartnerRow
from models.enums import OperationMethod, PartnerKind, Role
from resolvers.actor import Actor
from schema.common import Node, to_global_id
from schema.context import Info
from schema.registry import register_node


@strawberry.type(description="The channel partner the viewer acts for.")
class Partner(Node):
    uid: str = strawberry.field(description="The partner's own account UID.")
    name: str = strawberry.field(description="Display name.")
    kind: PartnerKind = strawberry.field(description="Distributor, reseller or agency.")
    _alert_emails: strawberry.Private[list[str]]

    @strawberry.field(
        description="Where quota warning emails go. Empty for END_USER tokens: the addresses are the partner's "
        "business, as in the notifications list."
    )
    def alert_emails(self, info: Info) -> list[str]:
        return [] if info.context.require_actor().is_end_user else list(self._alert_emails)

    @classmethod
    def of(cls, row: PartnerRow) -> Partner:
        return cls(
            id=to_global_id("Partner", row.id), uid=row.uid, name=row.name, kind=row.kind,
            _alert_emails=list(row.alert_emails or []),
        )


@strawberry.type(description="Who made a change: the partner's main account or one of its RAM accounts.")
class Operator:
    uid: str = strawberry.field(description="The partner's main account UID, or the RAM account's UID.")
    name: str = strawberry.field(description="Display name of the operator.")
    is_ram_account: bool = strawberry.field(description="True for a RAM (sub-user) account.")
    role: Role = strawberry.field(description="The role the operator acted with.")

    @classmethod
    def from_columns(cls, uid: str | None, name: str | None, is_ram: bool, role: Role | None) -> Operator | None:
        if uid is None:
            return None
        return cls(uid=uid, name=name or uid, is_ram_account=is_ram, role=role or Role.OPERATOR)

    @classmethod
    def of_actor(cls, actor: Actor) -> Operator:
        return cls(uid=actor.operator_uid, name=actor.operator_name, is_ram_account=actor.is_ram, role=actor.role)


@strawberry.type(description="The authenticated caller.")
class Viewer:
    operator: Operator = strawberry.field(description="Who is acting.")
    partner: Partner = strawberry.field(description="For which partner.")
    method: OperationMethod = strawberry.field(description="PLATFORM (console) or API, from the token.")


async def _resolve_partner(info: Info, pk: int) -> Partner | None:
    """Only the viewer's own partner."""
    actor = info.context.require_actor()
    if pk != actor.partner_id:
        return None
    row = await info.context.loaders.partner.load(pk)
    return Partner.of(row) if row is not None else None


register_node("Partner", _resolve_partner)
