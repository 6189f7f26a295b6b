"""``botledger run``: trigger a bot over the public API and follow it to the end."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any, TextIO

import aiohttp

from events.errors import BotledgerError, ValidationError
from infra.endpoints import ADMIN_KEY_FILE, read_endpoints
from infra.settings import Settings

TERMINAL_EVENTS = frozenset(
    {"ExecutionCompleted", "ExecutionFailed", "ExecutionTimedOut", "ExecutionCancelled"}
)

FINISHED_STATUSES = frozenset({"completed", "failed", "timed_out", "cancelled"})
VIEW_WAIT_S = 10.0


def parse_params(pairs: list[str], types: dict[str, str] | None = None) -> dict[str, Any]:
    """Turn NAME=VALUE pairs into params.

    A parameter the manifest declares as a string keeps the text as typed (``zip=01234``). Any
    other VALUE is read as JSON when it parses (2, true, [1]), and as text otherwise.
    """
    types = types or {}
    params: dict[str, Any] = {}
    for pair in pairs:
        name, separator, raw = pair.partition("=")
        if not separator or not name:
            raise ValidationError(
                f"Invalid --param {pair!r}: write it as NAME=VALUE, e.g. --param searchQuery=lamp."
            )
        if types.get(name) == "string":
            params[name] = raw
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params[name] = raw if isinstance(value, str) else value
    return params


def api_key_for(settings: Settings, explicit: str | None) -> str:
    key = explicit or os.environ.get("BOTLEDGER_API_KEY")
    if key:
        return key
    path = settings.data_dir / ADMIN_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    raise ValidationError(
        f"No API key: pass --api-key, set BOTLEDGER_API_KEY, or point --data-dir at a stack "
        f"that has {path.name}."
    )


async def run_bot(
    settings: Settings,
    bot_id: str,
    param_pairs: list[str],
    wait: bool,
    api_key: str | None,
    out: TextIO,
) -> int:
    api_url = read_endpoints(settings.data_dir).api_url
    headers = {"Authorization": f"Bearer {api_key_for(settings, api_key)}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        manifest = await _request(session, "GET", f"{api_url}/bots/{bot_id}/manifest")
        types = {
            name: str(definition.get("type"))
            for name, definition in (manifest.get("parameters") or {}).items()
        }
        params = parse_params(param_pairs, types)
        execution = await _request(
            session, "POST", f"{api_url}/bots/{bot_id}/executions", {"params": params}
        )
        execution_id = execution["id"]
        print(f"Execution {execution_id} is {execution['status']}.", file=out, flush=True)
        if not wait:
            return 0

        actions: dict[Any, str] = {}
        async for event in _events(session, f"{api_url}/executions/{execution_id}/events"):
            _print_progress(event, actions, out)
            if event.get("type") in TERMINAL_EVENTS:
                break
        return await _print_outcome(session, api_url, execution_id, out)


async def _request(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> dict[str, Any]:
    async with session.request(method, url, json=body) as response:
        payload = await response.json(content_type=None)
        if response.status >= 400:
            problems = (payload.get("details") or {}).get("problems") or []
            if len(problems) > 1:
                lines = [f"The request has {len(problems)} problems:"]
                lines += [f"  - {p.get('message')}" for p in problems if p.get("message")]
            else:
                lines = [payload.get("error", f"HTTP {response.status}")]
            if response.status == 401:
                lines.append(
                    "Pass another key with --api-key or BOTLEDGER_API_KEY; without them the "
                    f"key comes from the {ADMIN_KEY_FILE} file of the data directory."
                )
            raise BotledgerError("\n".join(lines))
        data: dict[str, Any] = payload["data"]
        return data


async def _events(session: aiohttp.ClientSession, url: str) -> AsyncIterator[dict[str, Any]]:
    """Yield the JSON data of each server-sent event; comment lines are keep-alives."""
    async with session.get(url, headers={"Accept": "text/event-stream"}) as response:
        if response.status != 200:
            body = await response.json(content_type=None)
            raise BotledgerError(body.get("error", f"Event stream failed: HTTP {response.status}"))
        data_lines: list[str] = []
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                data_lines.append(line[5:].lstrip())
            elif not line and data_lines:
                yield json.loads("\n".join(data_lines))
                data_lines = []


def _print_progress(event: dict[str, Any], actions: dict[Any, str], out: TextIO) -> None:
    payload = event.get("payload") or {}
    kind = event.get("type")
    index = payload.get("index")
    if kind == "StepStarted":
        label = payload.get("label")
        actions[index] = f"{payload.get('action')}" + (f" '{label}'" if label else "")
    elif kind == "StepCompleted":
        duration = payload.get("durationMs", payload.get("duration_ms"))
        print(f"  step {index} ({actions.get(index, '?')}) completed in {duration} ms",
              file=out, flush=True)
    elif kind == "StepFailed":
        print(f"  step {index} ({actions.get(index, '?')}) failed: {payload.get('error')}",
              file=out, flush=True)
    elif kind == "ExecutionStarted":
        print("  started", file=out, flush=True)


async def _finished_execution(
    session: aiohttp.ClientSession, api_url: str, execution_id: str
) -> dict[str, Any]:
    """Poll the execution until its view shows the end the event stream already reported."""
    deadline = time.monotonic() + VIEW_WAIT_S
    while True:
        execution = await _request(session, "GET", f"{api_url}/executions/{execution_id}")
        if execution["status"] in FINISHED_STATUSES or time.monotonic() > deadline:
            return execution
        await asyncio.sleep(0.1)


async def _print_outcome(
    session: aiohttp.ClientSession, api_url: str, execution_id: str, out: TextIO
) -> int:
    execution = await _finished_execution(session, api_url, execution_id)
    status = execution["status"]
    print(f"Execution {execution_id} {status} in {execution.get('duration')} ms.", file=out)
    if status == "completed":
        try:
            extract = await _request(session, "GET", f"{api_url}/executions/{execution_id}/extract")
        except BotledgerError:
            print("It extracted no data.", file=out)
            return 0
        print(json.dumps(extract, indent=2, ensure_ascii=False), file=out)
        return 0
    if status in ("failed", "timed_out"):
        failure = await _request(session, "GET", f"{api_url}/executions/{execution_id}/failure")
        print(f"Error: {failure.get('error')}", file=out)
        if failure.get("screenshotUrl"):
            print(f"Screenshot: {failure['screenshotUrl']}", file=out)
    return 1
