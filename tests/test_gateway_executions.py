"""Gateway execution routes: trigger, parameters, secrets, idempotency, cancel and the views.

No runner runs here: executions are moved along by appending the runner's events through the
Execution aggregate, and failure artifacts come from a stand-in of the object store.
"""

from __future__ import annotations

import uuid

import orjson
from gateway_fixtures import (
    STEPS,  # noqa: F401
    TINY_PNG,
    Gateway,
    StandInArtifactStore,
    assert_error,
    gateway,
)

from events.execution import Execution



async def test_trigger_answers_pending_execution(gateway: Gateway) -> None:
    bot = await gateway.create_action_bot()

    response = await gateway.call(
        "POST", f"/api/v1/bots/{bot['id']}/executions",
        permission="write", json={"params": {"searchQuery": "lamp"}},
    )
    body = await response.json()

    assert response.status == 201
    execution = body["data"]
    assert response.headers["Location"] == f"/api/v1/executions/{execution['id']}"
    assert execution["status"] == "pending"
    assert execution["botId"] == bot["id"]
    assert execution["trigger"] == "api"
    assert execution["params"] == {"searchQuery": "lamp", "maxResults": 10}
    assert execution["startedAt"] is None
    assert execution["completedAt"] is None
    assert execution["duration"] is None
    assert execution["error"] is None
    assert execution["cancelRequested"] is False
    assert execution["scriptVersion"] == 1
    read = await gateway.ok("GET", f"/api/v1/executions/{execution['id']}", permission="read")
    assert read["data"] == execution


async def test_trigger_without_body_uses_defaults(gateway: Gateway) -> None:
    bot = await gateway.create_bot()

    response = await gateway.call("POST", f"/api/v1/bots/{bot['id']}/executions")
    body = await response.json()

    assert response.status == 201
    assert body["data"]["params"] == {}


async def test_trigger_stores_program_snapshot(gateway: Gateway) -> None:
    bot = await gateway.create_action_bot()
    await gateway.ok(
        "PUT", f"/api/v1/bots/{bot['id']}/manifest", json={"capabilities": {"timeout": 30}}
    )

    execution = await gateway.trigger(bot["id"], {"searchQuery": "lamp", "password": "pw"})

    aggregate = await gateway.context.event_store.load(Execution, uuid.UUID(execution["id"]))
    assert aggregate.program["botName"] == "Shop search"
    assert aggregate.program["kind"] == "action"
    assert aggregate.program["targetUrl"] == "http://127.0.0.1:9/shop"
    assert aggregate.program["scriptVersion"] == 1
    assert aggregate.program["capabilities"] == {"timeout": 30}
    assert aggregate.program["secretParams"] == ["password"]
    assert [step["action"] for step in aggregate.program["steps"]] == ["goto", "type", "extract"]


async def test_misspelt_parameter_suggests_name(gateway: Gateway) -> None:
    bot = await gateway.create_action_bot()

    body = await gateway.ok(
        "POST", f"/api/v1/bots/{bot['id']}/executions", status=400,
        json={"params": {"searchQuery": "lamp", "serchQuery": "lamp"}},
    )

    assert_error(body, "invalid_request")
    assert body["error"] == "Unknown parameter 'serchQuery'. Did you mean 'searchQuery'?"
    assert body["details"]["problems"][0]["message"] == body["error"]
    assert body["details"]["problems"][0]["parameter"] == "serchQuery"


async def test_trigger_reports_all_parameter_problems(gateway: Gateway) -> None:
    bot = await gateway.create_action_bot()

    body = await gateway.ok(
        "POST", f"/api/v1/bots/{bot['id']}/executions", status=400,
        json={"params": {"serchQuery": "lamp", "maxResults": "ten", "colour": "red"}},
    )

    problems = body["details"]["problems"]
    by_code = sorted((p["code"], p["parameter"]) for p in problems)
    assert by_code == [
        ("invalid_type", "maxResults"),
        ("missing_parameter", "searchQuery"),
        ("unknown_parameter", "colour"),
        ("unknown_parameter", "serchQuery"),
    ]
    assert body["error"].startswith("The params have 4 problems")


