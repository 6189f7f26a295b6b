"""Event streams and history over HTTP against a real nats-server, projector and gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet
from gateway_fixtures import (
    ORG,
    OTHER_ORG,
    PERMISSIONS,
    Gateway,
    StandInArtifactStore,
    assert_error,
)

from events.execution import Execution
from events.store import EventStore, RecordedEvent
from infra.secrets import SecretBox
from infra.settings import Settings
from projections.projector import Projector
from projections.read_store import ReadStore
from services.gateway import event_routes
from services.gateway.app import build_gateway_app
from services.gateway.context import GatewayContext
from services.gateway.keys import create_api_key


KEEPALIVE_INTERVAL_S = 0.2
READ_TIMEOUT_S = 10.0
SECRET = "hunter2-very-secret"


@pytest.fixture
async def gateway(
    event_store: EventStore, fresh_settings: Settings, tmp_path: Path
) -> AsyncIterator[Gateway]:
    """A gateway serving the event routes, with a short keep-alive interval."""
    read_store = ReadStore(tmp_path / "views.sqlite3")
    projector = Projector(event_store.nc, event_store, read_store)
    await projector.start()
    context = GatewayContext(
        settings=fresh_settings, nc=event_store.nc, event_store=event_store,
        read_store=read_store, projector=projector,
        secret_box=SecretBox(Fernet.generate_key()), artifacts=StandInArtifactStore(),
    )
    keys: dict[str, str] = {}
    key_ids: dict[str, str] = {}
    for permission in PERMISSIONS:
        key_id, key, _ = await create_api_key(event_store, ORG, permission, f"{permission} key")
        keys[permission], key_ids[permission] = key, key_id
    _, other_key, result = await create_api_key(event_store, OTHER_ORG, "admin", "other org")
    assert await projector.wait_for(result.last_sequence, 5.0)

    app = build_gateway_app(context, event_routes.routes, event_routes.OPENAPI_PATHS)
    app[event_routes.KEEPALIVE_INTERVAL_S] = KEEPALIVE_INTERVAL_S
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    yield Gateway(client, context, keys, key_ids, other_key)
    await client.close()
    await projector.stop()
    read_store.close()


@dataclasses.dataclass
class ServerSentEvent:
    id: int
    event: str
    data: dict[str, Any]


class EventStreamReader:
    """Parse a text/event-stream response frame by frame, with a deadline per read."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next_event(self, timeout_s: float = READ_TIMEOUT_S) -> ServerSentEvent | None:
        """Return the next event, or None at the end of the stream."""
        fields: dict[str, str] = {}
        while True:
            raw = await asyncio.wait_for(self.response.content.readline(), timeout_s)
            if raw == b"":
                assert not fields, f"stream ended inside an event: {fields}"
                return None
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line)
                continue
            if line == "":
                if fields:
                    return ServerSentEvent(
                        int(fields["id"]), fields["event"], orjson.loads(fields["data"])
                    )
                continue
            name, _, value = line.partition(": ")
            fields[name] = value

    async def events(self, count: int) -> list[ServerSentEvent]:
        received: list[ServerSentEvent] = []
        for _ in range(count):
            event = await self.next_event()
            assert event is not None, f"stream ended after {len(received)} of {count} events"
            received.append(event)
        return received

    async def rest(self) -> list[ServerSentEvent]:
        """Read events until the server ends the stream."""
        received: list[ServerSentEvent] = []
        while (event := await self.next_event()) is not None:
            received.append(event)
        return received


