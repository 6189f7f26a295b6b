"""Step programs and capabilities run in a real headless Chromium against a local aiohttp site.

Extra host names (an ad host, a second site) resolve to 127.0.0.1 through Chromium's
--host-resolver-rules, so no request leaves the machine even when blocking fails.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from pyppeteer import launch

from events.errors import ValidationError
from services.runner.capabilities import (
    DEFAULT_AD_HOSTS,
    CapabilityError,
    apply_capabilities,
    is_ad_host,
)
from services.runner.executor import ProgramRunner, StepError, mask_secrets

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM_PATH = "/usr/bin/chromium"
AD_HOST = "ads.botledger-test.example"
SITE_HOST = "static.botledger-test.example"
TEST_AD_HOSTS = frozenset({"botledger-test-ads.example", AD_HOST})
SECRET = "hunter2-s3cret"


# --- Test site ------------------------------------------------------------------------------

HOME_HTML = """<!doctype html><html><head><title>Home</title></head><body>
<h1 id="title">Hello   botledger</h1>
<a id="to-second" href="/second">second page</a>
<button id="alert" onclick="alert('hi'); document.body.dataset.alerted = 'yes'">alert</button>
<script>console.log('hello from the page', 42); console.warn('careful');</script>
</body></html>"""

SECOND_HTML = (
    """<!doctype html><html><head><title>Second</title></head><body><h1>Second</h1></body></html>"""
)

FORM_HTML = """<!doctype html><html><body>
<input id="q" value="prefilled">
<p id="pressed"></p>
<select id="color"><option value="red">Red</option><option value="green">Green</option></select>
<select id="sizes" multiple><option value="s">S</option><option value="m">M</option><option value="l">L</option></select>
<style>#target { width: 200px; height: 50px; } #target:hover { color: rgb(255, 0, 0); }</style>
<div id="target">hover me</div><p id="hover-status">idle</p>
<script>
  document.getElementById('q').addEventListener('keydown', (event) => {
    document.getElementById('pressed').textContent = event.key + ':' + event.target.value;
  });
  document.getElementById('target').addEventListener('mouseover', () => {
    document.getElementById('hover-status').textContent = 'hovered';
  });
</script>
</body></html>"""

DELAYED_HTML = """<!doctype html><html><body><div id="box"></div>
<script>
  setTimeout(() => { document.getElementById('box').innerHTML = '<p id="late">ready now</p>'; }, 300);
  window.addEventListener('error', () => {});
</script></body></html>"""

INFINITE_HTML = """<!doctype html><html><body style="margin:0">
<ul id="list" style="margin:0;padding:0"></ul>
<script>
  let next = 1;
  function addBatch() {
    const list = document.getElementById('list');
    for (let i = 0; i < 10; i++) {
      const item = document.createElement('li');
      item.className = 'item';
      item.style.height = '120px';
      item.textContent = 'Item ' + next++;
      list.appendChild(item);
    }
  }
  addBatch();
  window.addEventListener('scroll', () => {
    if (window.innerHeight + window.scrollY >= document.body.scrollHeight - 5) {
      addBatch();
    }
  });
</script></body></html>"""

TALL_HTML = """<!doctype html><html><body>
<div style="height: 3000px">top</div><p id="footer">footer</p></body></html>"""

ERROR_HTML = """<!doctype html><html><body><script>
  setTimeout(() => { throw new Error('kaboom in page'); }, 0);
</script></body></html>"""

PAGER_EDGE_HTML = """<!doctype html><html><body>
<p class="item">only page</p>
<a id="disabled-next" aria-disabled="true" href="/second">next</a>
<button id="script-next" onclick="document.body.dataset.turned = 'yes'">next</button>
<a id="hidden" style="display: none" href="/second">hidden</a>
</body></html>"""

PRODUCTS_PER_PAGE = 3


def _products_html(page_number: int, last_page: int) -> str:
    items = "".join(
        f'<li class="product"><span class="name">Product {page_number}-{i}</span>'
        f'<b class="price">{page_number}.{i}0</b><a href="/item/{page_number}-{i}">details</a></li>'
        for i in range(1, PRODUCTS_PER_PAGE + 1)
    )
    next_link = (
        f'<a id="next" href="/products?page={page_number + 1}&last={last_page}">next</a>'
        if page_number < last_page
        else ""
    )
    return f"<!doctype html><html><body><ul>{items}</ul>{next_link}</body></html>"


def _ad_page_html(port: int) -> str:
    return f"""<!doctype html><html><body><script>
  window.loads = {{}};
  function load(name, url) {{
    const script = document.createElement('script');
    script.src = url;
    script.onload = () => {{ window.loads[name] = 'loaded'; }};
    script.onerror = () => {{ window.loads[name] = 'blocked'; }};
    document.head.appendChild(script);
  }}
  load('ad', 'http://{AD_HOST}:{port}/ad.js');
  load('adSubdomain', 'http://cdn.botledger-test-ads.example:{port}/ad.js');
  load('site', 'http://{SITE_HOST}:{port}/site.js');
