"""BrowserSupervisor and the process helpers against real Chromium on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from events.errors import BotledgerError, SettingsError, ValidationError
from infra.chromium import REQUIRED_FLAGS, BrowserSupervisor, chromium_args
from infra.processes import (
    become_subreaper,
    count_defunct,
    descendants,
    read_proc_stat,
    reap_zombies,
    register_pid,
    release_pid,
    rss_bytes,
    tcp_listeners,
)

pytestmark = pytest.mark.timeout(60)

CHROMIUM_PATH = "/usr/bin/chromium"
# Every host name except 127.0.0.1 fails to resolve, so no page can reach another machine.
RESOLVER_RULES = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
PAGE_HTML = """<!doctype html>
<html><head><title>botledger test page</title></head>
<body><p id="greeting">hello from 127.0.0.1</p></body></html>"""

async def poll_until(condition: Callable[[], bool], timeout_s: float, description: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting until {description}")
        await asyncio.sleep(0.02)


def is_gone_or_zombie(pid: int) -> bool:
    stat = read_proc_stat(pid)
    return stat is None or stat.is_zombie


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> None:
    # Chromium's helpers are re-parented when the browser exits; as subreaper, this process
    # receives them and can reap them, as a runner does.
    become_subreaper()


@pytest_asyncio.fixture
async def site() -> AsyncIterator[str]:
    """Serve PAGE_HTML on a free 127.0.0.1 port and yield its base URL."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE_HTML, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp_site = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp_site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """Run a stand-in HTTP proxy that responds to every request itself.

    Yields the proxy address and the list of request URLs it received.
    """
    seen_urls: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen_urls.append(str(request.url))
        html = f"<p id='via'>via proxy {request.host}</p>"
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp_site = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp_site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen_urls
    await runner.cleanup()


@pytest_asyncio.fixture
async def supervisor() -> AsyncIterator[BrowserSupervisor]:
    browser_supervisor = BrowserSupervisor(CHROMIUM_PATH, extra_args=[RESOLVER_RULES])
    await browser_supervisor.start()
    yield browser_supervisor
    await browser_supervisor.stop()


def test_chromium_args_have_required_flags(tmp_path: Path) -> None:
    args = chromium_args(tmp_path / "profile", ["--proxy-server=http://127.0.0.1:3128"])

    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"):
        assert flag in args
    assert args[: len(REQUIRED_FLAGS)] == list(REQUIRED_FLAGS)
    assert f"--user-data-dir={tmp_path / 'profile'}" in args
    assert args[-1] == "--proxy-server=http://127.0.0.1:3128"


@pytest.mark.parametrize("arg", ["--user-data-dir=/tmp/x", "--remote-debugging-port=9222"])
def test_chromium_args_reject_reserved_flag(arg: str) -> None:
    with pytest.raises(SettingsError):
        chromium_args("/tmp/profile", [arg])


async def test_missing_executable_raises_settings_error(tmp_path: Path) -> None:
    browser_supervisor = BrowserSupervisor(str(tmp_path / "no-chromium"))

    with pytest.raises(SettingsError):
        await browser_supervisor.start()
    await browser_supervisor.stop()


async def test_page_evaluates_on_local_site(supervisor: BrowserSupervisor, site: str) -> None:
    context = await supervisor.new_context()
    page = await context.newPage()

    await page.goto(site)
    title = await page.evaluate("document.title")
    greeting = await page.querySelectorEval("#greeting", "node => node.textContent")
    product = await page.evaluate("6 * 7")
    pages_while_open = supervisor.open_page_count()
    await supervisor.close_context(context)

    assert title == "botledger test page"
    assert greeting == "hello from 127.0.0.1"
    assert product == 42
    assert pages_while_open == 1
    assert supervisor.open_page_count() == 0
    assert supervisor.open_context_count() == 0


async def test_ten_contexts_leave_none_open(supervisor: BrowserSupervisor, site: str) -> None:
    for _ in range(10):
        context = await supervisor.new_context()
        page = await context.newPage()
        await page.goto(site)
        await supervisor.close_context(context)

    browser = await supervisor.browser()
    chromium_contexts = await browser._connection.send("Target.getBrowserContexts")

    assert supervisor.open_context_count() == 0
    assert supervisor.open_page_count() == 0
    assert chromium_contexts["browserContextIds"] == []


async def test_contexts_do_not_share_cookies(supervisor: BrowserSupervisor, site: str) -> None:
    first = await supervisor.new_context()
    second = await supervisor.new_context()
    first_page = await first.newPage()
    second_page = await second.newPage()

    await first_page.goto(site)
    await first_page.evaluate("document.cookie = 'session=first'")
    await second_page.goto(site)
    first_cookies = await first_page.evaluate("document.cookie")
    second_cookies = await second_page.evaluate("document.cookie")
    await supervisor.close_context(first)
    await supervisor.close_context(second)

    assert first_cookies == "session=first"
    assert second_cookies == ""


async def test_proxy_context_sends_requests_to_proxy(
    supervisor: BrowserSupervisor, proxy: tuple[str, list[str]]
) -> None:
    proxy_address, seen_urls = proxy
    context = await supervisor.new_context(proxy_server=proxy_address)
    page = await context.newPage()

    await page.goto("http://shop.test/item")
    text = await page.querySelectorEval("#via", "node => node.textContent")
    await supervisor.close_context(context)

    assert text == "via proxy shop.test"
    assert "http://shop.test/item" in seen_urls


async def test_blank_proxy_raises_validation_error(supervisor: BrowserSupervisor) -> None:
    with pytest.raises(ValidationError):
        await supervisor.new_context(proxy_server=" ")


async def test_close_context_twice_does_not_raise(supervisor: BrowserSupervisor) -> None:
    context = await supervisor.new_context()

    await supervisor.close_context(context)
    await supervisor.close_context(context)

    assert supervisor.open_context_count() == 0


async def test_cancelled_close_still_forgets_context(supervisor: BrowserSupervisor) -> None:
    context = await supervisor.new_context()
    closing = asyncio.create_task(supervisor.close_context(context))
    await asyncio.sleep(0)  # lets close_context send its command and wait for the reply

    closing.cancel()
    await poll_until(
        lambda: supervisor.open_context_count() == 0, 5.0, "the dispose reply arrives"
    )
    browser = await supervisor.browser()
    chromium_contexts = await browser._connection.send("Target.getBrowserContexts")

    assert closing.cancelled()
    assert chromium_contexts["browserContextIds"] == []


async def test_cancelled_creation_disposes_late_context(
    supervisor: BrowserSupervisor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="infra.chromium")
    creating = asyncio.create_task(supervisor.new_context())
    await asyncio.sleep(0)  # lets new_context send its command and wait for the reply

    creating.cancel()
    await poll_until(
        lambda: "created after its caller gave up" in caplog.text, 5.0, "the late reply arrives"
    )
    browser = await supervisor.browser()

    async def chromium_context_ids() -> list[str]:
        reply = await browser._connection.send("Target.getBrowserContexts")
        ids: list[str] = reply["browserContextIds"]
        return ids

    deadline = time.monotonic() + 5.0
    while await chromium_context_ids() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)

    assert creating.cancelled()
    assert await chromium_context_ids() == []
    assert supervisor.open_context_count() == 0


async def test_relaunch_after_sigkill(supervisor: BrowserSupervisor, site: str) -> None:
    old_pid = supervisor.pid
    assert old_pid is not None
    old_context = await supervisor.new_context()

    os.kill(old_pid, signal.SIGKILL)
    await poll_until(lambda: is_gone_or_zombie(old_pid), 5.0, "the killed browser exits")
    await supervisor.browser()

    new_pid = supervisor.pid
    context = await supervisor.new_context()
    page = await context.newPage()
    await page.goto(site)
    title = await page.evaluate("document.title")
    await supervisor.close_context(context)
    await supervisor.close_context(old_context)

    assert new_pid is not None
    assert new_pid != old_pid
    assert supervisor.launch_count == 2
    assert title == "botledger test page"
    assert descendants(old_pid) == []
    assert count_defunct("chrom", parent_pid=os.getpid()) == 0


async def test_stop_leaves_no_chromium_process() -> None:
    browser_supervisor = BrowserSupervisor(CHROMIUM_PATH, extra_args=[RESOLVER_RULES])
    await browser_supervisor.start()
    context = await browser_supervisor.new_context()
    await context.newPage()
    pids = browser_supervisor.browser_pids()
    run_dir = browser_supervisor.run_dir
    assert run_dir is not None

    await browser_supervisor.stop()

    assert len(pids) > 1
    assert [pid for pid in pids if read_proc_stat(pid) is not None] == []
    assert count_defunct("chrom", parent_pid=os.getpid()) == 0
    assert not run_dir.exists()
    with pytest.raises(BotledgerError):
        await browser_supervisor.browser()


async def test_stop_kills_hung_browser() -> None:
    browser_supervisor = BrowserSupervisor(
        CHROMIUM_PATH, extra_args=[RESOLVER_RULES], close_timeout_s=0.5, kill_grace_s=0.5
    )
    await browser_supervisor.start()
    pids = browser_supervisor.browser_pids()
    assert browser_supervisor.pid is not None
    # A stopped process replies to no CDP call and ignores SIGTERM until it is continued.
    os.kill(browser_supervisor.pid, signal.SIGSTOP)

    started_at = time.monotonic()
    await browser_supervisor.stop()

    assert time.monotonic() - started_at < 10.0
    assert [pid for pid in pids if read_proc_stat(pid) is not None] == []
    assert count_defunct("chrom", parent_pid=os.getpid()) == 0


CHILD_SUPERVISOR_SCRIPT = """
import asyncio, sys
from infra.chromium import BrowserSupervisor

