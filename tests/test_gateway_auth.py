"""Gateway authentication, permissions, organization isolation and API key management."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from gateway_fixtures import (  # noqa: F401
    ORG,
    PROJECTION_TIMEOUT_S,
    Gateway,
    assert_error,
    gateway,
)

from events.errors import ValidationError
from services.gateway.app import gateway_operations
from services.gateway.keys import create_api_key
from services.gateway.openapi import Operation


# The permission each route needs: Read views, Write creates bots, triggers, cancels and
# updates steps and manifests, Admin deletes bots and manages keys.
EXPECTED_PERMISSIONS: dict[tuple[str, str], str | None] = {
    ("GET", "/health"): None,
    ("GET", "/openapi.json"): None,
    ("GET", "/docs"): None,
    ("GET", "/bots"): "read",
    ("POST", "/bots"): "write",
    ("GET", "/bots/{botId}"): "read",
    ("DELETE", "/bots/{botId}"): "admin",
    ("GET", "/bots/{botId}/steps"): "read",
    ("PUT", "/bots/{botId}/steps"): "write",
    ("GET", "/bots/{botId}/scripts"): "read",
    ("GET", "/bots/{botId}/manifest"): "read",
    ("PUT", "/bots/{botId}/manifest"): "write",
    ("GET", "/bots/{botId}/latest-execution"): "read",
    ("GET", "/bots/{botId}/latest-extract"): "read",
    ("GET", "/bots/{botId}/executions"): "read",
    ("POST", "/bots/{botId}/executions"): "write",
    ("GET", "/executions/{executionId}"): "read",
    ("GET", "/executions/{executionId}/steps"): "read",
    ("GET", "/executions/{executionId}/steps/{index}"): "read",
    ("GET", "/executions/{executionId}/extract"): "read",
    ("GET", "/executions/{executionId}/failure"): "read",
    ("GET", "/executions/{executionId}/artifacts/screenshot"): "read",
    ("GET", "/executions/{executionId}/artifacts/dom"): "read",
    ("GET", "/executions/{executionId}/logs"): "read",
    ("POST", "/executions/{executionId}/cancel"): "write",
    ("POST", "/keys"): "admin",
    ("GET", "/keys"): "admin",
    ("GET", "/keys/{keyId}"): "admin",
    ("DELETE", "/keys/{keyId}"): "admin",
}

LEVELS = {"read": 1, "write": 2, "admin": 3}

BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/bots"): {"name": "Matrix", "targetUrl": "http://127.0.0.1/"},
    ("PUT", "/bots/{botId}/steps"): {"steps": [{"action": "goto", "url": "http://127.0.0.1/"}]},
    ("PUT", "/bots/{botId}/manifest"): {"capabilities": {"timeout": 10}},
    ("POST", "/bots/{botId}/executions"): {"params": {}},
    ("POST", "/keys"): {"name": "matrix", "permission": "read"},
}


def protected_operations() -> list[Operation]:
    return [op for op in gateway_operations() if op.permission is not None]


async def spare_key_id(gateway: Gateway) -> str:
    key_id, _, result = await create_api_key(gateway.context.event_store, ORG, "read", "spare")
    assert await gateway.context.projector.wait_for(result.last_sequence, PROJECTION_TIMEOUT_S)
    return key_id


async def concrete_path(gateway: Gateway, operation: Operation, ids: dict[str, str]) -> str:
    """Fill the path's ids; destructive routes get resources of their own."""
    values = dict(ids)
    if operation.method == "DELETE" and "{botId}" in operation.path:
        values["botId"] = (await gateway.create_bot())["id"]
    if operation.method == "DELETE" and "{keyId}" in operation.path:
        values["keyId"] = await spare_key_id(gateway)
    path = operation.full_path
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


async def shared_ids(gateway: Gateway) -> dict[str, str]:
    bot = await gateway.create_bot()
    execution = await gateway.trigger(bot["id"])
    return {
        "botId": bot["id"],
        "executionId": execution["id"],
        "keyId": gateway.key_ids["read"],
        "index": "0",
    }


def test_route_permissions_match_the_contract() -> None:
    declared = {(op.method, op.path): op.permission for op in gateway_operations()}

    assert declared == EXPECTED_PERMISSIONS


async def test_permission_matrix(gateway: Gateway) -> None:
    ids = await shared_ids(gateway)

    for operation in protected_operations():
        assert operation.permission is not None
        for permission in ("read", "write", "admin"):
            path = await concrete_path(gateway, operation, ids)
            body = BODIES.get((operation.method, operation.path))
            response = await gateway.call(
                operation.method, path, permission=permission,
                **({"json": body} if body is not None else {}),
            )
            case = f"{permission} key, {operation.method} {operation.path}: {response.status}"
            if LEVELS[permission] >= LEVELS[operation.permission]:
                assert response.status not in (401, 403), case
                assert response.status < 500, case
            else:
                assert response.status == 403, case
                error = await response.json()
                assert_error(error, "forbidden")
                assert error["details"] == {
                    "required": operation.permission, "granted": permission,
                }


async def test_every_protected_route_needs_a_key(gateway: Gateway) -> None:
    ids = await shared_ids(gateway)

    for operation in protected_operations():
        path = await concrete_path(gateway, operation, ids)
        response = await gateway.client.request(operation.method, path)
        body = await response.json()
        case = f"{operation.method} {operation.path}"
        assert response.status == 401, case
        assert_error(body, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), case


