"""The compiled read path: hot queries answered without graphql-core's per-field executor.

Ordinary execution walks the document for every request and every row:
graphql-core builds a resolve info, a path and an error boundary per field,
strawberry wraps every resolver call, and a list page of 1,600 fields spends
most of its CPU there. Here a query document is planned once per (document,
operation name, values of the variables its @include/@skip read): the
selection is collected with graphql-core's own `collect_fields` (fragments,
aliases and directives applied exactly as ordinary execution applies them)
into a tree of closures, one per selected field, that call the SAME resolvers
and then serialize with the SAME scalar and enum serializers as ordinary
execution. Nothing about tenancy, filters, cursors, ids or money formatting
exists here: the resolvers (and through them `Actor.account_scope`/`sees`,
`resolvers.accounts`, `models.money`) do it all, and batched loads still go
through the request's DataLoaders, one batch per nesting level (awaitables of
one level are gathered together), so statement counts stay what they are.

Mutations: a document whose one root field is a balance change
(`COMPILED_MUTATION_FIELDS`) runs the same way -- the same resolver, so the
same `schema.common.mutate` transaction, idempotency claim and alert
evaluation -- in a write session, its payload completed by the same plans.
Falling back after such a change committed runs the request again in
ordinary execution, where its required idempotency key replays the first
result (tests/test_compiled_mutations.py).

`COMPILED_TYPES`, `COMPILED_ROOT_FIELDS` and `COMPILED_MUTATION_FIELDS`
below are the one place that decides what is compiled. Anything else -- an
unlisted field, a field with a field extension, an abstract type's unlisted
runtime type, a subscription, a mutation other than one balance change, a
document that does not parse or validate or exceeds the limits, variables
that do not coerce, and any exception or null where ordinary execution would
have produced an error -- makes the request fall back to ordinary execution,
whole: the compiled attempt's session is closed (a query's only read; a
balance change has committed or rolled back) and strawberry runs the request
from the start. Errors are therefore
always ordinary execution's own. tests/test_compiled_reads.py runs both paths
on the same requests and requires identical JSON.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DirectiveNode,
    DocumentNode,
    GraphQLAbstractType,
    GraphQLField,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    OperationDefinitionNode,
    OperationType,
    VariableNode,
    Visitor,
    specified_rules,
    visit,
)
from graphql.execution.collect_fields import FieldDetails, collect_fields, collect_subfields
from graphql.execution.executor import Executor
from graphql.execution.values import get_argument_values
from graphql.pyutils import Undefined
from strawberry.types.arguments import convert_arguments
from strawberry.types.field import StrawberryField

from uidhub import logs, metrics, wire
from uidhub.models.rows import POLICY_READS
from uidhub.runtime import Runtime
from uidhub.schema import UidhubSchema
from uidhub.schema.accounts import (
    END_USER_COLUMNS,
    end_user_id,
    end_user_page,
    policy_of,
    quota_of,
    visible_sub_accounts,
)
from uidhub.schema.common import PageInfo
from uidhub.schema.context import Context
from uidhub.schema.dataloaders import sub_account_rows

#: Object types whose every field is compiled: their resolvers read nothing of `info` but `info.context`.
#: QuotaForecast is left out: it reads the clock, so no two executions can be compared.
COMPILED_TYPES = frozenset(
    {
        "EndUserConnection",
        "EndUserEdge",
        "EndUser",
        "PageInfo",
        "Quota",
        "ShutdownPolicyState",
        "Partner",
        "PortfolioSummary",
        "CreditAlert",
        "Instance",
        "Operator",
        "QuotaAdjustmentConnection",
        "QuotaAdjustmentEdge",
        "QuotaAdjustment",
        "QuotaThreshold",
        "AuditEntryConnection",
        "AuditEntryEdge",
        "AuditEntry",
        "QuotaAlertEventConnection",
        "QuotaAlertEventEdge",
        "QuotaAlertEvent",
        "QuotaPayload",
        "UserError",
    }
)
#: Root query fields that are compiled (`node` only for the runtime types above).
COMPILED_ROOT_FIELDS = frozenset({"endUsers", "endUser", "node", "summary", "auditEntries", "alertEvents"})
#: Root mutation fields that are compiled, alone in their document: the balance changes, whose required
#: idempotency key makes running them again (a fallback after the change committed) replay the first result.
COMPILED_MUTATION_FIELDS = frozenset({"recordConsumption", "deductConsumption", "repayOutstanding"})
#: Plans kept per (document, operation name); a hit skips parsing, validation and planning.
PLAN_CACHE_SIZE = 256
#: Documents longer than this are not planned (the limiter does not cache them either).
MAX_PLANNED_QUERY_CHARS = 20_000


class Fallback(Exception):
    """The compiled path cannot answer this request exactly as ordinary execution would: run that instead."""


class _Info:
    """What the compiled resolvers are handed as `info`: they read only `info.context` (see COMPILED_TYPES),
    and a compiled mutation `info.field_name` (schema.common.mutate names it in its logs)."""

    __slots__ = ("context", "field_name")

    def __init__(self, context: Context) -> None:
        self.context = context
        self.field_name: str | None = None


Completer = Callable[[Any, "_Run"], Any]


@dataclass
class _LeafPlan:
    """How a leaf field's value is completed, for the generated code to do it inline (see `_leaf`)."""

    non_null: bool
    #: Values of this type are passed through unchanged (String, ID, Boolean); None: always serialize.
    unchanged: type | None
    #: The type's own serializer (what `_leaf` calls), called by the generated code directly.
    direct: Callable[[Any], Any]
    #: An enum's (member class, member → name) lookup that its serializer uses (schema._serialize_members_by_lookup).
    members: tuple[type, dict[Any, Any]] | None = None


