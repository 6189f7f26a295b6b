"""Helpers of the end-to-end tests: run `botledger up` as a subprocess and call it over HTTP.

`StackProcess` starts the real CLI on a data directory, waits with a deadline until its API
responds and the demo bots exist, and stops it with SIGTERM. The process helpers read /proc so a
test can check that nats-server, SeaweedFS and Chromium went away with the stack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "timed_out"})
TERMINAL_EVENTS = frozenset(
    {"ExecutionCompleted", "ExecutionFailed", "ExecutionTimedOut", "ExecutionCancelled"}
)
DEMO_BOT_COUNT = 6
POLL_INTERVAL_S = 0.05
LOG_TAIL_CHARS = 4000
# `botledger up` prints this once the API, the demo site and the demo bots are ready.
READY_LINE = "Press Ctrl-C to stop."


class StackError(AssertionError):
    """The stack process did not start, respond or stop as a test expects."""


# Processes under /proc


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """One process as /proc shows it. The pair (pid, start_ticks) tells a reused pid apart."""

    pid: int
    name: str
    parent_pid: int
    start_ticks: int
    state: str
    command_line: str


def read_process(pid: int) -> ProcessInfo | None:
    """Return the process `pid`, or None when it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw_command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name in brackets may contain spaces, so the fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessInfo(
        pid=pid,
        name=stat[stat.index("(") + 1 : stat.rindex(")")],
        parent_pid=int(fields[1]),
        state=fields[0],
        start_ticks=int(fields[19]),
        command_line=raw_command.replace(b"\0", b" ").decode(errors="replace").strip(),
    )


def process_table() -> dict[int, ProcessInfo]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_process(int(entry))
            if info is not None:
                table[info.pid] = info
    return table


