"""The botledger command line against a real stack started in this process."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from infra.processes import become_subreaper
from infra.settings import Settings
from services.stack import Stack, open_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAGE = "<html><body><h1 id='title'>Hello CLI</h1><li class='n'>1</li><li class='n'>2</li></body></html>"


async def botledger(data_dir: Path, *args: str) -> tuple[int, str, str]:
    """Run the CLI as a user would, in a subprocess; return exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "--data-dir", str(data_dir), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    become_subreaper()
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("cli"),
        http_port=0,
        stream_name=f"CLI_{suffix}",
        subject_prefix=f"cli{suffix}",
    )
    async with open_stack(settings) as running:
        yield running


async def api(stack: Stack, method: str, path: str, key: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.request(method, stack.endpoints.api_url + path, json=body) as response:
            return response.status, await response.json()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def bot_id(stack: Stack, site: str) -> str:
    assert stack.new_admin_key is not None
    status, body = await api(stack, "POST", "/bots", stack.new_admin_key, {
        "name": "cli bot",
        "targetUrl": site,
        "kind": "action",
        "steps": [
            {"action": "goto", "url": "{{bot.targetUrl}}/"},
            {"action": "extract", "name": "title", "selector": "#title"},
            {"action": "extract", "name": "numbers", "selector": ".n", "multiple": True},
        ],
    })
    assert status == 201
    status, _ = await api(
        stack, "PUT", f"/bots/{body['data']['id']}/manifest", stack.new_admin_key,
        {"parameters": {"searchQuery": {"type": "string", "required": False}}},
    )
    assert status == 200
    return str(body["data"]["id"])


async def test_admin_key_file_is_private(stack: Stack) -> None:
    path = stack.settings.data_dir / "admin-key"

    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == stack.new_admin_key


async def test_keys_create_prints_working_key(stack: Stack) -> None:
    code, stdout, stderr = await botledger(
        stack.settings.data_dir, "keys", "create", "--org", "default", "--permission", "read",
        "--name", "reporting",
    )
    key = stdout.strip()

    assert code == 0, stderr
    assert stdout.count("\n") == 1
    assert key.startswith("blk_")
    status, _ = await api(stack, "GET", "/bots", key)
    assert status == 200
    status, body = await api(stack, "POST", "/bots", key, {"name": "x", "targetUrl": "http://127.0.0.1/"})
    assert status == 403
    assert body["code"] == "forbidden"


async def test_keys_create_rejects_bad_org(stack: Stack) -> None:
    code, stdout, stderr = await botledger(
        stack.settings.data_dir, "keys", "create", "--org", "Bad Org!", "--permission", "read",
        "--name", "x",
    )

    assert code == 1
    assert stdout == ""
    assert "Invalid organization id 'Bad Org!'" in stderr


async def test_keys_create_without_stack(tmp_path: Path) -> None:
    code, _, stderr = await botledger(
        tmp_path, "keys", "create", "--org", "acme", "--permission", "read", "--name", "x"
    )

    assert code == 1
    assert "No running stack found" in stderr
    assert f"botledger --data-dir {tmp_path} up" in stderr


async def test_run_wait_prints_steps_and_data(stack: Stack, bot_id: str) -> None:
    code, stdout, stderr = await botledger(
        stack.settings.data_dir, "run", bot_id, "--param", "searchQuery=lamp", "--wait"
    )

    assert code == 0, stderr
    assert "step 0 (goto) completed" in stdout
    assert "step 2 (extract) completed" in stdout
    data = json.loads(stdout[stdout.index("{"):])
    assert data["data"] == {"title": "Hello CLI", "numbers": ["1", "2"]}


async def test_run_misspelt_param_suggests_name(stack: Stack, bot_id: str) -> None:
    code, stdout, stderr = await botledger(
        stack.settings.data_dir, "run", bot_id, "--param", "serchQuery=lamp"
    )

    assert code == 1
    assert stdout == ""
    assert "Unknown parameter 'serchQuery'. Did you mean 'searchQuery'?" in stderr


async def test_run_keeps_string_param_text(stack: Stack, bot_id: str) -> None:
    code, stdout, stderr = await botledger(
        stack.settings.data_dir, "run", bot_id, "--param", "searchQuery=5", "--wait"
    )

    assert code == 0, stderr
    assert "completed" in stdout


async def test_run_rejects_malformed_param(stack: Stack, bot_id: str) -> None:
    code, _, stderr = await botledger(stack.settings.data_dir, "run", bot_id, "--param", "oops")

    assert code == 1
    assert "Invalid --param 'oops'" in stderr


async def test_history_and_export(stack: Stack, bot_id: str) -> None:
    code, stdout, _ = await botledger(stack.settings.data_dir, "run", bot_id, "--wait")
    assert code == 0
    execution_id = stdout.split()[1]

    code, timeline, stderr = await botledger(stack.settings.data_dir, "history", execution_id)
    assert code == 0, stderr
    assert "ExecutionRequested" in timeline
    assert "ExecutionCompleted" in timeline

    code, exported, stderr = await botledger(stack.settings.data_dir, "export", execution_id)
    assert code == 0, stderr
    events = json.loads(exported)["data"]
    assert events[0]["type"] == "ExecutionRequested"
    assert events[-1]["type"] == "ExecutionCompleted"
    assert [e["sequence"] for e in events] == sorted(e["sequence"] for e in events)


async def test_verify_matches_live_views(stack: Stack) -> None:
    code, stdout, stderr = await botledger(stack.settings.data_dir, "verify")

    assert code == 0, stderr
    assert "views match the log" in stdout
