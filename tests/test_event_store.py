"""Contract tests of the event store against a real nats-server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from events.bot import ApiKey, Bot
from events.errors import ConcurrencyError, InvalidTransitionError, NotFoundError
from events.execution import COMPLETED, FAILED, Execution
from events.store import EventStore, last_sequence_of
from events.subjects import SubjectScheme
from infra.nats import NatsServerSupervisor, connect, ensure_stream
from infra.settings import Settings


def new_execution(org_id: str = "acme", bot_id: str | None = None) -> Execution:
    return Execution(
        id=uuid.uuid4(),
        org_id=org_id,
        bot_id=bot_id or str(uuid.uuid4()),
        trigger="api",
        params={"query": "shoes"},
        encrypted_secrets=None,
        idempotency_key=None,
        program={"targetUrl": "http://127.0.0.1/", "steps": [], "scriptVersion": 1},
    )


def state_of(aggregate: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(aggregate).items() if not k.startswith("_botledger")}


async def test_save_and_load_roundtrip(event_store: EventStore) -> None:
    execution = new_execution()
    execution.start(runner_id="runner-1", attempt=1)
    execution.start_step(0, "goto", None)
    execution.complete_step(0, {"url": "http://127.0.0.1/", "status": 200}, 12)
    execution.complete({"title": "Home"}, 40)

    result = await event_store.save(execution)
    loaded = await event_store.load(Execution, execution.id)

    assert result.last_sequence - result.first_sequence == 4
    assert loaded.status == COMPLETED
    assert loaded.version == 5
    assert loaded.extracted == {"title": "Home"}
    assert loaded.steps[0]["data"] == {"url": "http://127.0.0.1/", "status": 200}
    assert last_sequence_of(loaded) == result.last_sequence


async def test_racing_writers_one_wins(event_store: EventStore) -> None:
    execution = new_execution()
    await event_store.save(execution)
    first = await event_store.load(Execution, execution.id)
    second = await event_store.load(Execution, execution.id)
    first.start(runner_id="runner-a", attempt=1)
    second.start(runner_id="runner-b", attempt=1)

    outcomes = await asyncio.gather(
        event_store.save(first), event_store.save(second), return_exceptions=True
    )

    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], ConcurrencyError)
    loaded = await event_store.load(Execution, execution.id)
    assert loaded.version == 2
    assert loaded.runner_id in ("runner-a", "runner-b")


async def test_conflicting_batch_writes_nothing(event_store: EventStore) -> None:
    execution = new_execution()
    await event_store.save(execution)
    stale = await event_store.load(Execution, execution.id)
    winner = await event_store.load(Execution, execution.id)
    winner.request_cancel("admin")
    await event_store.save(winner)
    before = await event_store.last_sequence()

    stale.start(runner_id="runner-1", attempt=1)
    stale.start_step(0, "goto", "Open")
    stale.fail_step(0, "boom", 5)
    with pytest.raises(ConcurrencyError):
        await event_store.save(stale)

    assert await event_store.last_sequence() == before
    loaded = await event_store.load(Execution, execution.id)
    assert loaded.version == 2
    assert loaded.status == "pending"


async def test_retried_append_writes_once(event_store: EventStore) -> None:
    execution = new_execution()
    await event_store.save(execution)
    loaded = await event_store.load(Execution, execution.id)
    expected = last_sequence_of(loaded)
    loaded.start(runner_id="runner-1", attempt=1)
    loaded.start_step(0, "goto", None)
    events = loaded.collect_events()
    single = new_execution()
    single_events = single.collect_events()

    first = await event_store.append(loaded, events, expected_last_sequence=expected)
    retry = await event_store.append(loaded, events, expected_last_sequence=expected)
    await event_store.append(single, single_events, expected_last_sequence=0)
    single_retry = await event_store.append(single, single_events, expected_last_sequence=0)

    assert not first.duplicate
    assert retry.duplicate
    assert (retry.first_sequence, retry.last_sequence) == (
        first.first_sequence,
        first.last_sequence,
    )
    assert single_retry.duplicate
    assert (await event_store.load(Execution, execution.id)).version == 3
    assert (await event_store.load(Execution, single.id)).version == 1


async def test_terminal_execution_rejects_commands(event_store: EventStore) -> None:
    execution = new_execution()
    execution.start(runner_id="runner-1", attempt=1)
    execution.fail("Selector '#price' not found", 30, failed_step=0)
    await event_store.save(execution)
    loaded = await event_store.load(Execution, execution.id)

    commands = [
        lambda: loaded.start("runner-2", 2),
        lambda: loaded.start_step(1, "click", None),
        lambda: loaded.complete_step(1, None, 1),
        lambda: loaded.complete({}, 1),
        lambda: loaded.fail("again", 1),
        lambda: loaded.time_out("late", 1),
        lambda: loaded.request_cancel("admin"),
        lambda: loaded.cancel("admin"),
        lambda: loaded.append_logs([]),
    ]
    for command in commands:
        with pytest.raises(InvalidTransitionError, match="already ended as failed"):
            command()
    assert loaded.status == FAILED
    assert loaded.collect_events() == []


async def test_second_start_is_rejected(event_store: EventStore) -> None:
    execution = new_execution()
    execution.start(runner_id="runner-1", attempt=1)
    with pytest.raises(InvalidTransitionError, match="runner runner-1 already started it"):
        execution.start(runner_id="runner-2", attempt=1)


async def test_unknown_aggregate_not_found(event_store: EventStore) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFoundError, match=str(missing)):
        await event_store.load(Execution, missing)


async def test_bot_and_key_lifecycle(event_store: EventStore) -> None:
    bot = Bot(
        id=uuid.uuid4(),
        org_id="acme",
        name="Catalog",
        target_url="http://127.0.0.1/",
        description="",
        kind="extraction",
        tags=["demo"],
    )
    bot.update_steps([{"action": "goto", "url": "{{bot.targetUrl}}"}])
    bot.update_steps([{"action": "goto", "url": "{{bot.targetUrl}}/catalog"}])
    bot.update_manifest({"timeout": 60}, None, None)
    key = ApiKey(
        id=uuid.uuid4(), org_id="acme", name="ci", permission="read", key_hash="ab" * 32,
        prefix="blk_abcd",
    )
    key.revoke()
    await event_store.save(bot)
    await event_store.save(key)

    loaded_bot = await event_store.load(Bot, bot.id, org_id="acme")
    loaded_key = await event_store.load(ApiKey, key.id)

    assert loaded_bot.script_version == 2
    assert loaded_bot.steps[0]["url"] == "{{bot.targetUrl}}/catalog"
    assert loaded_bot.capabilities == {"timeout": 60}
    assert loaded_key.revoked is True
    with pytest.raises(InvalidTransitionError, match="already revoked"):
        loaded_key.revoke()


async def test_subjects_name_org_bot_and_event(
    event_store: EventStore, nats_client: NATS, fresh_settings: Settings
) -> None:
    bot_id = str(uuid.uuid4())
    scheme = SubjectScheme(fresh_settings.subject_prefix)
    failures = await nats_client.subscribe(scheme.executions("acme", bot_id, "ExecutionFailed"))
    failing = new_execution(bot_id=bot_id)
    failing.start("runner-1", 1)
    failing.fail("boom", 3)
    other_bot = new_execution()
    other_bot.start("runner-1", 1)
    other_bot.fail("boom", 3)

    await event_store.save(other_bot)
    await event_store.save(failing)

    msg = await failures.next_msg(timeout=5)
    assert msg.subject == f"{fresh_settings.subject_prefix}.acme.execution.{bot_id}.{failing.id}.ExecutionFailed"
    assert msg.headers is not None
    assert msg.headers["Botledger-Event"] == "ExecutionFailed"
    assert msg.headers["Botledger-Schema-Version"] == "1"
    assert failures.pending_msgs == 0


async def test_read_from_sequence(event_store: EventStore) -> None:
    executions = [new_execution() for _ in range(5)]
    for execution in executions:
        await event_store.save(execution)

    everything = [r async for r in event_store.read(1)]
    tail = [r async for r in event_store.read(everything[2].sequence)]

    assert [r.aggregate_id for r in everything] == [str(e.id) for e in executions]
    assert [r.sequence for r in tail] == [r.sequence for r in everything[2:]]
    assert {r.name for r in everything} == {"ExecutionRequested"}
    assert everything[0].state()["params"] == {"query": "shoes"}


async def test_load_after_server_restart(tmp_path: Any, fresh_settings: Settings) -> None:
    supervisor = NatsServerSupervisor(tmp_path / "restart")
    await supervisor.start()
    nc = await connect(supervisor.url, "restart-test")
    await ensure_stream(nc, fresh_settings)
    store = EventStore(nc, fresh_settings.stream_name, SubjectScheme(fresh_settings.subject_prefix))
    execution = new_execution()
    execution.start("runner-1", 1)
    execution.complete({"rows": [1, 2, 3]}, 9)
    await store.save(execution)
    before = state_of(await store.load(Execution, execution.id))
    await nc.close()

    await supervisor.kill()
    await supervisor.start()
    nc = await connect(supervisor.url, "restart-test")
    try:
        await ensure_stream(nc, fresh_settings)
        store = EventStore(
            nc, fresh_settings.stream_name, SubjectScheme(fresh_settings.subject_prefix)
        )
        after = state_of(await store.load(Execution, execution.id))
    finally:
        await nc.close()
        await supervisor.stop()

    assert after == before
    assert after["status"] == COMPLETED
