"""Execute a subscription event's selection once for every subscriber that asked the same thing.

Strawberry (through graphql-core) executes a subscription's selection for
each subscriber and each event: a thousand dashboards watching one partner
cost a thousand executions of the same selection on the same row. Events
delivered through a shared feed batch (notifications.feed) carry a result
cache; the first subscriber to execute a given (row, selection, variables,
viewer scope) stores the result there and the others reuse it. The viewer
scope (partner and END_USER account) is part of the key because nested
fields are filtered by what the viewer may see. Results with errors are not
shared: masking and logging stay per request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from graphql import ExecutionResult, OperationType, print_ast
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from schema.context import current_shared_scope, end_event_transaction


class ReleaseBeforeSend(SchemaExtension):
    """Every subscription result is complete before it is sent: end its event's transaction first.

    strawberry calls this hook between executing an event's selection and
    handing the result to the transport, in the subscription's own task
    (where the event scope is current). The send may wait indefinitely on a
    client that stopped reading; it must do so without a database
    connection.
    """

    async def on_stream_result(self, result: Any) -> AsyncIterator[None]:
        await end_event_transaction()
        yield


class SharedResultExecutionContext(StrawberryGraphQLCoreExecutionContext):
    _uidhub_fingerprint: str | None = None

    def _fingerprint(self) -> str:
        if self._uidhub_fingerprint is None:
            parts = [print_ast(self.operation), *(print_ast(f) for f in self.fragment_definitions.values())]
            variables = json.dumps(self.variable_values.coerced, sort_keys=True, default=str)
            self._uidhub_fingerprint = "\n".join([*parts, variables])
        return self._uidhub_fingerprint

    def build_per_event_executor(self, payload: Any) -> Any:
        self._fingerprint()  # computed once per subscription, copied into every event's executor
        return super().build_per_event_executor(payload)

    def execute_operation(self, serially: bool | None = None) -> Any:
        scope = current_shared_scope()
        root_id = getattr(self.root_value, "id", None)
        actor = getattr(self.context_value, "actor", None)
        if scope is None or root_id is None or actor is None or self.operation.operation != OperationType.SUBSCRIPTION:
            return super().execute_operation(serially)
        key = (root_id, self._fingerprint(), actor.partner_id, actor.account_id)
        shared = scope.results.get(key)
        if shared is not None:
            return _reuse(shared, self, serially)
        future: asyncio.Future[ExecutionResult | None] = asyncio.get_running_loop().create_future()
        scope.results[key] = future
        return _compute(future, super().execute_operation(serially), self)


async def _compute(future: asyncio.Future[ExecutionResult | None], result: Any, executor: Any) -> ExecutionResult:
    try:
        if executor.is_awaitable(result):
            result = await result
    except BaseException:
        future.set_result(None)
        raise
    future.set_result(result if not result.errors else None)
    return result


async def _reuse(shared: asyncio.Future[ExecutionResult | None], executor: Any, serially: bool | None) -> Any:
    result = await asyncio.shield(shared)
    if result is None:  # not shareable (it had errors): execute for this subscriber
        result = StrawberryGraphQLCoreExecutionContext.execute_operation(executor, serially)
        if executor.is_awaitable(result):
            result = await result
        return result
    return ExecutionResult(data=result.data, errors=None, extensions=result.extensions)
