"""Benchmark the runner against the same steps done by raw pyppeteer, in one run.

Run: ``.venv/bin/python benchmarks/bench_runner.py [--executions 60] [--memory-runs 200]``
(``--quick`` for a short smoke run).

Everything runs on 127.0.0.1: a private nats-server and SeaweedFS (telemetry off), and a page
server child process with a search form and a results list. The program under test is
goto, type, click with waitForNavigation, and extract multiple.

- botledger: a runner child process (``python -m services.runner``) with
  ``BOTLEDGER_RUNNER_CONCURRENCY`` set to the level. This process keeps that many executions in
  flight. The latency runs from the append of ``ExecutionRequested`` until a core NATS
  subscription receives ``ExecutionCompleted``.
- raw: this process drives a Chromium started by BrowserSupervisor (same binary, flags and
  environment as the runner's) with plain pyppeteer calls. Each run gets a fresh incognito
  context and does the same element waits as the steps, at the same concurrency.

Each level runs a fresh runner, warms both up, then alternates botledger and raw rounds so that
load from other processes falls on both. Afterwards it prints p50/p95 latency, runs/s and the
ratios (targets: latency botledger/raw <= 1.2, throughput botledger/raw >= 0.8). It also prints
where the time goes, taken from the stored events' timestamps, and the CPU time per run.
Finally a fresh runner does a warm-up and then ``--memory-runs`` executions, and the resident
memory of the runner process and of its Chromium tree is compared before and after (target:
growth < 5 %). Exit code: 0 when every target is met, 1 when one is missed, 2 when the
benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import html
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402
from nats.aio.client import Client as NATS  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from pyppeteer.browser import Browser  # noqa: E402

from events.errors import BotledgerError  # noqa: E402
from events.execution import Execution  # noqa: E402
from events.store import EventStore  # noqa: E402
from events.subjects import SubjectScheme  # noqa: E402
from infra.chromium import BrowserSupervisor  # noqa: E402
from infra.nats import NatsServerSupervisor, connect, ensure_stream  # noqa: E402
from infra.object_store import SeaweedFSSupervisor  # noqa: E402
from infra.processes import (  # noqa: E402
    become_subreaper,
    descendants,
    kill_process_group,
    processes_with_argument,
    read_log_tail,
    release_pid,
    rss_bytes,
    start_process_group,
)
from infra.settings import Settings  # noqa: E402

logger = logging.getLogger(__name__)

TARGET_LATENCY_RATIO = 1.2
TARGET_THROUGHPUT_RATIO = 0.8
TARGET_MEMORY_GROWTH_PCT = 5.0

ORG_ID = "bench"
QUERY = "trail running shoes"
PRODUCT_COUNT = 20
STEP_TIMEOUT_MS = 30_000
EXECUTION_WAIT_S = 60.0
# The first execution of a runner also waits for its Chromium launch.
FIRST_EXECUTION_WAIT_S = 120.0
RUNNER_STOP_GRACE_S = 30.0
SETTLE_POLL_S = 0.25
SETTLE_STABLE_POLLS = 4
SETTLE_TIMEOUT_S = 15.0
TERMINAL_EVENTS = (
    "ExecutionCompleted", "ExecutionFailed", "ExecutionTimedOut", "ExecutionCancelled",
)
ACTIONS = ("goto", "type", "click", "extract")

STEPS: list[dict[str, Any]] = [
    {"action": "goto", "url": "{{bot.targetUrl}}/search"},
    {"action": "type", "selector": "#query", "text": "{{params.query}}"},
    {"action": "click", "selector": "#search", "waitForNavigation": True},
    {
        "action": "extract",
        "name": "products",
        "selector": ".product",
        "multiple": True,
        "fields": {
            "name": ".name",
            "price": ".price",
            "url": {"selector": ".name", "attribute": "href"},
        },
    },
]

RAW_EXTRACT_JS = """() => Array.from(document.querySelectorAll('.product'), (item) => ({
  name: item.querySelector('.name').textContent.trim(),
  price: item.querySelector('.price').textContent.trim(),
  url: item.querySelector('.name').getAttribute('href'),
}))"""


# --- The page server child process ----------------------------------------------------------

SITE_CSS = """body { font-family: sans-serif; margin: 0; }
header, footer { background: #234; color: #fff; padding: 8px 16px; }
main { padding: 16px; max-width: 720px; }
.product { display: flex; justify-content: space-between; padding: 6px 0;
  border-bottom: 1px solid #ddd; }
.price { font-weight: bold; }
"""

# Marks the results as rendered, as a page's own script would.
SITE_JS = "document.documentElement.dataset.ready = 'true';\n"


def _layout(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><link rel='stylesheet' href='/static/site.css'>"
        "<script src='/static/site.js' defer></script></head><body>"
        "<header><a href='/search'>Shop</a> | <a href='/search'>Search</a></header>"
        f"<main>{body}</main><footer>Bench shop, served on 127.0.0.1</footer></body></html>"
    )


SEARCH_PAGE = _layout(
    "Search",
    "<h1>Find a product</h1>"
    "<form action='/results' method='get'>"
    "<label for='query'>Search</label> <input id='query' name='q' autocomplete='off'> "
    "<select name='sort'><option value='relevance'>Relevance</option>"
    "<option value='price'>Price</option></select> "
    "<button id='search' type='submit'>Search</button></form>",
)


def _results_page(query: str) -> str:
    items = "".join(
        f"<li class='product'><a class='name' href='/products/{number}'>"
        f"{html.escape(query)} model {number}</a>"
        f"<span class='price'>${40 + number}.99</span></li>"
        for number in range(1, PRODUCT_COUNT + 1)
    )
    return _layout(
        "Results", f"<h1>Results for {html.escape(query)}</h1><ul id='results'>{items}</ul>"
    )


async def _serve_pages() -> None:
    """Serve the page set on a free 127.0.0.1 port, print its base URL, run until SIGTERM."""

    async def search(request: web.Request) -> web.Response:
        return web.Response(text=SEARCH_PAGE, content_type="text/html")

    async def results(request: web.Request) -> web.Response:
        return web.Response(text=_results_page(request.query.get("q", "")), content_type="text/html")

    async def static(request: web.Request) -> web.Response:
        if request.match_info["name"] == "site.css":
            return web.Response(text=SITE_CSS, content_type="text/css")
        return web.Response(text=SITE_JS, content_type="application/javascript")

    app = web.Application()
    app.router.add_get("/search", search)
    app.router.add_get("/results", results)
    app.router.add_get("/static/{name:site\\.(css|js)}", static)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


class PageServer:
    """The page server child process."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.base_url = ""

    async def start(self) -> str:
        self.process = await start_process_group(
            [sys.executable, str(Path(__file__).resolve()), "--serve-pages"],
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=30)
        if not line.startswith(b"http://127.0.0.1:"):
            raise BotledgerError(f"The page server did not start; it printed {line!r}.")
        self.base_url = line.decode().strip()
        return self.base_url

    async def stop(self) -> None:
        if self.process is None:
            return
        await kill_process_group(self.process.pid, grace_s=5.0)
        await self.process.wait()
        release_pid(self.process.pid)
        self.process = None


# --- Measurements and their summaries -------------------------------------------------------


@dataclasses.dataclass
class Measurement:
    """Latencies, wall time, CPU time and per-phase times of one system at one level."""

    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    driver_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    chromium_cpu_s: float = 0.0
    nats_cpu_s: float = 0.0
    phases_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def add_phases(self, phases: dict[str, float]) -> None:
        for name, value in phases.items():
            self.phases_ms.setdefault(name, []).append(value)

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    def p95_ms(self) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[94]

    def runs_per_s(self) -> float:
        return self.count / self.elapsed_s

    def per_run_ms(self, seconds: float) -> float:
        return seconds / self.count * 1000


@dataclasses.dataclass
class Batch:
    """One closed-loop batch: each run's latency and result, and the batch's wall time."""

    latencies_ms: list[float]
    elapsed_s: float
    runs: list[dict[str, Any]]


async def closed_loop(
    count: int, concurrency: int, run_once: Callable[[], Awaitable[dict[str, Any]]]
) -> Batch:
    """Keep ``concurrency`` runs in flight until ``count`` have finished."""
    remaining = count
    latencies_ms: list[float] = []
    runs: list[dict[str, Any]] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            run = await run_once()
            latencies_ms.append((time.perf_counter() - started) * 1000)
            runs.append(run)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Batch(latencies_ms, time.perf_counter() - started, runs)


# --- /proc readings -------------------------------------------------------------------------


def cpu_seconds(pid: int, include_reaped_children: bool = False) -> float:
    """Return the user plus system CPU time of ``pid`` from /proc (0 when it has gone).

    With ``include_reaped_children`` it adds the time of children the process has waited for,
    which is how the CPU time of Chromium's exited renderers stays in the tree's total.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if include_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(pid, include_reaped_children=True) for pid in pids)


def pss_bytes(pids: Iterable[int]) -> int:
    """Return the summed proportional set size of ``pids``, from /proc/<pid>/smaps_rollup."""
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def chromium_tree_of(runner_pid: int) -> list[int]:
    """Return the pids of the Chromium started by ``runner_pid``.

    That is every descendant, plus the crashpad handlers, which leave the tree but carry the
    browser's run folder (the parent of its ``--user-data-dir``) on their command line.
    """
    pids = set(descendants(runner_pid)) - {runner_pid}
    for pid in list(pids):
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for argument in arguments:
            if argument.startswith(b"--user-data-dir="):
                run_dir = Path(argument.split(b"=", 1)[1].decode()).parent
                pids.update(processes_with_argument(str(run_dir)))
    return sorted(pids)


def machine_description() -> str:
    meminfo = dict(
        line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line
    )
    total_gib = int(meminfo["MemTotal"].split()[0]) / 1024**2
    available_gib = int(meminfo["MemAvailable"].split()[0]) / 1024**2
    return (
        f"machine: {os.cpu_count()} CPUs, {total_gib:.1f} GiB memory "
        f"({available_gib:.1f} GiB available), Python {sys.version.split()[0]}"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# --- botledger: trigger, watch, runner child process ----------------------------------------


def _timestamp_ns(value: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 ``Nats-Time-Stamp`` in UTC."""
    head, _, fraction = value.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(head + "+00:00").timestamp())
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0")[:9] or "0")


@dataclasses.dataclass
class Terminal:
    """A terminal event as the watcher received it."""

    name: str
    observed_ns: int
    payload: dict[str, Any]


class CompletionWatcher:
    """Resolve one future per execution when its terminal event arrives on core NATS."""

    def __init__(self, nc: NATS, scheme: SubjectScheme) -> None:
        self.nc = nc
        self.scheme = scheme
        self._waiting: dict[str, asyncio.Future[Terminal]] = {}

    async def start(self) -> None:
        for name in TERMINAL_EVENTS:
            await self.nc.subscribe(self.scheme.executions(event_name=name), cb=self._on_event)
        # The subscriptions must reach the server before the first trigger.
        await self.nc.flush()

    def expect(self, execution_id: str) -> asyncio.Future[Terminal]:
        future: asyncio.Future[Terminal] = asyncio.get_running_loop().create_future()
        self._waiting[execution_id] = future
        return future

    async def _on_event(self, msg: Msg) -> None:
        observed_ns = time.time_ns()
        parts = self.scheme.parse(msg.subject)
        future = self._waiting.pop(parts["aggregateId"], None)
        if future is not None and not future.done():
            future.set_result(Terminal(parts["event"], observed_ns, orjson.loads(msg.data)))


class RunnerProcess:
    """A ``python -m services.runner`` child process with its own log file."""

    def __init__(self, env: dict[str, str], log_path: Path, profile_path: Path | None) -> None:
        self.env = env
        self.log_path = log_path
        self.profile_path = profile_path
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        argv = [sys.executable]
        if self.profile_path is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile_path)]
        argv += ["-m", "services.runner"]
        with open(self.log_path, "ab") as log_file:
            self.process = await start_process_group(
                argv, stdout=log_file, stderr=asyncio.subprocess.STDOUT, cwd=ROOT, env=self.env
            )
        logger.info("Started runner pid %s, log %s", self.process.pid, self.log_path)

    def check_running(self) -> None:
        if self.process is not None and self.process.returncode is not None:
            raise BotledgerError(
                f"The runner exited with code {self.process.returncode}. End of "
                f"{self.log_path}:\n{read_log_tail(self.log_path)}"
            )

    async def stop(self) -> None:
        """Send SIGTERM, wait for the runner to stop its Chromium, kill its group if it hangs."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=RUNNER_STOP_GRACE_S)
            except asyncio.TimeoutError:
                logger.warning("Runner pid %s ignored SIGTERM; killing its group", process.pid)
                await kill_process_group(process.pid, grace_s=2.0)
        await process.wait()
        release_pid(process.pid)


class BotledgerSystem:
    """The botledger side: appends ExecutionRequested and waits for the terminal event."""

    def __init__(
        self, event_store: EventStore, watcher: CompletionWatcher, base_url: str
    ) -> None:
        self.event_store = event_store
        self.watcher = watcher
        self.base_url = base_url
        self.bot_id = str(uuid.uuid4())
        self.runner: RunnerProcess | None = None

    def new_execution(self) -> Execution:
        return Execution(
            id=uuid.uuid4(),
            org_id=ORG_ID,
            bot_id=self.bot_id,
            trigger="api",
            params={"query": QUERY},
            encrypted_secrets=None,
            idempotency_key=None,
            program={
                "targetUrl": self.base_url,
                "steps": STEPS,
                "scriptVersion": 1,
                "capabilities": {},
                "botName": "bench search",
            },
        )

    async def run_once(self, wait_s: float = EXECUTION_WAIT_S) -> dict[str, Any]:
        execution = self.new_execution()
        execution_id = str(execution.id)
        done = self.watcher.expect(execution_id)
        trigger_ns = time.time_ns()
        appended = await self.event_store.save(execution)
        terminal = await self._wait(done, execution_id, wait_s)
        if terminal.name != "ExecutionCompleted":
            raise BotledgerError(
                f"Execution {execution_id} ended with {terminal.name}: "
                f"{terminal.payload.get('reason')}. See the runner log "
                f"{self.runner.log_path if self.runner else ''}."
            )
        products = (terminal.payload.get("extracted") or {}).get("products") or []
        if len(products) != PRODUCT_COUNT:
            raise BotledgerError(
                f"Execution {execution_id} extracted {len(products)} products, expected "
                f"{PRODUCT_COUNT}."
            )
        return {
            "execution": execution,
            "first_sequence": appended.first_sequence,
            "trigger_ns": trigger_ns,
            "observed_ns": terminal.observed_ns,
        }

    async def _wait(
        self, done: asyncio.Future[Terminal], execution_id: str, wait_s: float
    ) -> Terminal:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(done), timeout=1.0)
            except asyncio.TimeoutError:
                if self.runner is not None:
                    self.runner.check_running()
                if time.monotonic() >= deadline:
                    raise BotledgerError(
                        f"Execution {execution_id} did not end within {wait_s:.0f} s. End of the "
                        f"runner log:\n{read_log_tail(self.runner.log_path) if self.runner else ''}"
                    ) from None

    async def phases(self, run: dict[str, Any]) -> dict[str, float]:
        """Split one execution's latency into phases by the stored events' timestamps."""
        execution: Execution = run["execution"]
        subject = self.event_store.scheme.aggregate_filter(
            "execution", str(execution.id), ORG_ID, execution.bot_id
        )
        events = [
            (recorded.name, _timestamp_ns(recorded.headers["Nats-Time-Stamp"]), recorded.payload)
            async for recorded in self.event_store.read(run["first_sequence"], subject)
        ]
        return event_phases(events, run["trigger_ns"], run["observed_ns"])


def event_phases(
    events: list[tuple[str, int, bytes]], trigger_ns: int, observed_ns: int
) -> dict[str, float]:
    """Return the phases in ms between an execution's stored events, trigger and observation."""
    stamp: dict[str, int] = {}
    step_started: dict[int, int] = {}
    step_completed: dict[int, tuple[int, int]] = {}
    for name, time_ns, payload in events:
        if name == "StepStarted":
            step_started[orjson.loads(payload)["index"]] = time_ns
        elif name == "StepCompleted":
            state = orjson.loads(payload)
            step_completed[state["index"]] = (time_ns, state["duration_ms"])
        else:
            stamp.setdefault(name, time_ns)

    def ms(start_ns: int, end_ns: int) -> float:
        return (end_ns - start_ns) / 1e6

    last = len(ACTIONS) - 1
    phases = {
        "trigger": ms(trigger_ns, stamp["ExecutionRequested"]),
        "intake": ms(stamp["ExecutionRequested"], stamp["ExecutionStarted"]),
        "context": ms(stamp["ExecutionStarted"], step_started[0]),
        "between steps": sum(
            ms(step_completed[index][0], step_started[index + 1]) for index in range(last)
        ),
        "close": ms(step_completed[last][0], stamp["ExecutionCompleted"]),
        "delivery": ms(stamp["ExecutionCompleted"], observed_ns),
        "events": float(len(events)),
    }
    for index, action in enumerate(ACTIONS):
        phases[action] = ms(step_started[index], step_completed[index][0])
        phases[f"{action} action"] = float(step_completed[index][1])
    return phases