@pytest.mark.parametrize(
    "header",
    ["Bearer blk_00000000_unknown", "Basic dXNlcjpwYXNz", "Bearer", "blk_abc", "Bearer a b"],
)
async def test_invalid_authorization_is_401(gateway: Gateway, header: str) -> None:
    response = await gateway.client.get("/api/v1/bots", headers={"Authorization": header})
    body = await response.json()

    assert response.status == 401
    assert_error(body, "unauthorized")


async def test_other_organization_sees_nothing(gateway: Gateway) -> None:
    ids = await shared_ids(gateway)

    for operation in protected_operations():
        names = set(re.findall(r"\{\w+\}", operation.path))
        if not {"{botId}", "{executionId}", "{keyId}"} & names:
            continue
        path = operation.full_path
        for name, value in ids.items():
            path = path.replace("{" + name + "}", value)
        body = BODIES.get((operation.method, operation.path))
        response = await gateway.call(
            operation.method, path, key=gateway.other_org_key,
            **({"json": body} if body is not None else {}),
        )
        case = f"{operation.method} {operation.path}"
        assert response.status == 404, case
        assert_error(await response.json(), "not_found")

    bots = await gateway.ok("GET", "/api/v1/bots", key=gateway.other_org_key)
    keys = await gateway.ok("GET", "/api/v1/keys", key=gateway.other_org_key)
    assert bots["data"] == []
    assert [key["name"] for key in keys["data"]] == ["other org"]
    # The resources are still there for their own organization.
    assert (await gateway.call("GET", f"/api/v1/executions/{ids['executionId']}")).status == 200


async def test_create_key_over_api(gateway: Gateway) -> None:
    response = await gateway.call(
        "POST", "/api/v1/keys", json={"name": "ci pipeline", "permission": "write"}
    )
    body = await response.json()

    assert response.status == 201
    created = body["data"]
    assert response.headers["Location"] == f"/api/v1/keys/{created['id']}"
    assert re.fullmatch(r"blk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", created["key"])
    assert created["prefix"] == created["key"][:12]
    assert created["permission"] == "write"
    assert created["revokedAt"] is None
    bot = await gateway.ok(
        "POST", "/api/v1/bots", status=201, key=created["key"],
        json={"name": "By new key", "targetUrl": "http://127.0.0.1/"},
    )
    assert bot["data"]["name"] == "By new key"
    row = gateway.context.read_store.api_key(ORG, created["id"])
    assert row is not None
    assert row["key_hash"] == hashlib.sha256(created["key"].encode()).hexdigest()


async def test_list_and_get_keys_never_show_secrets(gateway: Gateway) -> None:
    listed = await gateway.ok("GET", "/api/v1/keys")
    one = await gateway.ok("GET", f"/api/v1/keys/{gateway.key_ids['write']}")

    fields = {"id", "name", "permission", "prefix", "createdAt", "revokedAt"}
    assert [key["name"] for key in listed["data"]] == ["admin key", "write key", "read key"]
    assert all(set(key) == fields for key in listed["data"])
    assert set(one["data"]) == fields
    assert one["data"]["permission"] == "write"
    text = str(listed) + str(one)
    for key in gateway.keys.values():
        assert key not in text
        assert hashlib.sha256(key.encode()).hexdigest() not in text


async def test_create_key_validation(gateway: Gateway) -> None:
    body = await gateway.ok(
        "POST", "/api/v1/keys", status=400, json={"name": " ", "permission": "owner", "x": 1}
    )

    paths = sorted(problem["path"] for problem in body["details"]["problems"])
    assert paths == ["name", "permission", "x"]


async def test_revoked_key_fails_on_next_request(gateway: Gateway) -> None:
    created = await gateway.ok(
        "POST", "/api/v1/keys", status=201, json={"name": "temp", "permission": "read"}
    )
    key, key_id = created["data"]["key"], created["data"]["id"]
    assert (await gateway.call("GET", "/api/v1/bots", key=key)).status == 200

    revoke = await gateway.call("DELETE", f"/api/v1/keys/{key_id}")
    after = await gateway.call("GET", "/api/v1/bots", key=key)
    again = await gateway.call("DELETE", f"/api/v1/keys/{key_id}")

    assert revoke.status == 204
    assert after.status == 401
    body = await after.json()
    assert_error(body, "unauthorized")
    assert "revoked" in body["error"]
    assert again.status == 409
    assert_error(await again.json(), "invalid_state")
    shown = await gateway.ok("GET", f"/api/v1/keys/{key_id}")
    assert isinstance(shown["data"]["revokedAt"], int)


async def test_create_api_key_rejects_bad_input(gateway: Gateway) -> None:
    with pytest.raises(ValidationError):
        await create_api_key(gateway.context.event_store, "Bad Org!", "read", "x")
    with pytest.raises(ValidationError):
        await create_api_key(gateway.context.event_store, ORG, "superuser", "x")
    with pytest.raises(ValidationError):
        await create_api_key(gateway.context.event_store, ORG, "read", "")


async def test_key_cannot_revoke_itself(gateway: Gateway) -> None:
    own_id = gateway.key_ids["admin"]

    response = await gateway.call("DELETE", f"/api/v1/keys/{own_id}")
    body = await response.json()
    still_works = await gateway.call("GET", "/api/v1/keys")

    assert response.status == 409
    assert_error(body, "conflict")
    assert "is the key of this request" in body["error"]
    assert still_works.status == 200
