"""End-to-end tests: `botledger up --demo` as a subprocess, driven only over its HTTP API.

One stack serves the whole module: nats-server, SeaweedFS, Chromium, the gateway, the runner
and the demo site, all real and on 127.0.0.1. The tests run in file order because the last two
restart the stack on the same data directory and then stop it for good.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from e2e_fixtures import (
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    Api,
    ServerSentEvent,
    StackProcess,
    server_sent_events,
    tail,
)
from services.demo.bots import (
    example_bots,
    expected_catalog,
    expected_orders,
    expected_search_results,
)
from services.demo.site import DEMO_PASSWORD

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

# First start: includes SeaweedFS creating its volumes and Chromium's first launch.
FIRST_START_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0
# The stack gives each embedded server 5 s to stop after SIGTERM before it kills it.
STOP_TIMEOUT_S = 30.0
# The requirement for a warm start is under 5 s. This bound is wider so a loaded machine passes.
WARM_START_LIMIT_S = 15.0
EXECUTION_TIMEOUT_S = 60.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CATALOG = "Catalog extraction"
SEARCH = "Product search"
ORDERS = "Account orders"
BROKEN = "Price watcher (broken)"


# Fixtures


@pytest.fixture(scope="module")
def stack_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    root = tmp_path_factory.mktemp("e2e")
    stack = StackProcess(data_dir=root / "data", log_dir=root / "logs")
    stack.launch()
    yield stack
    # The last test stops the stack and checks how. This only cleans up after a failure.
    stack.kill()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(stack_process: StackProcess) -> AsyncIterator[Api]:
    await stack_process.wait_ready(FIRST_START_TIMEOUT_S)
    launch_s = stack_process.health_after_s
    print(f"\nfirst start: health returned 200 {launch_s:.2f} s after launch")
    timeout = aiohttp.ClientTimeout(total=60, sock_read=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield Api(session, stack_process)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bots(api: Api) -> dict[str, dict[str, Any]]:
    """The demo bots by name."""
    return {bot["name"]: bot for bot in await api.all_pages("/bots")}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def demo_site_url(bots: dict[str, dict[str, Any]]) -> str:
    target_url: str = bots[CATALOG]["targetUrl"]
    return target_url.removesuffix("/catalog")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def catalog_run(
    api: Api, bots: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], list[ServerSentEvent]]:
    """Trigger the catalog bot and follow its event stream to the end.

    Returns the trigger's response body and the server-sent events. The stream opens right
    after the trigger, so it carries replayed and live events.
    """
    reply = await api.trigger(bots[CATALOG]["id"])
    assert reply.status == 201, reply.text
    trigger_body = {"body": reply.body, "location": reply.headers.get("Location")}
    execution_id = reply.body["data"]["id"]

    events = []
    async with api.session.get(
        api.url(f"/executions/{execution_id}/events"), headers=api.headers
    ) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for event in server_sent_events(response):
            events.append(event)
            if event.event in TERMINAL_EVENTS:
                break
    return trigger_body, events


def catalog_id(catalog_run: tuple[dict[str, Any], list[ServerSentEvent]]) -> str:
    execution_id: str = catalog_run[0]["body"]["data"]["id"]
    return execution_id


async def create_slow_bot(api: Api, demo_site_url: str, wait_ms: int) -> str:
    """Create a bot through POST /bots and PUT steps that waits `wait_ms` on the demo site."""
    reply = await api.request("POST", "/bots", json={
        "name": f"Slow bot {uuid.uuid4().hex[:8]}",
        "targetUrl": f"{demo_site_url}/",
        "description": "Opens the start page and waits, so a test can cancel it.",
    })
    assert reply.status == 201, reply.text
    bot_id: str = reply.body["data"]["id"]
    steps = [
        {"action": "goto", "label": "Open the start page", "url": "{{bot.targetUrl}}"},
        {"action": "waitFor", "label": "Wait", "ms": wait_ms, "timeoutMs": wait_ms + 30_000},
    ]
    reply = await api.request("PUT", f"/bots/{bot_id}/steps", json={"steps": steps})
    assert reply.status == 200, reply.text
    return bot_id


async def executions_by_id(api: Api) -> dict[str, str]:
    """Return the status of every execution of every bot, by execution id."""
    statuses = {}
    for bot in await api.all_pages("/bots"):
        for execution in await api.all_pages(f"/bots/{bot['id']}/executions"):
            statuses[execution["id"]] = execution["status"]
    return statuses


# Bots


async def test_demo_bots_listed(
    api: Api, bots: dict[str, dict[str, Any]], demo_site_url: str
) -> None:
    expected = {example["bot"]["name"]: example["bot"] for example in example_bots(demo_site_url)}

    assert sorted(bots) == sorted(expected)
    for name, bot in bots.items():
        assert bot["targetUrl"] == expected[name]["targetUrl"], name
        assert bot["kind"] == expected[name]["kind"], name
        assert bot["tags"] == expected[name]["tags"], name
        assert bot["scriptVersion"] == 1, name


async def test_bots_need_api_key(api: Api) -> None:
    async with api.session.get(api.url("/bots")) as response:
        body = await response.json()

    assert response.status == 401
    assert body["code"] == "unauthorized"


# The catalog bot: one completed execution seen through every view


async def test_catalog_trigger_answers_pending(
    catalog_run: tuple[dict[str, Any], list[ServerSentEvent]], bots: dict[str, dict[str, Any]]
) -> None:
    trigger, _ = catalog_run
    execution = trigger["body"]["data"]

    assert execution["status"] == "pending"
    assert execution["botId"] == bots[CATALOG]["id"]
    assert trigger["location"] == f"/api/v1/executions/{execution['id']}"


async def test_catalog_extract_has_all_products(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]]
) -> None:
    execution_id = catalog_id(catalog_run)

    reply = await api.get(f"/executions/{execution_id}/extract")

    assert reply.status == 200, reply.text
    assert reply.body["data"]["executionId"] == execution_id
    assert reply.body["data"]["data"]["products"] == expected_catalog()
    assert len(reply.body["data"]["data"]["products"]) == 24


async def test_catalog_execution_view(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]],
    bots: dict[str, dict[str, Any]],
) -> None:
    execution_id = catalog_id(catalog_run)

    reply = await api.get(f"/executions/{execution_id}")

    assert reply.status == 200, reply.text
    view = reply.body["data"]
    assert view["id"] == execution_id
    assert view["botId"] == bots[CATALOG]["id"]
    assert view["status"] == "completed"
    assert view["params"] == {}
    assert view["trigger"] == "api"
    assert view["error"] is None
    assert isinstance(view["startedAt"], int)
    assert isinstance(view["completedAt"], int)
    assert view["createdAt"] <= view["startedAt"] <= view["completedAt"]
    assert isinstance(view["duration"], int)
    assert 0 < view["duration"] <= view["completedAt"] - view["startedAt"] + 1000


async def test_catalog_steps(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]], demo_site_url: str
) -> None:
    execution_id = catalog_id(catalog_run)

    reply = await api.get(f"/executions/{execution_id}/steps")

    assert reply.status == 200, reply.text
    steps = reply.body["data"]
    assert reply.body["cursor"] is None
    assert [step["index"] for step in steps] == [0, 1]
    assert [step["action"] for step in steps] == ["goto", "paginate"]
    assert [step["status"] for step in steps] == ["completed", "completed"]
    assert steps[0]["data"] == {"url": f"{demo_site_url}/catalog", "status": 200}
    assert steps[1]["data"] == {"pages": 3}
    for step in steps:
        assert step["error"] is None
        assert step["startedAt"] <= step["completedAt"]


async def test_catalog_step_by_index(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]]
) -> None:
    execution_id = catalog_id(catalog_run)

    first = await api.get(f"/executions/{execution_id}/steps/0")
    not_a_number = await api.get(f"/executions/{execution_id}/steps/abc")
    out_of_range = await api.get(f"/executions/{execution_id}/steps/99")
    negative = await api.get(f"/executions/{execution_id}/steps/-1")

    assert first.status == 200, first.text
    assert first.body["data"]["index"] == 0
    assert first.body["data"]["action"] == "goto"
    assert first.body["data"]["status"] == "completed"
    assert not_a_number.status == 400, not_a_number.text
    assert not_a_number.body["code"] == "invalid_request"
    assert "'abc'" in not_a_number.body["error"]
    assert out_of_range.status == 404, out_of_range.text
    assert out_of_range.body["code"] == "not_found"
    assert negative.status == 404, negative.text


async def test_catalog_logs_in_time_order(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]]
) -> None:
    execution_id = catalog_id(catalog_run)

    reply = await api.get(f"/executions/{execution_id}/logs")

    assert reply.status == 200, reply.text
    lines = reply.body["data"]
    assert {line["source"] for line in lines} >= {"runner", "script", "system"}
    times = [line["time"] for line in lines]
    assert times == sorted(times)
    assert [line["line"] for line in lines] == list(range(len(lines)))
    for line in lines:
        assert line["level"] in {"debug", "info", "warning", "error"}, line
        assert line["message"], line


async def test_catalog_failure_is_not_found(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]]
) -> None:
    execution_id = catalog_id(catalog_run)

    reply = await api.get(f"/executions/{execution_id}/failure")

    assert reply.status == 404, reply.text
    assert reply.body["code"] == "not_found"


async def test_catalog_events_match_history(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]]
) -> None:
    execution_id = catalog_id(catalog_run)
    _, events = catalog_run

    reply = await api.get(f"/executions/{execution_id}/history")

    assert reply.status == 200, reply.text
    history = reply.body["data"]
    history_types = [event["type"] for event in history]
    assert history_types[0] == "ExecutionRequested"
    assert history_types[-1] == "ExecutionCompleted"
    assert {"ExecutionStarted", "StepStarted", "StepCompleted", "LogsAppended"} <= set(
        history_types
    )
    assert {event.event for event in events} == set(history_types)
    assert events[-1].event == "ExecutionCompleted"

    # The stream ends at the terminal event, so it is the history up to there, in order.
    streamed = [orjson.loads(event.data) for event in events]
    assert [int(event.id or 0) for event in events] == [event["sequence"] for event in streamed]
    assert streamed == history[: len(streamed)]
    assert all(event["aggregateId"] == execution_id for event in history)


async def test_event_stream_resumed_at_end(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]]
) -> None:
    execution_id = catalog_id(catalog_run)
    _, events = catalog_run
    last_id = events[-1].id
    assert last_id is not None

    async with api.session.get(
        api.url(f"/executions/{execution_id}/events"),
        headers={**api.headers, "Last-Event-ID": last_id},
    ) as response:
        assert response.status == 204


async def test_latest_execution_and_extract(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]],
    bots: dict[str, dict[str, Any]],
) -> None:
    bot_id = bots[CATALOG]["id"]
    execution_id = catalog_id(catalog_run)

    latest = await api.get(f"/bots/{bot_id}/latest-execution")
    latest_extract = await api.get(f"/bots/{bot_id}/latest-extract")

    assert latest.status == 200, latest.text
    assert latest.body["data"]["id"] == execution_id
    assert latest.body["data"]["status"] == "completed"
    assert latest_extract.status == 200, latest_extract.text
    assert latest_extract.body["data"]["executionId"] == execution_id
    assert latest_extract.body["data"]["data"]["products"] == expected_catalog()


async def test_cancel_finished_execution_conflicts(
    api: Api, catalog_run: tuple[dict[str, Any], list[ServerSentEvent]]
) -> None:
    execution_id = catalog_id(catalog_run)

    reply = await api.request("POST", f"/executions/{execution_id}/cancel")
    after = await api.get(f"/executions/{execution_id}")

    assert reply.status == 409, reply.text
    assert reply.body["details"]["status"] == "completed"
    assert after.body["data"]["status"] == "completed"


# The search bot: parameters


async def test_search_with_params(api: Api, bots: dict[str, dict[str, Any]]) -> None:
    params = {"searchQuery": "Wool", "category": "outdoor"}
    execution_id = await api.started_execution(bots[SEARCH]["id"], params)

    view = await api.finished(execution_id, EXECUTION_TIMEOUT_S)
    extract = await api.get(f"/executions/{execution_id}/extract")

    assert view["status"] == "completed", view
    assert view["params"] == params
    assert extract.status == 200, extract.text
    assert extract.body["data"]["data"]["results"] == expected_search_results("Wool", "outdoor")
    assert [r["sku"] for r in extract.body["data"]["data"]["results"]] == ["HP-1012"]


async def test_search_misspelt_param(api: Api, bots: dict[str, dict[str, Any]]) -> None:
    bot_id = bots[SEARCH]["id"]
    message = "Unknown parameter 'serchQuery'. Did you mean 'searchQuery'?"
    before = await api.all_pages(f"/bots/{bot_id}/executions")

    alone = await api.trigger(bot_id, {"searchQuery": "lamp", "serchQuery": "lamp"})
    with_missing = await api.trigger(bot_id, {"serchQuery": "lamp"})

    assert alone.status == 400, alone.text
    assert alone.body["error"] == message
    assert alone.body["code"] == "invalid_request"
    assert with_missing.status == 400, with_missing.text
    assert message in with_missing.body["error"]
    problems = with_missing.body["details"]["problems"]
    assert [(p["parameter"], p["code"]) for p in problems] == [
        ("serchQuery", "unknown_parameter"),
        ("searchQuery", "missing_parameter"),
    ]
    assert problems[0]["message"] == message
    assert problems[0]["suggestion"] == "searchQuery"
    after = await api.all_pages(f"/bots/{bot_id}/executions")
    assert [e["id"] for e in after] == [e["id"] for e in before]


async def test_search_value_not_allowed(api: Api, bots: dict[str, dict[str, Any]]) -> None:
    reply = await api.trigger(bots[SEARCH]["id"], {"serchQuery": "lamp", "category": "garden"})

    assert reply.status == 400, reply.text
    problems = reply.body["details"]["problems"]
    assert sorted((p["parameter"], p["code"]) for p in problems) == [
        ("category", "value_not_allowed"),
        ("searchQuery", "missing_parameter"),
        ("serchQuery", "unknown_parameter"),
    ]
    category_problem = next(p for p in problems if p["parameter"] == "category")
    assert '"garden"' in category_problem["message"]
    assert '"kitchen"' in category_problem["message"]


async def test_search_idempotency_key(api: Api, bots: dict[str, dict[str, Any]]) -> None:
    bot_id = bots[SEARCH]["id"]
    key = {"Idempotency-Key": f"e2e-{uuid.uuid4()}"}

    first = await api.trigger(bot_id, {"searchQuery": "lamp"}, headers=key)
    second = await api.trigger(bot_id, {"searchQuery": "lamp"}, headers=key)
    other_params = await api.trigger(bot_id, {"searchQuery": "desk"}, headers=key)

    assert first.status == 201, first.text
    assert second.status == 200, second.text
    execution_id = first.body["data"]["id"]
    assert second.body["data"]["id"] == execution_id
    assert second.headers["Location"] == first.headers["Location"]
    assert first.body["data"]["params"] == {"searchQuery": "lamp", "category": "all"}
    assert other_params.status == 409, other_params.text
    view = await api.finished(execution_id, EXECUTION_TIMEOUT_S)
    assert view["status"] == "completed", view
    executions = await api.all_pages(f"/bots/{bot_id}/executions")
    assert [e["id"] for e in executions].count(execution_id) == 1
    extract = await api.get(f"/executions/{execution_id}/extract")
    assert extract.body["data"]["data"]["results"] == expected_search_results("lamp")


# The account bot: a secret parameter


async def test_secret_password_never_shown(api: Api, bots: dict[str, dict[str, Any]]) -> None:
    execution_id = await api.started_execution(bots[ORDERS]["id"], {"password": DEMO_PASSWORD})

    view = await api.finished(execution_id, EXECUTION_TIMEOUT_S)

    assert view["status"] == "completed", view
    assert view["params"]["username"] == "demo"
    assert view["params"]["password"] == "***"
    extract = await api.get(f"/executions/{execution_id}/extract")
    assert extract.body["data"]["data"]["orders"] == expected_orders()
    for view_path in ("", "/steps", "/logs", "/history", "/extract", "/events"):
        reply = await api.get(f"/executions/{execution_id}{view_path}")
        assert reply.status == 200, (view_path, reply.text)
        assert DEMO_PASSWORD not in reply.text, view_path
    latest = await api.get(f"/bots/{bots[ORDERS]['id']}/latest-execution")
    assert DEMO_PASSWORD not in latest.text


# The broken bot: failure context


async def test_broken_bot_failure(api: Api, bots: dict[str, dict[str, Any]]) -> None:
    execution_id = await api.started_execution(bots[BROKEN]["id"])

    view = await api.finished(execution_id, EXECUTION_TIMEOUT_S)
    failure = await api.get(f"/executions/{execution_id}/failure")
    extract = await api.get(f"/executions/{execution_id}/extract")
    steps = await api.get(f"/executions/{execution_id}/steps")

    assert view["status"] == "failed", view
    assert ".product-price" in view["error"]
    assert failure.status == 200, failure.text
    details = failure.body["data"]
    assert details["error"] == view["error"]
    assert details["failedStepIndex"] == 2
    assert extract.status == 404, extract.text
    assert extract.body["code"] == "not_found"
    assert [step["status"] for step in steps.body["data"]] == ["completed", "completed", "failed"]
    assert steps.body["data"][2]["error"]

    status, content_type, screenshot = await api.get_bytes(details["screenshotUrl"])
    assert status == 200
    assert content_type == "image/png"
    assert screenshot.startswith(PNG_SIGNATURE)

    status, content_type, dom = await api.get_bytes(details["domSnapshotUrl"])
    assert status == 200
    assert content_type.startswith("text/html")
    assert b"price-widget" in dom
    assert b"Enamel Dutch Oven" in dom


# Cancellation


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cancelled_run(api: Api, demo_site_url: str) -> dict[str, Any]:
    """Cancel an execution while its waitFor step runs, and return the replies and timings."""
    wait_ms = 20_000
    bot_id = await create_slow_bot(api, demo_site_url, wait_ms)
    execution_id = await api.started_execution(bot_id)
    await api.wait_for_status(execution_id, frozenset({"running"}), EXECUTION_TIMEOUT_S)
    deadline = time.monotonic() + EXECUTION_TIMEOUT_S
    while True:
        step = await api.get(f"/executions/{execution_id}/steps/1")
        if step.body["data"]["status"] == "running":
            break
        assert time.monotonic() < deadline, f"the waitFor step never started: {step.text}"
        await asyncio.sleep(0.1)

    requested_at = time.monotonic()
    reply = await api.request("POST", f"/executions/{execution_id}/cancel")
    view = await api.finished(execution_id, EXECUTION_TIMEOUT_S)
    return {
        "executionId": execution_id,
        "waitMs": wait_ms,
        "cancelReply": reply,
        "view": view,
        "cancelS": time.monotonic() - requested_at,
    }


async def test_cancel_running_execution(api: Api, cancelled_run: dict[str, Any]) -> None:
    execution_id = cancelled_run["executionId"]
    reply = cancelled_run["cancelReply"]
    view = cancelled_run["view"]

    again = await api.request("POST", f"/executions/{execution_id}/cancel")
    history = await api.get(f"/executions/{execution_id}/history")

    assert reply.status == 200, reply.text
    assert reply.body["data"]["cancelRequested"] is True
    assert view["status"] == "cancelled", view
    assert isinstance(view["completedAt"], int)
    # The runner stops the step at once instead of letting the wait run out.
    assert cancelled_run["cancelS"] < cancelled_run["waitMs"] / 1000 / 2
    assert again.status == 409, again.text
    assert again.body["details"]["status"] == "cancelled"
    types = [event["type"] for event in history.body["data"]]
    assert "ExecutionCancelRequested" in types
    assert types[-1] == "ExecutionCancelled"


async def test_cancelled_execution_has_no_running_step(
    api: Api, cancelled_run: dict[str, Any]
) -> None:
    reply = await api.get(f"/executions/{cancelled_run['executionId']}/steps")

    statuses = [step["status"] for step in reply.body["data"]]
    assert statuses[0] == "completed"
    assert "running" not in statuses
    assert "pending" not in statuses


# Pagination


async def test_executions_pagination(api: Api, demo_site_url: str) -> None:
    bot_id = await create_slow_bot(api, demo_site_url, 0)
    triggered = [await api.started_execution(bot_id) for _ in range(5)]

    first_page = await api.get(f"/bots/{bot_id}/executions", {"limit": "2"})
    # Executions triggered while a client walks the pages are newer than its cursor.
    newer = [await api.started_execution(bot_id) for _ in range(2)]
    pages = [first_page.body]
    while pages[-1]["cursor"] is not None:
        reply = await api.get(
            f"/bots/{bot_id}/executions", {"limit": "2", "cursor": pages[-1]["cursor"]}
        )
        assert reply.status == 200, reply.text
        pages.append(reply.body)

    walked = [execution["id"] for page in pages for execution in page["data"]]
    assert [len(page["data"]) for page in pages] == [2, 2, 1]
    assert walked == list(reversed(triggered))
    assert len(set(walked)) == len(walked)
    for execution_id in triggered + newer:
        view = await api.finished(execution_id, EXECUTION_TIMEOUT_S)
        assert view["status"] == "completed", view
    everything = await api.all_pages(f"/bots/{bot_id}/executions", limit=2)
    assert [e["id"] for e in everything] == list(reversed(triggered + newer))


@pytest.mark.parametrize("limit", ["0", "101", "-1", "two"])
async def test_executions_invalid_limit(
    api: Api, bots: dict[str, dict[str, Any]], limit: str
) -> None:
    reply = await api.get(f"/bots/{bots[CATALOG]['id']}/executions", {"limit": limit})

    assert reply.status == 400, reply.text
    assert reply.body["code"] == "invalid_request"
    assert reply.body["details"] == {"limit": limit}


# Restart and stop


async def test_restart_keeps_everything(
    api: Api, stack_process: StackProcess, bots: dict[str, dict[str, Any]]
) -> None:
    before = await executions_by_id(api)
    for execution_id, status in before.items():
        if status not in TERMINAL_STATUSES:
            before[execution_id] = (await api.finished(execution_id))["status"]
    bots_before = await api.all_pages("/bots")
    key_before = stack_process.admin_key
    assert len(before) >= 10

    stopped = stack_process.stop(STOP_TIMEOUT_S)
    assert stopped.exit_code == 0, tail(stack_process.stderr_path)
    stack_process.launch()
    await stack_process.wait_ready(START_TIMEOUT_S)
    launch_s = stack_process.health_after_s
    print(f"\nwarm start: health returned 200 {launch_s:.2f} s after launch")

    assert stack_process.admin_key == key_before
    assert await api.all_pages("/bots") == bots_before
    assert await executions_by_id(api) == before

    execution_id = await api.started_execution(bots[CATALOG]["id"])
    view = await api.finished(execution_id, EXECUTION_TIMEOUT_S)
    assert view["status"] == "completed", view
    extract = await api.get(f"/executions/{execution_id}/extract")
    assert extract.body["data"]["data"]["products"] == expected_catalog()
    latest = await api.get(f"/bots/{bots[CATALOG]['id']}/latest-execution")
    assert latest.body["data"]["id"] == execution_id
    assert launch_s < WARM_START_LIMIT_S


async def test_sigterm_stops_every_process(api: Api, stack_process: StackProcess) -> None:
    stopped = stack_process.stop(STOP_TIMEOUT_S)
    print(f"\nstop: exited {stopped.stop_s:.2f} s after SIGTERM")
    names = {info.name for info in stopped.before}
    zombies = [f"{info.pid} {info.name}" for info in stopped.before if info.state == "Z"]
    print(f"{len(stopped.before)} processes before the stop, zombies among them: {zombies}")
    chromium_run_dirs = {
        Path(match.group(1)).parent
        for info in stopped.before
        if (match := re.search(r"--user-data-dir=(\S+)", info.command_line))
    }

    assert stopped.exit_code == 0, tail(stack_process.stderr_path)
    assert "nats-server" in names
    assert "weed" in names
    assert "chromium" in names
    assert [info.command_line[:120] for info in stopped.leftovers] == []
    assert not (stack_process.data_dir / "endpoints.json").exists()
    assert len(chromium_run_dirs) == 1
    assert [path for path in chromium_run_dirs if path.exists()] == []