</script></body></html>"""


class Site:
    """A local aiohttp site that records the Host, path and headers of every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.server: TestServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hosts_requested(self, path: str) -> list[str]:
        return [
            request["host"].split(":")[0] for request in self.requests if request["path"] == path
        ]

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            {"host": request.host, "path": request.path, "headers": dict(request.headers)}
        )
        pages = {
            "/": HOME_HTML,
            "/second": SECOND_HTML,
            "/form": FORM_HTML,
            "/delayed": DELAYED_HTML,
            "/infinite": INFINITE_HTML,
            "/tall": TALL_HTML,
            "/error": ERROR_HTML,
            "/ads": _ad_page_html(self.port),
            "/blank": "<!doctype html><html><body>blank</body></html>",
            "/pager-edge": PAGER_EDGE_HTML,
        }
        if request.path in ("/ad.js", "/site.js"):
            return web.Response(
                text="window.scriptRan = true;", content_type="application/javascript"
            )
        if request.path == "/products":
            page_number = int(request.query.get("page", "1"))
            return web.Response(
                text=_products_html(page_number, int(request.query.get("last", "3"))),
                content_type="text/html",
            )
        if request.path in pages:
            return web.Response(text=pages[request.path], content_type="text/html")
        return web.Response(
            status=404, text="<html><body>not found</body></html>", content_type="text/html"
        )


class RecordingReporter:
    """A StepReporter that keeps everything in memory."""

    def __init__(self) -> None:
        self.started: list[tuple[int, dict[str, Any]]] = []
        self.completed: list[tuple[int, object, int]] = []
        self.failed: list[tuple[int, str, int]] = []
        self.logs: list[tuple[str, str, str]] = []
        self.artifacts: dict[str, tuple[bytes, str]] = {}

    async def step_started(self, index: int, step: dict[str, Any]) -> None:
        self.started.append((index, step))

    async def step_completed(self, index: int, data: object, duration_ms: int) -> None:
        self.completed.append((index, data, duration_ms))

    async def step_failed(self, index: int, error: str, duration_ms: int) -> None:
        self.failed.append((index, error, duration_ms))

    def log(self, source: str, level: str, message: str) -> None:
        self.logs.append((source, level, message))

    async def save_artifact(self, name: str, data: bytes, content_type: str) -> str:
        key = f"artifacts/{name}"
        self.artifacts[key] = (data, content_type)
        return key

    def data(self, index: int) -> object:
        return next(data for step_index, data, _ in self.completed if step_index == index)

    def messages(self, source: str) -> list[str]:
        return [message for log_source, _, message in self.logs if log_source == source]


async def _poll(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


# --- Fixtures -------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site() -> AsyncIterator[Site]:
    recorder = Site()
    app = web.Application()
    app.router.add_get("/{tail:.*}", recorder.handle)
    recorder.server = TestServer(app, host="127.0.0.1")
    await recorder.server.start_server()
    yield recorder
    await recorder.server.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    profile: Path = tmp_path_factory.mktemp("chromium-profile")
    resolver_rules = f"MAP {AD_HOST} 127.0.0.1, MAP *.botledger-test-ads.example 127.0.0.1, MAP {SITE_HOST} 127.0.0.1"
    chromium = await launch(
        executablePath=CHROMIUM_PATH,
        handleSIGINT=False,
        handleSIGTERM=False,
        handleSIGHUP=False,
        autoClose=False,
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            f"--user-data-dir={profile}",
            f"--host-resolver-rules={resolver_rules}",
        ],
    )
    yield chromium

    # pyppeteer sends Browser.close without waiting for the process when the profile
    # directory is ours, so wait here and kill it if it hangs.
    process = chromium.process
    await chromium.close()
    try:
        await asyncio.to_thread(process.wait, 10)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait, 10)


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.createIncognitoBrowserContext()
    new_page = await context.newPage()
    yield new_page
    await context.close()


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


