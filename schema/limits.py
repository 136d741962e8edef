"""Request limits checked in one linear pass over the parsed document, before validation.

graphql-core's validation and strawberry's depth and alias limiters walk every
fragment spread again at every place it is spread: a 700-byte document of 13
fragment levels, each spreading the previous one 4 times, expands to 4^13
selections and held the event loop for minutes. This module measures the
document once, each fragment once (memoized), and refuses it with
QUERY_TOO_COMPLEX before any validation rule runs:

- selections: field selections after fragment expansion (MAX_SELECTIONS);
- depth: field nesting, root fields at 0, introspection subtrees not counted
  (MAX_DEPTH, as strawberry's QueryDepthLimiter counted it);
- aliases: aliased fields after fragment expansion (MAX_ALIASES);
- tokens: graphql-core's parser stops past MAX_TOKENS by itself.

Validation of a document within these bounds still costs up to about a second
(OverlappingFieldsCanBeMerged is quadratic in same-named fields), so it runs in
a worker thread, and its result is cached by query text like the parse result:
the rules are built once, so the same text always validates the same way.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
)
from strawberry.extensions import SchemaExtension

MAX_SELECTIONS = 1000
MAX_DEPTH = 12
MAX_ALIASES = 50
MAX_TOKENS = 5000
#: Query texts longer than this are parsed and validated every time (the caches hold short, repeated texts).
MAX_CACHED_QUERY_CHARS = 20_000
#: Texts longer than this parse in a worker thread (a short one parses faster than the thread hop).
THREAD_PARSE_CHARS = 2_000
#: Documents of more selections than this validate in a worker thread.
THREAD_VALIDATION_SELECTIONS = 100
CACHE_SIZE = 256
#: A selection count is only compared with the limit: stop the arithmetic far above it.
_CAP = 10**9

TOO_COMPLEX = "QUERY_TOO_COMPLEX"
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
OPERATION_NAME_REQUIRED = "OPERATION_NAME_REQUIRED"


@dataclass
class Shape:
    """What a selection set costs once its fragments are expanded."""

    selections: int = 0
    aliases: int = 0
    #: Deepest field relative to the set (a field directly in it is at 0); -1 when there is none.
    depth: int = -1


@dataclass
class _Direct:
    """A selection set's own fields (inline fragments included) and the named fragments it spreads."""

    shape: Shape = field(default_factory=Shape)
    #: (fragment name, relative depth of the spread's fields, whether it sits under an introspection field)
    spreads: list[tuple[str, int, bool]] = field(default_factory=list)


def _direct(selection_set: SelectionSetNode) -> _Direct:
    """One iterative walk of a selection set, not entering named fragments (no recursion, no re-walks)."""
    result = _Direct()
    stack: list[tuple[SelectionSetNode, int, bool]] = [(selection_set, 0, False)]
    while stack:
        current, depth, introspection = stack.pop()
        for selection in current.selections:
            if isinstance(selection, FieldNode):
                result.shape.selections += 1
                result.shape.aliases += selection.alias is not None
                # Introspection fields (`__schema`, `__type`) and what they select do not count for depth.
                inside = introspection or selection.name.value.startswith("__")
                if not inside:
                    result.shape.depth = max(result.shape.depth, depth)
                if selection.selection_set is not None:
                    stack.append((selection.selection_set, depth + 1, inside))
            elif isinstance(selection, InlineFragmentNode):
                stack.append((selection.selection_set, depth, introspection))
            elif isinstance(selection, FragmentSpreadNode):
                result.spreads.append((selection.name.value, depth, introspection))
    return result


def _combine(direct: _Direct, fragments: dict[str, Shape]) -> Shape:
    """A set's shape from its own fields and the already computed shapes of the fragments it spreads."""
    shape = Shape(direct.shape.selections, direct.shape.aliases, direct.shape.depth)
    for name, depth, introspection in direct.spreads:
        spread = fragments.get(name)
        if spread is None:  # unknown or cyclic: validation reports it later
            continue
        shape.selections = min(_CAP, shape.selections + spread.selections)
        shape.aliases = min(_CAP, shape.aliases + spread.aliases)
        if not introspection and spread.depth >= 0:
            shape.depth = max(shape.depth, depth + spread.depth)
    return shape


