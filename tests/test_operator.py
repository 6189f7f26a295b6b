"""Operator commands against a real nats-server, read store and projector."""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS

from events.bot import Bot
from events.errors import NotFoundError, ValidationError
from events.execution import Execution
from events.store import EventStore
from events.subjects import SubjectScheme
from infra.endpoints import Endpoints, write_endpoints
from infra.nats import NatsServerSupervisor
from infra.settings import Settings
from projections.projector import Projector
from projections.read_store import ReadStore
from services import operator

ORG = "acme"


def new_bot(org: str = ORG) -> Bot:
    bot = Bot(
        id=uuid.uuid4(), org_id=org, name="Catalog", target_url="http://127.0.0.1/",
        description="", kind="action", tags=["shop"],
    )
    bot.update_steps([{"action": "goto", "url": "{{bot.targetUrl}}"}])
    return bot


def new_execution(bot_id: str, org: str = ORG) -> Execution:
    return Execution(
        id=uuid.uuid4(), org_id=org, bot_id=bot_id, trigger="api",
        params={"query": "shoes", "password": "***"},
        encrypted_secrets="gAAAAAB-fernet-token", idempotency_key=None,
        program={"scriptVersion": 1, "targetUrl": "http://127.0.0.1/"},
    )


def completed_execution(bot_id: str, org: str = ORG) -> Execution:
    execution = new_execution(bot_id, org)
    execution.start("runner-1", 1)
    execution.start_step(0, "goto", "Open home")
    execution.complete_step(0, {"url": "http://127.0.0.1/", "status": 200}, 12)
    execution.start_step(1, "extract", None)
    execution.complete_step(1, [{"name": "Shoe"}], 5)
    execution.append_logs([
        {"time": 1, "source": "runner", "level": "info", "message": "step 0 done"},
        {"time": 2, "source": "script", "level": "info", "message": "hello"},
    ])
    execution.complete({"products": [{"name": "Shoe"}]}, 40)
    return execution


def failed_execution(bot_id: str, org: str = ORG) -> Execution:
    execution = new_execution(bot_id, org)
    execution.start("runner-2", 1)
    execution.start_step(0, "goto", None)
    execution.complete_step(0, {"url": "http://127.0.0.1/", "status": 200}, 9)
    execution.start_step(1, "click", "Buy")
    execution.fail_step(1, "No element matches '#buy'", 7)
    execution.append_logs([
        {"time": 3, "source": "runner", "level": "error", "message": "click failed"},
    ])
    execution.fail("No element matches '#buy'", 30, failed_step=1, screenshot_key="shots/1.png")
    return execution


def cancelled_execution(bot_id: str, org: str = ORG) -> Execution:
    execution = new_execution(bot_id, org)
    execution.request_cancel("key-1")
    execution.cancel("Cancelled by the API")
    return execution


async def populate(event_store: EventStore, count: int) -> tuple[Bot, list[Execution]]:
    bot = new_bot()
    await event_store.save(bot)
    makers = (completed_execution, failed_execution, completed_execution, cancelled_execution)
    executions = [makers[n % len(makers)](str(bot.id)) for n in range(count)]
    for execution in executions:
        await event_store.save(execution)
    return bot, executions


class RunningStack:
    """The part of a running stack that replay talks to: a read store and its projector."""

    def __init__(self, event_store: EventStore, path: Path) -> None:
        self.event_store = event_store
        self.read_store = ReadStore(path)
        self.projector = Projector(event_store.nc, event_store, self.read_store)
        self.reopened: list[Path] = []

    async def start(self) -> None:
        await self.projector.start()
        target = await self.event_store.last_sequence()
        assert await self.projector.wait_for(target, timeout_s=10)

    async def reopen(self, path: Path) -> None:
        await self.projector.stop()
        previous = self.read_store
        self.read_store = ReadStore(path)
        self.projector = Projector(self.event_store.nc, self.event_store, self.read_store)
        await self.projector.start()
        previous.close()
        self.reopened.append(path)

    async def stop(self) -> None:
        await self.projector.stop()
        self.read_store.close()


@pytest.fixture
def settings(fresh_settings: Settings, nats_server: NatsServerSupervisor) -> Settings:
    return fresh_settings.replace(nats_url=nats_server.url)


@pytest.fixture
async def stack(event_store: EventStore, settings: Settings) -> AsyncIterator[RunningStack]:
    running = RunningStack(event_store, settings.read_store_path)
    yield running
    await running.stop()