@dataclass
class _FieldPlan:
    key: str
    get: Callable[[Any, _Run], Any]
    complete: Completer
    #: False for plain attributes: only a resolver function can return an awaitable.
    may_await: bool = True
    #: For the generated code (`_generate`): the attribute a plain field reads, the function a resolver field
    #: calls with (self) or (self, info=...), the constant of __typename, and the leaf to complete inline.
    attribute: str | None = None
    call: tuple[Callable[..., Any], bool] | None = None
    constant: str | None = None
    leaf: _LeafPlan | None = None
    #: For row plans: a Python expression over the generated function's parameters, and the names it uses.
    expression: tuple[str, dict[str, Any]] | None = None


@dataclass
class _Run:
    """One request's execution state: its context, converted arguments, and awaitables of the current level."""

    context: Context
    variable_values: Any
    info: _Info
    arguments: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Fields answered by a row plan (for tests and bench/: that the planner picks them).
    row_plans: int = 0
    pending: list[tuple[Awaitable[Any], dict[str, Any], str, Completer]] = field(default_factory=list)


def _complete_object(fields: list[_FieldPlan], source: Any, run: _Run) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for plan in fields:
        value = plan.get(source, run)
        if plan.may_await and inspect.isawaitable(value):
            out[plan.key] = None  # keeps the key's place in the response order
            run.pending.append((value, out, plan.key, plan.complete))
        else:
            out[plan.key] = plan.complete(value, run)
    return out


def _generate(fields: list[_FieldPlan], parameters: str = "source") -> Callable[..., dict[str, Any]]:
    """`_complete_object` for these fields as one generated function: no loop, no closure call per field.

    A list page completes ~1,600 fields; the loop above costs four or five Python calls per field
    (getter, completer, non-null check, leaf). The generated function reads each plain attribute
    directly, calls each resolver directly, and completes leaves inline with the same serializer
    and the same null rules, so its output is the loop's, byte for byte (tests/test_compiled_reads.py).
    """
    names: dict[str, Any] = {"Fallback": Fallback, "isawaitable": inspect.isawaitable, "Undefined": Undefined}
    lines = [f"def complete({parameters}, run):", "    out = {}", "    info = run.info"]

    def bind(prefix: str, index: int, value: Any) -> str:
        name = f"{prefix}{index}"
        names[name] = value
        return name

    def finish(index: int, plan: _FieldPlan, key: str, indent: str) -> list[str]:
        """Lines that complete `v` (not an awaitable) into out[key]."""
        leaf = plan.leaf
        if leaf is None:
            return [f"{indent}out[{key}] = {bind('x', index, plan.complete)}(v, run)"]
        # The type's own serializer called inline, with `_leaf`'s rules (unchanged types passed through, nothing
        # serialized is a fallback): one Python call per leaf instead of three, on every row of a list.
        direct = bind("d", index, leaf.direct)
        if leaf.members is not None:
            member_class, names_of = leaf.members
            value = f"{bind('n', index, names_of)}[v] if type(v) is {bind('w', index, member_class)} else {direct}(v)"
        elif leaf.unchanged is not None:
            value = f"v if type(v) is {bind('u', index, leaf.unchanged)} else {direct}(v)"
        else:
            value = f"{direct}(v)"
        on_null = "raise Fallback('null for a non-null field')" if leaf.non_null else f"out[{key}] = None"
        return [
            f"{indent}if v is None:",
            f"{indent}    {on_null}",
            f"{indent}else:",
            f"{indent}    z = {value}",
            f"{indent}    if z is None or z is Undefined:",
            f"{indent}        raise Fallback('a leaf serialized to nothing')",
            f"{indent}    out[{key}] = z",
        ]

    for index, plan in enumerate(fields):
        key = repr(plan.key)
        if plan.constant is not None:
            lines.append(f"    out[{key}] = {plan.constant!r}")
            continue
        if plan.expression is not None:
            expression, used = plan.expression
            for name, value in used.items():  # bound per field: two aliases of one field bind different values
                expression = re.sub(rf"\b{name}\b", bind(f"{name}_", index, value), expression)
            lines.append(f"    v = {expression}")
        elif plan.attribute is not None and plan.attribute.isidentifier():
            lines.append(f"    v = source.{plan.attribute}")
        elif plan.call is not None:
            function, with_info = plan.call
            lines.append(f"    v = {bind('f', index, function)}(source{', info=info' if with_info else ''})")
        else:
            lines.append(f"    v = {bind('g', index, plan.get)}(source, run)")
        if plan.may_await:
            lines.append("    if isawaitable(v):")
            lines.append(f"        out[{key}] = None")  # keeps the key's place in the response order
            lines.append(f"        run.pending.append((v, out, {key}, {bind('x', index, plan.complete)}))")
            lines.append("    else:")
            lines.extend(finish(index, plan, key, "        "))
        else:
            lines.extend(finish(index, plan, key, "    "))
    lines.append("    return out")
    # No request text reaches the source: keys and the __typename constant go in through repr(), attributes are
    # checked identifiers of the schema's own Python names, and everything else is bound by generated name.
    exec(compile("\n".join(lines), "<uidhub.compiled>", "exec"), names)
    complete: Callable[..., dict[str, Any]] = names["complete"]
    return complete