RunProgram = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def run_program(page: Any, reporter: RecordingReporter) -> RunProgram:
    async def run(
        steps: list[dict[str, Any]], params: dict[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        runner = ProgramRunner(
            default_step_timeout_ms=options.pop("default_step_timeout_ms", 10_000)
        )
        return await runner.run(
            page, steps, params or {}, {"targetUrl": "http://127.0.0.1/"}, reporter, **options
        )

    return run


# --- Steps ----------------------------------------------------------------------------------


async def test_goto_reports_url_and_status(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    await run_program(
        [{"action": "goto", "url": site.url("/")}, {"action": "goto", "url": site.url("/nowhere")}]
    )

    assert reporter.data(0) == {"url": site.url("/"), "status": 200}
    assert reporter.data(1) == {"url": site.url("/nowhere"), "status": 404}
    assert [index for index, _ in reporter.started] == [0, 1]
    assert reporter.failed == []


async def test_goto_target_url_placeholder(
    site: Site, page: Any, reporter: RecordingReporter
) -> None:
    steps = [{"action": "goto", "url": "{{bot.targetUrl}}/second"}]

    await ProgramRunner().run(page, steps, {}, {"targetUrl": site.url("")}, reporter)

    assert reporter.data(0) == {"url": site.url("/second"), "status": 200}


async def test_goto_file_url_from_param_rejected(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [{"action": "goto", "url": "{{params.url}}"}], {"url": "file:///etc/passwd"}
        )

    assert error.value.index == 0
    assert 'Expected an absolute http or https URL, got "file:///etc/passwd"' in error.value.message


async def test_runner_log_line_per_step(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    await run_program([{"action": "goto", "url": site.url("/")}])

    [line] = [message for message in reporter.messages("runner") if "completed" in message]
    assert line.startswith(f"Step 0 goto {site.url('/')} completed in ")
    assert line.endswith(" ms")


async def test_click_with_navigation(site: Site, run_program: RunProgram, page: Any) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/")},
            {"action": "click", "selector": "#to-second", "waitForNavigation": True},
            {"action": "extract", "name": "heading", "selector": "h1"},
        ]
    )

    assert page.url == site.url("/second")
    assert data == {"heading": "Second"}


async def test_click_closes_alert_dialog(
    site: Site, run_program: RunProgram, page: Any, reporter: RecordingReporter
) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/")},
            {"action": "click", "selector": "#alert"},
            {
                "action": "evaluate",
                "expression": "document.body.dataset.alerted",
                "name": "alerted",
            },
        ]
    )

    assert data == {"alerted": "yes"}
    assert "Closed the alert dialog (accepted): hi" in reporter.messages("runner")


async def test_type_clear_and_press(site: Site, run_program: RunProgram) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/form")},
            {"action": "type", "selector": "#q", "text": "lamp", "clear": True},
            {"action": "press", "key": "Enter", "selector": "#q"},
            {"action": "extract", "name": "pressed", "selector": "#pressed"},
        ]
    )

    assert data == {"pressed": "Enter:lamp"}


async def test_type_appends_without_clear(site: Site, run_program: RunProgram) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/form")},
            {"action": "type", "selector": "#q", "text": "!"},
            {
                "action": "evaluate",
                "expression": "document.getElementById('q').value",
                "name": "value",
            },
        ]
    )

    assert data == {"value": "prefilled!"}


async def test_press_unknown_key_suggests(site: Site, run_program: RunProgram) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [{"action": "goto", "url": site.url("/form")}, {"action": "press", "key": "Entr"}]
        )

    assert error.value.message == "Step 1 (press) failed: Unknown key 'Entr'. Did you mean 'Enter'?"


async def test_select_single_and_multiple(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/form")},
            {"action": "select", "selector": "#color", "value": "green"},
            {"action": "select", "selector": "#sizes", "value": ["s", "l"]},
            {
                "action": "evaluate",
                "expression": "document.getElementById('color').value",
                "name": "color",
            },
        ]
    )

    assert reporter.data(1) == {"values": ["green"]}
    assert reporter.data(2) == {"values": ["s", "l"]}
    assert data == {"color": "green"}