async def test_replay_rebuilds_views_and_reopens_stack(
    event_store: EventStore, settings: Settings, stack: RunningStack, nats_client: NATS
) -> None:
    _, executions = await populate(event_store, 300)
    await stack.start()
    live_views = stack.read_store.dump()
    old_store_id = stack.read_store.store_id
    control = await operator.serve_control(nats_client, settings, stack.reopen)
    out = io.StringIO()

    try:
        report = await operator.replay(settings, out)
    finally:
        await control.unsubscribe()

    last_sequence = await event_store.last_sequence()
    assert report.events == last_sequence
    assert report.last_sequence == last_sequence
    assert report.rows["executions"] == 300
    assert report.stack_reloaded is True
    assert stack.reopened == [settings.read_store_path]
    assert stack.read_store.store_id != old_store_id
    assert stack.read_store.dump() == live_views
    assert settings.read_store_path.is_symlink()
    assert os.readlink(settings.read_store_path) == report.store_file.name
    # The replaced regular file's WAL files are gone with it.
    assert not Path(f"{settings.read_store_path}-wal").exists()
    text = out.getvalue()
    assert "100%" in text
    assert f"{last_sequence:,}/{last_sequence:,} events" in text
    assert f"Replayed {last_sequence:,} events up to sequence {last_sequence}" in text
    assert "executions 300" in text
    assert "The running stack reopened its read store" in text

    # The projector of the reopened store keeps applying new events.
    extra = completed_execution(str(executions[0].bot_id))
    result = await event_store.save(extra)
    assert await stack.projector.wait_for(result.last_sequence, timeout_s=10)
    assert stack.read_store.execution(ORG, str(extra.id)) is not None


async def test_second_replay_removes_previous_generation(
    event_store: EventStore, settings: Settings, stack: RunningStack, nats_client: NATS
) -> None:
    await populate(event_store, 12)
    await stack.start()
    control = await operator.serve_control(nats_client, settings, stack.reopen)

    try:
        first = await operator.replay(settings, io.StringIO())
        second = await operator.replay(settings, io.StringIO())
    finally:
        await control.unsubscribe()

    assert not first.store_file.exists()
    assert not Path(f"{first.store_file}-wal").exists()
    assert second.store_file.exists()
    assert settings.read_store_path.resolve() == second.store_file.resolve()
    assert len(stack.reopened) == 2
    assert stack.read_store.dump()["executions"] == ReadStore(second.store_file).dump()["executions"]


async def test_replay_without_running_stack(
    event_store: EventStore, settings: Settings
) -> None:
    await populate(event_store, 8)
    out = io.StringIO()

    report = await operator.replay(settings, out)

    assert report.stack_reloaded is False
    assert "No running stack responded" in out.getvalue()
    reopened = ReadStore(settings.read_store_path)
    assert len(reopened.dump()["executions"]) == 8
    assert reopened.last_sequence == await event_store.last_sequence()
    reopened.close()


async def test_verify_reports_match(
    event_store: EventStore, settings: Settings, stack: RunningStack
) -> None:
    await populate(event_store, 40)
    await stack.start()
    rows = sum(len(table) for table in stack.read_store.dump().values())
    events = await event_store.last_sequence()
    out = io.StringIO()

    code = await operator.verify(settings, out)

    assert code == 0
    assert out.getvalue() == f"views match the log ({events} events, {rows} rows)\n"


async def test_verify_names_changed_row(
    event_store: EventStore, settings: Settings, stack: RunningStack
) -> None:
    _, executions = await populate(event_store, 40)
    await stack.start()
    changed = executions[0]
    removed = executions[1]
    with sqlite3.connect(settings.read_store_path) as conn:
        conn.execute("UPDATE executions SET status = 'cancelled' WHERE id = ?", (str(changed.id),))
        conn.execute("DELETE FROM logs WHERE execution_id = ?", (str(removed.id),))
    out = io.StringIO()

    code = await operator.verify(settings, out)

    text = out.getvalue()
    assert code == 1
    assert text.startswith("views differ from the log: 2 differences in executions, logs")
    assert (
        f"executions id={changed.id}, column status: live 'cancelled', rebuilt 'completed'"
        in text
    )
    assert f"logs execution_id={removed.id} line=0: missing from the live store" in text