def _fragment_shapes(definitions: dict[str, FragmentDefinitionNode]) -> dict[str, Shape]:
    """Every fragment's expanded shape, each computed once, in dependency order (iterative DFS).

    A spread that closes a cycle counts as nothing: NoFragmentCyclesRule refuses the document later.
    """
    direct = {name: _direct(node.selection_set) for name, node in definitions.items()}
    shapes: dict[str, Shape] = {}
    in_progress: set[str] = set()
    for root in direct:
        if root in shapes:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]  # (fragment, index of the next spread to visit)
        in_progress.add(root)
        while stack:
            name, index = stack[-1]
            spreads = direct[name].spreads
            if index < len(spreads):
                stack[-1] = (name, index + 1)
                child = spreads[index][0]
                if child in direct and child not in shapes and child not in in_progress:
                    in_progress.add(child)
                    stack.append((child, 0))
                continue
            stack.pop()
            in_progress.discard(name)
            shapes[name] = _combine(direct[name], shapes)
    return shapes


def measure(document: DocumentNode) -> Shape:
    """The expanded shape of every operation of the document together; linear in the document's size."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    shapes = _fragment_shapes(fragments)
    total = Shape()
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            shape = _combine(_direct(definition.selection_set), shapes)
            total.selections = min(_CAP, total.selections + shape.selections)
            total.aliases = min(_CAP, total.aliases + shape.aliases)
            total.depth = max(total.depth, shape.depth)
    return total


def limit_error(shape: Shape) -> GraphQLError | None:
    """QUERY_TOO_COMPLEX naming the first limit the document's shape exceeds, or None."""
    checks = (
        ("selections", shape.selections, MAX_SELECTIONS,
         f"The query selects more than {MAX_SELECTIONS} fields once its fragments are expanded."),
        ("depth", shape.depth, MAX_DEPTH, f"The query exceeds the maximum depth of {MAX_DEPTH}."),
        ("aliases", shape.aliases, MAX_ALIASES, f"The query uses more than {MAX_ALIASES} aliases."),
    )
    for limit, value, maximum, message in checks:
        if value > maximum:
            return GraphQLError(message, extensions={"code": TOO_COMPLEX, "limit": limit, "max": maximum})
    return None


def coded(error: GraphQLError, code: str, **extra: Any) -> GraphQLError:
    """The error with extensions.code set (unless it already has one)."""
    extensions = dict(error.extensions or {})
    extensions.setdefault("code", code)
    extensions.update(extra)
    error.extensions = extensions
    return error


def _parse_error(error: GraphQLError) -> GraphQLError:
    """Parse failures by cause: the token limit, nesting past the parser's recursion, or a syntax error."""
    if isinstance(error.original_error, RecursionError):
        return GraphQLError("The query is nested too deeply.",
                            extensions={"code": TOO_COMPLEX, "limit": "depth", "max": MAX_DEPTH})
    if "tokens" in error.message and "Parsing aborted" in error.message:
        return coded(error, TOO_COMPLEX, limit="tokens", max=MAX_TOKENS)
    return coded(error, PARSE_FAILED)


class _Lru(OrderedDict[Any, Any]):
    """A small LRU map; used from the event loop only (validation threads return their result to it)."""

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > CACHE_SIZE:
            self.popitem(last=False)


@dataclass
class _Parsed:
    document: DocumentNode
    problem: GraphQLError | None
    selections: int


def _parse_and_measure(query: str) -> _Parsed | None:
    try:
        document = parse(query, max_tokens=MAX_TOKENS)
    except (GraphQLError, RecursionError):
        return None
    shape = measure(document)
    return _Parsed(document, limit_error(shape), shape.selections)


