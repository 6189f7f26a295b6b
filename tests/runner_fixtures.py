"""A runner stack for tests: real nats-server, SeaweedFS, Chromium and a page server."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from events.execution import Execution
from events.store import EventStore
from events.subjects import SubjectScheme
from infra.chromium import BrowserSupervisor
from infra.nats import NatsServerSupervisor, connect, ensure_stream
from infra.object_store import ArtifactStore, SeaweedFSSupervisor
from infra.secrets import SecretBox
from infra.settings import Settings
from services.runner.service import Runner

PAGES = {
    "/": "<html><head><title>Home</title></head><body><h1 id='title'>Welcome</h1>"
    "<ul><li class='item'>alpha</li><li class='item'>beta</li></ul>"
    "<script>console.log('hello from the page')</script></body></html>",
    "/form": "<html><body><form><input id='password' type='password'>"
    "<input id='name'></form></body></html>",
    "/slow": "<html><body><p id='never'>slow</p></body></html>",
}


async def serve_pages() -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, html in PAGES.items():
        async def handler(request: web.Request, html: str = html) -> web.Response:
            return web.Response(text=html, content_type="text/html")

        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@dataclasses.dataclass
class RunnerStack:
    settings: Settings
    nats: NatsServerSupervisor
    event_store: EventStore
    artifacts: ArtifactStore
    secret_box: SecretBox
    base_url: str

    def new_runner(self, runner_id: str | None = None, **changes: Any) -> Runner:
        settings = self.settings.replace(**changes) if changes else self.settings
        browser = BrowserSupervisor(settings.chromium_path)
        return Runner(
            settings, self.event_store.nc, self.event_store, browser, self.secret_box,
            self.artifacts, runner_id,
        )

    async def request(
        self,
        steps: list[dict[str, Any]],
        params: dict[str, Any] | None = None,
        capabilities: dict[str, Any] | None = None,
        secrets: dict[str, str] | None = None,
    ) -> Execution:
        execution = Execution(
            id=uuid.uuid4(),
            org_id="acme",
            bot_id=str(uuid.uuid4()),
            trigger="api",
            params={**(params or {}), **{name: "***" for name in (secrets or {})}},
            encrypted_secrets=self.secret_box.encrypt(secrets) if secrets else None,
            idempotency_key=None,
            program={
                "targetUrl": self.base_url,
                "steps": steps,
                "scriptVersion": 1,
                "capabilities": capabilities or {},
                "botName": "test bot",
            },
        )
        await self.event_store.save(execution)
        return execution

    async def wait_until(
        self, execution: Execution, predicate: Any, timeout_s: float = 30.0
    ) -> Execution:
        deadline = time.monotonic() + timeout_s
        while True:
            loaded = await self.event_store.load(
                Execution, execution.id, execution.org_id, execution.bot_id
            )
            if predicate(loaded):
                return loaded
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Execution {execution.id} did not reach the expected state within "
                    f"{timeout_s} s; it is {loaded.status}."
                )
            await asyncio.sleep(0.05)

    async def wait_finished(self, execution: Execution, timeout_s: float = 30.0) -> Execution:
        return await self.wait_until(execution, lambda e: e.is_finished, timeout_s)

    async def stored_payloads(self, execution: Execution) -> list[bytes]:
        scheme = self.event_store.scheme
        subject = scheme.aggregate_filter("execution", str(execution.id), "acme", None)
        return [recorded.payload async for recorded in self.event_store.read(1, subject)]


@dataclasses.dataclass
class SharedServers:
    nats: NatsServerSupervisor
    seaweed: SeaweedFSSupervisor
    s3_endpoint: str


async def start_runner_stack(tmp: Path, servers: SharedServers, base_url: str) -> RunnerStack:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        data_dir=tmp,
        nats_url=servers.nats.url,
        s3_endpoint=servers.s3_endpoint,
        s3_bucket=f"artifacts-{suffix}",
        stream_name=f"RUN_{suffix}",
        subject_prefix=f"run{suffix}",
        runner_ack_wait_s=3.0,
        runner_concurrency=2,
    )
    nc = await connect(servers.nats.url, f"runner-test-{suffix}")
    await ensure_stream(nc, settings)
    artifacts = ArtifactStore.from_settings(settings)
    await artifacts.ensure_bucket()
    return RunnerStack(
        settings=settings,
        nats=servers.nats,
        event_store=EventStore(nc, settings.stream_name, SubjectScheme(settings.subject_prefix)),
        artifacts=artifacts,
        secret_box=SecretBox.from_settings(settings),
        base_url=base_url,
    )


async def start_shared_servers(tmp: Path) -> AsyncIterator[SharedServers]:
    nats_server = NatsServerSupervisor(tmp / "nats")
    await nats_server.start()
    seaweed = SeaweedFSSupervisor(
        tmp / "s3", access_key="botledger", secret_key="botledger-secret"
    )
    endpoint = await seaweed.start()
    try:
        yield SharedServers(nats_server, seaweed, endpoint)
    finally:
        await seaweed.stop()
        await nats_server.stop()