async def test_select_unknown_value_fails(site: Site, run_program: RunProgram) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/form")},
                {"action": "select", "selector": "#color", "value": "purple"},
            ]
        )

    assert "Could not select the value 'purple' in '#color'" in error.value.message


async def test_hover_triggers_mouseover_and_hover_style(
    site: Site, run_program: RunProgram
) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/form")},
            {"action": "hover", "selector": "#target"},
            {"action": "extract", "name": "status", "selector": "#hover-status"},
            {
                "action": "evaluate",
                "expression": "document.getElementById('target').matches(':hover')",
                "name": "matchesHover",
            },
            {
                "action": "evaluate",
                "expression": "getComputedStyle(document.getElementById('target')).color",
                "name": "color",
            },
        ]
    )

    assert data == {"status": "hovered", "matchesHover": True, "color": "rgb(255, 0, 0)"}


async def test_scroll_loads_infinite_list(site: Site, run_program: RunProgram) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/infinite")},
            {"action": "scroll", "to": "bottom", "times": 3, "waitMs": 200},
            {"action": "waitFor", "selector": ".item:nth-child(40)"},
            {"action": "extract", "name": "items", "selector": ".item", "multiple": True},
        ]
    )

    assert len(data["items"]) == 40
    assert data["items"][:2] == ["Item 1", "Item 2"]
    assert data["items"][-1] == "Item 40"


async def test_scroll_to_selector(site: Site, run_program: RunProgram) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/tall")},
            {"action": "scroll", "to": "#footer"},
            {"action": "evaluate", "expression": "window.scrollY > 1000", "name": "scrolled"},
        ]
    )

    assert data == {"scrolled": True}


async def test_wait_for_delayed_selector(site: Site, run_program: RunProgram) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/delayed")},
            {"action": "waitFor", "selector": "#late"},
            {"action": "extract", "name": "late", "selector": "#late"},
            {"action": "waitFor", "ms": 10},
        ]
    )

    assert data == {"late": "ready now"}


async def test_evaluate_result_and_json_param(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/")},
            {
                "action": "evaluate",
                "expression": "({title: document.title, query: {{params.q}}, n: 1 + 1})",
            },
            {"action": "evaluate", "expression": "Promise.resolve([1, 2, 3])", "name": "numbers"},
        ],
        {"q": 'it\'s "quoted"; alert(1)'},
    )

    assert reporter.data(1) == {"title": "Home", "query": 'it\'s "quoted"; alert(1)', "n": 2}
    assert data == {"numbers": [1, 2, 3]}


async def test_evaluate_exception_fails_step(site: Site, run_program: RunProgram) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/")},
                {"action": "evaluate", "expression": "null.x"},
            ]
        )

    assert error.value.index == 1
    assert "Evaluation failed: TypeError: Cannot read properties of null" in error.value.message


async def test_extract_single_and_fields(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/products?page=1")},
            {"action": "extract", "name": "first", "selector": ".product .name"},
            {
                "action": "extract",
                "name": "record",
                "selector": ".product",
                "fields": {
                    "name": ".name",
                    "link": {"selector": "a", "attribute": "href"},
                    "missing": ".nothing",
                    "whole": ":scope",
                },
            },
        ]
    )

    assert data["first"] == "Product 1-1"
    assert data["record"] == {
        "name": "Product 1-1",
        "link": "/item/1-1",
        "missing": None,
        "whole": "Product 1-11.10details",
    }
    assert reporter.data(2) == data["record"]


async def test_extract_missing_selector_fails(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/")},
                {"action": "extract", "name": "price", "selector": ".price"},
            ]
        )

    assert error.value.index == 1
    assert (
        error.value.message
        == "Step 1 (extract) failed: No element matches selector '.price' (extract 'price')."
    )
    assert [(index, message) for index, message, _ in reporter.failed] == [
        (1, "No element matches selector '.price' (extract 'price').")
    ]
    assert [index for index, _, _ in reporter.completed] == [0]


async def test_extract_multiple_appends_same_name(site: Site, run_program: RunProgram) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/products?page=1")},
            {"action": "extract", "name": "names", "selector": ".name", "multiple": True},
            {"action": "goto", "url": site.url("/products?page=2")},
            {"action": "extract", "name": "names", "selector": ".name", "multiple": True},
            {"action": "extract", "name": "none", "selector": ".nothing", "multiple": True},
        ]
    )

    assert data["names"] == [f"Product {page}-{i}" for page in (1, 2) for i in (1, 2, 3)]
    assert data["none"] == []