async def open_stream(
    gateway: Gateway, path: str, permission: str = "read", **headers: str
) -> EventStreamReader:
    response = await gateway.call("GET", path, permission=permission, headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    return EventStreamReader(response)


async def stored_events(gateway: Gateway, execution_id: str) -> list[RecordedEvent]:
    store = gateway.context.event_store
    filter_subject = store.scheme.aggregate_filter("execution", execution_id, None)
    return [recorded async for recorded in store.read(1, filter_subject)]


async def running_execution(gateway: Gateway) -> dict[str, Any]:
    """Trigger an execution with a secret parameter and start its first step."""
    bot = await gateway.create_action_bot()
    execution = await gateway.trigger(bot["id"], {"searchQuery": "lamp", "password": SECRET})
    await gateway.advance(
        execution["id"],
        lambda e: e.start("runner-1", 1),
        lambda e: e.start_step(0, "goto", None),
    )
    return execution


def finish(execution: Execution) -> None:
    execution.complete_step(0, {"url": "http://127.0.0.1:9/shop", "status": 200}, 11)
    execution.append_logs([{"time": 5, "source": "runner", "level": "info", "message": "done"}])
    execution.complete({"products": [{"name": "Lamp"}]}, 42)


async def test_stream_replays_history_then_live_until_terminal(gateway: Gateway) -> None:
    execution = await running_execution(gateway)
    path = f"/api/v1/executions/{execution['id']}/events"

    reader = await open_stream(gateway, path)
    history = await reader.events(3)
    await gateway.advance(execution["id"], finish)
    live = await reader.rest()

    stored = await stored_events(gateway, execution["id"])
    received = history + live
    assert [e.id for e in received] == [r.sequence for r in stored]
    assert [e.event for e in received] == [
        "ExecutionRequested", "ExecutionStarted", "StepStarted",
        "StepCompleted", "LogsAppended", "ExecutionCompleted",
    ]
    completed = received[-1].data
    assert completed["type"] == "ExecutionCompleted"
    assert completed["sequence"] == received[-1].id
    assert completed["aggregateId"] == execution["id"]
    assert completed["botId"] == execution["botId"]
    assert completed["schemaVersion"] == 1
    assert completed["time"] == stored[-1].time_ms
    assert completed["payload"]["durationMs"] == 42
    assert completed["payload"]["extracted"] == {"products": [{"name": "Lamp"}]}


async def test_stream_of_finished_execution_ends_after_history(gateway: Gateway) -> None:
    execution = await running_execution(gateway)
    await gateway.advance(execution["id"], finish)

    reader = await open_stream(gateway, f"/api/v1/executions/{execution['id']}/events")
    received = await reader.rest()

    assert [e.event for e in received][-1] == "ExecutionCompleted"
    assert len(received) == 6


async def test_stream_sends_keepalive_while_idle(gateway: Gateway) -> None:
    execution = await running_execution(gateway)

    reader = await open_stream(gateway, f"/api/v1/executions/{execution['id']}/events")
    await reader.events(3)
    deadline = time.monotonic() + READ_TIMEOUT_S
    while not reader.comments:
        assert time.monotonic() < deadline, "no keep-alive comment arrived"
        line = await asyncio.wait_for(reader.response.content.readline(), READ_TIMEOUT_S)
        if line.startswith(b":"):
            reader.comments.append(line.decode().rstrip("\n"))

    assert reader.comments[0] == ": keep-alive"
    reader.response.close()


async def test_resume_sends_only_later_events(gateway: Gateway) -> None:
    execution = await running_execution(gateway)
    path = f"/api/v1/executions/{execution['id']}/events"
    first = await open_stream(gateway, path)
    received = await first.events(2)
    first.response.close()
    await gateway.advance(execution["id"], lambda e: e.complete_step(0, None, 3))

    by_header = await open_stream(gateway, path, **{"Last-Event-ID": str(received[-1].id)})
    resumed = await by_header.events(2)
    await gateway.advance(execution["id"], lambda e: e.fail("Page crashed", 20, 0))
    resumed += await by_header.rest()

    stored = await stored_events(gateway, execution["id"])
    assert [e.id for e in received + resumed] == [r.sequence for r in stored]
    assert [e.event for e in resumed] == ["StepStarted", "StepCompleted", "ExecutionFailed"]


async def test_resume_by_query_parameter(gateway: Gateway) -> None:
    execution = await running_execution(gateway)
    await gateway.advance(execution["id"], finish)
    stored = await stored_events(gateway, execution["id"])
    path = f"/api/v1/executions/{execution['id']}/events?lastEventId={stored[2].sequence}"

    reader = await open_stream(gateway, path)
    received = await reader.rest()

    assert [e.id for e in received] == [r.sequence for r in stored[3:]]


async def test_resume_after_terminal_event_is_204(gateway: Gateway) -> None:
    execution = await running_execution(gateway)
    await gateway.advance(execution["id"], finish)
    stored = await stored_events(gateway, execution["id"])

    response = await gateway.call(
        "GET", f"/api/v1/executions/{execution['id']}/events", permission="read",
        headers={"Last-Event-ID": str(stored[-1].sequence)},
    )

    assert response.status == 204
    assert await response.read() == b""


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "99999999"])
async def test_invalid_last_event_id_is_400(gateway: Gateway, value: str) -> None:
    execution = await running_execution(gateway)

    body = await gateway.ok(
        "GET", f"/api/v1/executions/{execution['id']}/events", status=400, permission="read",
        headers={"Last-Event-ID": value},
    )

    assert_error(body, "invalid_request")
    assert body["error"].startswith(f"Invalid Last-Event-ID '{value}'")
    assert body["details"]["lastEventId"] == value