class _NotCompilable(Exception):
    """Raised while planning: the selection holds something the planner does not cover."""


class _NotRowPlannable(Exception):
    """Raised while planning a row plan: the selection needs the field-by-field plan."""


def _check_directives(details: list[FieldDetails]) -> None:
    """Only @include/@skip (already applied by field collection): any other directive is not compiled."""
    for detail in details:
        if detail.fragment_variable_values is not None or detail.defer_usage is not None:
            raise _NotCompilable("fragment variables or @defer")
        for directive in detail.node.directives or ():
            if directive.name.value not in ("include", "skip"):
                raise _NotCompilable(f"@{directive.name.value}")


def _unused(_source: Any, _run: _Run) -> Any:
    raise AssertionError("a row plan's fields are read by their expressions")


def _identity(value: Any, _run: _Run) -> Any:
    """The completion of a value a row plan already completed."""
    return value


def _object_type(type_: GraphQLOutputType) -> GraphQLObjectType:
    """The object type under non-null and list wrappers; anything else is not row-plannable."""
    while isinstance(type_, GraphQLNonNull | GraphQLList):
        type_ = type_.of_type
    if not isinstance(type_, GraphQLObjectType):
        raise _NotRowPlannable(str(type_))
    return type_


@dataclass
class _Planner:
    schema: UidhubSchema
    executor: Executor

    def object_fields(self, type_: GraphQLObjectType, details: list[FieldDetails]) -> list[_FieldPlan]:
        collected = collect_subfields(
            self.executor.schema,
            self.executor.fragments,
            self.executor.variable_values,
            self.executor.operation,
            type_,
            details,
        )
        return self.fields(type_, collected)

    def fields(self, type_: GraphQLObjectType, collected: Any) -> list[_FieldPlan]:
        grouped, defers, forbidden = collected
        if defers or forbidden:
            raise _NotCompilable("@defer")
        return [self.field(type_, key, group) for key, group in grouped.items()]

    def field(self, parent: GraphQLObjectType, key: str, details: list[FieldDetails]) -> _FieldPlan:
        node = details[0].node
        name = node.name.value
        _check_directives(details)
        if name == "__typename":
            type_name = parent.name
            return _FieldPlan(
                key, lambda _source, _run: type_name, lambda value, _run: value, may_await=False, constant=type_name
            )
        mutation = parent is self.executor.schema.mutation_type
        root = mutation or parent is self.executor.schema.query_type
        allowed = COMPILED_MUTATION_FIELDS if mutation else COMPILED_ROOT_FIELDS
        if (root and name not in allowed) or (not root and parent.name not in COMPILED_TYPES):
            raise _NotCompilable(f"{parent.name}.{name}")
        definition = parent.fields.get(name)
        if definition is None:
            raise _NotCompilable(f"{parent.name}.{name}")
        if root and name == "endUsers":
            rows = self.end_users_rows(key, definition, details)
            if rows is not None:
                return rows
        get, may_await = self.getter(definition, node)
        if mutation:
            resolve = get

            def get(source: Any, run: _Run) -> Any:
                run.info.field_name = name
                return resolve(source, run)

        plan = _FieldPlan(key, get, self.completer(definition.type, details), may_await)
        plan.leaf = _leaf_plan(definition.type)
        strawberry_field = (definition.extensions or {})["strawberry-definition"]
        if strawberry_field.is_basic_field:
            plan.attribute = strawberry_field.python_name
        else:
            plan.call = self.direct_call(strawberry_field)
        return plan

    @staticmethod
    def direct_call(strawberry_field: StrawberryField) -> tuple[Callable[..., Any], bool] | None:
        """(function, pass info) when the resolver is a method taking nothing but self and maybe info."""
        resolver = strawberry_field.base_resolver
        if resolver is None or strawberry_field.arguments or resolver.self_parameter is None:
            return None
        if resolver.parent_parameter is not None or resolver.root_parameter is not None:
            return None
        info = resolver.info_parameter
        if info is not None and info.name != "info":
            return None
        function = resolver.wrapped_func
        return (function, info is not None) if callable(function) else None

    def getter(self, definition: GraphQLField, node: Any) -> tuple[Callable[[Any, _Run], Any], bool]:
        strawberry_field = (definition.extensions or {}).get("strawberry-definition")
        if not isinstance(strawberry_field, StrawberryField) or strawberry_field.extensions:
            raise _NotCompilable("not a plain strawberry field")
        if strawberry_field.is_basic_field:
            attribute = strawberry_field.python_name
            default = strawberry_field.default_resolver
            return (lambda source, _run: default(source, attribute)), False
        resolver = strawberry_field.base_resolver
        assert resolver is not None
        pass_self = resolver.self_parameter is not None
        source_names = [p.name for p in (resolver.parent_parameter, resolver.root_parameter) if p is not None]
        info_name = resolver.info_parameter.name if resolver.info_parameter is not None else None
        function = resolver.wrapped_func
        if not callable(function):
            raise _NotCompilable("an uncallable resolver")
        if not strawberry_field.arguments and not source_names and pass_self:
            # The common case (EndUser.quota, Quota.available, ...): no arguments to convert.
            if info_name is None:
                return (lambda source, _run: function(source)), True
            if info_name == "info":
                return (lambda source, run: function(source, info=run.info)), True
        arguments = self.arguments(definition, node, strawberry_field)

        def get(source: Any, run: _Run) -> Any:
            kwargs = dict(arguments(run))
            for name in source_names:
                kwargs[name] = source
            if info_name is not None:
                kwargs[info_name] = run.info
            return function(source, **kwargs) if pass_self else function(**kwargs)

        return get, True

    # ------------------------------------------------------------ row plans

    def subfields(self, type_: GraphQLOutputType, details: list[FieldDetails]) -> dict[str, list[FieldDetails]]:
        """The selection under a field of (non-null) object type `type_`, by response key."""
        inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        if not isinstance(inner, GraphQLObjectType):
            raise _NotCompilable(str(type_))
        grouped, defers, forbidden = collect_subfields(
            self.executor.schema,
            self.executor.fragments,
            self.executor.variable_values,
            self.executor.operation,
            inner,
            details,
        )
        if defers or forbidden:
            raise _NotCompilable("@defer")
        for group in grouped.values():
            _check_directives(group)
        return grouped

    def end_users_rows(self, key: str, definition: GraphQLField, details: list[FieldDetails]) -> _FieldPlan | None:
        """`endUsers` answered straight from the list's rows, or None when the selection needs more.

        Ordinary execution (and the field-by-field plan) builds an EndUser, an edge, loader entries and
        an encoded cursor per row before reading a single field. Here the response is built from the rows
        `end_user_page` returns -- the same function, so the same tenancy, filters, order and cursors --
        by generated functions over (account, pool, master) that read END_USER_COLUMNS and call
        `end_user_id`, `quota_of`, `policy_of` and `visible_sub_accounts`: the functions EndUser's own
        fields call. Nested Quota, ShutdownPolicyState and PageInfo selections are completed by the
        ordinary plan of their type. Anything else under an EndUser makes this return None.
        """
        try:
            return self._end_users_rows(key, definition, details)
        except _NotRowPlannable:
            return None

    def _end_users_rows(self, key: str, definition: GraphQLField, details: list[FieldDetails]) -> _FieldPlan:
        needs = {"total": False, "subs": False, "related": False}

        def plan(key: str, type_: GraphQLOutputType | None, expression: str, **names: Any) -> _FieldPlan:
            """A field whose value is `expression`; a leaf is completed inline, anything else is given complete."""
            leaf = _leaf_plan(type_) if type_ is not None else None
            return _FieldPlan(key, _unused, _identity, False, leaf=leaf, expression=(expression, names))

        def typename(key: str, name: str) -> _FieldPlan:
            return _FieldPlan(key, _unused, _identity, False, constant=name)

        #: The AccountRow fields each level reads (beyond models.rows.ACCOUNT_KEYS): the statements select only
        #: those (list_end_users' and sub_account_rows' `reads`).
        top_reads: set[str] = set()
        sub_reads: set[str] = set()

        def node_function(type_: GraphQLOutputType, group: list[FieldDetails], top: bool) -> Callable[..., Any]:
            parent = _object_type(type_)
            reads = top_reads if top else sub_reads
            fields: list[_FieldPlan] = []
            for node_key, node_group in self.subfields(parent, group).items():
                name = node_group[0].node.name.value
                if name == "__typename":
                    fields.append(typename(node_key, parent.name))
                    continue
                field_type = parent.fields[name].type
                python = parent.fields[name].extensions["strawberry-definition"].python_name
                if python in END_USER_COLUMNS:
                    reads.add(END_USER_COLUMNS[python])
                    fields.append(plan(node_key, field_type, f"acc.{END_USER_COLUMNS[python]}"))
                elif python == "id":
                    fields.append(plan(node_key, field_type, "end_user_id(acc.id)", end_user_id=end_user_id))
                elif python == "quota" and top:
                    needs["related"] = True
                    nested = plan(node_key, None, "quota_of(acc, pool)", quota_of=quota_of)
                    nested.complete = self.completer(field_type, node_group)
                    fields.append(nested)
                elif python == "policy" and top:
                    needs["related"] = True
                    reads.update(POLICY_READS)
                    nested = plan(node_key, None, "policy_of(acc, master, pool)", policy_of=policy_of)
                    nested.complete = self.completer(field_type, node_group)
                    fields.append(nested)
                elif python == "sub_accounts" and top:
                    needs["subs"] = True
                    sub_node = node_function(_object_type(field_type), node_group, top=False)
                    expression = "[sub_node(s, None, acc, None, run) for s in subs]"
                    fields.append(plan(node_key, None, expression, sub_node=sub_node))
                elif python == "sub_accounts":  # a sub-account's own: none, as visible_sub_accounts says
                    expression = "visible_sub_accounts(None, acc, ())"
                    fields.append(plan(node_key, None, expression, visible_sub_accounts=visible_sub_accounts))
                else:
                    raise _NotRowPlannable(python)
            return _generate(fields, "acc, pool, master, subs")

        connection_type = _object_type(definition.type)
        connection_fields: list[_FieldPlan] = []
        for field_key, group in self.subfields(connection_type, details).items():
            name = group[0].node.name.value
            field_type = connection_type.fields[name].type if name in connection_type.fields else None
            if name == "__typename":
                connection_fields.append(typename(field_key, connection_type.name))
            elif name == "totalCount":
                needs["total"] = True
                connection_fields.append(plan(field_key, field_type, "total"))
            elif name == "pageInfo" and field_type is not None:
                page_info = plan(field_key, None, "page_info_of(page)", page_info_of=PageInfo.of)
                page_info.complete = self.completer(field_type, group)
                connection_fields.append(page_info)
            elif name == "edges" and field_type is not None:
                edge_type = _object_type(field_type)
                edge_fields: list[_FieldPlan] = []
                for edge_key, edge_group in self.subfields(edge_type, group).items():
                    edge_name = edge_group[0].node.name.value
                    if edge_name == "__typename":
                        edge_fields.append(typename(edge_key, edge_type.name))
                    elif edge_name == "cursor":
                        edge_fields.append(plan(edge_key, edge_type.fields["cursor"].type, "page.cursors[i]"))
                    elif edge_name == "node":
                        node = node_function(edge_type.fields["node"].type, edge_group, top=True)
                        edge_fields.append(plan(edge_key, None, "node(acc, pool, master, subs, run)", node=node))
                    else:
                        raise _NotRowPlannable(edge_name)
                expression = (
                    "[edge(page, i, acc, pool, master, subs[i], run)"
                    " for i, (acc, (pool, master)) in enumerate(zip(page.items, page.related))]"
                )
                edge = _generate(edge_fields, "page, i, acc, pool, master, subs")
                connection_fields.append(plan(field_key, None, expression, edge=edge))
            else:
                raise _NotRowPlannable(name)
        connection = _generate(connection_fields, "page, total, subs")
        arguments = self.arguments(definition, details[0].node, definition.extensions["strawberry-definition"])
        with_total, with_subs, related = needs["total"], needs["subs"], needs["related"]
        page_reads, subs_reads = frozenset(top_reads), frozenset(sub_reads)

        async def get(_source: Any, run: _Run) -> dict[str, Any]:
            run.row_plans += 1
            info: Any = run.info  # reads only `context`, all that end_user_page reads of it
            page = await end_user_page(info, **arguments(run), related=related, reads=page_reads)
            subs: list[Any] = [()] * len(page.items)
            if with_subs:
                actor = run.context.require_actor()
                # The loader's own query, once for the page's masters (the loader's per-key futures would cost
                # more than the query) and narrowed to what is read; a sub-account has none (visible_sub_accounts).
                masters = [a.id for a in page.items if a.master_id is None]
                session = await run.context.session()
                found = await sub_account_rows(session, masters, subs_reads) if masters else []
                loaded: dict[int, Any] = dict(zip(masters, found, strict=True))
                subs = [visible_sub_accounts(actor, a, loaded.get(a.id, ())) for a in page.items]
            total = await page.count() if with_total else None
            return connection(page, total, subs, run)

        return _FieldPlan(key, get, _identity, True)

    def arguments(
        self, definition: GraphQLField, node: Any, strawberry_field: StrawberryField
    ) -> Callable[[_Run], dict[str, Any]]:
        """The field's arguments as its resolver receives them, converted once per request."""
        converter = self.schema.schema_converter
        slot = id(node)
        # Arguments written into the document (no variable anywhere in them) convert to the same values on
        # every request: converted once, on the plan (the resolvers copy or read them, never change them).
        constant = not _reads_variables(node)
        converted_once: list[dict[str, Any]] = []

        def arguments(run: _Run) -> dict[str, Any]:
            if converted_once:
                return converted_once[0]
            # As graphql-core then strawberry convert them for the resolver.
            converted = run.arguments.get(slot)
            if converted is None:
                raw = get_argument_values(definition, node, run.variable_values)
                converted = convert_arguments(
                    raw,
                    strawberry_field.arguments,
                    scalar_registry=converter.scalar_registry,
                    config=converter.config,
                    info=run.info,  # type: ignore[arg-type]
                )
                run.arguments[slot] = converted
                if constant:
                    converted_once.append(converted)
            return converted

        return arguments

    def completer(self, type_: GraphQLOutputType, details: list[FieldDetails]) -> Completer:
        if isinstance(type_, GraphQLNonNull):
            inner = self.nullable_completer(type_.of_type, details)

            def non_null(value: Any, run: _Run) -> Any:
                if value is None:
                    raise Fallback("null for a non-null field")  # ordinary execution reports an error here
                return inner(value, run)

            return non_null
        complete = self.nullable_completer(type_, details)

        def nullable(value: Any, run: _Run) -> Any:
            return None if value is None else complete(value, run)

        return nullable

    def nullable_completer(self, type_: GraphQLOutputType, details: list[FieldDetails]) -> Completer:
        """Completes a value known not to be None."""
        if isinstance(type_, GraphQLList):
            item = self.completer(type_.of_type, details)

            def complete_list(value: Any, run: _Run) -> Any:
                if isinstance(value, str | bytes | dict) or not hasattr(value, "__iter__"):
                    raise Fallback("not a list")
                return [item(entry, run) for entry in value]

            return complete_list
        if isinstance(type_, GraphQLLeafType):
            return _leaf(type_)
        if isinstance(type_, GraphQLObjectType):
            return _generate(self.object_fields(type_, details))
        if isinstance(type_, GraphQLAbstractType):
            plans: dict[str, Callable[[Any, _Run], dict[str, Any]]] = {}
            for possible in self.executor.schema.get_possible_types(type_):
                if possible.name in COMPILED_TYPES:
                    plans[possible.name] = _generate(self.object_fields(possible, details))

            def complete_abstract(value: Any, run: _Run) -> Any:
                definition = getattr(type(value), "__strawberry_definition__", None)
                complete = plans.get(getattr(definition, "name", ""))
                if complete is None:
                    raise Fallback("a runtime type that is not compiled")
                return complete(value, run)

            return complete_abstract
        raise _NotCompilable(str(type_))


