"""Cursor pagination of the gateway's lists, also while executions are being inserted."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from gateway_fixtures import (  # noqa: F401
    ORG,
    Gateway,
    assert_error,
    gateway,
)

from events.execution import Execution
from projections.read_store import encode_cursor



def new_execution(bot_id: str) -> Execution:
    return Execution(
        id=uuid.uuid4(), org_id=ORG, bot_id=bot_id, trigger="api", params={},
        encrypted_secrets=None, idempotency_key=None, program={"scriptVersion": 1},
    )


async def insert_executions(gateway: Gateway, bot_id: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        execution = new_execution(bot_id)
        await gateway.context.event_store.save(execution)
        ids.append(str(execution.id))
    return ids


async def walk(gateway: Gateway, path: str, limit: int) -> list[dict[str, object]]:
    """Follow cursors from the first page to the last; return every item in order."""
    items: list[dict[str, object]] = []
    cursor: str | None = None
    for _ in range(1000):
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = await gateway.ok("GET", path + query, permission="read")
        assert len(page["data"]) <= limit
        items += page["data"]
        cursor = page["cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


async def test_walk_pages_during_concurrent_inserts(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    existing = await insert_executions(gateway, bot["id"], 45)
    last = await gateway.context.event_store.last_sequence()
    assert await gateway.context.projector.wait_for(last, 5.0)
    path = f"/api/v1/bots/{bot['id']}/executions"

    inserting = asyncio.create_task(insert_executions(gateway, bot["id"], 30))
    items = await walk(gateway, path, limit=4)
    projected_during_walk = gateway.context.projector.last_sequence
    inserted_meanwhile = await inserting

    assert projected_during_walk > last, "no insert happened while the pages were read"

    ids = [str(item["id"]) for item in items]
    assert len(ids) == len(set(ids)), "an execution appeared twice"
    assert set(existing) <= set(ids), "an execution was skipped"
    assert set(ids) <= set(existing) | set(inserted_meanwhile)
    # Newest first: the executions that existed before the walk come in reverse order.
    assert [i for i in ids if i in set(existing)] == list(reversed(existing))


async def test_limit_defaults_to_20(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    await insert_executions(gateway, bot["id"], 21)
    last = await gateway.context.event_store.last_sequence()
    assert await gateway.context.projector.wait_for(last, 5.0)

    first = await gateway.ok("GET", f"/api/v1/bots/{bot['id']}/executions")
    second = await gateway.ok(
        "GET", f"/api/v1/bots/{bot['id']}/executions?cursor={first['cursor']}"
    )

    assert len(first["data"]) == 20
    assert isinstance(first["cursor"], str)
    assert len(second["data"]) == 1
    assert second["cursor"] is None


async def test_limit_bounds(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    path = f"/api/v1/bots/{bot['id']}/executions"

    for limit in ("1", "100"):
        page = await gateway.ok("GET", f"{path}?limit={limit}")
        assert page == {"data": [], "cursor": None}


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "2.5", "", "1e2", "٣"])
async def test_bad_limit_is_400_naming_value(gateway: Gateway, limit: str) -> None:
    response = await gateway.call("GET", f"/api/v1/bots?limit={limit}")
    body = await response.json()

    assert response.status == 400
    assert_error(body, "invalid_request")
    assert repr(limit) in body["error"]
    assert body["details"] == {"limit": limit}


@pytest.mark.parametrize("cursor", ["garbage!", "eDox", encode_cursor(0), "czphYmM"])
async def test_bad_cursor_is_400(gateway: Gateway, cursor: str) -> None:
    response = await gateway.call("GET", "/api/v1/bots", params={"cursor": cursor})
    body = await response.json()

    assert response.status == 400
    assert_error(body, "invalid_request")
    assert "cursor" in body["error"]


async def test_bots_and_keys_lists_paginate(gateway: Gateway) -> None:
    names = [f"Bot {n}" for n in range(5)]
    for name in names:
        await gateway.create_bot(name=name)

    bots = await walk(gateway, "/api/v1/bots", limit=2)
    keys: list[dict[str, object]] = []
    cursor = None
    while True:
        query = "?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = await gateway.ok("GET", "/api/v1/keys" + query)
        keys += page["data"]
        cursor = page["cursor"]
        if cursor is None:
            break

    assert [bot["name"] for bot in bots] == list(reversed(names))
    assert [key["name"] for key in keys] == ["admin key", "write key", "read key"]
