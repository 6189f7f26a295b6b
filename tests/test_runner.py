"""The runner service with real NATS, SeaweedFS and Chromium."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from events.execution import CANCELLED, COMPLETED, FAILED, RUNNING, TIMED_OUT
from infra.processes import become_subreaper, count_defunct, list_processes
from services.runner.service import Runner
from runner_fixtures import (
    RunnerStack,
    SharedServers,
    serve_pages,
    start_runner_stack,
    start_shared_servers,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SharedServers]:
    become_subreaper()
    async for shared in start_shared_servers(tmp_path_factory.mktemp("servers")):
        yield shared


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site() -> AsyncIterator[str]:
    runner, base_url = await serve_pages()
    yield base_url
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    servers: SharedServers, site: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[RunnerStack, Runner]]:
    runner_stack = await start_runner_stack(tmp_path_factory.mktemp("stack"), servers, site)
    runner = runner_stack.new_runner("runner-main")
    await runner.start()
    yield runner_stack, runner
    await runner.stop()
    await runner_stack.event_store.nc.close()


def chromium_zombies() -> set[int]:
    """Zombie Chromium processes whose parent is this (subreaper) test process."""
    return {
        process.pid
        for process in list_processes()
        if process.is_zombie and "chrom" in process.comm.lower() and process.ppid == os.getpid()
    }


async def test_extraction_completes(stack: tuple[RunnerStack, Runner]) -> None:
    runner_stack, _ = stack
    execution = await runner_stack.request([
        {"action": "goto", "url": "{{bot.targetUrl}}/"},
        {"action": "extract", "name": "title", "selector": "#title"},
        {"action": "extract", "name": "items", "selector": ".item", "multiple": True},
    ])

    done = await runner_stack.wait_finished(execution)

    assert done.status == COMPLETED
    assert done.extracted == {"title": "Welcome", "items": ["alpha", "beta"]}
    assert done.steps[0]["data"]["status"] == 200
    assert [done.steps[i]["status"] for i in range(3)] == [COMPLETED] * 3


async def test_console_output_in_logs(stack: tuple[RunnerStack, Runner]) -> None:
    runner_stack, _ = stack
    execution = await runner_stack.request([{"action": "goto", "url": "{{bot.targetUrl}}/"}])
    await runner_stack.wait_finished(execution)

    lines = [
        line
        for payload in await runner_stack.stored_payloads(execution)
        for line in orjson.loads(payload).get("lines", [])
    ]

    script = [line for line in lines if line["source"] == "script"]
    assert any("hello from the page" in line["message"] for line in script)
    assert any(line["source"] == "system" for line in lines)
    assert any(line["source"] == "runner" for line in lines)
    assert [line["time"] for line in lines] == sorted(line["time"] for line in lines)


async def test_failing_selector_stores_evidence(stack: tuple[RunnerStack, Runner]) -> None:
    runner_stack, _ = stack
    execution = await runner_stack.request([
        {"action": "goto", "url": "{{bot.targetUrl}}/"},
        {"action": "click", "selector": "#missing-button", "timeoutMs": 500},
    ])

    done = await runner_stack.wait_finished(execution)
    payloads = [orjson.loads(p) for p in await runner_stack.stored_payloads(execution)]
    failure = payloads[-1]

    assert done.status == FAILED
    assert done.failure is not None
    assert done.failure["failedStep"] == 1
    assert "#missing-button" in done.failure["reason"]
    png, content_type = await runner_stack.artifacts.get_bytes(failure["screenshot_key"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert content_type == "image/png"
    html, _ = await runner_stack.artifacts.get_bytes(failure["dom_key"])
    assert b"Welcome" in html


async def test_wall_clock_timeout(stack: tuple[RunnerStack, Runner]) -> None:
    runner_stack, _ = stack
    execution = await runner_stack.request(
        [
            {"action": "goto", "url": "{{bot.targetUrl}}/slow"},
            {"action": "waitFor", "ms": 20000},
        ],
        capabilities={"timeout": 2},
    )

    started = time.monotonic()
    done = await runner_stack.wait_finished(execution)

    assert done.status == TIMED_OUT
    assert time.monotonic() - started < 15
    assert done.failure is not None
    assert "2 s" in done.failure["reason"]


async def test_cancel_running_execution(stack: tuple[RunnerStack, Runner]) -> None:
    runner_stack, _ = stack
    execution = await runner_stack.request([
        {"action": "goto", "url": "{{bot.targetUrl}}/slow"},
        {"action": "waitFor", "ms": 30000},
    ])
    running = await runner_stack.wait_until(
        execution, lambda e: e.status == RUNNING and 1 in e.steps
    )

    running.request_cancel("test")
    await runner_stack.event_store.save(running)
    started = time.monotonic()
    done = await runner_stack.wait_finished(execution)

    assert done.status == CANCELLED
    assert time.monotonic() - started < 10
    assert done.steps[1]["status"] == FAILED
    assert done.steps[1]["error"] == "The execution ended before this step finished."


async def test_secret_never_stored_in_clear(stack: tuple[RunnerStack, Runner]) -> None:
    runner_stack, _ = stack
    secret = "hunter2-very-secret"
    execution = await runner_stack.request(
        [
            {"action": "goto", "url": "{{bot.targetUrl}}/form"},
            {"action": "type", "selector": "#password", "text": "{{params.password}}"},
            {"action": "evaluate", "name": "typed",
             "expression": "document.querySelector('#password').value"},
            {"action": "click", "selector": "#absent", "timeoutMs": 300},
        ],
        secrets={"password": secret},
    )

    done = await runner_stack.wait_finished(execution)
    payloads = b"".join(await runner_stack.stored_payloads(execution))

    assert done.status == FAILED
    assert secret.encode() not in payloads
    assert done.steps[2]["data"] == "***"


async def test_fifty_executions_leave_nothing_open(stack: tuple[RunnerStack, Runner]) -> None:
    runner_stack, runner = stack
    # Browsers that earlier test modules launched may have left zombies; only new ones count.
    zombies_before = chromium_zombies()
    programs = [
        [{"action": "goto", "url": "{{bot.targetUrl}}/"},
         {"action": "extract", "name": "t", "selector": "#title"}],
        [{"action": "goto", "url": "{{bot.targetUrl}}/"},
         {"action": "assert", "selector": "#nothing-here"}],
    ]
    executions = [await runner_stack.request(programs[i % 2]) for i in range(48)]
    executions += [
        await runner_stack.request(
            [{"action": "goto", "url": "{{bot.targetUrl}}/slow"}, {"action": "waitFor", "ms": 9000}],
            capabilities={"timeout": 1},
        )
        for _ in range(2)
    ]

    finished = [await runner_stack.wait_finished(e, timeout_s=120) for e in executions]

    statuses = [e.status for e in finished]
    assert statuses.count(COMPLETED) == 24
    assert statuses.count(FAILED) == 24
    assert statuses.count(TIMED_OUT) == 2
    assert runner.browser.open_context_count() == 0
    assert runner.browser.open_page_count() == 0
    assert chromium_zombies() - zombies_before == set()
    assert count_defunct("chrom", parent_pid=runner.browser.pid) == 0


async def test_killed_runner_execution_ends(
    servers: SharedServers, site: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    runner_stack = await start_runner_stack(tmp_path_factory.mktemp("recovery"), servers, site)
    settings = runner_stack.settings
    env = {
        **os.environ,
        "BOTLEDGER_NATS_URL": servers.nats.url,
        "BOTLEDGER_S3_ENDPOINT": servers.s3_endpoint,
        "BOTLEDGER_S3_BUCKET": settings.s3_bucket,
        "BOTLEDGER_STREAM_NAME": settings.stream_name,
        "BOTLEDGER_SUBJECT_PREFIX": settings.subject_prefix,
        "BOTLEDGER_DATA_DIR": str(settings.data_dir),
        "BOTLEDGER_RUNNER_ACK_WAIT_S": str(settings.runner_ack_wait_s),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.runner"], env=env, start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        execution = await runner_stack.request([
            {"action": "goto", "url": "{{bot.targetUrl}}/slow"},
            {"action": "waitFor", "ms": 60000},
        ])
        running = await runner_stack.wait_until(
            execution, lambda e: e.status == RUNNING and 1 in e.steps, timeout_s=60
        )
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        killed_at = time.monotonic()

        rescuer = runner_stack.new_runner("runner-rescuer")
        await rescuer.start()
        try:
            done = await runner_stack.wait_finished(execution, timeout_s=30)
        finally:
            await rescuer.stop()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        await runner_stack.event_store.nc.close()

    assert done.status == FAILED
    assert done.failure is not None
    assert running.runner_id is not None
    assert running.runner_id in done.failure["reason"]
    assert time.monotonic() - killed_at < settings.runner_ack_wait_s * 3 + 5


async def test_proxy_capability_routes_through_proxy(
    servers: SharedServers, site: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    seen_urls: list[str] = []

    async def stand_in_proxy(request: web.Request) -> web.Response:
        # The stand-in serves every proxied request itself, so the made-up host is never resolved.
        seen_urls.append(str(request.url))
        return web.Response(text="<p id='via'>served by the proxy</p>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in_proxy)
    proxy_runner = web.AppRunner(app, access_log=None)
    await proxy_runner.setup()
    await web.TCPSite(proxy_runner, "127.0.0.1", 0).start()
    proxy_port = proxy_runner.addresses[0][1]
    runner_stack = await start_runner_stack(tmp_path_factory.mktemp("proxy"), servers, site)
    runner = runner_stack.new_runner("runner-proxy", proxy_url=f"http://127.0.0.1:{proxy_port}")
    await runner.start()
    try:
        proxied = await runner_stack.request(
            [{"action": "goto", "url": "http://shop.botledger-test.invalid/start"},
             {"action": "extract", "name": "via", "selector": "#via"}],
            capabilities={"proxy": True},
        )
        direct = await runner_stack.request(
            [{"action": "goto", "url": "{{bot.targetUrl}}/"},
             {"action": "extract", "name": "title", "selector": "#title"}],
            capabilities={"proxy": False},
        )
        proxied_done = await runner_stack.wait_finished(proxied)
        direct_done = await runner_stack.wait_finished(direct)
    finally:
        await runner.stop()
        await proxy_runner.cleanup()
        await runner_stack.event_store.nc.close()

    assert proxied_done.extracted == {"via": "served by the proxy"}
    assert "http://shop.botledger-test.invalid/start" in seen_urls
    assert direct_done.extracted == {"title": "Welcome"}
    assert not any(site in url for url in seen_urls)


async def test_proxy_without_configuration_fails(stack: tuple[RunnerStack, Runner]) -> None:
    runner_stack, _ = stack
    execution = await runner_stack.request(
        [{"action": "goto", "url": "{{bot.targetUrl}}/"}], capabilities={"proxy": True}
    )

    done = await runner_stack.wait_finished(execution)

    assert done.status == FAILED
    assert done.failure is not None
    assert "BOTLEDGER_PROXY_URL" in done.failure["reason"]
