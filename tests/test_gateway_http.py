"""Gateway HTTP behaviour: error bodies, body limits, routing errors, extra routes, docs."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from gateway_fixtures import (  # noqa: F401
    ORG,
    Gateway,
    assert_error,
    gateway,
    start_gateway,
)

from events.store import EventStore
from infra.settings import Settings
from services.gateway.auth import require
from services.gateway.context import PRINCIPAL, Principal
from services.gateway.http import MAX_BODY_BYTES


extra = web.RouteTableDef()


@extra.get("/api/v1/whoami")
async def whoami(request: web.Request) -> web.Response:
    principal = require(request, "read")
    stored: Principal = request[PRINCIPAL]
    return web.json_response({"data": {"org": principal.org_id, "same": stored is principal}})


@extra.get("/api/v1/admin-only")
async def admin_only(request: web.Request) -> web.Response:
    require(request, "admin")
    return web.json_response({"data": "ok"})


@extra.get("/api/v1/broken")
async def broken(request: web.Request) -> web.Response:
    require(request, "read")
    raise RuntimeError("deliberate bug for the test")


EXTRA_PATHS: dict[str, dict[str, Any]] = {
    path: {"get": {"summary": f"Test route {path}", "responses": {"200": {"description": "ok"}}}}
    for path in ("/api/v1/whoami", "/api/v1/admin-only", "/api/v1/broken")
}


@pytest.fixture
async def extended(
    event_store: EventStore, fresh_settings: Settings, tmp_path: Path
) -> AsyncIterator[Gateway]:
    started, stop = await start_gateway(
        event_store, fresh_settings, tmp_path, extra, EXTRA_PATHS
    )
    yield started
    await stop()


async def test_malformed_json_is_400(gateway: Gateway) -> None:
    response = await gateway.call(
        "POST", "/api/v1/bots", data=b'{"name": "x",',
        headers={"Content-Type": "application/json"},
    )
    body = await response.json()

    assert response.status == 400
    assert_error(body, "invalid_request")
    assert body["error"].startswith("The request body is not valid JSON")
    assert isinstance(body["details"]["position"], int)


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"null", b"42"])
async def test_non_object_body_is_400(gateway: Gateway, payload: bytes) -> None:
    response = await gateway.call(
        "POST", "/api/v1/bots", data=payload, headers={"Content-Type": "application/json"}
    )
    body = await response.json()

    assert response.status == 400
    assert_error(body, "invalid_request")
    assert body["error"].startswith("Expected a JSON object")


async def test_empty_body_is_400_where_required(gateway: Gateway) -> None:
    response = await gateway.call(
        "POST", "/api/v1/bots", data=b"", headers={"Content-Type": "application/json"}
    )

    assert response.status == 400
    assert_error(await response.json(), "invalid_request")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_wrong_content_type_is_415(gateway: Gateway, content_type: str) -> None:
    response = await gateway.call(
        "POST", "/api/v1/bots", data=b'{"name": "x", "targetUrl": "http://127.0.0.1/"}',
        headers={"Content-Type": content_type},
    )
    body = await response.json()

    assert response.status == 415
    assert_error(body, "unsupported_media_type")
    assert body["details"] == {"contentType": content_type}


async def test_json_content_type_with_charset_is_accepted(gateway: Gateway) -> None:
    response = await gateway.call(
        "POST", "/api/v1/bots", data=b'{"name": "x", "targetUrl": "http://127.0.0.1/"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )

    assert response.status == 201


async def test_oversized_body_is_413(gateway: Gateway) -> None:
    payload = io.BytesIO(b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}')

    response = await gateway.call(
        "POST", "/api/v1/bots", data=payload, headers={"Content-Type": "application/json"}
    )
    body = await response.json()

    assert response.status == 413
    assert_error(body, "payload_too_large")
    assert body["details"]["maxBytes"] == MAX_BODY_BYTES


async def test_oversized_chunked_body_is_413(gateway: Gateway) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}'

    response = await gateway.call(
        "POST", "/api/v1/bots", data=chunks(), headers={"Content-Type": "application/json"}
    )
    body = await response.json()

    assert response.status == 413
    assert_error(body, "payload_too_large")


async def test_unknown_route_is_404_json(gateway: Gateway) -> None:
    for path in ("/api/v1/nothing-here", "/", "/api/v2/bots", "/api/v1/bots/"):
        response = await gateway.client.get(path)
        body = await response.json()
        assert response.status == 404, path
        assert_error(body, "route_not_found")


async def test_wrong_method_is_405_json(gateway: Gateway) -> None:
    response = await gateway.call("PATCH", "/api/v1/bots")
    body = await response.json()

    assert response.status == 405
    assert_error(body, "method_not_allowed")
    assert body["details"]["allowed"] == ["GET", "POST"]
    assert response.headers["Allow"] == "GET, POST"


async def test_request_id_is_echoed_or_generated(gateway: Gateway) -> None:
    given = await gateway.call("GET", "/api/v1/bots", headers={"X-Request-Id": "trace-123"})
    fresh = await gateway.call("GET", "/api/v1/bots", headers={"X-Request-Id": "bad id\u00e9"})

    assert given.headers["X-Request-Id"] == "trace-123"
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["X-Request-Id"])


async def test_health_needs_no_key(gateway: Gateway) -> None:
    response = await gateway.client.get("/api/v1/health")
    body = await response.json()

    assert response.status == 200
    assert body["data"]["status"] == "ok"
    assert body["data"]["nats"] == "connected"
    assert body["data"]["projectionSequence"] == gateway.context.projector.last_sequence
    assert body["data"]["projectionSequence"] >= 4


async def test_extra_routes_get_the_principal(extended: Gateway) -> None:
    whoami = await extended.ok("GET", "/api/v1/whoami", permission="read")
    denied = await extended.call("GET", "/api/v1/admin-only", permission="write")
    anonymous = await extended.client.get("/api/v1/whoami")

    assert whoami["data"] == {"org": ORG, "same": True}
    assert denied.status == 403
    assert_error(await denied.json(), "forbidden")
    assert anonymous.status == 401
    assert_error(await anonymous.json(), "unauthorized")


async def test_bug_is_500_with_generic_message(
    extended: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="services.gateway"):
        response = await extended.call("GET", "/api/v1/broken", permission="read")
    body = await response.json()

    assert response.status == 500
    assert_error(body, "internal_error")
    request_id = response.headers["X-Request-Id"]
    assert body["details"] == {"requestId": request_id}
    assert "deliberate" not in body["error"]
    logged = [r for r in caplog.records if r.name == "services.gateway.errors"]
    assert len(logged) == 1
    assert request_id in logged[0].getMessage()
    assert logged[0].exc_info is not None
    assert "deliberate bug" in str(logged[0].exc_info[1])


async def test_request_log_line_names_ids_not_key(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="services.gateway.access"):
        ok = await gateway.call("GET", "/api/v1/bots", permission="read")
        missing = await gateway.call("GET", "/api/v1/bots/nope", permission="read")

    lines = [r for r in caplog.records if r.name == "services.gateway.access"]
    assert [r.levelno for r in lines] == [logging.DEBUG, logging.WARNING]
    assert ok.headers["X-Request-Id"] in lines[0].getMessage()
    assert f"org {ORG}" in lines[0].getMessage()
    assert gateway.key_ids["read"] in lines[0].getMessage()
    assert "-> 404" in lines[1].getMessage()
    assert missing.headers["X-Request-Id"] in lines[1].getMessage()
    assert all(gateway.keys["read"] not in r.getMessage() for r in caplog.records)


def router_operations(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/v1/")
        and route.method not in ("HEAD", "*")
    }


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }


async def test_openapi_documents_every_route(extended: Gateway) -> None:
    response = await extended.client.get("/api/v1/openapi.json")
    document = await response.json()

    assert response.status == 200
    assert document["openapi"] == "3.1.0"
    assert router_operations(extended.client.app) == documented_operations(document)
    assert ("get", "/api/v1/whoami") in documented_operations(document)
    assert len(documented_operations(document)) == 29 + len(EXTRA_PATHS)


async def test_openapi_references_resolve(gateway: Gateway) -> None:
    document = await (await gateway.client.get("/api/v1/openapi.json")).json()
    text = str(document)

    for ref in set(re.findall(r"'\$ref': '#/([^']+)'", text)):
        target: Any = document
        for part in ref.split("/"):
            assert part in target, ref
            target = target[part]
    trigger = document["paths"]["/api/v1/bots/{botId}/executions"]["post"]
    assert trigger["x-permission"] == "write"
    assert set(trigger["responses"]) >= {"200", "201", "400", "401", "403", "404", "409"}
    assert document["paths"]["/api/v1/health"]["get"]["security"] == []


async def test_docs_page_is_self_contained(gateway: Gateway) -> None:
    response = await gateway.client.get("/api/v1/docs")
    page = await response.text()
    document = await (await gateway.client.get("/api/v1/openapi.json")).json()

    assert response.status == 200
    assert response.content_type == "text/html"
    for path in document["paths"]:
        assert path.replace("{", "&#x7b;") in page or path in page, path
    assert "<script" not in page
    assert not re.search(r"(src|href)=['\"]https?://", page)
    assert "Unknown parameter" not in page


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/v1/bots?limt=5", "Unknown query parameter 'limt'. Did you mean 'limit'?"),
        ("/api/v1/bots?limit=2&limit=3", "Query parameter 'limit' is given more than once"),
        ("/api/v1/keys?cursr=x", "Unknown query parameter 'cursr'. Did you mean 'cursor'?"),
    ],
)
async def test_unknown_query_parameter_is_400(gateway: Gateway, path: str, message: str) -> None:
    response = await gateway.call("GET", path)
    body = await response.json()

    assert response.status == 400
    assert_error(body, "invalid_request")
    assert message in body["error"]


async def test_route_without_query_rejects_any(gateway: Gateway) -> None:
    bot = await gateway.create_bot()

    response = await gateway.call("GET", f"/api/v1/bots/{bot['id']}/scripts?limit=3")
    body = await response.json()

    assert response.status == 400
    assert body["error"] == "query.limit: Unknown query parameter 'limit'. This route takes none."