async def test_trigger_rejects_bad_body(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    path = f"/api/v1/bots/{bot['id']}/executions"

    unknown = await gateway.ok("POST", path, status=400, json={"parms": {}})
    not_object = await gateway.ok("POST", path, status=400, json={"params": [1]})

    assert unknown["error"] == "parms: Unknown field 'parms'. Did you mean 'params'?"
    assert_error(not_object, "invalid_request")


async def test_trigger_bot_without_steps_is_409(gateway: Gateway) -> None:
    bot = await gateway.create_bot(steps=[])
    no_steps = await gateway.ok("POST", "/api/v1/bots", status=201,
                                json={"name": "Empty", "targetUrl": "http://127.0.0.1/"})

    for bot_id in (bot["id"], no_steps["data"]["id"]):
        body = await gateway.ok("POST", f"/api/v1/bots/{bot_id}/executions", status=409)
        assert_error(body, "conflict")
        assert "has no steps" in body["error"]


async def test_secret_params_are_masked_and_encrypted(gateway: Gateway) -> None:
    bot = await gateway.create_action_bot()
    secret = "hunter2-very-secret"

    execution = await gateway.trigger(bot["id"], {"searchQuery": "lamp", "password": secret})

    assert execution["params"]["password"] == "***"
    read = await gateway.ok("GET", f"/api/v1/executions/{execution['id']}", permission="read")
    assert read["data"]["params"]["password"] == "***"
    listed = await gateway.ok("GET", f"/api/v1/bots/{bot['id']}/executions")
    assert listed["data"][0]["params"]["password"] == "***"
    stored = [event async for event in gateway.context.event_store.read(1)]
    requested = [e for e in stored if e.name == "ExecutionRequested"]
    assert len(requested) == 1
    assert secret.encode() not in requested[0].payload
    assert all(secret.encode() not in event.payload for event in stored)
    state = requested[0].state()
    assert state["params"]["password"] == "***"
    assert gateway.context.secret_box.decrypt(state["encrypted_secrets"]) == {"password": secret}


async def test_idempotent_trigger_returns_same_execution(gateway: Gateway) -> None:
    bot = await gateway.create_action_bot()
    path = f"/api/v1/bots/{bot['id']}/executions"
    headers = {"Idempotency-Key": "order-42"}
    params = {"searchQuery": "lamp", "password": "pw"}

    first = await gateway.call("POST", path, headers=headers, json={"params": params})
    second = await gateway.call("POST", path, headers=headers, json={"params": params})
    first_body, second_body = await first.json(), await second.json()

    assert first.status == 201
    assert second.status == 200
    assert second_body["data"]["id"] == first_body["data"]["id"]
    assert second.headers["Location"] == first.headers["Location"]
    listed = await gateway.ok("GET", f"/api/v1/bots/{bot['id']}/executions")
    assert [e["id"] for e in listed["data"]] == [first_body["data"]["id"]]

    other_key = await gateway.call(
        "POST", path, headers={"Idempotency-Key": "order-43"}, json={"params": params}
    )
    assert other_key.status == 201
    assert (await other_key.json())["data"]["id"] != first_body["data"]["id"]


async def test_idempotency_key_with_other_params_is_409(gateway: Gateway) -> None:
    bot = await gateway.create_action_bot()
    path = f"/api/v1/bots/{bot['id']}/executions"
    headers = {"Idempotency-Key": "order-7"}
    await gateway.ok("POST", path, status=201, headers=headers,
                     json={"params": {"searchQuery": "lamp", "password": "a"}})

    changed = await gateway.ok("POST", path, status=409, headers=headers,
                               json={"params": {"searchQuery": "chair", "password": "a"}})
    changed_secret = await gateway.ok("POST", path, status=409, headers=headers,
                                      json={"params": {"searchQuery": "lamp", "password": "b"}})

    assert_error(changed, "conflict")
    assert "'order-7'" in changed["error"]
    assert changed["details"]["idempotencyKey"] == "order-7"
    assert "'order-7'" in changed_secret["error"]
    assert "b" not in changed_secret["details"].values()


async def test_invalid_idempotency_key_is_400(gateway: Gateway) -> None:
    bot = await gateway.create_bot()

    body = await gateway.ok(
        "POST", f"/api/v1/bots/{bot['id']}/executions", status=400,
        headers={"Idempotency-Key": "x" * 256},
    )

    assert "Idempotency-Key" in body["error"]


async def test_cancel_pending_execution_at_once(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])

    body = await gateway.ok(
        "POST", f"/api/v1/executions/{execution['id']}/cancel", permission="write"
    )

    assert body["data"]["status"] == "cancelled"
    assert body["data"]["cancelRequested"] is True
    assert body["data"]["completedAt"] is not None
    assert body["data"]["duration"] == 0
    stored = [e async for e in gateway.context.event_store.read(1)]
    assert [e.name for e in stored][-2:] == ["ExecutionCancelRequested", "ExecutionCancelled"]
    assert stored[-1].sequence - stored[-2].sequence == 1