async def test_paginate_extracts_products_in_order(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/products?page=1&last=3")},
            {
                "action": "paginate",
                "next": "#next",
                "maxPages": 5,
                "steps": [
                    {
                        "action": "extract",
                        "name": "products",
                        "selector": ".product",
                        "multiple": True,
                        "fields": {
                            "name": ".name",
                            "price": ".price",
                            "url": {"selector": "a", "attribute": "href"},
                        },
                    }
                ],
            },
        ]
    )

    expected = [
        {"name": f"Product {page}-{i}", "price": f"{page}.{i}0", "url": f"/item/{page}-{i}"}
        for page in (1, 2, 3)
        for i in (1, 2, 3)
    ]
    assert data == {"products": expected}
    assert reporter.data(1) == {"pages": 3}
    assert [index for index, _, _ in reporter.completed] == [0, 1]
    assert any(
        "paginate stops after page 3: the next link '#next' is missing" in line
        for line in reporter.messages("runner")
    )


async def test_paginate_stops_at_max_pages(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/products?page=1&last=9")},
            {
                "action": "paginate",
                "next": "#next",
                "maxPages": 2,
                "steps": [
                    {"action": "extract", "name": "names", "selector": ".name", "multiple": True}
                ],
            },
        ]
    )

    assert reporter.data(1) == {"pages": 2}
    assert len(data["names"]) == 2 * PRODUCTS_PER_PAGE


async def test_paginate_nested_failure_names_page(site: Site, run_program: RunProgram) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/products?page=1")},
                {
                    "action": "paginate",
                    "next": "#next",
                    "steps": [
                        {"action": "assert", "selector": ".product", "textContains": "Product 1-"}
                    ],
                },
            ]
        )

    assert error.value.index == 1
    assert error.value.message.startswith(
        "Step 1 (paginate) failed: page 2 nested step 0 (assert): Assertion failed: the element matching '.product' "
        "does not contain the text 'Product 1-'."
    )


async def test_paginate_stops_at_disabled_next(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    nested = [{"action": "extract", "name": "items", "selector": ".item", "multiple": True}]

    data = await run_program(
        [
            {"action": "goto", "url": site.url("/pager-edge")},
            {"action": "paginate", "next": "#disabled-next", "steps": nested},
        ]
    )

    assert data == {"items": ["only page"]}
    assert reporter.data(1) == {"pages": 1}


async def test_paginate_next_without_navigation_fails(site: Site, run_program: RunProgram) -> None:
    nested = [{"action": "extract", "name": "items", "selector": ".item", "multiple": True}]

    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/pager-edge")},
                {"action": "paginate", "next": "#script-next", "timeoutMs": 500, "steps": nested},
            ]
        )

    assert error.value.message == (
        "Step 1 (paginate) failed: page 1: turning the page failed: Timed out after 500 ms "
        "waiting for the navigation after clicking '#script-next'."
    )


async def test_click_hidden_element_names_selector(site: Site, run_program: RunProgram) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/pager-edge")},
                {"action": "click", "selector": "#hidden"},
            ]
        )

    assert error.value.message == (
        "Step 1 (click) failed: click '#hidden': Node is either not visible or not an HTMLElement"
    )


async def test_invalid_selector_message_first_line(site: Site, run_program: RunProgram) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/")},
                {"action": "extract", "name": "x", "selector": "##bad"},
            ]
        )

    assert "'##bad' is not a valid selector." in error.value.message
    assert "\n" not in error.value.message


async def test_screenshot_stored_as_png(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    await run_program(
        [{"action": "goto", "url": site.url("/")}, {"action": "screenshot", "fullPage": True}]
    )

    assert reporter.data(1) == {"key": "artifacts/step-1.png"}
    image, content_type = reporter.artifacts["artifacts/step-1.png"]
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    assert content_type == "image/png"


async def test_assert_passes_and_fails(site: Site, run_program: RunProgram) -> None:
    await run_program(
        [
            {"action": "goto", "url": site.url("/")},
            {"action": "assert", "selector": "#title", "textContains": "Hello botledger"},
        ]
    )

    with pytest.raises(StepError) as error:
        await run_program([{"action": "assert", "selector": "#title", "textContains": "Goodbye"}])

    assert error.value.message == (
        "Step 0 (assert) failed: Assertion failed: the element matching '#title' does not contain the text 'Goodbye'. "
        "Its text is 'Hello botledger'."
    )


async def test_assert_missing_element(site: Site, run_program: RunProgram) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [{"action": "goto", "url": site.url("/")}, {"action": "assert", "selector": "#nope"}]
        )

    assert (
        error.value.message
        == "Step 1 (assert) failed: Assertion failed: no element matches selector '#nope'."
    )


