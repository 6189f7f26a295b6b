"""Events stored with an older schema version still load, append and project.

Upcasting follows eventsourcing's convention: an event class with ``class_version = N`` has
static methods ``upcast_v1_v2`` ... that rewrite an older stored state in place when it loads.
The stored messages here are published raw, exactly as an older botledger wrote them.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from events.codec import (
    HEADER_AGGREGATE_ID,
    HEADER_AGGREGATE_VERSION,
    HEADER_EVENT,
    HEADER_MSG_ID,
    HEADER_SCHEMA_VERSION,
    EventCodec,
)
from events.execution import PENDING, RUNNING, Execution
from events.store import EventStore
from projections.projector import rebuild
from projections.read_store import ReadStore
from services.gateway.event_routes import public_event

ORG = "acme"
REQUESTED = Execution.ExecutionRequested  # type: ignore[attr-defined]

needs_requested_by_v2 = pytest.mark.skipif(
    getattr(REQUESTED, "class_version", 1) < 2,
    reason=(
        "events/execution.py does not define ExecutionRequested with class_version = 2, a "
        "`requested_by: str | None` field and an upcast_v1_v2 that sets it to None"
    ),
)


async def publish_raw(
    event_store: EventStore,
    execution_id: uuid.UUID,
    bot_id: str,
    name: str,
    payload: dict[str, Any],
    schema_version: int,
    aggregate_version: int = 1,
) -> int:
    """Store one event message as given, bypassing the codec; return its sequence."""
    subject = event_store.scheme.event_subject(
        "execution", str(execution_id), ORG, name, bot_id
    )
    headers = {
        HEADER_MSG_ID: f"{execution_id}:{aggregate_version}:raw",
        HEADER_EVENT: name,
        HEADER_SCHEMA_VERSION: str(schema_version),
        HEADER_AGGREGATE_ID: str(execution_id),
        HEADER_AGGREGATE_VERSION: str(aggregate_version),
    }
    ack = await event_store.nc.jetstream().publish(
        subject, orjson.dumps(payload), stream=event_store.stream, headers=headers
    )
    return int(ack.seq)


def version_1_requested(bot_id: str) -> dict[str, Any]:
    """The payload of ExecutionRequested as schema version 1 stored it."""
    return {
        "timestamp": "2025-01-02T03:04:05.678901+00:00",
        "originator_topic": "events.execution:Execution",
        "org_id": ORG,
        "bot_id": bot_id,
        "trigger": "schedule",
        "params": {"query": "lamp"},
        "encrypted_secrets": None,
        "idempotency_key": None,
        "program": {"scriptVersion": 3, "targetUrl": "http://127.0.0.1/"},
    }


async def test_upcaster_rewrites_older_event_on_load(
    event_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A newer schema renames a field: the older stored state names it `source`.
    current = getattr(REQUESTED, "class_version", 1)

    def rename_source(state: dict[str, Any]) -> None:
        state["trigger"] = state.pop("source")

    monkeypatch.setattr(REQUESTED, "class_version", current + 1, raising=False)
    monkeypatch.setattr(
        REQUESTED, f"upcast_v{current}_v{current + 1}", staticmethod(rename_source), raising=False
    )
    bot_id = str(uuid.uuid4())
    execution_id = uuid.uuid4()
    older = Execution(
        id=execution_id, org_id=ORG, bot_id=bot_id, trigger="schedule", params={},
        encrypted_secrets=None, idempotency_key=None, program={"scriptVersion": 1},
    )
    state = orjson.loads(EventCodec().encode(older.collect_events()[0]).payload)
    state.pop("class_version", None)
    if current > 1:
        state["class_version"] = current
    state["source"] = state.pop("trigger")
    await publish_raw(event_store, execution_id, bot_id, "ExecutionRequested", state, current)

    loaded = await event_store.load(Execution, execution_id)
    loaded.start("runner-1", 1)
    result = await event_store.save(loaded)
    reloaded = await event_store.load(Execution, execution_id)

    assert loaded.trigger == "schedule"
    assert loaded.bot_id == bot_id
    assert not result.duplicate
    assert reloaded.status == RUNNING
    assert reloaded.trigger == "schedule"
    newer = EventCodec().encode(
        Execution(
            id=uuid.uuid4(), org_id=ORG, bot_id=bot_id, trigger="api", params={},
            encrypted_secrets=None, idempotency_key=None, program={},
        ).collect_events()[0]
    )
    assert newer.headers[HEADER_SCHEMA_VERSION] == str(current + 1)
    assert orjson.loads(newer.payload)["class_version"] == current + 1


@needs_requested_by_v2
async def test_version_1_request_loads_and_projects(
    event_store: EventStore, tmp_path: Path
) -> None:
    bot_id = str(uuid.uuid4())
    execution_id = uuid.uuid4()
    sequence = await publish_raw(
        event_store, execution_id, bot_id, "ExecutionRequested", version_1_requested(bot_id), 1
    )

    loaded = await event_store.load(Execution, execution_id)
    assert getattr(loaded, "requested_by") is None
    assert loaded.trigger == "schedule"
    assert loaded.params == {"query": "lamp"}
    assert loaded.status == PENDING
    loaded.start("runner-1", 1)
    await event_store.save(loaded)

    views = ReadStore(tmp_path / "views.sqlite3")
    applied = await rebuild(event_store, views)
    row = views.execution(ORG, str(execution_id))
    assert applied == 2
    assert row is not None
    assert row["status"] == RUNNING
    assert row["trigger"] == "schedule"
    assert row["script_version"] == 3
    assert row["seq"] == sequence

    stored = [r async for r in event_store.read(sequence)]
    document = public_event(stored[0])
    assert document["schemaVersion"] == 1
    assert "requestedBy" not in document["payload"]


@needs_requested_by_v2
async def test_version_2_request_records_requester(event_store: EventStore) -> None:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(), "org_id": ORG, "bot_id": str(uuid.uuid4()), "trigger": "api",
        "params": {}, "encrypted_secrets": None, "idempotency_key": None, "program": {},
        "requested_by": "key-1",
    }
    execution = Execution(**fields)

    result = await event_store.save(execution)
    stored = [r async for r in event_store.read(result.first_sequence)]
    loaded = await event_store.load(Execution, execution.id)

    assert stored[0].headers[HEADER_SCHEMA_VERSION] == "2"
    assert stored[0].state()["class_version"] == 2
    assert getattr(loaded, "requested_by") == "key-1"
    document = public_event(stored[0])
    assert document["schemaVersion"] == 2
    assert document["payload"]["requestedBy"] == "key-1"
    assert "classVersion" not in document["payload"]