async def test_cancel_running_execution_requests_it(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    await gateway.advance(execution["id"], lambda e: e.start("runner-1", 1))

    body = await gateway.ok("POST", f"/api/v1/executions/{execution['id']}/cancel")
    again = await gateway.ok("POST", f"/api/v1/executions/{execution['id']}/cancel")

    assert body["data"]["status"] == "running"
    assert body["data"]["cancelRequested"] is True
    assert again["data"]["cancelRequested"] is True
    aggregate = await gateway.context.event_store.load(Execution, uuid.UUID(execution["id"]))
    assert aggregate.status == "running"
    assert aggregate.cancel_requested is True


async def test_cancel_finished_execution_is_409(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    await gateway.advance(
        execution["id"], lambda e: e.start("runner-1", 1), lambda e: e.complete({}, 5)
    )

    body = await gateway.ok("POST", f"/api/v1/executions/{execution['id']}/cancel", status=409)

    assert_error(body, "invalid_state")
    assert "completed" in body["error"]
    assert body["details"]["status"] == "completed"


async def test_steps_of_running_execution(gateway: Gateway) -> None:
    bot = await gateway.create_action_bot()
    execution = await gateway.trigger(bot["id"], {"searchQuery": "lamp"})
    await gateway.advance(
        execution["id"],
        lambda e: e.start("runner-1", 1),
        lambda e: e.start_step(0, "goto", None),
        lambda e: e.complete_step(0, {"url": "http://127.0.0.1:9/shop", "status": 200}, 12),
        lambda e: e.start_step(1, "type", "search box"),
    )
    base = f"/api/v1/executions/{execution['id']}"

    steps = await gateway.ok("GET", f"{base}/steps", permission="read")
    first = await gateway.ok("GET", f"{base}/steps/0", permission="read")
    running = await gateway.ok("GET", base, permission="read")

    assert [(s["index"], s["status"]) for s in steps["data"]] == [
        (0, "completed"), (1, "running"), (2, "pending"),
    ]
    assert steps["cursor"] is None
    assert first["data"]["data"] == {"url": "http://127.0.0.1:9/shop", "status": 200}
    assert first["data"]["duration"] == 12
    assert first["data"]["action"] == "goto"
    assert isinstance(first["data"]["startedAt"], int)
    assert steps["data"][1]["label"] == "search box"
    assert steps["data"][2]["action"] == "extract"
    assert running["data"]["status"] == "running"
    assert isinstance(running["data"]["startedAt"], int)
    assert running["data"]["duration"] >= 0


async def test_step_index_errors(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    base = f"/api/v1/executions/{execution['id']}/steps"

    for index in ("abc", "1.5", "0x1"):
        response = await gateway.call("GET", f"{base}/{index}")
        assert response.status == 400, index
        assert_error(await response.json(), "invalid_request")
    for index in ("3", "-1", "99999999999"):
        response = await gateway.call("GET", f"{base}/{index}")
        assert response.status == 404, index
        assert_error(await response.json(), "not_found")


async def test_finished_execution_skips_steps(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    await gateway.advance(
        execution["id"],
        lambda e: e.start("runner-1", 1),
        lambda e: e.start_step(0, "goto", None),
        lambda e: e.fail_step(0, "net::ERR_CONNECTION_REFUSED", 3),
        lambda e: e.fail("Step 0 failed: net::ERR_CONNECTION_REFUSED", 40, failed_step=0),
    )

    steps = await gateway.ok("GET", f"/api/v1/executions/{execution['id']}/steps")

    assert [s["status"] for s in steps["data"]] == ["failed", "skipped", "skipped"]
    assert steps["data"][0]["error"] == "net::ERR_CONNECTION_REFUSED"


async def test_extract_of_completed_execution(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    base = f"/api/v1/executions/{execution['id']}"

    before = await gateway.call("GET", f"{base}/extract")
    assert before.status == 404
    assert "pending" in (await before.json())["error"]

    extracted = {"products": [{"name": "Lamp"}, {"name": "Chair"}]}
    await gateway.advance(
        execution["id"], lambda e: e.start("runner-1", 1), lambda e: e.complete(extracted, 250)
    )
    body = await gateway.ok("GET", f"{base}/extract", permission="read")
    latest = await gateway.ok("GET", f"/api/v1/bots/{bot['id']}/latest-extract")
    latest_execution = await gateway.ok("GET", f"/api/v1/bots/{bot['id']}/latest-execution")
    view = await gateway.ok("GET", base)

    assert body["data"]["data"] == extracted
    assert body["data"]["executionId"] == execution["id"]
    assert body["data"]["botId"] == bot["id"]
    assert isinstance(body["data"]["completedAt"], int)
    assert latest["data"] == body["data"]
    assert latest_execution["data"]["id"] == execution["id"]
    assert view["data"]["status"] == "completed"
    assert view["data"]["duration"] == 250
    assert view["data"]["completedAt"] >= view["data"]["startedAt"]
    failure = await gateway.call("GET", f"{base}/failure")
    assert failure.status == 404
    assert "completed" in (await failure.json())["error"]


async def test_extract_404_when_completed_without_data(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    await gateway.advance(
        execution["id"], lambda e: e.start("runner-1", 1), lambda e: e.complete({}, 5)
    )

    response = await gateway.call("GET", f"/api/v1/executions/{execution['id']}/extract")
    body = await response.json()

    assert response.status == 404
    assert "without extracting data" in body["error"]


async def test_failure_with_screenshot_and_dom(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    gateway.context.artifacts = StandInArtifactStore({
        "shots/failure.png": (TINY_PNG, "image/png"),
        "dom/failure.html": (b"<html><body>gone</body></html>", "text/html; charset=utf-8"),
    })
    await gateway.advance(
        execution["id"],
        lambda e: e.start("runner-1", 1),
        lambda e: e.start_step(0, "goto", None),
        lambda e: e.fail_step(0, "Selector .price not found", 30),
        lambda e: e.fail("Step 0 failed: Selector .price not found", 100, failed_step=0,
                         screenshot_key="shots/failure.png", dom_key="dom/failure.html"),
    )
    base = f"/api/v1/executions/{execution['id']}"

    failure = await gateway.ok("GET", f"{base}/failure", permission="read")
    view = await gateway.ok("GET", base)

    origin = f"http://{gateway.client.host}:{gateway.client.port}"
    assert failure["data"] == {
        "status": "failed",
        "error": "Step 0 failed: Selector .price not found",
        "failedStepIndex": 0,
        "screenshotUrl": f"{origin}{base}/artifacts/screenshot",
        "domSnapshotUrl": f"{origin}{base}/artifacts/dom",
    }
    assert view["data"]["error"] == "Step 0 failed: Selector .price not found"
    # The URLs are absolute, so they go through the client's session, not its base URL.
    session = gateway.client.session
    screenshot = await session.get(
        failure["data"]["screenshotUrl"], headers=gateway.headers("read")
    )
    assert screenshot.status == 200
    assert screenshot.content_type == "image/png"
    assert await screenshot.read() == TINY_PNG
    dom = await session.get(failure["data"]["domSnapshotUrl"], headers=gateway.headers())
    assert dom.status == 200
    assert dom.content_type == "text/html"
    assert dom.headers["Content-Security-Policy"] == "sandbox"
    assert await dom.read() == b"<html><body>gone</body></html>"
    unauthenticated = await session.get(failure["data"]["screenshotUrl"])
    assert unauthenticated.status == 401


async def test_artifact_errors(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    await gateway.advance(
        execution["id"],
        lambda e: e.start("runner-1", 1),
        lambda e: e.time_out("Execution exceeded its 1 s timeout", 1000,
                             screenshot_key="shots/missing.png"),
    )
    base = f"/api/v1/executions/{execution['id']}"

    failure = await gateway.ok("GET", f"{base}/failure")
    missing = await gateway.call("GET", f"{base}/artifacts/screenshot")
    no_dom = await gateway.call("GET", f"{base}/artifacts/dom")
    gateway.context.artifacts = None
    unconfigured = await gateway.call("GET", f"{base}/artifacts/screenshot")

    assert failure["data"]["status"] == "timed_out"
    assert failure["data"]["failedStepIndex"] is None
    assert failure["data"]["domSnapshotUrl"] is None
    assert missing.status == 404
    assert_error(await missing.json(), "not_found")
    assert no_dom.status == 404
    assert unconfigured.status == 503
    assert_error(await unconfigured.json(), "service_unavailable")


async def test_logs_in_order(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    first = [
        {"time": 1_700_000_000_000, "source": "system", "level": "info", "message": "queued"},
        {"time": 1_700_000_000_005, "source": "runner", "level": "info", "message": "started"},
    ]
    second = [{"time": 1_700_000_000_009, "source": "script", "level": "warn", "message": "x"}]
    await gateway.advance(
        execution["id"],
        lambda e: e.start("runner-1", 1),
        lambda e: e.append_logs(first),
        lambda e: e.append_logs(second),
    )

    body = await gateway.ok("GET", f"/api/v1/executions/{execution['id']}/logs", permission="read")

    assert body["data"] == [
        {"line": 0, **first[0]}, {"line": 1, **first[1]}, {"line": 2, **second[0]},
    ]
    assert body["cursor"] is None


async def test_unknown_execution_is_404(gateway: Gateway) -> None:
    for execution_id in (str(uuid.uuid4()), "nope"):
        for suffix in ("", "/steps", "/steps/0", "/extract", "/failure", "/logs",
                       "/artifacts/screenshot"):
            response = await gateway.call("GET", f"/api/v1/executions/{execution_id}{suffix}")
            assert response.status == 404, suffix
            assert_error(await response.json(), "not_found")
        cancel = await gateway.call("POST", f"/api/v1/executions/{execution_id}/cancel")
        assert cancel.status == 404


async def test_trigger_unknown_bot_is_404(gateway: Gateway) -> None:
    response = await gateway.call(
        "POST", f"/api/v1/bots/{uuid.uuid4()}/executions", json={"params": {}}
    )

    assert response.status == 404
    assert_error(orjson.loads(await response.read()), "not_found")


async def test_writes_when_projection_lags(gateway: Gateway) -> None:
    bot = await gateway.create_action_bot()
    await gateway.context.projector.stop()
    gateway.context.settings = gateway.context.settings.replace(read_your_writes_timeout_s=0.05)

    execution = await gateway.trigger(bot["id"], {"searchQuery": "lamp", "password": "pw"})
    cancelled = await gateway.ok("POST", f"/api/v1/executions/{execution['id']}/cancel")
    new_bot = await gateway.ok(
        "POST", "/api/v1/bots", status=201,
        json={"name": "Lagging", "targetUrl": "http://127.0.0.1/"},
    )
    key = await gateway.ok(
        "POST", "/api/v1/keys", status=201, json={"name": "lagging", "permission": "read"}
    )
    manifest = await gateway.ok(
        "PUT", f"/api/v1/bots/{bot['id']}/manifest", json={"capabilities": {"timeout": 5}}
    )

    assert execution["status"] == "pending"
    assert execution["params"] == {"searchQuery": "lamp", "maxResults": 10, "password": "***"}
    assert isinstance(execution["createdAt"], int)
    assert gateway.context.read_store.execution("acme", execution["id"]) is None
    assert cancelled["data"]["status"] == "cancelled"
    assert new_bot["data"]["name"] == "Lagging"
    assert new_bot["data"]["scriptVersion"] == 0
    assert key["data"]["prefix"] == key["data"]["key"][:12]
    assert isinstance(key["data"]["createdAt"], int)
    assert manifest["data"]["capabilities"] == {"timeout": 5}
    assert manifest["data"]["parameters"]["password"]["secret"] is True


async def test_trigger_rejects_undefined_step_parameter(gateway: Gateway) -> None:
    bot = await gateway.create_bot(steps=STEPS)
    before = await gateway.context.event_store.last_sequence()

    response = await gateway.call("POST", f"/api/v1/bots/{bot['id']}/executions", json={})
    body = await response.json()

    assert response.status == 400
    assert body["error"] == (
        "The steps use parameter 'searchQuery', which the manifest does not define: add it "
        "to manifest.parameters or change the steps."
    )
    assert body["details"]["problems"][0]["parameter"] == "searchQuery"
    assert await gateway.context.event_store.last_sequence() == before