# --- raw pyppeteer --------------------------------------------------------------------------


class RawSystem:
    """The same steps with plain pyppeteer on a Chromium of its own."""

    def __init__(self, supervisor: BrowserSupervisor, base_url: str) -> None:
        self.supervisor = supervisor
        self.base_url = base_url
        self.browser: Browser | None = None

    async def start(self) -> None:
        self.browser = await self.supervisor.browser()

    async def run_once(self) -> dict[str, Any]:
        assert self.browser is not None
        timeout = {"timeout": STEP_TIMEOUT_MS}
        marks = [time.perf_counter()]
        context = await self.browser.createIncognitoBrowserContext()
        try:
            page = await context.newPage()
            marks.append(time.perf_counter())
            await page.goto(f"{self.base_url}/search", {"waitUntil": "load", **timeout})
            marks.append(time.perf_counter())
            await page.waitForSelector("#query", timeout)
            await page.type("#query", QUERY)
            marks.append(time.perf_counter())
            await page.waitForSelector("#search", timeout)
            await asyncio.gather(page.waitForNavigation(timeout), page.click("#search"))
            marks.append(time.perf_counter())
            products = await page.evaluate(RAW_EXTRACT_JS)
            marks.append(time.perf_counter())
        finally:
            await context.close()
        marks.append(time.perf_counter())

        if len(products) != PRODUCT_COUNT:
            raise BotledgerError(
                f"Raw pyppeteer extracted {len(products)} products, expected {PRODUCT_COUNT}."
            )
        names = ("context", *ACTIONS, "close")
        return {name: (marks[i + 1] - marks[i]) * 1000 for i, name in enumerate(names)}


