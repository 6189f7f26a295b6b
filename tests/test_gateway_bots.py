"""Gateway bot routes: create, list, view, delete, step program, versions and manifest."""

from __future__ import annotations

import uuid

from gateway_fixtures import (  # noqa: F401
    Gateway,
    assert_error,
    gateway,
)

from events.bot import Bot



async def test_create_bot_answers_201_with_location(gateway: Gateway) -> None:
    response = await gateway.call(
        "POST", "/api/v1/bots",
        json={"name": "Catalog", "targetUrl": "https://127.0.0.1/catalog", "tags": ["shop"],
              "description": "All products"},
    )
    body = await response.json()

    assert response.status == 201
    bot = body["data"]
    assert response.headers["Location"] == f"/api/v1/bots/{bot['id']}"
    assert bot["name"] == "Catalog"
    assert bot["targetUrl"] == "https://127.0.0.1/catalog"
    assert bot["kind"] == "extraction"
    assert bot["tags"] == ["shop"]
    assert bot["description"] == "All products"
    assert bot["scriptVersion"] == 0
    assert isinstance(bot["createdAt"], int) and bot["createdAt"] > 1_600_000_000_000


async def test_create_bot_with_steps_is_one_append(gateway: Gateway) -> None:
    before = await gateway.context.event_store.last_sequence()

    bot = await gateway.create_bot()

    stored = [e async for e in gateway.context.event_store.read(before + 1)]
    assert [e.name for e in stored] == ["BotCreated", "BotStepsUpdated"]
    assert bot["scriptVersion"] == 1
    steps = await gateway.ok("GET", f"/api/v1/bots/{bot['id']}/steps", permission="read")
    assert steps["data"]["scriptVersion"] == 1
    assert [s["action"] for s in steps["data"]["steps"]] == ["goto", "type", "extract"]


async def test_create_bot_reports_every_problem(gateway: Gateway) -> None:
    response = await gateway.call(
        "POST", "/api/v1/bots",
        json={"name": "", "targetUrl": "file:///etc/passwd", "kind": "scraper",
              "tags": ["ok", 3], "targetURL": "x",
              "steps": [{"action": "goto", "url": "https://127.0.0.1/", "wait": 1}]},
    )
    body = await response.json()

    assert response.status == 400
    assert_error(body, "invalid_request")
    paths = [problem["path"] for problem in body["details"]["problems"]]
    assert "targetURL" in paths
    assert "name" in paths
    assert "targetUrl" in paths
    assert "kind" in paths
    assert "tags[1]" in paths
    assert "steps[0].wait" in paths
    messages = {p["path"]: p["message"] for p in body["details"]["problems"]}
    assert messages["targetURL"] == "Unknown field 'targetURL'. Did you mean 'targetUrl'?"


async def test_create_bot_requires_target_url(gateway: Gateway) -> None:
    body = await gateway.ok("POST", "/api/v1/bots", status=400, json={"name": "No URL"})

    assert body["error"] == "targetUrl: Missing required field 'targetUrl'."


async def test_get_and_list_bots(gateway: Gateway) -> None:
    first = await gateway.create_bot(name="First")
    second = await gateway.create_bot(name="Second")

    one = await gateway.ok("GET", f"/api/v1/bots/{first['id']}", permission="read")
    listed = await gateway.ok("GET", "/api/v1/bots", permission="read")

    assert one["data"] == first
    assert [bot["name"] for bot in listed["data"]] == ["Second", "First"]
    assert listed["cursor"] is None
    assert listed["data"][0] == second


async def test_unknown_bot_ids_are_404(gateway: Gateway) -> None:
    for bot_id in (str(uuid.uuid4()), "not-a-uuid", "1"):
        response = await gateway.call("GET", f"/api/v1/bots/{bot_id}")
        body = await response.json()
        assert response.status == 404, bot_id
        assert_error(body, "not_found")