async def test_verify_lists_few_of_many_differences(
    event_store: EventStore, settings: Settings, stack: RunningStack
) -> None:
    await populate(event_store, 20)
    await stack.start()
    with sqlite3.connect(settings.read_store_path) as conn:
        conn.execute("UPDATE steps SET duration_ms = duration_ms + 1")
    out = io.StringIO()

    code = await operator.verify(settings, out)

    lines = out.getvalue().splitlines()
    assert code == 1
    shown = [line for line in lines if line.startswith("  steps ")]
    assert len(shown) == operator.MAX_SHOWN_DIFFERENCES
    assert "  and 25 more" in lines


async def test_verify_ignores_events_after_live_sequence(
    event_store: EventStore, settings: Settings, stack: RunningStack
) -> None:
    bot, _ = await populate(event_store, 10)
    await stack.start()
    await stack.projector.stop()
    applied = stack.read_store.last_sequence
    await event_store.save(completed_execution(str(bot.id)))
    out = io.StringIO()

    code = await operator.verify(settings, out)

    assert code == 0
    assert out.getvalue().startswith(f"views match the log ({applied} events, ")


async def test_verify_without_read_store(settings: Settings, event_store: EventStore) -> None:
    with pytest.raises(NotFoundError, match="No read store at"):
        await operator.verify(settings, io.StringIO())


async def test_history_prints_timeline(event_store: EventStore, settings: Settings) -> None:
    bot = new_bot()
    await event_store.save(bot)
    execution = failed_execution(str(bot.id))
    result = await event_store.save(execution)
    out = io.StringIO()

    await operator.history(settings, str(execution.id), out)

    lines = out.getvalue().splitlines()
    assert lines[0] == f"Execution {execution.id} of bot {bot.id} (organization {ORG})"
    assert lines[1].startswith(
        f"8 events, stream sequences {result.first_sequence} to {result.last_sequence}, started "
    )
    assert len(lines) == 2 + 8
    assert "+0 ms" in lines[2]
    assert "ExecutionRequested" in lines[2]
    assert "trigger api, 2 params (password, query), script version 1" in lines[2]
    assert "secret values encrypted" in lines[2]
    assert "gAAAAAB" not in out.getvalue()
    assert "runner runner-2, attempt 1" in lines[3]
    assert "step 1 click 'Buy'" in lines[6]
    assert "step 1 failed after 7 ms: No element matches '#buy'" in lines[7]
    assert "1 log line (runner 1), 1 at level error" in lines[8]
    assert (
        "after 30 ms at step 1: No element matches '#buy' (screenshot shots/1.png)" in lines[9]
    )
    offsets = [int(line.split("ms")[0].strip()) for line in lines[2:]]
    assert offsets == sorted(offsets)


async def test_history_of_unknown_execution(event_store: EventStore, settings: Settings) -> None:
    missing = str(uuid.uuid4())

    with pytest.raises(NotFoundError, match=missing):
        await operator.history(settings, missing, io.StringIO())


async def test_export_roundtrips_json(event_store: EventStore, settings: Settings) -> None:
    bot = new_bot()
    await event_store.save(bot)
    execution = completed_execution(str(bot.id))
    await event_store.save(execution)
    await event_store.save(completed_execution(str(bot.id)))
    stored = [
        recorded
        async for recorded in event_store.read(
            1, event_store.scheme.aggregate_filter("execution", str(execution.id), ORG, str(bot.id))
        )
    ]
    out = io.StringIO()

    await operator.export(settings, str(execution.id), out)

    document: dict[str, Any] = orjson.loads(out.getvalue())
    events = document["data"]
    assert [e["sequence"] for e in events] == [r.sequence for r in stored]
    assert [e["type"] for e in events] == [r.name for r in stored]
    assert [e["time"] for e in events] == [r.time_ms for r in stored]
    assert {e["aggregateId"] for e in events} == {str(execution.id)}
    assert {e["botId"] for e in events} == {str(bot.id)}
    assert [e["schemaVersion"] for e in events] == [r.schema_version for r in stored]
    requested = events[0]["payload"]
    assert requested["params"] == {"query": "shoes", "password": "***"}
    assert "encryptedSecrets" not in requested
    assert "encrypted_secrets" not in requested
    assert "originatorTopic" not in requested
    assert requested["botId"] == str(bot.id)
    assert isinstance(requested["timestamp"], int)
    assert events[3]["payload"]["durationMs"] == 12
    assert events[-1]["payload"]["extracted"] == {"products": [{"name": "Shoe"}]}
    assert "gAAAAAB" not in out.getvalue()


