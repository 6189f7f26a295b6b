"""Writes of the gateway: change an aggregate, append its events, wait for the read store.

Every write waits until the projector has applied its events (bounded by
``read_your_writes_timeout_s``), so the client's next read returns what it wrote.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TypeVar

from eventsourcing.domain import Aggregate

from events.errors import ConcurrencyError
from events.store import AppendResult
from services.gateway.context import GatewayContext

logger = logging.getLogger(__name__)

TAggregate = TypeVar("TAggregate", bound=Aggregate)

# A write that loses the optimistic-concurrency race reloads the aggregate and applies the
# command again. The other writer is a runner or another gateway request on the same aggregate.
WRITE_ATTEMPTS = 3


async def wait_for_projection(context: GatewayContext, result: AppendResult) -> bool:
    """Wait until the read store contains the appended events; False when the wait timed out."""
    return await context.projector.wait_for(
        result.last_sequence, context.settings.read_your_writes_timeout_s
    )


async def update_aggregate(
    context: GatewayContext,
    aggregate_cls: type[TAggregate],
    aggregate_id: str,
    org_id: str,
    command: Callable[[TAggregate], None],
) -> tuple[TAggregate, AppendResult]:
    """Load an aggregate of the organization, apply ``command`` and append its events.

    Raises NotFoundError when the organization has no such aggregate, and whatever the command
    raises. A concurrent change makes it retry with the reloaded aggregate.
    """
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        aggregate = await context.event_store.load(
            aggregate_cls, uuid.UUID(aggregate_id), org_id=org_id
        )
        command(aggregate)
        try:
            result = await context.event_store.save(aggregate)
        except ConcurrencyError:
            if attempt == WRITE_ATTEMPTS:
                raise
            logger.info(
                "%s %s changed concurrently; retrying the write (attempt %d of %d)",
                aggregate_cls.__name__, aggregate_id, attempt + 1, WRITE_ATTEMPTS,
            )
            continue
        return aggregate, result
    raise AssertionError("unreachable")