async def test_delete_bot(gateway: Gateway) -> None:
    bot = await gateway.create_bot()

    response = await gateway.call("DELETE", f"/api/v1/bots/{bot['id']}")
    again = await gateway.call("DELETE", f"/api/v1/bots/{bot['id']}")

    assert response.status == 204
    assert again.status == 404
    gone = await gateway.call("GET", f"/api/v1/bots/{bot['id']}")
    assert gone.status == 404
    listed = await gateway.ok("GET", "/api/v1/bots")
    assert listed["data"] == []
    trigger = await gateway.call(
        "POST", f"/api/v1/bots/{bot['id']}/executions", json={"params": {}}
    )
    assert trigger.status == 404


async def test_put_steps_creates_versions(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    new_steps = [{"action": "goto", "url": "https://127.0.0.1/other"}]

    saved = await gateway.ok("PUT", f"/api/v1/bots/{bot['id']}/steps", json={"steps": new_steps})
    bare = await gateway.ok(
        "PUT", f"/api/v1/bots/{bot['id']}/steps", json=[{"action": "screenshot"}]
    )
    scripts = await gateway.ok("GET", f"/api/v1/bots/{bot['id']}/scripts", permission="read")

    assert saved["data"]["scriptVersion"] == 2
    assert saved["data"]["steps"] == [{"action": "goto", "url": "https://127.0.0.1/other"}]
    assert bare["data"]["scriptVersion"] == 3
    assert bare["data"]["steps"] == [{"action": "screenshot", "fullPage": False}]
    assert [s["version"] for s in scripts["data"]] == [3, 2, 1]
    assert scripts["data"][1]["steps"] == saved["data"]["steps"]
    assert all(isinstance(s["createdAt"], int) for s in scripts["data"])
    assert scripts["cursor"] is None
    current = await gateway.ok("GET", f"/api/v1/bots/{bot['id']}")
    assert current["data"]["scriptVersion"] == 3


async def test_put_steps_rejects_unknown_action(gateway: Gateway) -> None:
    bot = await gateway.create_bot()

    response = await gateway.call(
        "PUT", f"/api/v1/bots/{bot['id']}/steps", json={"steps": [{"action": "clik"}]}
    )
    body = await response.json()

    assert response.status == 400
    assert_error(body, "invalid_request")
    assert "Unknown action 'clik'" in body["error"]
    assert body["details"]["problems"][0]["path"] == "steps[0].action"


async def test_put_steps_rejects_missing_steps_field(gateway: Gateway) -> None:
    bot = await gateway.create_bot()

    body = await gateway.ok(
        "PUT", f"/api/v1/bots/{bot['id']}/steps", status=400, json={"step": []}
    )

    paths = [problem["path"] for problem in body["details"]["problems"]]
    assert paths == ["step"]


async def test_manifest_update_keeps_sections_left_out(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    path = f"/api/v1/bots/{bot['id']}/manifest"

    await gateway.ok("PUT", path, json={"capabilities": {"timeout": 60, "locale": "en-US"}})
    updated = await gateway.ok(
        "PUT", path, json={"parameters": {"searchQuery": {"type": "string", "required": True}}}
    )
    read = await gateway.ok("GET", path, permission="read")

    assert updated["data"] == read["data"]
    assert read["data"]["capabilities"] == {"timeout": 60, "locale": "en-US"}
    assert read["data"]["parameters"] == {
        "searchQuery": {"type": "string", "required": True, "description": "", "secret": False}
    }
    assert read["data"]["webhook"] is None


async def test_manifest_rejects_bad_sections(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    path = f"/api/v1/bots/{bot['id']}/manifest"

    body = await gateway.ok(
        "PUT", path, status=400,
        json={"capabilites": {}, "capabilities": {"timeout": -1},
              "parameters": {"q": {"type": "text"}}, "webhook": {"url": "ftp://x"}},
    )

    assert_error(body, "invalid_request")
    messages = {p["path"]: p["message"] for p in body["details"]["problems"]}
    assert messages["capabilites"] == "Unknown field 'capabilites'. Did you mean 'capabilities'?"
    assert "capabilities.timeout" in messages
    assert "parameters.q.type" in messages
    assert "webhook.url" in messages
    empty = await gateway.ok("PUT", path, status=400, json={})
    assert "at least one" in empty["error"]


async def test_manifest_rejects_secret_defaults(gateway: Gateway) -> None:
    bot = await gateway.create_bot()

    body = await gateway.ok(
        "PUT", f"/api/v1/bots/{bot['id']}/manifest", status=400,
        json={"parameters": {"token": {"type": "string", "secret": True, "default": "abc"}}},
    )

    assert body["details"]["problems"][0]["path"] == "parameters.token.default"


async def test_webhook_secrets_encrypted_not_returned(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    path = f"/api/v1/bots/{bot['id']}/manifest"
    before = await gateway.context.event_store.last_sequence()

    updated = await gateway.ok(
        "PUT", path,
        json={"webhook": {"url": "https://127.0.0.1/hook", "auth": "hmac",
                          "secret": "hook-secret-value", "dataPath": "products.0"}},
    )

    webhook = updated["data"]["webhook"]
    assert webhook["url"] == "https://127.0.0.1/hook"
    assert webhook["auth"] == "hmac"
    assert webhook["dataPath"] == "products.0"
    assert webhook["secretSet"] is True
    assert webhook["passwordSet"] is False
    assert "secretFields" not in webhook
    assert "secret" not in webhook
    assert "encryptedSecrets" not in webhook
    stored = [e async for e in gateway.context.event_store.read(before + 1)]
    assert [e.name for e in stored] == ["BotManifestUpdated"]
    assert b"hook-secret-value" not in stored[0].payload
    aggregate = await gateway.context.event_store.load(Bot, uuid.UUID(bot["id"]))
    assert aggregate.webhook is not None
    token = aggregate.webhook["encryptedSecrets"]
    assert gateway.context.secret_box.decrypt(token) == {"secret": "hook-secret-value"}


async def test_webhook_update_keeps_stored_secret(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    path = f"/api/v1/bots/{bot['id']}/manifest"
    await gateway.ok(
        "PUT", path,
        json={"webhook": {"url": "https://127.0.0.1/a", "auth": "hmac", "secret": "s1"}},
    )

    await gateway.ok("PUT", path, json={"webhook": {"url": "https://127.0.0.1/b", "auth": "hmac"}})

    aggregate = await gateway.context.event_store.load(Bot, uuid.UUID(bot["id"]))
    assert aggregate.webhook is not None
    assert aggregate.webhook["url"] == "https://127.0.0.1/b"
    assert gateway.context.secret_box.decrypt(aggregate.webhook["encryptedSecrets"]) == {
        "secret": "s1"
    }
    removed = await gateway.call(
        "PUT", path,
        json={"webhook": {"url": "https://127.0.0.1/b", "auth": "hmac", "secret": None}},
    )
    body = await removed.json()
    assert removed.status == 400
    assert body["details"]["problems"][0]["path"] == "webhook.secret"


async def test_webhook_validation_problems(gateway: Gateway) -> None:
    bot = await gateway.create_bot()
    path = f"/api/v1/bots/{bot['id']}/manifest"

    body = await gateway.ok(
        "PUT", path, status=400,
        json={"webhook": {"url": "https://127.0.0.1/h", "auth": "jwt", "username": "u",
                          "dataPath": "a..b", "scret": "x"}},
    )

    messages = {p["path"]: p["message"] for p in body["details"]["problems"]}
    assert messages["webhook.scret"] == "Unknown field 'scret'. Did you mean 'secret'?"
    assert "webhook.dataPath" in messages
    assert "auth 'jwt' needs a secret" in messages["webhook.auth"]
    jwt = await gateway.ok(
        "PUT", path,
        json={"webhook": {"url": "https://127.0.0.1/h", "auth": "jwt",
                          "loginUrl": "https://127.0.0.1/login", "username": "u",
                          "password": "pw"}},
    )
    assert jwt["data"]["webhook"]["passwordSet"] is True
    assert jwt["data"]["webhook"]["secretSet"] is False
    assert jwt["data"]["webhook"]["username"] == "u"
    assert "password" not in jwt["data"]["webhook"]


async def test_latest_views_404_without_executions(gateway: Gateway) -> None:
    bot = await gateway.create_bot()

    latest = await gateway.call("GET", f"/api/v1/bots/{bot['id']}/latest-execution")
    extract = await gateway.call("GET", f"/api/v1/bots/{bot['id']}/latest-extract")

    assert latest.status == 404
    assert extract.status == 404
    assert_error(await latest.json(), "not_found")
    assert_error(await extract.json(), "not_found")
