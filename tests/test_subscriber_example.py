"""The example subscriber against a real nats-server: server-side filtering, live and durable."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import orjson

from events.execution import Execution
from events.store import EventStore
from infra.nats import NatsServerSupervisor
from infra.settings import Settings
from services.subscriber_example import failed_executions

ORG = "acme"
NEXT_EVENT_TIMEOUT_S = 10.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def failed(bot_id: str, reason: str, org: str = ORG) -> Execution:
    execution = Execution(
        id=uuid.uuid4(), org_id=org, bot_id=bot_id, trigger="api", params={},
        encrypted_secrets=None, idempotency_key=None, program={"scriptVersion": 1},
    )
    execution.start("runner-1", 1)
    execution.start_step(0, "click", None)
    execution.fail_step(0, reason, 4)
    execution.fail(reason, 25, failed_step=0, screenshot_key=f"shots/{execution.id}.png")
    return execution


def completed(bot_id: str) -> Execution:
    execution = Execution(
        id=uuid.uuid4(), org_id=ORG, bot_id=bot_id, trigger="api", params={},
        encrypted_secrets=None, idempotency_key=None, program={},
    )
    execution.start("runner-1", 1)
    execution.complete({}, 10)
    return execution


async def next_event(events: AsyncGenerator[dict[str, Any], None]) -> dict[str, Any]:
    return await asyncio.wait_for(anext(events), NEXT_EVENT_TIMEOUT_S)


async def store_mixed_history(event_store: EventStore, bot_id: str) -> list[Execution]:
    """Store failures of the bot among events that must not match; return its failures."""
    other_bot = str(uuid.uuid4())
    mine = [failed(bot_id, "First failure"), failed(bot_id, "Second failure")]
    await event_store.save(mine[0])
    await event_store.save(failed(other_bot, "Another bot's failure"))
    await event_store.save(completed(bot_id))
    await event_store.save(failed(bot_id, "Another organization's failure", org="globex"))
    await event_store.save(mine[1])
    return mine


async def test_yields_failures_of_one_bot(
    event_store: EventStore, fresh_settings: Settings
) -> None:
    bot_id = str(uuid.uuid4())
    expected = await store_mixed_history(event_store, bot_id)
    events = failed_executions(
        event_store.nc, fresh_settings.stream_name, fresh_settings.subject_prefix, ORG, bot_id,
        from_start=True,
    )

    async with contextlib.aclosing(events):
        received = [await next_event(events), await next_event(events)]
        live = failed(bot_id, "Live failure")
        result = await event_store.save(live)
        received.append(await next_event(events))

    assert [e["executionId"] for e in received] == [str(x.id) for x in [*expected, live]]
    assert [e["reason"] for e in received] == ["First failure", "Second failure", "Live failure"]
    assert {e["type"] for e in received} == {"ExecutionFailed"}
    assert {e["botId"] for e in received} == {bot_id}
    assert received[2]["sequence"] == result.last_sequence
    assert received[2]["failedStep"] == 0
    assert received[2]["durationMs"] == 25
    assert received[2]["screenshotKey"] == f"shots/{live.id}.png"
    assert received[2]["schemaVersion"] == 1
    assert received[2]["newerSchema"] is False
    assert received[0]["sequence"] < received[1]["sequence"] < received[2]["sequence"]


async def test_new_only_skips_stored_failures(
    event_store: EventStore, fresh_settings: Settings
) -> None:
    bot_id = str(uuid.uuid4())
    await store_mixed_history(event_store, bot_id)
    events = failed_executions(
        event_store.nc, fresh_settings.stream_name, fresh_settings.subject_prefix, ORG, bot_id,
    )

    async with contextlib.aclosing(events):
        # The first request for an event creates the consumer; store the failure meanwhile.
        pending = asyncio.ensure_future(next_event(events))
        live = failed(bot_id, "Only this one")
        await wait_for_consumer(event_store)
        await event_store.save(live)
        received = await pending

    assert received["executionId"] == str(live.id)


async def wait_for_consumer(event_store: EventStore) -> None:
    js = event_store.nc.jetstream()
    deadline = asyncio.get_running_loop().time() + NEXT_EVENT_TIMEOUT_S
    while not await js.consumers_info(event_store.stream):
        assert asyncio.get_running_loop().time() < deadline, "no consumer was created"
        await asyncio.sleep(0.02)


async def test_durable_consumer_resumes_after_restart(
    event_store: EventStore, fresh_settings: Settings
) -> None:
    bot_id = str(uuid.uuid4())
    expected = await store_mixed_history(event_store, bot_id)

    def subscribe() -> AsyncGenerator[dict[str, Any], None]:
        return failed_executions(
            event_store.nc, fresh_settings.stream_name, fresh_settings.subject_prefix, ORG,
            bot_id, from_start=True, durable="failure-alerts",
        )

    first_run = subscribe()
    async with contextlib.aclosing(first_run):
        first = await next_event(first_run)
    stored_while_down = failed(bot_id, "While the subscriber was down")
    await event_store.save(stored_while_down)
    second_run = subscribe()
    async with contextlib.aclosing(second_run):
        resumed = [await next_event(second_run), await next_event(second_run)]

    assert first["executionId"] == str(expected[0].id)
    assert [e["executionId"] for e in resumed] == [
        str(expected[1].id), str(stored_while_down.id),
    ]


async def test_command_prints_json_lines(
    event_store: EventStore, fresh_settings: Settings, nats_server: NatsServerSupervisor
) -> None:
    bot_id = str(uuid.uuid4())
    expected = await store_mixed_history(event_store, bot_id)
    command = [
        sys.executable, "-m", "services.subscriber_example",
        "--nats-url", nats_server.url, "--stream", fresh_settings.stream_name,
        "--prefix", fresh_settings.subject_prefix, "--org", ORG, "--bot", bot_id,
        "--from-start", "--limit", "2",
    ]

    finished = await asyncio.to_thread(
        subprocess.run, command, cwd=PROJECT_ROOT, capture_output=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )

    assert finished.returncode == 0, finished.stderr.decode()
    lines = finished.stdout.decode().splitlines()
    records = [orjson.loads(line) for line in lines]
    assert [r["executionId"] for r in records] == [str(x.id) for x in expected]
    assert [r["reason"] for r in records] == ["First failure", "Second failure"]