#: Values graphql-core's own String, ID and Boolean serializers return unchanged: passed through without the call.
_UNCHANGED = {"String": str, "ID": str, "Boolean": bool}


def _leaf(type_: GraphQLLeafType) -> Completer:
    """The leaf type's own serializer (scalars: Money, DateTime, ...; enums), as ordinary execution calls it."""
    serialize = type_.serialize
    unchanged = _UNCHANGED.get(type_.name)

    def leaf(value: Any, _run: _Run) -> Any:
        if type(value) is unchanged:
            return value
        serialized = serialize(value)
        if serialized is None or serialized is Undefined:
            raise Fallback("a leaf serialized to nothing")
        return serialized

    return leaf


def _leaf_plan(type_: GraphQLOutputType) -> _LeafPlan | None:
    """The inline completion of a leaf field's type (nullable or not), or None for lists and objects."""
    non_null = isinstance(type_, GraphQLNonNull)
    inner = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    if not isinstance(inner, GraphQLLeafType):
        return None
    direct = inner.serialize
    return _LeafPlan(non_null, _UNCHANGED.get(inner.name), direct, getattr(direct, "members", None))


def _reads_variables(node: Any) -> bool:
    """A field node whose arguments refer to a variable somewhere (its directives are the plan's business)."""
    found = False

    class Finder(Visitor):
        def enter_variable(self, *_args: Any) -> None:
            nonlocal found
            found = True

    for argument in node.arguments or ():
        visit(argument, Finder())
    return found


