"""The projector against a real nats-server: live updates, resume and replay."""

from __future__ import annotations

import uuid
from pathlib import Path

from events.bot import Bot
from events.execution import Execution
from events.store import EventStore
from projections.projector import Projector, rebuild
from projections.read_store import ReadStore, decode_cursor, encode_cursor


def new_bot() -> Bot:
    bot = Bot(
        id=uuid.uuid4(), org_id="acme", name="Catalog", target_url="http://127.0.0.1/",
        description="", kind="extraction", tags=[],
    )
    bot.update_steps([{"action": "goto", "url": "{{bot.targetUrl}}"}])
    return bot


def finished_execution(bot_id: str) -> Execution:
    execution = Execution(
        id=uuid.uuid4(), org_id="acme", bot_id=bot_id, trigger="api", params={},
        encrypted_secrets=None, idempotency_key=None, program={"scriptVersion": 1},
    )
    execution.start("runner-1", 1)
    execution.start_step(0, "goto", None)
    execution.complete_step(0, {"url": "http://127.0.0.1/", "status": 200}, 4)
    execution.append_logs([{"time": 1, "source": "runner", "level": "info", "message": "hi"}])
    execution.complete({"title": "Home"}, 10)
    return execution


async def test_projector_applies_and_resumes(event_store: EventStore, tmp_path: Path) -> None:
    read_store = ReadStore(tmp_path / "views.sqlite3")
    projector = Projector(event_store.nc, event_store, read_store)
    bot = new_bot()
    await event_store.save(bot)
    await projector.start()
    try:
        execution = finished_execution(str(bot.id))
        result = await event_store.save(execution)
        assert await projector.wait_for(result.last_sequence, timeout_s=5)
    finally:
        await projector.stop()

    row = read_store.execution("acme", str(execution.id))
    assert row is not None
    assert row["status"] == "completed"
    assert row["extracted"] == '{"title":"Home"}'
    assert [s["status"] for s in read_store.steps(str(execution.id))] == ["completed"]
    assert [line["message"] for line in read_store.logs(str(execution.id))] == ["hi"]
    assert read_store.execution("other-org", str(execution.id)) is None

    second = finished_execution(str(bot.id))
    await event_store.save(second)
    resumed = Projector(event_store.nc, event_store, read_store)
    await resumed.start()
    await resumed.stop()
    assert read_store.execution("acme", str(second.id)) is not None


async def test_replay_rebuilds_identical_views(event_store: EventStore, tmp_path: Path) -> None:
    bot = new_bot()
    await event_store.save(bot)
    for _ in range(5):
        await event_store.save(finished_execution(str(bot.id)))
    live = ReadStore(tmp_path / "live.sqlite3")
    projector = Projector(event_store.nc, event_store, live)
    await projector.start()
    target = await event_store.last_sequence()
    assert await projector.wait_for(target, timeout_s=5)
    await projector.stop()

    fresh = ReadStore(tmp_path / "fresh.sqlite3")
    applied = await rebuild(event_store, fresh)

    assert applied == target
    assert fresh.dump() == live.dump()
    assert len(fresh.dump()["executions"]) == 5


def test_cursor_roundtrip() -> None:
    assert decode_cursor(encode_cursor(1234)) == 1234
