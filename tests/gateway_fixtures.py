"""Fixtures and helpers of the gateway tests: a real nats-server, projector and HTTP server.

Test modules import the fixtures they use from here (``from gateway_fixtures import gateway``).
There is no runner in these tests, so executions are moved along by appending the events a
runner would append, through the Execution aggregate.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet

from events.errors import NotFoundError
from events.execution import Execution
from events.store import EventStore
from infra.secrets import SecretBox
from infra.settings import Settings
from projections.projector import Projector
from projections.read_store import ReadStore
from services.gateway.app import build_gateway_app
from services.gateway.context import GatewayContext
from services.gateway.keys import create_api_key


ORG = "acme"
OTHER_ORG = "globex"
PERMISSIONS = ("read", "write", "admin")
PROJECTION_TIMEOUT_S = 5.0



def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A valid 1x1 RGBA PNG with one transparent pixel.
TINY_PNG = (
    b"\x89PNG\r\n\x1a\n"
    + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0))
    + png_chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00\x00"))
    + png_chunk(b"IEND", b"")
)

PLAIN_STEPS = [
    {"action": "goto", "url": "{{bot.targetUrl}}"},
    {"action": "type", "selector": "#q", "text": "shoes"},
    {"action": "extract", "name": "products", "selector": ".product", "multiple": True,
     "fields": {"name": ".name"}},
]
STEPS = [
    {"action": "goto", "url": "{{bot.targetUrl}}"},
    {"action": "type", "selector": "#q", "text": "{{params.searchQuery}}"},
    {"action": "extract", "name": "products", "selector": ".product", "multiple": True,
     "fields": {"name": ".name"}},
]

PARAMETERS = {
    "searchQuery": {"type": "string", "required": True, "description": "What to search"},
    "maxResults": {"type": "integer", "default": 10},
    "password": {"type": "string", "secret": True},
}


class StandInArtifactStore:
    """Stand-in for the S3 ArtifactStore: serves objects from a dict, for gateway tests only."""

    def __init__(self, objects: Mapping[str, tuple[bytes, str]] | None = None) -> None:
        self.objects = dict(objects or {})

    async def get_bytes(self, key: str) -> tuple[bytes, str]:
        if key not in self.objects:
            raise NotFoundError(f"No object {key!r} in the stand-in store.")
        return self.objects[key]


@dataclasses.dataclass
class Gateway:
    """A running gateway with one key per permission in ORG and an admin key in OTHER_ORG."""

    client: TestClient[web.Request, web.Application]
    context: GatewayContext
    keys: dict[str, str]
    key_ids: dict[str, str]
    other_org_key: str

    def headers(self, permission: str = "admin", key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.keys[permission]}"}

    async def call(
        self,
        method: str,
        path: str,
        permission: str = "admin",
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> ClientResponse:
        all_headers = {**self.headers(permission, key), **(headers or {})}
        return await self.client.request(method, path, headers=all_headers, **kwargs)

    async def ok(
        self, method: str, path: str, status: int = 200, **kwargs: Any
    ) -> Any:
        """Call and return the JSON body, asserting the status first."""
        response = await self.call(method, path, **kwargs)
        body = await response.json() if response.status != 204 else None
        assert response.status == status, body
        return body

    async def create_bot(self, **fields: Any) -> dict[str, Any]:
        # Only an action bot defines the searchQuery parameter that STEPS use.
        steps = STEPS if fields.get("kind") == "action" else PLAIN_STEPS
        body = {"name": "Shop search", "targetUrl": "http://127.0.0.1:9/shop", "steps": steps}
        body.update(fields)
        created = await self.ok("POST", "/api/v1/bots", status=201, json=body)
        data: dict[str, Any] = created["data"]
        return data

    async def create_action_bot(self) -> dict[str, Any]:
        bot = await self.create_bot(kind="action")
        await self.ok(
            "PUT", f"/api/v1/bots/{bot['id']}/manifest", json={"parameters": PARAMETERS}
        )
        return bot

    async def trigger(
        self, bot_id: str, params: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        body = await self.ok(
            "POST", f"/api/v1/bots/{bot_id}/executions", status=201,
            json={"params": params or {}}, **kwargs,
        )
        data: dict[str, Any] = body["data"]
        return data

    async def advance(self, execution_id: str, *commands: Callable[[Execution], None]) -> None:
        """Apply runner commands to an execution, append their events and wait for the views."""
        execution = await self.context.event_store.load(Execution, uuid.UUID(execution_id))
        for command in commands:
            command(execution)
        result = await self.context.event_store.save(execution)
        assert await self.context.projector.wait_for(result.last_sequence, PROJECTION_TIMEOUT_S)


async def start_gateway(
    event_store: EventStore,
    settings: Settings,
    directory: Path,
    extra_routes: Sequence[web.AbstractRouteDef] = (),
    extra_openapi_paths: Mapping[str, dict[str, Any]] | None = None,
) -> tuple[Gateway, Callable[[], Any]]:
    """Start a projector and a gateway test server; return them and an async stop function."""
    read_store = ReadStore(directory / "views.sqlite3")
    projector = Projector(event_store.nc, event_store, read_store)
    await projector.start()
    context = GatewayContext(
        settings=settings,
        nc=event_store.nc,
        event_store=event_store,
        read_store=read_store,
        projector=projector,
        secret_box=SecretBox(Fernet.generate_key()),
        artifacts=StandInArtifactStore(),
    )

    keys: dict[str, str] = {}
    key_ids: dict[str, str] = {}
    for permission in PERMISSIONS:
        key_id, key, _ = await create_api_key(event_store, ORG, permission, f"{permission} key")
        keys[permission], key_ids[permission] = key, key_id
    _, other_key, result = await create_api_key(event_store, OTHER_ORG, "admin", "other org")
    assert await projector.wait_for(result.last_sequence, PROJECTION_TIMEOUT_S)

    app = build_gateway_app(context, extra_routes, extra_openapi_paths or {})
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()

    async def stop() -> None:
        await client.close()
        await projector.stop()
        read_store.close()

    return Gateway(client, context, keys, key_ids, other_key), stop


@pytest.fixture
async def gateway(
    event_store: EventStore, fresh_settings: Settings, tmp_path: Path
) -> AsyncIterator[Gateway]:
    started, stop = await start_gateway(event_store, fresh_settings, tmp_path)
    yield started
    await stop()


def assert_error(body: Any, code: str) -> None:
    """Check the error body shape and its code."""
    assert set(body) == {"error", "code", "details"}, body
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["details"], dict), body