def processes_of(root_pid: int, marker: str) -> list[ProcessInfo]:
    """Return the descendants of `root_pid` and every process whose command line has `marker`."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.parent_pid, []).append(info.pid)

    found: dict[int, ProcessInfo] = {}
    pending = list(children.get(root_pid, []))
    while pending:
        pid = pending.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid]
            pending.extend(children.get(pid, []))
    for info in table.values():
        if marker in info.command_line and info.pid != os.getpid():
            found.setdefault(info.pid, info)
    return sorted(found.values(), key=lambda info: info.pid)


def still_running(processes: list[ProcessInfo]) -> list[ProcessInfo]:
    """Return the processes that still exist and are not zombies (same pid and start time)."""
    alive = []
    for before in processes:
        now = read_process(before.pid)
        if now is not None and now.start_ticks == before.start_ticks and now.state != "Z":
            alive.append(now)
    return alive


# The stack process


def tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except FileNotFoundError:
        return "(no output file)"


def child_environment() -> dict[str, str]:
    # Settings of the calling shell (a NATS URL, a port) would point the stack elsewhere.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BOTLEDGER_")}
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


@dataclasses.dataclass
class StopResult:
    exit_code: int | None
    stop_s: float
    before: list[ProcessInfo]
    leftovers: list[ProcessInfo]


@dataclasses.dataclass
class StackProcess:
    """One `botledger up --demo --port 0` process on a data directory."""

    data_dir: Path
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    api_url: str = ""
    admin_key: str = ""
    started_monotonic: float = 0.0
    # Seconds from the process start until GET /health returned 200.
    health_after_s: float = 0.0
    starts: int = 0

    @property
    def pid(self) -> int:
        assert self.process is not None, "the stack is not running"
        return self.process.pid

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"start-{self.starts}.stderr"

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"start-{self.starts}.stdout"

    def launch(self) -> None:
        """Start the CLI. `wait_ready` then waits until it serves the demo bots."""
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "services.cli", "--data-dir", str(self.data_dir),
            "up", "--demo", "--port", "0",
        ]
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.started_monotonic = time.monotonic()
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=child_environment(), stdout=stdout, stderr=stderr,
                stdin=subprocess.DEVNULL,
            )
        logger.info("Started botledger up as pid %d on %s", self.process.pid, self.data_dir)

    def check_alive(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise StackError(
                f"botledger up exited with code {code} before it was ready. Its stderr "
                f"ends with:\n{tail(self.stderr_path)}"
            )

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait for endpoints.json, /health, the admin key, the demo site and its six bots."""
        deadline = self.started_monotonic + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            self.api_url = await self._wait_for_endpoints(deadline)
            await self._wait_for_health(session, deadline)
            self.health_after_s = time.monotonic() - self.started_monotonic
            self.admin_key = await self._wait_for_admin_key(deadline)
            await self._wait_for_output(READY_LINE, deadline)
            await self._wait_for_demo_bots(session, deadline)
        logger.info(
            "Stack pid %d ready: health after %.2f s at %s",
            self.pid, self.health_after_s, self.api_url,
        )

    async def _poll_pause(self, deadline: float, waiting_for: str) -> None:
        self.check_alive()
        if time.monotonic() > deadline:
            raise StackError(
                f"Timed out waiting for {waiting_for} of pid {self.pid}. Its stderr ends "
                f"with:\n{tail(self.stderr_path)}"
            )
        await asyncio.sleep(POLL_INTERVAL_S)

    async def _wait_for_endpoints(self, deadline: float) -> str:
        path = self.data_dir / "endpoints.json"
        while True:
            try:
                endpoints = orjson.loads(path.read_bytes())
            except (FileNotFoundError, orjson.JSONDecodeError):
                endpoints = None
            # A file left by an earlier process names another pid.
            if endpoints is not None and endpoints.get("pid") == self.pid:
                api_url: str = endpoints["apiUrl"]
                return api_url
            await self._poll_pause(deadline, f"{path}")

    async def _wait_for_health(self, session: aiohttp.ClientSession, deadline: float) -> None:
        while True:
            try:
                async with session.get(f"{self.api_url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError as error:
                logger.debug("Health check of %s failed: %r", self.api_url, error)
            await self._poll_pause(deadline, f"GET {self.api_url}/health")

    async def _wait_for_admin_key(self, deadline: float) -> str:
        path = self.data_dir / "admin-key"
        while True:
            key = path.read_text().strip() if path.exists() else ""
            if key:
                return key
            await self._poll_pause(deadline, f"{path}")

    async def _wait_for_output(self, line: str, deadline: float) -> None:
        while line not in tail(self.stdout_path):
            await self._poll_pause(deadline, f"the output {line!r}")

    async def _wait_for_demo_bots(self, session: aiohttp.ClientSession, deadline: float) -> None:
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        while True:
            async with session.get(
                f"{self.api_url}/bots", params={"limit": "100"}, headers=headers
            ) as response:
                body = await response.json()
            if response.status == 200:
                names = {bot["name"] for bot in body["data"]}
                if len(names) >= DEMO_BOT_COUNT and "Price watcher (broken)" in names:
                    return
            await self._poll_pause(deadline, "the demo bots")

    def stop(self, timeout_s: float) -> StopResult:
        """Send SIGTERM, wait for the exit and return the exit code and the leftover processes."""
        assert self.process is not None
        before = processes_of(self.pid, str(self.data_dir))
        started = time.monotonic()
        logger.info("Sending SIGTERM to botledger up pid %d", self.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            exit_code: int | None = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            exit_code = None
        stop_s = time.monotonic() - started

        leftovers = still_running(before)
        leftover_deadline = time.monotonic() + 5.0
        while leftovers and time.monotonic() < leftover_deadline:
            time.sleep(POLL_INTERVAL_S)
            leftovers = still_running(leftovers)
        if exit_code is None:
            self.kill()
        self.process = None
        return StopResult(exit_code, stop_s, before, leftovers)

    def kill(self) -> None:
        """Kill the process and what it started, for a teardown after a failed test."""
        if self.process is None:
            return
        others = processes_of(self.pid, str(self.data_dir))
        self.process.kill()
        self.process.wait(timeout=10)
        for info in still_running(others):
            logger.warning("Killing leftover pid %d: %s", info.pid, info.command_line[:120])
            try:
                os.kill(info.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process = None


# HTTP


@dataclasses.dataclass
class Reply:
    """One HTTP response of the API: status, headers and the parsed JSON body (None if not JSON)."""

    status: int
    headers: dict[str, str]
    body: Any
    text: str


class Api:
    """A client of one running stack that follows it across restarts."""

    def __init__(self, session: aiohttp.ClientSession, stack: StackProcess) -> None:
        self.session = session
        self.stack = stack

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.admin_key}"}

    def url(self, path: str) -> str:
        return path if path.startswith("http") else f"{self.stack.api_url}{path}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        all_headers = {**self.headers, **(headers or {})}
        async with self.session.request(
            method, self.url(path), json=json, params=params, headers=all_headers
        ) as response:
            text = await response.text()
            try:
                body = orjson.loads(text) if text else None
            except orjson.JSONDecodeError:
                body = None
            return Reply(response.status, dict(response.headers), body, text)

    async def get(self, path: str, params: dict[str, str] | None = None) -> Reply:
        return await self.request("GET", path, params=params)

    async def get_bytes(self, path: str) -> tuple[int, str, bytes]:
        async with self.session.get(self.url(path), headers=self.headers) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.read()

    async def trigger(
        self, bot_id: str, params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        body = None if params is None else {"params": params}
        return await self.request(
            "POST", f"/bots/{bot_id}/executions", json=body, headers=headers
        )

    async def started_execution(self, bot_id: str, params: dict[str, Any] | None = None) -> str:
        reply = await self.trigger(bot_id, params)
        assert reply.status == 201, reply.text
        execution_id: str = reply.body["data"]["id"]
        return execution_id

    async def wait_for_status(
        self, execution_id: str, statuses: frozenset[str], timeout_s: float
    ) -> dict[str, Any]:
        """Poll GET /executions/:id until its status is one of `statuses`, and return the view."""
        deadline = time.monotonic() + timeout_s
        while True:
            reply = await self.get(f"/executions/{execution_id}")
            assert reply.status == 200, reply.text
            view: dict[str, Any] = reply.body["data"]
            if view["status"] in statuses:
                return view
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Execution {execution_id} is still {view['status']} after {timeout_s} s, "
                    f"expected one of {sorted(statuses)}"
                )
            await asyncio.sleep(POLL_INTERVAL_S * 4)

    async def finished(self, execution_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        return await self.wait_for_status(execution_id, TERMINAL_STATUSES, timeout_s)

    async def all_pages(self, path: str, limit: int = 100) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": str(limit), **({"cursor": cursor} if cursor else {})}
            reply = await self.get(path, params)
            assert reply.status == 200, reply.text
            items.extend(reply.body["data"])
            cursor = reply.body["cursor"]
            if cursor is None:
                return items


@dataclasses.dataclass(frozen=True)
class ServerSentEvent:
    id: str | None
    event: str | None
    data: str


async def server_sent_events(response: aiohttp.ClientResponse) -> AsyncIterator[ServerSentEvent]:
    """Parse a text/event-stream body into events, skipping comment lines."""
    fields: dict[str, list[str]] = {}
    async for raw_line in response.content:
        line = raw_line.decode().rstrip("\r\n")
        if line == "":
            if "data" in fields:
                yield ServerSentEvent(
                    id=fields.get("id", [None])[-1],
                    event=fields.get("event", [None])[-1],
                    data="\n".join(fields["data"]),
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
