"""Headless Chromium for the runner: launch, incognito contexts, crash recovery and cleanup.

BrowserSupervisor starts Chromium itself, as the leader of a new process group, and attaches
pyppeteer to its DevTools WebSocket. pyppeteer 2.0's own launcher cannot start the browser in a
new process group, blocks the event loop while it waits for the DevTools endpoint, and picks
the DevTools port with a check-then-bind race. Here Chromium picks the port itself
(``--remote-debugging-port=0``) and writes it to ``DevToolsActivePort`` in the profile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyppeteer.browser import Browser, BrowserContext
from pyppeteer.connection import Connection
from pyppeteer.errors import PyppeteerError

from events.errors import BotledgerError, SettingsError, ValidationError
from infra.processes import (
    descendants,
    kill_process_group,
    list_processes,
    processes_with_argument,
    read_log_tail,
    read_proc_stat,
    reap_zombies,
    release_pid,
    start_process_group,
)
from infra.settings import ENV_PREFIX

logger = logging.getLogger(__name__)

REQUIRED_FLAGS = (
    "--headless",
    "--no-sandbox",  # the services run as root in containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
)
# The supervisor owns these flags; an extra argument that sets them would break the launch.
RESERVED_FLAG_PREFIXES = ("--user-data-dir", "--remote-debugging-")
DEFAULT_VIEWPORT = {"width": 800, "height": 600}
RUN_DIR_PREFIX = "botledger-chromium-"
# The pid of the service that owns a run folder, so a later launch can delete the folders of
# services that died without stopping their browser.
OWNER_FILE = "owner.pid"
POLL_INTERVAL_S = 0.05
REAP_TIMEOUT_S = 2.0

# Errors a CDP call raises when the browser or its connection has gone.
CDP_ERRORS = (PyppeteerError, ConnectionError, OSError, asyncio.TimeoutError)


def chromium_args(user_data_dir: Path | str, extra_args: Sequence[str] = ()) -> list[str]:
    """Return the Chromium flags botledger runs with, followed by ``extra_args``.

    ``extra_args`` adds flags such as ``--host-resolver-rules`` or ``--proxy-server``. Raises
    SettingsError for an extra flag that sets the profile folder or the DevTools port.
    """
    for arg in extra_args:
        if arg.startswith(RESERVED_FLAG_PREFIXES):
            raise SettingsError(
                f"Invalid extra Chromium argument {arg!r}: the browser supervisor sets the "
                "profile folder and DevTools port itself. Remove the argument."
            )
    return [*REQUIRED_FLAGS, f"--user-data-dir={user_data_dir}", *extra_args]


class BrowserSupervisor:
    """One Chromium process per runner, relaunched when it crashes, with incognito contexts.

    Each execution gets a fresh context from new_context and gives it back through
    close_context. browser() returns the running browser and relaunches it if it has exited
    or its DevTools connection has dropped.
    """

    def __init__(
        self,
        executable_path: str,
        extra_args: Sequence[str] = (),
        launch_timeout_s: float = 30.0,
        *,
        cdp_timeout_s: float = 10.0,
        close_timeout_s: float = 5.0,
        kill_grace_s: float = 2.0,
    ) -> None:
        # Validates the extra arguments now rather than at the first launch.
        chromium_args("", extra_args)
        self.executable_path = executable_path
        self.extra_args = tuple(extra_args)
        self.launch_timeout_s = launch_timeout_s
        self.cdp_timeout_s = cdp_timeout_s
        self.close_timeout_s = close_timeout_s
        self.kill_grace_s = kill_grace_s
        self.launch_count = 0
        self._lock = asyncio.Lock()
        self._browser: Browser | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._run_dir: Path | None = None
        self._stopped = False

    @property
    def pid(self) -> int | None:
        """The pid of the Chromium browser process, or None when none was launched."""
        return self._process.pid if self._process is not None else None

    @property
    def run_dir(self) -> Path | None:
        """The temporary folder with the profile and log of the current browser process."""
        return self._run_dir

    async def start(self) -> None:
        """Launch Chromium unless it is already running."""
        await self.browser()

    async def browser(self) -> Browser:
        """Return the running browser, launching or relaunching Chromium when needed."""
        async with self._lock:
            if self._stopped:
                raise BotledgerError("The browser supervisor was stopped; create a new one.")
            if self._browser is not None and self._is_healthy():
                return self._browser

            if self._process is not None:
                logger.warning(
                    "Chromium pid %s has exited or lost its DevTools connection; relaunching",
                    self._process.pid,
                )
                await self._shut_down()
            return await self._launch()

    async def new_context(self, proxy_server: str | None = None) -> BrowserContext:
        """Create an incognito browser context, optionally sending its traffic to a proxy.

        ``proxy_server`` takes Chromium's ``--proxy-server`` syntax, e.g.
        ``http://127.0.0.1:3128``. Raises BotledgerError when Chromium does not create it.
        """
        params: dict[str, Any] = {}
        if proxy_server is not None:
            if not proxy_server.strip():
                raise ValidationError(
                    f"Invalid proxy server {proxy_server!r}: give host:port or "
                    "scheme://host:port, or None for a direct connection."
                )
            params["proxyServer"] = proxy_server

        browser = await self.browser()
        # pyppeteer 2.0's createIncognitoBrowserContext sends no parameters, so the context is
        # created over CDP here and registered the same way pyppeteer registers its own.
        try:
            reply = _send(browser._connection, "Target.createBrowserContext", params)
        except ConnectionError as exc:
            raise self._context_creation_error(exc) from exc
        try:
            result = await asyncio.wait_for(asyncio.shield(reply), timeout=self.cdp_timeout_s)
        except (asyncio.CancelledError, *CDP_ERRORS) as exc:
            # A context that Chromium creates after the caller gave up must not leak.
            reply.add_done_callback(lambda done: _dispose_abandoned_context(browser, done))
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._context_creation_error(exc) from exc

        # pyppeteer resolves a send with None when the socket closed before the reply.
        if not isinstance(result, dict) or "browserContextId" not in result:
            raise BotledgerError(
                f"Chromium pid {self.pid} closed its DevTools connection while creating a "
                "browser context. The browser is relaunched on the next call."
            )
        context_id: str = result["browserContextId"]
        context = BrowserContext(browser, context_id)
        browser._contexts[context_id] = context
        logger.debug("Created browser context %s (proxy %s)", context_id, proxy_server)
        return context

    def _context_creation_error(self, exc: BaseException) -> BotledgerError:
        logger.warning("Creating a browser context in Chromium pid %s failed: %r", self.pid, exc)
        return BotledgerError(
            f"Chromium did not create a browser context: {exc!r}. The browser is relaunched "
            "on the next call if it has exited."
        )

    async def close_context(self, context: BrowserContext) -> None:
        """Close ``context`` and its pages.

        Failures of Chromium or of the DevTools connection are logged, not raised.
        """
        context_id = context._id
        browser = self._browser
        if browser is None or context.browser is not browser:
            logger.debug("Browser context %s belonged to an earlier browser process", context_id)
            return
        if context_id is None:
            logger.warning("Not closing the default browser context: Chromium cannot close it")
            return
        if context_id not in browser._contexts:
            logger.debug("Browser context %s is already closed", context_id)
            return

        try:
            reply = _send(
                browser._connection,
                "Target.disposeBrowserContext",
                {"browserContextId": context_id},
            )
            # Forgets the context when Chromium confirms, even if this call was cancelled.
            reply.add_done_callback(lambda done: _forget_context(browser, context_id, done))
            await asyncio.wait_for(asyncio.shield(reply), timeout=self.cdp_timeout_s)
        except CDP_ERRORS as exc:
            logger.warning("Closing browser context %s failed: %r", context_id, exc)
            return
        logger.debug("Closed browser context %s", context_id)

    async def stop(self) -> None:
        """Close Chromium, kill its process group if it hangs, and reap its zombies."""
        async with self._lock:
            self._stopped = True
            await self._shut_down()

    def open_context_count(self) -> int:
        """Count the incognito contexts of the current browser that were not closed."""
        if self._browser is None:
            return 0
        return len(self._browser._contexts)

    def open_page_count(self) -> int:
        """Count open pages in incognito contexts (the default context's blank page is not)."""
        if self._browser is None:
            return 0
        return sum(
            1
            for target in self._browser.targets()
            if target.type == "page" and target.browserContext.isIncognito()
        )

    def browser_pids(self) -> list[int]:
        """Return the pids of the running Chromium process tree (empty when none runs)."""
        if self._process is None or self._process.returncode is not None:
            return []
        return _browser_tree(self._process.pid, self._run_dir)

    # -----------------------------------------------------------------------------------------
    # Launch

    async def _launch(self) -> Browser:
        if not os.access(self.executable_path, os.X_OK):
            raise SettingsError(
                f"Invalid {ENV_PREFIX}CHROMIUM_PATH {self.executable_path!r}: no executable file "
                "there. Install Chromium or point the setting at its binary."
            )

        started_at = time.monotonic()
        _remove_stale_run_dirs(Path(tempfile.gettempdir()))
        run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
        (run_dir / OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")
        profile_dir = run_dir / "profile"
        log_path = run_dir / "chromium.log"
        argv = [
            self.executable_path,
            *chromium_args(profile_dir, self.extra_args),
            "--remote-debugging-port=0",
            "about:blank",
        ]
        # Debian's Chromium 156 keeps its crash database under $XDG_CONFIG_HOME/chromium. A
        # folder per launch keeps it out of the user's home and puts run_dir on the command line
        # of the crashpad handlers, which is how _browser_tree finds them outside the group.
        env = {**os.environ, "XDG_CONFIG_HOME": str(run_dir / "config")}
        try:
            with open(log_path, "wb") as log_file:
                process = await start_process_group(
                    argv, stdout=log_file, stderr=asyncio.subprocess.STDOUT, env=env
                )
        except OSError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise BotledgerError(
                f"Cannot start Chromium from {self.executable_path}: {exc}."
            ) from exc
        self._process = process
        self._run_dir = run_dir
        self.launch_count += 1

        try:
            ws_endpoint = await self._wait_for_devtools(profile_dir / "DevToolsActivePort")
            browser = await self._connect(ws_endpoint)
        except BaseException:
            await self._shut_down()
            raise

        self._browser = browser
        browser.on(Browser.Events.Disconnected, lambda: self._log_disconnect(browser))
        logger.info(
            "Launched Chromium pid %s in %.2f s (profile %s)",
            process.pid,
            time.monotonic() - started_at,
            profile_dir,
        )
        return browser

    async def _wait_for_devtools(self, port_file: Path) -> str:
        """Poll for ``DevToolsActivePort`` (port, then path) and return the WebSocket URL."""
        assert self._process is not None and self._run_dir is not None
        deadline = time.monotonic() + self.launch_timeout_s
        while True:
            if self._process.returncode is not None:
                raise BotledgerError(
                    f"Chromium exited with code {self._process.returncode} during launch. End "
                    f"of its log:\n{read_log_tail(self._run_dir / 'chromium.log')}"
                )
            lines = _read_lines(port_file)
            if len(lines) >= 2 and lines[0].isdigit():
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            if time.monotonic() >= deadline:
                raise BotledgerError(
                    f"Chromium did not open its DevTools port within {self.launch_timeout_s:.0f} "
                    f"s. End of its log:\n{read_log_tail(self._run_dir / 'chromium.log')}"
                )
            await asyncio.sleep(POLL_INTERVAL_S)

    async def _connect(self, ws_endpoint: str) -> Browser:
        """Attach pyppeteer to the DevTools WebSocket, as ``pyppeteer.connect`` does."""
        connection = Connection(ws_endpoint, asyncio.get_running_loop())
        try:
            result = await send_cdp(
                connection, "Target.getBrowserContexts", {}, self.launch_timeout_s
            )
            if not isinstance(result, dict):
                raise ConnectionError("DevTools connection closed before its first reply")
            browser = Browser(
                connection,
                result.get("browserContextIds", []),
                False,
                DEFAULT_VIEWPORT,
                None,
                lambda: connection.send("Browser.close"),
            )
            await send_cdp(
                connection, "Target.setDiscoverTargets", {"discover": True}, self.launch_timeout_s
            )
            return browser
        except CDP_ERRORS as exc:
            await _abandon_connection(connection)
            raise BotledgerError(
                f"Connecting to Chromium's DevTools at {ws_endpoint} failed: {exc!r}."
            ) from exc

    def _is_healthy(self) -> bool:
        if self._process is None or self._process.returncode is not None:
            return False
        # The exit code arrives from asyncio's child watcher a little later than the exit.
        stat = read_proc_stat(self._process.pid)
        if stat is None or stat.is_zombie:
            return False
        return self._browser is not None and bool(self._browser._connection._connected)

    def _log_disconnect(self, browser: Browser) -> None:
        if browser is self._browser and not self._stopped:
            logger.warning("DevTools connection to Chromium pid %s closed", self.pid)

    # -----------------------------------------------------------------------------------------
    # Shutdown

    async def _shut_down(self) -> None:
        """Close the browser, then kill and reap whatever is left of its process tree."""
        browser, process, run_dir = self._browser, self._process, self._run_dir
        self._browser, self._process, self._run_dir = None, None, None
        if process is None:
            return

        tree = _browser_tree(process.pid, run_dir)
        if browser is not None:
            await self._close_browser(browser, process)
        await kill_process_group(process.pid, self.kill_grace_s)
        await _kill_leftovers(tree, self.kill_grace_s)
        returncode = await process.wait()
        release_pid(process.pid)
        if browser is not None:
            await _abandon_connection(browser._connection)
        await _reap_tree(process.pid, tree)

        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        logger.info("Chromium pid %s stopped with exit code %s", process.pid, returncode)

    async def _close_browser(self, browser: Browser, process: asyncio.subprocess.Process) -> None:
        """Ask Chromium to exit over CDP and wait up to ``close_timeout_s`` for it."""
        stat = read_proc_stat(process.pid)
        if stat is None or stat.is_zombie or not browser._connection._connected:
            return

        deadline = time.monotonic() + self.close_timeout_s
        try:
            await send_cdp(browser._connection, "Browser.close", {}, self.close_timeout_s)
        except CDP_ERRORS as exc:
            # The reply to Browser.close often loses the race with the closing socket.
            logger.debug("Browser.close to Chromium pid %s ended with %r", process.pid, exc)
        try:
            await asyncio.wait_for(process.wait(), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            logger.warning(
                "Chromium pid %s still running %.1f s after Browser.close; killing its group",
                process.pid,
                self.close_timeout_s,
            )


async def send_cdp(
    connection: Connection, method: str, params: dict[str, Any], timeout_s: float
) -> Any:
    """Send a CDP command over a pyppeteer connection and wait ``timeout_s`` for the reply.

    On timeout or cancellation the reply future is left pending, not cancelled. pyppeteer 2.0
    sets the result of a late reply without checking the future first. For a cancelled future
    that raises InvalidStateError, which ends its receive loop and so loses the connection.
    """
    reply = _send(connection, method, params)
    return await asyncio.wait_for(asyncio.shield(reply), timeout=timeout_s)


def _send(connection: Connection, method: str, params: dict[str, Any]) -> asyncio.Future[Any]:
    reply: asyncio.Future[Any] = connection.send(method, params)
    reply.add_done_callback(_retrieve_exception)
    return reply


def _retrieve_exception(reply: asyncio.Future[Any]) -> None:
    # Marks the exception of an abandoned reply as seen, so asyncio does not log it.
    if not reply.cancelled():
        reply.exception()


def _succeeded(reply: asyncio.Future[Any]) -> bool:
    return not reply.cancelled() and reply.exception() is None


def _forget_context(browser: Browser, context_id: str, reply: asyncio.Future[Any]) -> None:
    if _succeeded(reply):
        browser._contexts.pop(context_id, None)


def _dispose_abandoned_context(browser: Browser, reply: asyncio.Future[Any]) -> None:
    """Dispose a context whose creation reply came after its caller had given up."""
    if not _succeeded(reply) or not isinstance(reply.result(), dict):
        return
    context_id = reply.result().get("browserContextId")
    if context_id is None or not browser._connection._connected:
        return
    logger.info("Disposing browser context %s created after its caller gave up", context_id)
    try:
        _send(browser._connection, "Target.disposeBrowserContext", {"browserContextId": context_id})
    except ConnectionError as exc:
        logger.debug("Disposing browser context %s failed: %r", context_id, exc)


async def _abandon_connection(connection: Connection) -> None:
    """Close a pyppeteer connection and cancel sends still waiting for it to open.

    pyppeteer 2.0 queues each send in a task that loops until the socket opens, and that task
    never ends when the socket never opens. Those tasks are found by their bound ``self``.
    """
    try:
        await connection.dispose()
    except (*CDP_ERRORS, asyncio.InvalidStateError) as exc:
        # pyppeteer's close handler sets results on futures that a timed-out call already
        # cancelled, which raises InvalidStateError; the connection is closed either way.
        logger.debug("Closing the DevTools connection ended with %r", exc)

    for task in asyncio.all_tasks():
        coroutine = task.get_coro()
        frame = getattr(coroutine, "cr_frame", None)
        if (
            getattr(coroutine, "__qualname__", "") == "Connection._async_send"
            and frame is not None
            and frame.f_locals.get("self") is connection
        ):
            task.cancel()


def _browser_tree(pid: int, run_dir: Path | None) -> list[int]:
    """Return the live processes of one browser: its descendants and session, and the
    crashpad handlers, which leave both but carry ``run_dir`` in their command line."""
    pids = set(descendants(pid))
    if run_dir is not None:
        pids.update(processes_with_argument(str(run_dir)))
    return sorted(pids)


async def _kill_leftovers(pids: Sequence[int], grace_s: float) -> None:
    """Give processes of the tree outside the browser's group ``grace_s`` to exit, then kill.

    The crashpad handlers exit by themselves once the browser has gone.
    """
    deadline = time.monotonic() + grace_s
    while True:
        running = [pid for pid in pids if _is_running(pid)]
        if not running:
            return
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_INTERVAL_S)

    for pid in running:
        logger.warning("Killing Chromium helper pid %s, still running after its browser", pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


async def _reap_tree(session_id: int, pids: Sequence[int]) -> None:
    """Reap the browser's zombies that were re-parented to this process.

    Only a child subreaper (see infra.processes.become_subreaper) receives them. Otherwise
    they belong to PID 1 and this returns as soon as none of them is still running.
    """
    my_pid = os.getpid()
    known = set(pids)
    deadline = time.monotonic() + REAP_TIMEOUT_S
    while True:
        reap_zombies()
        remaining = [
            stat for stat in list_processes() if stat.sid == session_id or stat.pid in known
        ]
        if all(stat.is_zombie and stat.ppid != my_pid for stat in remaining):
            return
        if time.monotonic() >= deadline:
            logger.warning(
                "%s processes of Chromium pid %s remain after %.0f s: %s",
                len(remaining),
                session_id,
                REAP_TIMEOUT_S,
                sorted(stat.pid for stat in remaining),
            )
            return
        await asyncio.sleep(POLL_INTERVAL_S)


def _is_running(pid: int) -> bool:
    stat = read_proc_stat(pid)
    return stat is not None and not stat.is_zombie


def _remove_stale_run_dirs(temp_dir: Path) -> None:
    """Delete run folders whose owning service has died and that no process still uses."""
    for path in temp_dir.glob(f"{RUN_DIR_PREFIX}*"):
        lines = _read_lines(path / OWNER_FILE)
        if not lines or not lines[0].isdigit() or read_proc_stat(int(lines[0])) is not None:
            continue
        if processes_with_argument(str(path)):
            continue
        logger.info("Deleting %s, left by service pid %s that has exited", path, lines[0])
        shutil.rmtree(path, ignore_errors=True)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