async def test_execution_of_other_org_is_404(gateway: Gateway) -> None:
    execution = await running_execution(gateway)

    for suffix in ("events", "history"):
        path = f"/api/v1/executions/{execution['id']}/{suffix}"
        other = await gateway.ok("GET", path, status=404, key=gateway.other_org_key)
        unknown = await gateway.ok(
            "GET", f"/api/v1/executions/{uuid.uuid4()}/{suffix}", status=404
        )
        malformed = await gateway.ok("GET", f"/api/v1/executions/nope/{suffix}", status=404)
        assert_error(other, "not_found")
        assert_error(unknown, "not_found")
        assert_error(malformed, "not_found")


async def test_event_routes_need_a_key(gateway: Gateway) -> None:
    execution = await running_execution(gateway)

    for path in (
        f"/api/v1/executions/{execution['id']}/events",
        f"/api/v1/executions/{execution['id']}/history",
        "/api/v1/events",
    ):
        response = await gateway.client.get(path)
        assert response.status == 401, path
        assert_error(await response.json(), "unauthorized")


async def test_history_lists_masked_events_in_order(gateway: Gateway) -> None:
    execution = await running_execution(gateway)
    await gateway.advance(execution["id"], finish)

    response = await gateway.call(
        "GET", f"/api/v1/executions/{execution['id']}/history", permission="read"
    )
    text = await response.text()
    body = orjson.loads(text)

    stored = await stored_events(gateway, execution["id"])
    assert response.status == 200
    assert list(body) == ["data"]
    assert [e["sequence"] for e in body["data"]] == [r.sequence for r in stored]
    assert [e["type"] for e in body["data"]] == [r.name for r in stored]
    requested = body["data"][0]["payload"]
    assert requested["params"]["password"] == "***"
    assert requested["params"]["searchQuery"] == "lamp"
    assert "encryptedSecrets" not in requested
    assert "originatorTopic" not in requested
    assert requested["program"]["secretParams"] == ["password"]
    token = stored[0].state()["encrypted_secrets"]
    assert token
    assert token not in text
    assert SECRET not in text
    started = body["data"][1]["payload"]
    assert started["runnerId"] == "runner-1"
    assert started["attempt"] == 1


async def test_stream_payloads_hide_secrets(gateway: Gateway) -> None:
    execution = await running_execution(gateway)
    await gateway.advance(execution["id"], finish)

    response = await gateway.call(
        "GET", f"/api/v1/executions/{execution['id']}/events", permission="read"
    )
    text = await response.text()

    stored = await stored_events(gateway, execution["id"])
    assert stored[0].state()["encrypted_secrets"] not in text
    assert SECRET not in text
    assert '"password":"***"' in text


async def test_org_stream_filters_bot_and_type(gateway: Gateway) -> None:
    watched = await gateway.create_bot()
    other = await gateway.create_bot()
    foreign_bot = await gateway.ok(
        "POST", "/api/v1/bots", status=201, key=gateway.other_org_key,
        json={"name": "Foreign", "targetUrl": "http://127.0.0.1:9/", "steps": [
            {"action": "goto", "url": "{{bot.targetUrl}}"}]},
    )
    path = f"/api/v1/events?botId={watched['id']}&type=ExecutionFailed"
    reader = await open_stream(gateway, path)

    other_run = await gateway.trigger(other["id"])
    await gateway.advance(other_run["id"], lambda e: e.fail("Other bot failed", 5))
    completed_run = await gateway.trigger(watched["id"])
    await gateway.advance(completed_run["id"], lambda e: e.start("r", 1), finish_without_steps)
    foreign_run = await gateway.call(
        "POST", f"/api/v1/bots/{foreign_bot['data']['id']}/executions",
        key=gateway.other_org_key, json={"params": {}},
    )
    foreign_id = (await foreign_run.json())["data"]["id"]
    await gateway.advance(foreign_id, lambda e: e.fail("Foreign failure", 5))
    failed_run = await gateway.trigger(watched["id"])
    await gateway.advance(failed_run["id"], lambda e: e.fail("Watched bot failed", 7))

    event = await reader.next_event()
    reader.response.close()

    assert event is not None
    assert event.event == "ExecutionFailed"
    assert event.data["aggregateId"] == failed_run["id"]
    assert event.data["payload"]["reason"] == "Watched bot failed"
    assert event.data["botId"] == watched["id"]


