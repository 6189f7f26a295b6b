"""Build and wire the whole stack from one Settings object.

``open_stack`` starts, in order: the embedded nats-server and SeaweedFS (unless external URLs
are configured), the event stream and bucket, the read store and its projector, the gateway,
and a runner. It yields a Stack and stops everything in reverse order on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiohttp import web

from events.errors import BotledgerError, SettingsError
from events.store import EventStore
from events.subjects import SubjectScheme
from infra.chromium import BrowserSupervisor
from infra.endpoints import ADMIN_KEY_FILE, Endpoints, remove_endpoints, write_endpoints
from infra.nats import NatsServerSupervisor, ensure_stream, nats_connection
from infra.object_store import ArtifactStore, SeaweedFSSupervisor
from infra.processes import become_subreaper, is_port_free
from infra.secrets import SecretBox
from infra.settings import Settings
from projections.projector import Projector
from projections.read_store import ReadStore
from services.gateway.app import build_gateway_app
from services.gateway.context import GatewayContext
from services.gateway.event_routes import OPENAPI_PATHS as EVENT_OPENAPI_PATHS
from services.gateway.event_routes import routes as event_routes
from services.gateway.keys import create_api_key
from services.operator import serve_control
from services.runner.service import Runner

logger = logging.getLogger(__name__)

DEFAULT_ORG = "default"
SHUTDOWN_TIMEOUT_S = 3.0
LOCK_FILE = "stack.lock"


@dataclasses.dataclass
class Stack:
    settings: Settings
    context: GatewayContext
    runner: Runner | None
    endpoints: Endpoints
    # The plain admin key when this start created it, else None: it is shown once.
    new_admin_key: str | None = None
    ready_s: float = 0.0


@contextlib.asynccontextmanager
async def embedded_servers(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """Start the private nats-server and SeaweedFS unless external ones are configured."""
    async with contextlib.AsyncExitStack() as stack:
        nats_server = seaweed = None
        if settings.nats_url is None:
            nats_server = NatsServerSupervisor(settings.data_dir / "nats")
            stack.push_async_callback(nats_server.stop)
        if settings.s3_endpoint is None:
            seaweed = SeaweedFSSupervisor.from_settings(settings)
            stack.push_async_callback(seaweed.stop)

        # Both servers start at once: SeaweedFS takes seconds and would otherwise add up.
        started = await asyncio.gather(
            nats_server.start() if nats_server else _given(settings.nats_url),
            seaweed.start() if seaweed else _given(settings.s3_endpoint),
        )
        yield started[0], started[1]


async def _given(value: str | None) -> str:
    assert value is not None
    return value


@contextlib.asynccontextmanager
async def open_stack(settings: Settings, with_runner: bool = True) -> AsyncIterator[Stack]:
    started = time.monotonic()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    become_subreaper()
    async with contextlib.AsyncExitStack() as exits:
        exits.enter_context(data_dir_lock(settings.data_dir))
        check_http_port(settings)

        # Chromium needs no server, so it launches while the servers start.
        browser = BrowserSupervisor(settings.chromium_path)
        browser_launch = asyncio.create_task(browser.start()) if with_runner else None
        exits.push_async_callback(_stop_browser, browser, browser_launch)

        nats_url, s3_endpoint = await exits.enter_async_context(embedded_servers(settings))
        nc = await exits.enter_async_context(nats_connection(nats_url, "botledger"))
        await ensure_stream(nc, settings)
        artifacts = ArtifactStore.from_settings(settings, s3_endpoint)
        exits.callback(artifacts.close)
        await artifacts.ensure_bucket()

        event_store = EventStore(nc, settings.stream_name, SubjectScheme(settings.subject_prefix))
        read_store = ReadStore(settings.read_store_path)
        projector = Projector(nc, event_store, read_store)
        await projector.start()
        context = GatewayContext(
            settings=settings, nc=nc, event_store=event_store, read_store=read_store,
            projector=projector, secret_box=SecretBox.from_settings(settings),
            artifacts=artifacts,
        )
        exits.push_async_callback(_close_read_store, context)
        await serve_control(nc, settings, lambda path: _reopen_read_store(context, path))

        runner = None
        if browser_launch is not None:
            await browser_launch
            runner = Runner(settings, nc, event_store, browser, context.secret_box, artifacts)
            await runner.start()
            exits.push_async_callback(runner.stop)

        app = build_gateway_app(context, event_routes, EVENT_OPENAPI_PATHS)
        api_url = await _serve(exits, app, settings)
        endpoints = Endpoints(
            api_url=api_url, nats_url=nats_url, s3_endpoint=s3_endpoint,
            stream_name=settings.stream_name, subject_prefix=settings.subject_prefix,
            pid=os.getpid(),
        )
        write_endpoints(settings.data_dir, endpoints)
        exits.callback(remove_endpoints, settings.data_dir)
        new_admin_key = await _ensure_admin_key(context)
        stack = Stack(
            settings, context, runner, endpoints, new_admin_key, time.monotonic() - started
        )
        logger.info("Stack ready in %.2f s: API %s, NATS %s", stack.ready_s, api_url, nats_url)
        yield stack
        logger.info("Stopping the stack")


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the data directory: two stacks on one would corrupt it."""
    lock_path = data_dir / LOCK_FILE
    with open(lock_path, "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            owner = lock_file.read().strip() or "unknown"
            raise SettingsError(
                f"Another botledger stack (pid {owner}) is running on {data_dir}: stop it "
                "first, or pass another --data-dir."
            ) from None
        lock_file.truncate(0)
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        yield


def check_http_port(settings: Settings) -> None:
    """Fail before starting any server when the API port is taken."""
    if settings.http_port and not is_port_free(settings.http_port, settings.http_host):
        raise SettingsError(
            f"Port {settings.http_port} on {settings.http_host} is already in use: pass "
            "--port N (or set BOTLEDGER_HTTP_PORT), or --port 0 for a free one."
        )


async def _serve(exits: contextlib.AsyncExitStack, app: web.Application, settings: Settings) -> str:
    # Open event streams would otherwise hold up a shutdown for aiohttp's default 60 s.
    app_runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await app_runner.setup()
    exits.push_async_callback(app_runner.cleanup)
    site = web.TCPSite(app_runner, settings.http_host, settings.http_port)
    await site.start()
    host, port = app_runner.addresses[0][:2]
    return f"http://{host}:{port}/api/v1"


async def _stop_browser(
    browser: BrowserSupervisor, launch: asyncio.Task[None] | None
) -> None:
    if launch is None:
        return
    if not launch.done():
        launch.cancel()
    try:
        await launch
    except asyncio.CancelledError:
        pass
    except BotledgerError as error:
        # Already raised where the launch was awaited, unless an earlier step failed first.
        logger.warning("Chromium launch failed: %r", error)
    await browser.stop()


async def _close_read_store(context: GatewayContext) -> None:
    await context.projector.stop()
    context.read_store.close()


async def _reopen_read_store(context: GatewayContext, path: Path) -> None:
    """Switch to a read store rebuilt by ``botledger replay`` and resume projecting."""
    await context.projector.stop()
    context.read_store.close()
    context.read_store = ReadStore(path)
    context.projector = Projector(context.nc, context.event_store, context.read_store)
    await context.projector.start()
    logger.info("Reopened the read store at sequence %d", context.read_store.last_sequence)


async def _ensure_admin_key(context: GatewayContext) -> str | None:
    """Create the first Admin key of the default organization on first start."""
    path = context.settings.data_dir / ADMIN_KEY_FILE
    if path.exists():
        return None
    _, key, result = await create_api_key(
        context.event_store, DEFAULT_ORG, "admin", "initial admin key"
    )
    await context.projector.wait_for(result.last_sequence, 5.0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as key_file:
        key_file.write(key + "\n")
    return key