def _directive_variables(document: DocumentNode) -> tuple[str, ...]:
    """Variables read by @include/@skip: the selection (so the plan) depends on their values."""
    names: set[str] = set()

    class Finder(Visitor):
        def enter_directive(self, node: DirectiveNode, *_args: Any) -> None:
            if node.name.value in ("include", "skip"):
                for argument in node.arguments or ():
                    if isinstance(argument.value, VariableNode):
                        names.add(argument.value.name.value)

    visit(document, Finder())
    return tuple(sorted(names))


@dataclass
class _DocumentPlan:
    document: DocumentNode
    #: The operation's own name (for metrics: ordinary execution labels by it too).
    operation_name: str | None
    #: QUERY, or MUTATION for the compiled balance changes (COMPILED_MUTATION_FIELDS).
    operation: OperationType
    directive_variables: tuple[str, ...]
    #: Root plans per value of the directive variables; None: this selection falls back.
    roots: dict[tuple[Any, ...], list[_FieldPlan] | None] = field(default_factory=dict)


class _Lru(OrderedDict[Any, Any]):
    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > PLAN_CACHE_SIZE:
            self.popitem(last=False)


#: Marks a (document, operation) that never compiles: it is not planned again.
_NEVER = object()


class CompiledReads:
    """Plans and runs compiled queries; `execute` answers None when ordinary execution must run."""

    def __init__(self, schema: UidhubSchema, runtime: Runtime) -> None:
        self.schema = schema
        self.runtime = runtime
        self.plans = _Lru()
        #: Counters for tests and bench/: requests answered here, and requests handed back.
        self.compiled = 0
        self.fallbacks = 0
        #: Answered requests that used a row plan (`_Planner.end_users_rows`).
        self.row_planned = 0

    async def document_plan(self, query: str, operation_name: str | None) -> _DocumentPlan | None:
        key = (query, operation_name)
        hit = self.plans.get(key)
        if hit is not None:
            self.plans.move_to_end(key)
            return None if hit is _NEVER else hit
        plan = await self._document_plan(query, operation_name)
        if len(query) <= MAX_PLANNED_QUERY_CHARS:
            self.plans.put(key, plan if plan is not None else _NEVER)
        return plan

    async def _document_plan(self, query: str, operation_name: str | None) -> _DocumentPlan | None:
        limiter = self.schema.limiter
        parsed = await limiter.parse(query)
        if parsed is None or parsed.problem is not None:
            return None
        operations = [d for d in parsed.document.definitions if isinstance(d, OperationDefinitionNode)]
        if len(operations) > 1 and operation_name is None:
            return None  # OPERATION_NAME_REQUIRED: ordinary execution says so
        chosen = [op for op in operations if operation_name is None or (op.name and op.name.value == operation_name)]
        if len(chosen) != 1 or chosen[0].operation not in (OperationType.QUERY, OperationType.MUTATION):
            return None
        # The same rules and cache as ordinary execution (strawberry's default rule set): an error falls back.
        errors = await limiter.validate(self.schema._schema, query, parsed, tuple(specified_rules))
        if errors:
            return None
        name = chosen[0].name.value if chosen[0].name else None
        return _DocumentPlan(parsed.document, name, chosen[0].operation, _directive_variables(parsed.document))

    def _root_plan(self, plan: _DocumentPlan, executor: Executor) -> list[_FieldPlan] | None:
        values = executor.variable_values.coerced
        key = tuple(values.get(name) for name in plan.directive_variables)
        if key in plan.roots:
            return plan.roots[key]
        planner = _Planner(self.schema, executor)
        mutation = plan.operation is OperationType.MUTATION
        root_type = executor.schema.mutation_type if mutation else executor.schema.query_type
        assert root_type is not None
        try:
            collected = collect_fields(
                executor.schema, executor.fragments, executor.variable_values, root_type, executor.operation
            )
            grouped = collected[0]
            names = [group[0].node.name.value for group in grouped.values()]
            if mutation and (len(names) != 1 or names[0] not in COMPILED_MUTATION_FIELDS):
                # One balance change per document (no serial execution to reproduce), and nothing else.
                raise _NotCompilable(f"mutation {names}")
            root: list[_FieldPlan] | None = planner.fields(root_type, collected)
        except (_NotCompilable, RecursionError):
            root = None
        except Exception:  # anything graphql-core's collection refuses: ordinary execution reports it
            root = None
        plan.roots[key] = root
        return root

    async def execute(
        self, query: str, variables: Any, operation_name: str | None, context: Context
    ) -> dict[str, Any] | None:
        """The response body ({"data": ...}) as ordinary execution would answer it, or None to fall back.

        The caller closes `context` (its session) either way.
        """
        if variables is not None and not isinstance(variables, dict):
            return self._fallback()
        plan = await self.document_plan(query, operation_name)
        if plan is None:
            return self._fallback()
        executor = Executor.build(
            self.schema._schema, plan.document, raw_variable_values=variables, operation_name=operation_name
        )
        if isinstance(executor, list):  # variables that do not coerce: ordinary execution reports them
            return self._fallback()
        root = self._root_plan(plan, executor)
        if root is None:
            return self._fallback()
        # A query's statements are all reads: no BEGIN/ROLLBACK around them (Database.session). A balance change
        # runs as ordinary execution runs a mutation (RequestLifecycle): a write session, its own transaction.
        mutation = plan.operation is OperationType.MUTATION
        context.write, context.autocommit = mutation, not mutation
        run = _Run(context, executor.variable_values, _Info(context))
        try:
            data = _complete_object(root, None, run)
            while run.pending:
                batch, run.pending = run.pending, []
                # One level at a time, all together: DataLoaders batch the level's loads into one query each.
                results = await asyncio.gather(*(item[0] for item in batch), return_exceptions=True)
                for (_, out, key, complete), value in zip(batch, results, strict=True):
                    if isinstance(value, BaseException):
                        raise Fallback("a resolver raised") from value
                    out[key] = complete(value, run)
        except Exception:
            # An error of any kind (a resolver's, a null where ordinary execution reports one): ordinary execution
            # runs the request again and answers it with its own errors. What this level already started is
            # awaited first: a resolver may have asked a DataLoader, whose batch would otherwise run after the
            # caller closed the session and check a connection out that nothing returns.
            leftovers = [item[0] for item in run.pending]
            run.pending = []
            if leftovers:
                await asyncio.gather(*leftovers, return_exceptions=True)
            return self._fallback()
        self.compiled += 1
        self.row_planned += run.row_plans > 0
        return {"data": data}

    def _fallback(self) -> dict[str, Any] | None:
        self.fallbacks += 1
        return None

    async def respond(self, body: bytes, actor: Any, request_id: str, request: Any) -> bytes | None:
        """The HTTP response body for a POST /graphql `body`, or None when ordinary execution must answer."""
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        extensions = parsed.get("extensions")
        operation_name = parsed.get("operationName")
        if extensions or (operation_name is not None and not isinstance(operation_name, str)):
            return None
        accept = request.headers.get("accept", "")
        if "multipart" in accept or "event-stream" in accept:  # streamed transports: strawberry's business
            return None
        context = Context(self.runtime, request=request, actor=actor, request_id=request_id)
        # The log context strawberry's LogContext extension sets around an operation.
        partner = logs.partner_var.set(getattr(actor, "partner_uid", None))
        operation = logs.operation_var.set(operation_name)
        start = time.perf_counter()
        try:
            result = await self.execute(parsed["query"], parsed.get("variables"), operation_name, context)
        finally:
            await context.close()
            logs.operation_var.reset(operation)
            logs.partner_var.reset(partner)
        if result is None:
            return None
        plan = self.plans.get((parsed["query"], operation_name))
        kind = plan.operation.value if isinstance(plan, _DocumentPlan) else "query"
        metrics.record_operation(kind, getattr(plan, "operation_name", None), time.perf_counter() - start)
        # The view's own encoding (UidhubGraphQL.encode_json): the same bytes either way.
        return wire.encode(result)