def finish_without_steps(execution: Execution) -> None:
    execution.complete({}, 1)


async def test_org_stream_is_live_only_and_resumes(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    before = await gateway.trigger(bot["id"])
    reader = await open_stream(gateway, "/api/v1/events")

    after = await gateway.trigger(bot["id"])
    live = await reader.next_event()
    reader.response.close()
    assert live is not None
    assert live.event == "ExecutionRequested"
    assert live.data["aggregateId"] == after["id"]

    await gateway.advance(after["id"], lambda e: e.start("r", 1))
    resumed = await open_stream(gateway, "/api/v1/events", **{"Last-Event-ID": str(live.id)})
    replayed = await resumed.next_event()
    await gateway.advance(before["id"], lambda e: e.fail("Late failure", 3))
    new = await resumed.next_event()
    resumed.response.close()

    assert replayed is not None
    assert replayed.event == "ExecutionStarted"
    assert replayed.data["aggregateId"] == after["id"]
    assert new is not None
    assert new.event == "ExecutionFailed"
    assert new.data["aggregateId"] == before["id"]
    assert live.id < replayed.id < new.id


async def test_org_stream_unknown_type_suggests_name(gateway: Gateway) -> None:
    body = await gateway.ok("GET", "/api/v1/events?type=ExecutionFaild", status=400)

    assert_error(body, "invalid_request")
    assert body["error"] == "Unknown event type 'ExecutionFaild'. Did you mean 'ExecutionFailed'?"
    assert body["details"]["suggestion"] == "ExecutionFailed"


async def test_org_stream_unknown_bot_is_404(gateway: Gateway) -> None:
    foreign = await gateway.ok(
        "POST", "/api/v1/bots", status=201, key=gateway.other_org_key,
        json={"name": "Foreign", "targetUrl": "http://127.0.0.1:9/"},
    )

    for bot_id in (foreign["data"]["id"], str(uuid.uuid4())):
        body = await gateway.ok("GET", f"/api/v1/events?botId={bot_id}", status=404)
        assert_error(body, "not_found")


async def test_client_disconnect_releases_consumer(gateway: Gateway) -> None:
    execution = await running_execution(gateway)
    js = gateway.context.nc.jetstream()
    stream = gateway.context.event_store.stream

    reader = await open_stream(gateway, f"/api/v1/executions/{execution['id']}/events")
    await reader.events(3)
    bound = await wait_for_consumers(js, stream, push_bound=True)
    reader.response.close()
    unbound = await wait_for_consumers(js, stream, push_bound=False)

    assert bound == unbound


async def wait_for_consumers(js: Any, stream: str, push_bound: bool) -> list[str]:
    """Wait until the stream has ephemeral push consumers, all with the given binding."""
    deadline = time.monotonic() + READ_TIMEOUT_S
    while True:
        consumers = [
            info for info in await js.consumers_info(stream) if info.config.deliver_subject
        ]
        if consumers and all(bool(info.push_bound) == push_bound for info in consumers):
            return sorted(info.name for info in consumers)
        assert time.monotonic() < deadline, f"consumers: {consumers}"
        await asyncio.sleep(0.05)


async def test_openapi_documents_event_routes(gateway: Gateway) -> None:
    response = await gateway.client.get("/api/v1/openapi.json")
    document = await response.json()

    paths = document["paths"]
    assert "text/event-stream" in (
        paths["/api/v1/executions/{executionId}/events"]["get"]["responses"]["200"]["content"]
    )
    assert paths["/api/v1/events"]["get"]["operationId"] == "streamOrganizationEvents"
    assert paths["/api/v1/executions/{executionId}/history"]["get"]["operationId"] == (
        "getExecutionHistory"
    )