class Limiter:
    """Built once per Schema: its caches outlive requests, so repeated query texts skip parse and validation."""

    def __init__(self) -> None:
        self.parsed = _Lru()
        self.validated = _Lru()
        #: Counters for bench/ and tests: how often each step actually ran.
        self.parse_runs = 0
        self.validation_runs = 0

    async def parse(self, query: str) -> _Parsed | None:
        """The document and its limit problem; None when it does not parse (strawberry then reports why).

        A long text parses in a worker thread: 5,000 tokens take graphql-core's parser 50-200 ms.
        """
        cacheable = len(query) <= MAX_CACHED_QUERY_CHARS
        if cacheable and (hit := self.parsed.get_fresh(query)) is not None:
            return hit  # type: ignore[no-any-return]
        self.parse_runs += 1
        if len(query) > THREAD_PARSE_CHARS:
            parsed = await asyncio.to_thread(_parse_and_measure, query)
        else:
            parsed = _parse_and_measure(query)
        if cacheable and parsed is not None:
            self.parsed.put(query, parsed)  # on the loop: the LRU is not shared with threads
        return parsed

    async def validate(
        self, schema: Any, query: str, parsed: _Parsed, rules: tuple[Any, ...]
    ) -> list[GraphQLError]:
        from strawberry.schema.schema import validate_document

        key = (query, rules)
        cacheable = len(query) <= MAX_CACHED_QUERY_CHARS
        if cacheable and (hit := self.validated.get_fresh(key)) is not None:
            return list(hit)
        self.validation_runs += 1
        if parsed.selections > THREAD_VALIDATION_SELECTIONS:
            # A bounded document still validates in up to a second: a worker thread keeps the loop free.
            errors = await asyncio.to_thread(validate_document, schema, parsed.document, rules)
        else:  # a few milliseconds: less than waiting for a worker thread to get the GIL
            errors = validate_document(schema, parsed.document, rules)
        errors = [coded(error, VALIDATION_FAILED) for error in errors]
        if cacheable:
            self.validated.put(key, errors)
        return list(errors)

    def extension(self) -> RequestLimits:
        """The factory handed to strawberry.Schema(extensions=...): one extension instance per operation."""
        return RequestLimits(self)


class RequestLimits(SchemaExtension):
    """Parse (cached), refuse over-limit documents before validation, validate (cached, in a thread)."""

    def __init__(self, limiter: Limiter) -> None:
        super().__init__()
        self.limiter = limiter
        self.parsed: _Parsed | None = None

    async def on_parse(self) -> AsyncIterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = MAX_TOKENS
        if context.graphql_document is None and context.query:
            parsed = self.parsed = await self.limiter.parse(context.query)
            if parsed is not None:
                # Strawberry parses only when the document is unset: on a parse error it parses and reports.
                context.graphql_document = parsed.document
                if parsed.problem is not None:
                    context.pre_execution_errors = [parsed.problem]
        yield
        if context.graphql_document is None:
            context.pre_execution_errors = [_parse_error(e) for e in context.pre_execution_errors or []]
        elif not context.pre_execution_errors:
            problem = _operation_problem(context)
            if problem is not None:
                context.pre_execution_errors = [problem]
                _set_status(context.context, 400)

    async def on_validate(self) -> AsyncIterator[None]:
        context = self.execution_context
        parsed = self.parsed
        if context.pre_execution_errors is None and parsed is not None and context.graphql_document is parsed.document:
            assert context.query is not None
            context.pre_execution_errors = await self.limiter.validate(
                context.schema._schema, context.query, parsed, tuple(context.validation_rules)
            )
        yield


def _operation_problem(context: Any) -> GraphQLError | None:
    """GraphQL over HTTP: a document of several operations needs operationName (graphql-core would run the first)."""
    operations = [d for d in context.graphql_document.definitions if isinstance(d, OperationDefinitionNode)]
    provided = getattr(context, "_provided_operation_name", None)  # strawberry fills in the first name otherwise
    if len(operations) > 1 and provided is None:
        return GraphQLError(
            "The document has several operations: name the one to run in `operationName`.",
            extensions={"code": OPERATION_NAME_REQUIRED},
        )
    return None


def _set_status(context: Any, status: int) -> None:
    """A request error is HTTP 400 (GraphQL over HTTP); websockets have no status."""
    response = getattr(context, "response", None)
    if response is not None and hasattr(response, "status_code") and not getattr(context, "websocket", False):
        response.status_code = status