async def test_step_timeout_names_selector(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    started = time.monotonic()

    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/")},
                {"action": "click", "selector": "#missing", "timeoutMs": 400},
            ]
        )

    assert (
        error.value.message
        == "Step 1 (click) failed: Timed out after 400 ms waiting for an element matching '#missing'."
    )
    assert time.monotonic() - started < 5
    [(index, _, duration_ms)] = reporter.failed
    assert index == 1
    assert duration_ms >= 400


async def test_default_step_timeout_applies(site: Site, run_program: RunProgram) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [{"action": "goto", "url": site.url("/")}, {"action": "waitFor", "selector": "#never"}],
            default_step_timeout_ms=300,
        )

    assert (
        error.value.message
        == "Step 1 (waitFor) failed: Timed out after 300 ms waiting for an element matching '#never'."
    )


async def test_console_output_reaches_script_log(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    await run_program([{"action": "goto", "url": site.url("/")}])
    await run_program(
        [{"action": "goto", "url": site.url("/error")}, {"action": "waitFor", "ms": 50}]
    )

    script_logs = [
        (level, message) for source, level, message in reporter.logs if source == "script"
    ]
    assert ("info", "hello from the page 42") in script_logs
    assert ("warning", "careful") in script_logs
    assert any(level == "error" and "kaboom in page" in message for level, message in script_logs)


async def test_secret_masked_in_error_logs_and_data(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    params = {"password": SECRET}

    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/form?token={{params.password}}")},
                {"action": "type", "selector": "#q", "text": "{{params.password}}"},
                {"action": "evaluate", "expression": "document.getElementById('q').value"},
                {"action": "assert", "selector": "#pressed", "textContains": "{{params.password}}"},
            ],
            params,
            secrets={SECRET},
        )

    assert SECRET not in error.value.message
    assert "does not contain the text '***'" in error.value.message
    assert reporter.data(0) == {"url": site.url("/form?token=***"), "status": 200}
    assert reporter.data(2) == "prefilled***"
    assert all(SECRET not in message for _, _, message in reporter.logs)
    assert all(SECRET not in message for _, message, _ in reporter.failed)
    assert any("type into '#q' completed" in message for message in reporter.messages("runner"))


async def test_secret_masked_in_extracted_data(site: Site, run_program: RunProgram) -> None:
    data = await run_program(
        [
            {"action": "goto", "url": site.url("/form")},
            {"action": "type", "selector": "#q", "text": "{{params.password}}", "clear": True},
            {
                "action": "evaluate",
                "expression": "document.getElementById('q').value",
                "name": "typed",
            },
        ],
        {"password": SECRET},
        secrets={SECRET},
    )

    assert data == {"typed": "***"}


async def test_undefined_param_fails_step(site: Site, run_program: RunProgram) -> None:
    with pytest.raises(StepError) as error:
        await run_program(
            [
                {"action": "goto", "url": site.url("/form")},
                {"action": "type", "selector": "#q", "text": "{{params.nope}}"},
            ]
        )

    assert "uses parameter 'nope', which has no value" in error.value.message


async def test_invalid_program_rejected_before_run(page: Any, reporter: RecordingReporter) -> None:
    with pytest.raises(ValidationError):
        await ProgramRunner().run(page, [{"action": "clik", "selector": "#a"}], {}, {}, reporter)

    assert reporter.started == []


async def test_cancellation_propagates(
    site: Site, run_program: RunProgram, reporter: RecordingReporter
) -> None:
    task = asyncio.ensure_future(
        run_program([{"action": "goto", "url": site.url("/")}, {"action": "waitFor", "ms": 20_000}])
    )
    await _poll(lambda: len(reporter.started) == 2)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert reporter.failed == []


async def test_mask_secrets_longest_first() -> None:
    masked = mask_secrets({"a": ["pass", "password"], "password-key": 3}, {"pass", "password", ""})

    assert masked == {"a": ["***", "***"], "***-key": 3}