async def wait_for_text(out: io.StringIO, text: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in out.getvalue():
        assert time.monotonic() < deadline, f"{text!r} not printed; output: {out.getvalue()!r}"
        await asyncio.sleep(0.02)


async def test_events_tail_prints_matching_events(
    event_store: EventStore, settings: Settings
) -> None:
    watched, other = new_bot(), new_bot()
    await event_store.save(watched)
    await event_store.save(other)
    out = io.StringIO()
    tail = asyncio.create_task(
        operator.events_tail(settings, ORG, str(watched.id), "ExecutionFailed", out)
    )
    try:
        await wait_for_text(out, "Tailing ")
        await event_store.save(failed_execution(str(other.id)))
        await event_store.save(completed_execution(str(watched.id)))
        expected = failed_execution(str(watched.id))
        await event_store.save(expected)
        await wait_for_text(out, str(expected.id))
    finally:
        tail.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tail

    lines = out.getvalue().splitlines()
    assert lines[0].startswith(
        f"Tailing {settings.subject_prefix}.{ORG}.execution.{watched.id}.*.ExecutionFailed"
    )
    assert len(lines) == 2
    assert f"  {ORG}  ExecutionFailed  execution {expected.id}  after 30 ms at step 1" in lines[1]


async def test_events_tail_of_bot_includes_bot_events(
    event_store: EventStore, settings: Settings
) -> None:
    bot = new_bot()
    await event_store.save(bot)
    out = io.StringIO()
    tail = asyncio.create_task(operator.events_tail(settings, ORG, str(bot.id), None, out))
    try:
        await wait_for_text(out, "Tailing ")
        bot.update_steps([{"action": "goto", "url": "http://127.0.0.1/next"}])
        await event_store.save(bot)
        execution = cancelled_execution(str(bot.id))
        await event_store.save(execution)
        await wait_for_text(out, "ExecutionCancelled")
    finally:
        tail.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tail

    names = [line.split("  ")[3] for line in out.getvalue().splitlines()[1:]]
    assert names == ["BotStepsUpdated", "ExecutionRequested", "ExecutionCancelRequested",
                     "ExecutionCancelled"]


async def test_events_tail_rejects_unknown_type(settings: Settings, event_store: EventStore) -> None:
    with pytest.raises(ValidationError, match="Did you mean 'ExecutionFailed'"):
        await operator.events_tail(settings, ORG, None, "ExecutionFaild", io.StringIO())


def test_tail_filters_cover_every_aggregate() -> None:
    scheme = SubjectScheme("bl")

    assert operator.tail_filters(scheme, None, None, None) == ["bl.>"]
    assert operator.tail_filters(scheme, ORG, None, None) == ["bl.acme.>"]
    assert operator.tail_filters(scheme, ORG, "b1", None) == [
        "bl.acme.execution.b1.*.*", "bl.acme.bot.b1.*",
    ]
    assert operator.tail_filters(scheme, None, None, "BotCreated") == ["bl.*.bot.*.BotCreated"]
    assert operator.tail_filters(scheme, ORG, "b1", "BotDeleted") == ["bl.acme.bot.b1.BotDeleted"]
    assert operator.tail_filters(scheme, ORG, None, "ApiKeyRevoked") == [
        "bl.acme.apikey.*.ApiKeyRevoked"
    ]
    with pytest.raises(ValidationError, match="leave out the bot id"):
        operator.tail_filters(scheme, ORG, "b1", "ApiKeyCreated")


async def test_commands_find_stack_through_endpoints(
    event_store: EventStore, fresh_settings: Settings, nats_server: NatsServerSupervisor
) -> None:
    fresh_settings.data_dir.mkdir(parents=True, exist_ok=True)
    write_endpoints(
        fresh_settings.data_dir,
        Endpoints(
            api_url="http://127.0.0.1:1/", nats_url=nats_server.url, s3_endpoint="127.0.0.1:1",
            stream_name=fresh_settings.stream_name, subject_prefix=fresh_settings.subject_prefix,
            pid=os.getpid(),
        ),
    )
    unconfigured = Settings(data_dir=fresh_settings.data_dir)
    bot = new_bot()
    await event_store.save(bot)
    execution = cancelled_execution(str(bot.id))
    await event_store.save(execution)
    out = io.StringIO()

    await operator.history(unconfigured, str(execution.id), out)

    assert "ExecutionCancelled" in out.getvalue()
    assert "reason: Cancelled by the API" in out.getvalue()