async def main():
    supervisor = BrowserSupervisor(sys.argv[1], extra_args=[sys.argv[2]])
    await supervisor.start()
    print(supervisor.run_dir, flush=True)
    print(" ".join(map(str, supervisor.browser_pids())), flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


async def test_killed_service_takes_chromium_down() -> None:
    service = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD_SUPERVISOR_SCRIPT,
        CHROMIUM_PATH,
        RESOLVER_RULES,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert service.stdout is not None
    run_dir_line = await asyncio.wait_for(service.stdout.readline(), timeout=30)
    pids_line = await asyncio.wait_for(service.stdout.readline(), timeout=30)
    run_dir = Path(run_dir_line.decode().strip())
    pids = [int(pid) for pid in pids_line.split()]

    service.kill()
    await service.wait()
    await poll_until(
        lambda: all(is_gone_or_zombie(pid) for pid in pids), 10.0, "Chromium exits"
    )
    reap_zombies()
    left_behind = run_dir.exists()
    # The next launch on this machine deletes the folder of the dead service.
    next_supervisor = BrowserSupervisor(CHROMIUM_PATH, extra_args=[RESOLVER_RULES])
    await next_supervisor.start()
    await next_supervisor.stop()

    assert len(pids) > 1
    assert [pid for pid in pids if read_proc_stat(pid) is not None] == []
    assert left_behind
    assert not run_dir.exists()


async def test_browser_tree_listens_only_on_loopback(supervisor: BrowserSupervisor) -> None:
    pids = supervisor.browser_pids()

    listeners = tcp_listeners(pids)

    assert len(listeners) == 1  # the DevTools port
    assert {host for host, _ in listeners} == {"127.0.0.1"}
    assert rss_bytes(pids) > 0


async def test_reaper_skips_child_in_own_session() -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    await poll_until(lambda: is_gone_or_zombie(child.pid), 10.0, "the child exits")

    reap_zombies()

    assert child.wait(timeout=5) == 3


async def test_reaper_skips_registered_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"], start_new_session=True)
    register_pid(child.pid)
    try:
        await poll_until(lambda: is_gone_or_zombie(child.pid), 10.0, "the child exits")

        reap_zombies()

        assert child.wait(timeout=5) == 4
    finally:
        release_pid(child.pid)


def start_orphan() -> int:
    """Start a short sleep whose parent shell exits at once, and return the sleep's pid.

    The sleep is re-parented to this process, the subreaper, and becomes its zombie when it
    ends.
    """
    shell = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 0.2 & echo $!"], stdout=subprocess.PIPE, start_new_session=True
    )
    stdout, _ = shell.communicate(timeout=5)
    return int(stdout)


async def test_reaper_collects_adopted_orphan() -> None:
    orphan_pid = start_orphan()
    await poll_until(lambda: is_gone_or_zombie(orphan_pid), 10.0, "the orphan exits")
    orphan = read_proc_stat(orphan_pid)
    assert orphan is not None
    assert orphan.ppid == os.getpid()

    reaped = reap_zombies()

    assert reaped >= 1
    assert read_proc_stat(orphan_pid) is None


async def test_reaper_respects_exclude() -> None:
    orphan_pid = start_orphan()
    await poll_until(lambda: is_gone_or_zombie(orphan_pid), 10.0, "the orphan exits")

    reap_zombies(exclude={orphan_pid})
    still_zombie = read_proc_stat(orphan_pid)
    reap_zombies()

    assert still_zombie is not None
    assert still_zombie.is_zombie
    assert read_proc_stat(orphan_pid) is None