async def test_step_timeout_adds_planned_waits() -> None:
    runner = ProgramRunner(default_step_timeout_ms=1000)

    assert runner.step_timeout_ms({"action": "waitFor", "ms": 5000}) == 6000
    assert runner.step_timeout_ms({"action": "scroll", "times": 3, "waitMs": 500}) == 2000
    assert runner.step_timeout_ms({"action": "click", "timeoutMs": 70}) == 70


# --- Capabilities ---------------------------------------------------------------------------


async def test_capabilities_seen_by_page(site: Site, page: Any) -> None:
    capabilities = {
        "userAgent": "BotledgerTest/1.0",
        "locale": "de-DE",
        "timezone": "Asia/Tokyo",
        "resolution": {"width": 1024, "height": 700},
        "geolocation": {"latitude": 48.137, "longitude": 11.575},
    }

    await apply_capabilities(page, capabilities)
    await page.goto(site.url("/blank"))
    seen = await page.evaluate(
        """async () => {
          const position = await new Promise((resolve) => navigator.geolocation.getCurrentPosition(
            (p) => resolve([p.coords.latitude, p.coords.longitude]),
            (error) => resolve(error.message),
            {timeout: 5000}));
          return {
            userAgent: navigator.userAgent,
            language: navigator.language,
            locale: Intl.DateTimeFormat().resolvedOptions().locale,
            timeZone: Intl.DateTimeFormat().resolvedOptions().timeZone,
            width: window.innerWidth,
            height: window.innerHeight,
            position,
          };
        }"""
    )

    assert seen["userAgent"] == "BotledgerTest/1.0"
    assert seen["language"] == "de-DE"
    assert seen["locale"] == "de-DE"
    assert seen["timeZone"] == "Asia/Tokyo"
    assert (seen["width"], seen["height"]) == (1024, 700)
    assert seen["position"] == [48.137, 11.575]
    [request] = [request for request in site.requests if request["path"] == "/blank"][-1:]
    assert request["headers"]["User-Agent"] == "BotledgerTest/1.0"
    assert request["headers"]["Accept-Language"] == "de-DE,de;q=0.9"


async def test_locale_keeps_browser_user_agent(site: Site, page: Any, browser: Any) -> None:
    await apply_capabilities(page, {"locale": "fr"})
    await page.goto(site.url("/blank"))

    assert await page.evaluate("navigator.userAgent") == await browser.userAgent()
    assert await page.evaluate("navigator.language") == "fr"


async def test_ad_blocking_blocks_ad_hosts(site: Site, page: Any) -> None:
    await apply_capabilities(page, {"adBlocking": True}, ad_hosts=TEST_AD_HOSTS)

    await page.goto(site.url("/ads"))
    await page.waitForFunction("Object.keys(window.loads).length === 3", {"timeout": 5000})
    loads = await page.evaluate("window.loads")

    assert loads == {"ad": "blocked", "adSubdomain": "blocked", "site": "loaded"}
    assert site.hosts_requested("/site.js")[-1] == SITE_HOST
    assert AD_HOST not in site.hosts_requested("/ad.js")
    assert "cdn.botledger-test-ads.example" not in site.hosts_requested("/ad.js")


async def test_ad_blocking_off_loads_everything(site: Site, page: Any) -> None:
    await apply_capabilities(page, {"adBlocking": False}, ad_hosts=TEST_AD_HOSTS)

    await page.goto(site.url("/ads"))
    await page.waitForFunction("Object.keys(window.loads).length === 3", {"timeout": 5000})

    assert await page.evaluate("window.loads") == {
        "ad": "loaded",
        "adSubdomain": "loaded",
        "site": "loaded",
    }


async def test_rejected_capability_raises(page: Any) -> None:
    with pytest.raises(CapabilityError) as error:
        await apply_capabilities(page, {"timezone": "Mars/Olympus_Mons"})

    assert error.value.message.startswith("Chromium rejected the capability 'timezone'")


async def test_ad_host_matching() -> None:
    assert is_ad_host("doubleclick.net", DEFAULT_AD_HOSTS)
    assert is_ad_host("stats.g.DoubleClick.net.", DEFAULT_AD_HOSTS)
    assert not is_ad_host("notdoubleclick.net", DEFAULT_AD_HOSTS)
    assert not is_ad_host("example.com", DEFAULT_AD_HOSTS)