# --- The benchmark --------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    executions: int
    levels: list[int]
    rounds: int
    warmup: int
    memory_runs: int
    memory_warmup: int
    memory_concurrency: int
    profile_dir: Path | None


@dataclasses.dataclass
class LevelResult:
    level: int
    botledger: Measurement
    raw: Measurement
    load_before: str
    load_after: str


@dataclasses.dataclass
class MemorySample:
    runner_rss: int
    chromium_rss: int
    chromium_pss: int
    chromium_processes: int


class Bench:
    """The servers, the two systems and the measurements of one benchmark run."""

    def __init__(self, options: Options, work_dir: Path) -> None:
        self.options = options
        self.work_dir = work_dir
        self.settings = Settings(
            data_dir=work_dir / "runner-data",
            stream_name="BENCH_RUNNER",
            subject_prefix="benchrunner",
            s3_bucket="bench-runner-artifacts",
        )
        self.nats = NatsServerSupervisor(work_dir / "nats")
        self.seaweed = SeaweedFSSupervisor(
            work_dir / "s3",
            access_key=self.settings.s3_access_key,
            secret_key=self.settings.s3_secret_key,
        )
        self.pages = PageServer()
        self.raw_supervisor = BrowserSupervisor(self.settings.chromium_path)
        self.nc: NATS | None = None
        self.s3_endpoint = ""
        self.botledger: BotledgerSystem | None = None
        self.raw: RawSystem | None = None

    async def start(self) -> None:
        await self.nats.start()
        self.s3_endpoint = await self.seaweed.start()
        base_url = await self.pages.start()
        self.nc = await connect(self.nats.url, "bench-runner")
        await ensure_stream(self.nc, self.settings)
        event_store = EventStore(
            self.nc, self.settings.stream_name, SubjectScheme(self.settings.subject_prefix)
        )
        watcher = CompletionWatcher(self.nc, event_store.scheme)
        await watcher.start()
        self.botledger = BotledgerSystem(event_store, watcher, base_url)
        self.raw = RawSystem(self.raw_supervisor, base_url)
        await self.raw.start()

    async def stop(self) -> None:
        """Stop everything started, each part even when another part fails to stop."""
        steps: list[Callable[[], Awaitable[None]]] = []
        if self.botledger is not None and self.botledger.runner is not None:
            steps.append(self.botledger.runner.stop)
        steps += [self.raw_supervisor.stop, self.pages.stop]
        if self.nc is not None:
            steps.append(self.nc.close)
        steps += [self.seaweed.stop, self.nats.stop]
        for step in steps:
            try:
                await step()
            except Exception as error:  # noqa: BLE001 - the other parts must still stop
                logger.error("Stopping %s failed: %r", getattr(step, "__qualname__", step), error)

    def runner_env(self, concurrency: int) -> dict[str, str]:
        settings = self.settings
        return {
            **os.environ,
            "BOTLEDGER_NATS_URL": self.nats.url,
            "BOTLEDGER_S3_ENDPOINT": self.s3_endpoint,
            "BOTLEDGER_S3_BUCKET": settings.s3_bucket,
            "BOTLEDGER_STREAM_NAME": settings.stream_name,
            "BOTLEDGER_SUBJECT_PREFIX": settings.subject_prefix,
            "BOTLEDGER_DATA_DIR": str(settings.data_dir),
            "BOTLEDGER_CHROMIUM_PATH": settings.chromium_path,
            "BOTLEDGER_RUNNER_CONCURRENCY": str(concurrency),
            "BOTLEDGER_LOG_LEVEL": "INFO",
        }

    async def start_runner(self, concurrency: int, name: str) -> RunnerProcess:
        assert self.botledger is not None
        profile = None
        if self.options.profile_dir is not None:
            profile = self.options.profile_dir / f"runner-{name}.prof"
        runner = RunnerProcess(
            self.runner_env(concurrency), self.work_dir / f"runner-{name}.log", profile
        )
        self.botledger.runner = runner
        await runner.start()
        # The first execution waits for the runner's start and its Chromium launch.
        await self.botledger.run_once(wait_s=FIRST_EXECUTION_WAIT_S)
        return runner

    async def stop_runner(self) -> None:
        assert self.botledger is not None
        if self.botledger.runner is not None:
            await self.botledger.runner.stop()
            self.botledger.runner = None

    # Latency and throughput

    async def measure_level(self, level: int) -> LevelResult:
        assert self.botledger is not None and self.raw is not None
        load_before = load_average()
        runner = await self.start_runner(level, f"c{level}")
        botledger, raw = Measurement(), Measurement()
        try:
            await closed_loop(self.options.warmup, level, self.botledger.run_once)
            await closed_loop(self.options.warmup, level, self.raw.run_once)
            per_round = max(level, self.options.executions // self.options.rounds)
            for round_number in range(self.options.rounds):
                if round_number % 2 == 0:
                    await self._botledger_round(level, per_round, runner, botledger)
                    await self._raw_round(level, per_round, raw)
                else:
                    await self._raw_round(level, per_round, raw)
                    await self._botledger_round(level, per_round, runner, botledger)
        finally:
            await self.stop_runner()
        return LevelResult(level, botledger, raw, load_before, load_average())

    async def _botledger_round(
        self, level: int, count: int, runner: RunnerProcess, botledger: Measurement
    ) -> None:
        assert self.botledger is not None
        assert self.nats.process is not None and self.nats.process.pid is not None
        nats_pid = self.nats.process.pid
        runner_cpu, client_cpu = cpu_seconds(runner.pid), time.process_time()
        chromium_cpu, nats_cpu = tree_cpu_seconds(chromium_tree_of(runner.pid)), cpu_seconds(nats_pid)
        batch = await closed_loop(count, level, self.botledger.run_once)
        botledger.driver_cpu_s += cpu_seconds(runner.pid) - runner_cpu
        botledger.client_cpu_s += time.process_time() - client_cpu
        botledger.nats_cpu_s += cpu_seconds(nats_pid) - nats_cpu
        botledger.chromium_cpu_s += tree_cpu_seconds(chromium_tree_of(runner.pid)) - chromium_cpu
        botledger.latencies_ms += batch.latencies_ms
        botledger.elapsed_s += batch.elapsed_s
        # Events are read back after the batch, so reading does not slow the measured runs.
        for run in batch.runs:
            botledger.add_phases(await self.botledger.phases(run))

    async def _raw_round(self, level: int, count: int, raw: Measurement) -> None:
        assert self.raw is not None
        driver_cpu = time.process_time()
        chromium_cpu = tree_cpu_seconds(self.raw_supervisor.browser_pids())
        batch = await closed_loop(count, level, self.raw.run_once)
        raw.driver_cpu_s += time.process_time() - driver_cpu
        # The tree is read again because renderers started during the batch count too. Those
        # that exited are in their reaper's children time.
        raw.chromium_cpu_s += tree_cpu_seconds(self.raw_supervisor.browser_pids()) - chromium_cpu
        raw.latencies_ms += batch.latencies_ms
        raw.elapsed_s += batch.elapsed_s
        for phases in batch.runs:
            raw.add_phases(phases)

    # Memory

    async def measure_memory(self) -> tuple[MemorySample, MemorySample, str]:
        assert self.botledger is not None
        concurrency = self.options.memory_concurrency
        runner = await self.start_runner(concurrency, "memory")
        try:
            await closed_loop(self.options.memory_warmup, concurrency, self.botledger.run_once)
            before = await self._settled_sample(runner.pid)
            await closed_loop(self.options.memory_runs, concurrency, self.botledger.run_once)
            after = await self._settled_sample(runner.pid)
        finally:
            await self.stop_runner()
        return before, after, load_average()

    async def _settled_sample(self, runner_pid: int) -> MemorySample:
        """Sample once the runner's Chromium tree has kept the same processes for a moment.

        Renderers of closed contexts exit shortly after the execution ends. Sampling while
        they exit would count memory that is about to go.
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        previous: list[int] = []
        stable_polls = 0
        while True:
            tree = chromium_tree_of(runner_pid)
            stable_polls = stable_polls + 1 if tree == previous else 0
            previous = tree
            if stable_polls >= SETTLE_STABLE_POLLS or time.monotonic() >= deadline:
                break
            await asyncio.sleep(SETTLE_POLL_S)
        return MemorySample(
            runner_rss=rss_bytes([runner_pid]),
            chromium_rss=rss_bytes(tree),
            chromium_pss=pss_bytes(tree),
            chromium_processes=len(tree),
        )


# --- Printing -------------------------------------------------------------------------------


def _median(values: list[float] | None) -> float:
    return statistics.median(values) if values else float("nan")


def print_level_table(results: list[LevelResult]) -> bool:
    print()
    print("Trigger-to-completed latency and throughput (closed loop, N in flight)")
    print(
        f"{'in flight':>9} {'system':<10} {'runs':>5} {'p50 ms':>8} {'p95 ms':>8} {'runs/s':>7} "
        f"{'load before/after':>26}"
    )
    met = True
    for result in results:
        for name, measurement in (("botledger", result.botledger), ("raw", result.raw)):
            print(
                f"{result.level:>9} {name:<10} {measurement.count:>5} "
                f"{measurement.p50_ms():>8.1f} {measurement.p95_ms():>8.1f} "
                f"{measurement.runs_per_s():>7.2f} "
                f"{result.load_before:>14} / {result.load_after}"
            )
        p50_ratio = result.botledger.p50_ms() / result.raw.p50_ms()
        p95_ratio = result.botledger.p95_ms() / result.raw.p95_ms()
        throughput_ratio = result.botledger.runs_per_s() / result.raw.runs_per_s()
        level_met = (
            p50_ratio <= TARGET_LATENCY_RATIO
            and p95_ratio <= TARGET_LATENCY_RATIO
            and throughput_ratio >= TARGET_THROUGHPUT_RATIO
        )
        met = met and level_met
        print(
            f"{result.level:>9} {'ratio':<10} {'':>5} {p50_ratio:>8.2f} {p95_ratio:>8.2f} "
            f"{throughput_ratio:>7.2f}   botledger/raw, targets latency <= "
            f"{TARGET_LATENCY_RATIO}, throughput >= {TARGET_THROUGHPUT_RATIO}: "
            f"{'met' if level_met else 'NOT met'}"
        )
    return met


def print_phase_table(result: LevelResult) -> None:
    """Print median phase times of botledger (from event timestamps) next to raw pyppeteer."""
    bot, raw = result.botledger.phases_ms, result.raw.phases_ms
    print()
    print(
        f"Where the time goes at {result.level} in flight (medians in ms; botledger from the "
        f"stored events' timestamps, {_median(bot.get('events')):.0f} events per execution)"
    )
    print(f"{'phase':<58} {'botledger':>9} {'action':>7} {'raw':>7}")
    rows: list[tuple[str, str, str | None, str | None]] = [
        ("append ExecutionRequested (trigger)", "trigger", None, None),
        ("intake: fetch, load, append ExecutionStarted", "intake", None, None),
        ("new context + page (raw) / until StepStarted 0 (botledger)", "context", None, "context"),
    ]
    rows += [(f"step {i} {action}", action, f"{action} action", action)
             for i, action in enumerate(ACTIONS)]
    rows += [
        ("between steps: StepCompleted to next StepStarted, summed", "between steps", None, None),
        ("close context + final append (botledger)", "close", None, "close"),
        ("terminal event: core NATS receipt minus JetStream store time", "delivery", None, None),
    ]
    for label, bot_key, action_key, raw_key in rows:
        action = f"{_median(bot.get(action_key)):>7.1f}" if action_key else f"{'':>7}"
        raw_value = f"{_median(raw.get(raw_key)):>7.1f}" if raw_key else f"{'':>7}"
        print(f"{label:<58} {_median(bot.get(bot_key)):>9.1f} {action} {raw_value}")
    print(
        "  (a step's botledger time runs from its StepStarted to its StepCompleted event, and "
        "'action' is the step's own duration_ms.\n   A negative receipt time means the core "
        "subscription got the event before JetStream stored it, as for the commit message of an "
        "atomic batch.)"
    )


def print_cpu_table(results: list[LevelResult]) -> None:
    print()
    print("CPU time per run in ms (Chromium: live tree plus reaped children, an estimate)")
    print(
        f"{'in flight':>9} {'runner proc':>12} {'bench client':>13} {'raw driver':>11} "
        f"{'nats-server':>12} {'Chromium bl':>12} {'Chromium raw':>13}"
    )
    for result in results:
        bot, raw = result.botledger, result.raw
        print(
            f"{result.level:>9} {bot.per_run_ms(bot.driver_cpu_s):>12.1f} "
            f"{bot.per_run_ms(bot.client_cpu_s):>13.1f} {raw.per_run_ms(raw.driver_cpu_s):>11.1f} "
            f"{bot.per_run_ms(bot.nats_cpu_s):>12.1f} {bot.per_run_ms(bot.chromium_cpu_s):>12.1f} "
            f"{raw.per_run_ms(raw.chromium_cpu_s):>13.1f}"
        )
    print(
        "  (runner proc, bench client and nats-server are botledger's side; raw driver is this "
        "process running pyppeteer)"
    )


def _growth_pct(before: int, after: int) -> float:
    return (after - before) / before * 100


def print_memory_table(
    before: MemorySample, after: MemorySample, options: Options, load: str
) -> bool:
    print()
    print(
        f"Memory of the runner child process and its Chromium tree: after {options.memory_warmup} "
        f"warm-up executions and after {options.memory_runs} more, {options.memory_concurrency} "
        f"in flight (load average at the end {load})"
    )
    print(f"{'':<28} {'before MiB':>10} {'after MiB':>10} {'growth':>8}")
    rows = [
        ("runner process RSS", before.runner_rss, after.runner_rss),
        ("Chromium tree RSS", before.chromium_rss, after.chromium_rss),
        ("runner + Chromium RSS", before.runner_rss + before.chromium_rss,
         after.runner_rss + after.chromium_rss),
        ("Chromium tree PSS", before.chromium_pss, after.chromium_pss),
    ]
    met = True
    for label, old, new in rows:
        growth = _growth_pct(old, new)
        if "RSS" in label:
            met = met and growth < TARGET_MEMORY_GROWTH_PCT
        print(f"{label:<28} {old / 2**20:>10.1f} {new / 2**20:>10.1f} {growth:>7.1f}%")
    print(
        f"Chromium processes: {before.chromium_processes} before, {after.chromium_processes} "
        f"after. Target: RSS growth < {TARGET_MEMORY_GROWTH_PCT:g} %: {'met' if met else 'NOT met'}"
    )
    if before.chromium_processes != after.chromium_processes:
        print(
            "  (A summed RSS counts shared pages once per process, so one process more or less "
            "moves it by that process's whole RSS. PSS divides shared pages among processes.)"
        )
    return met


# --- Entry point ----------------------------------------------------------------------------


async def run(options: Options) -> int:
    become_subreaper()
    print(machine_description())
    print(f"load average at start: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as directory:
        bench = Bench(options, Path(directory))
        try:
            await bench.start()
            assert bench.raw is not None and bench.raw.browser is not None
            print(
                f"{await bench.raw.browser.version()}, nats-server "
                f"{bench.nc.connected_server_version if bench.nc else '?'}, page server "
                f"{bench.pages.base_url}"
            )
            print(
                f"program: {', '.join(ACTIONS)} ({PRODUCT_COUNT} records); "
                f"{options.executions} measured runs per system and level in {options.rounds} "
                f"alternating rounds, after {options.warmup} warm-up runs"
            )
            results = []
            for level in options.levels:
                results.append(await bench.measure_level(level))
                print(f"level {level} done, load average {load_average()}", flush=True)
            memory = await bench.measure_memory()
        finally:
            await bench.stop()

    latency_met = print_level_table(results)
    for result in results:
        print_phase_table(result)
    print_cpu_table(results)
    memory_met = print_memory_table(*memory[:2], options, memory[2])
    print(f"\nload average at the end: {load_average()}")
    return 0 if latency_met and memory_met else 1


def parse_options() -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--executions", type=int, default=60, help="measured runs per system and level"
    )
    parser.add_argument(
        "--levels", default="1,2,4", help="comma-separated runs in flight (runner concurrency)"
    )
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per level")
    parser.add_argument(
        "--warmup", type=int, default=8, help="unmeasured runs per system and level"
    )
    parser.add_argument(
        "--memory-runs", type=int, default=200, help="executions between the memory samples"
    )
    parser.add_argument(
        "--memory-warmup", type=int, default=20, help="executions before the first memory sample"
    )
    parser.add_argument(
        "--memory-concurrency", type=int, default=2, help="executions in flight for memory"
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="run each runner under cProfile and write runner-<name>.prof here (slows it down)",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--serve-pages", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.quick:
        args.executions, args.levels, args.rounds, args.warmup = 8, "1,2", 1, 2
        args.memory_runs, args.memory_warmup = 20, 5
    levels = [int(level) for level in args.levels.split(",")]
    if args.executions < 2 or any(level < 1 for level in levels) or args.rounds < 1:
        parser.error("use --executions >= 2, --rounds >= 1 and levels >= 1")

    if args.profile_dir is not None:
        args.profile_dir = args.profile_dir.resolve()
        args.profile_dir.mkdir(parents=True, exist_ok=True)

    options = Options(
        executions=args.executions,
        levels=levels,
        rounds=args.rounds,
        warmup=args.warmup,
        memory_runs=args.memory_runs,
        memory_warmup=args.memory_warmup,
        memory_concurrency=args.memory_concurrency,
        profile_dir=args.profile_dir,
    )
    return options, args.serve_pages


def main() -> int:
    options, serve_pages = parse_options()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if serve_pages:
        asyncio.run(_serve_pages())
        return 0
    try:
        return asyncio.run(run(options))
    except BotledgerError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
