"""Tests of the bundled demo shop and its example bots.

HTTP checks use an aiohttp client. Browser checks use real headless Chromium through pyppeteer,
and a small step interpreter (test-only, not the product's runner) runs each example bot
against the site to prove that its selectors extract the expected data.
"""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pyppeteer import launch
from pyppeteer.browser import Browser
from pyppeteer.page import Page

from events.errors import ValidationError
from services.demo.bots import (
    example_bots,
    expected_catalog,
    expected_feed_posts,
    expected_orders,
    expected_quotes,
    expected_search_results,
)
from services.demo.site import DEMO_PASSWORD, DEMO_USERNAME, SESSION_COOKIE, start_demo_site
from services.runner.program import (
    referenced_params,
    validate_capabilities,
    validate_parameter_definitions,
    validate_steps,
)

CHROMIUM_PATH = "/usr/bin/chromium"
BROWSER_TIMEOUT_MS = 10_000

HTML_PAGES = (
    "/",
    "/catalog",
    "/catalog?page=2",
    "/catalog?page=3",
    "/products/HP-1001",
    "/search",
    "/search/results?q=lamp&category=all",
    "/login",
    "/delayed",
    "/feed",
    "/table",
    "/broken",
)

TEMPLATE_PATTERN = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    runner, url = await start_demo_site()
    try:
        yield url
    finally:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: aiohttp's cookie jar otherwise drops cookies set by an IP-address host.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    chromium = await launch(
        executablePath=CHROMIUM_PATH,
        headless=True,
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
        ],
        handleSIGINT=False,
        handleSIGTERM=False,
        handleSIGHUP=False,
        # The fixture closes the browser; pyppeteer's atexit hook would run on a closed loop.
        autoClose=False,
    )
    try:
        yield chromium
    finally:
        await chromium.close()
        await reap_browser_process(chromium.process)


async def reap_browser_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    # With its own --user-data-dir, pyppeteer's close() sends Browser.close but never waits for
    # the process, which would leave it running (and a ResourceWarning) after the test.
    try:
        await asyncio.to_thread(process.wait, timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait, timeout_s)


async def fetch_text(client: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with client.get(url, allow_redirects=False) as response:
        return response.status, await response.text()


class AttributeCollector(HTMLParser):
    """Collects ids, classes and every href/src/action value of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.classes: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id":
                self.ids.add(value)
            elif name == "class":
                self.classes.update(value.split())
            elif name in ("href", "src", "action"):
                self.links.append(value)


def parse_html(text: str) -> AttributeCollector:
    collector = AttributeCollector()
    collector.feed(text)
    return collector


# --- pages over HTTP -----------------------------------------------------------------------


async def test_pages_load_only_local_assets(base_url: str, client: aiohttp.ClientSession) -> None:
    for path in HTML_PAGES:
        status, text = await fetch_text(client, base_url + path)
        assert status == 200, path
        links = parse_html(text).links
        assert "/static/site.css" in links, path
        assert "/favicon.svg" in links, path
        external = [link for link in links if not link.startswith("/") or link.startswith("//")]
        assert external == [], path

    status, css = await fetch_text(client, base_url + "/static/site.css")
    assert status == 200
    assert "url(" not in css
    assert "@import" not in css

    async with client.get(base_url + "/favicon.svg") as response:
        assert response.status == 200
        assert response.content_type == "image/svg+xml"


async def test_index_links_every_demo_page(base_url: str, client: aiohttp.ClientSession) -> None:
    status, text = await fetch_text(client, base_url + "/")

    assert status == 200
    links = set(parse_html(text).links)
    for path in ("/catalog", "/search", "/login", "/account", "/delayed", "/feed", "/table", "/broken"):
        assert path in links, path


async def test_catalog_pages_and_next_link(base_url: str, client: aiohttp.ClientSession) -> None:
    skus_seen: list[str] = []
    for page in (1, 2, 3):
        status, text = await fetch_text(client, f"{base_url}/catalog?page={page}")
        assert status == 200
        skus = re.findall(r'<span class="product-sku">([^<]+)</span>', text)
        assert len(skus) == 8, page
        skus_seen.extend(skus)

        next_links = re.findall(r'<a class="next" rel="next" href="([^"]+)"', text)
        if page < 3:
            assert next_links == [f"/catalog?page={page + 1}"]
        else:
            assert next_links == []

    assert skus_seen == [record["sku"] for record in expected_catalog()]


async def test_catalog_rejects_bad_page(base_url: str, client: aiohttp.ClientSession) -> None:
    for page in ("0", "4", "two"):
        status, text = await fetch_text(client, f"{base_url}/catalog?page={page}")
        assert status == 404, page
        assert "pages 1 to 3" in text, page


async def test_product_detail_and_unknown_sku(base_url: str, client: aiohttp.ClientSession) -> None:
    status, text = await fetch_text(client, base_url + "/products/HP-1003")
    assert status == 200
    assert '<h1 class="product-name">Chef&#x27;s Knife 20 cm</h1>' in text
    assert '<p class="product-price">$62.00</p>' in text

    status, text = await fetch_text(client, base_url + "/products/HP-9999")
    assert status == 404
    assert "HP-9999" in text


async def test_search_form_fields(base_url: str, client: aiohttp.ClientSession) -> None:
    status, text = await fetch_text(client, base_url + "/search")

    assert status == 200
    document = parse_html(text)
    assert {"q", "category", "search-submit", "search-form"} <= document.ids
    assert "/search/results" in document.links
    for category in ("all", "kitchen", "outdoor", "office", "home"):
        assert f'<option value="{category}">' in text


@pytest.mark.parametrize(
    ("query", "category", "expected_skus"),
    [
        ("lamp", "all", ["HP-1013", "HP-1020"]),
        ("LAMP", "office", ["HP-1013"]),
        ("wool", "home", ["HP-1019"]),
        ("wool", "all", ["HP-1012", "HP-1019"]),
        ("", "outdoor", ["HP-1007", "HP-1008", "HP-1009", "HP-1010", "HP-1011", "HP-1012"]),
    ],
)
async def test_search_results_match_names(
    base_url: str, client: aiohttp.ClientSession, query: str, category: str, expected_skus: list[str]
) -> None:
    params = {"q": query, "category": category}
    async with client.get(base_url + "/search/results", params=params) as response:
        status, text = response.status, await response.text()

    assert status == 200
    assert re.findall(r'<span class="product-sku">([^<]+)</span>', text) == expected_skus
    assert [record["sku"] for record in expected_search_results(query, category)] == expected_skus
    assert "no-results" not in text


async def test_search_without_match_shows_message(
    base_url: str, client: aiohttp.ClientSession
) -> None:
    params = {"q": "<b>teapot</b>", "category": "all"}
    async with client.get(base_url + "/search/results", params=params) as response:
        status, text = response.status, await response.text()

    assert status == 200
    assert '<p class="no-results" id="no-results">No results for “&lt;b&gt;teapot&lt;/b&gt;”.</p>' in text
    assert "product-sku" not in text


async def test_search_rejects_unknown_category(base_url: str, client: aiohttp.ClientSession) -> None:
    params = {"q": "lamp", "category": "garden"}
    async with client.get(base_url + "/search/results", params=params) as response:
        status, text = response.status, await response.text()

    assert status == 400
    assert "garden" in text


async def test_account_redirects_to_login(base_url: str, client: aiohttp.ClientSession) -> None:
    async with client.get(base_url + "/account", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/login?next=/account"

    status, text = await fetch_text(client, base_url + "/login?next=%2Faccount")
    assert status == 200
    assert {"username", "password", "login-submit"} <= parse_html(text).ids
    assert DEMO_USERNAME in text
    assert DEMO_PASSWORD in text
    assert '<input type="hidden" name="next" value="/account">' in text


async def test_login_rejects_wrong_password(base_url: str, client: aiohttp.ClientSession) -> None:
    form = {"username": DEMO_USERNAME, "password": "wrong", "next": "/account"}
    async with client.post(base_url + "/login", data=form, allow_redirects=False) as response:
        status, text = response.status, await response.text()

    assert status == 401
    assert "Invalid username or password." in text
    assert SESSION_COOKIE not in response.cookies

    async with client.get(base_url + "/account", allow_redirects=False) as response:
        assert response.status == 302


async def test_login_cookie_opens_account(base_url: str, client: aiohttp.ClientSession) -> None:
    form = {"username": DEMO_USERNAME, "password": DEMO_PASSWORD, "next": "/account"}
    async with client.post(base_url + "/login", data=form, allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/account"
        assert SESSION_COOKIE in response.cookies
        assert response.cookies[SESSION_COOKIE]["httponly"] is True

    status, text = await fetch_text(client, base_url + "/account")
    assert status == 200
    assert "Signed in as <strong>demo</strong>" in text
    order_ids = re.findall(r'<td class="order-id">([^<]+)</td>', text)
    assert order_ids == [order["orderId"] for order in expected_orders()]

    async with client.get(base_url + "/logout", allow_redirects=False) as response:
        assert response.status == 303
    async with client.get(base_url + "/account", allow_redirects=False) as response:
        assert response.status == 302


async def test_login_ignores_offsite_next(base_url: str, client: aiohttp.ClientSession) -> None:
    for next_path in ("//example.org/", "https://example.org/", "/\\example.org"):
        form = {"username": DEMO_USERNAME, "password": DEMO_PASSWORD, "next": next_path}
        async with client.post(base_url + "/login", data=form, allow_redirects=False) as response:
            assert response.status == 303, next_path
            assert response.headers["Location"] == "/account", next_path


async def test_api_feed_offsets(base_url: str, client: aiohttp.ClientSession) -> None:
    cases = [(0, 1, 10, 10), (10, 11, 20, 20), (40, 41, 50, None), (45, 46, 50, None)]
    for offset, first_id, last_id, next_offset in cases:
        async with client.get(base_url + "/api/feed", params={"offset": str(offset)}) as response:
            assert response.status == 200, offset
            page = await response.json()
        assert [item["id"] for item in page["items"]] == list(range(first_id, last_id + 1)), offset
        assert page["nextOffset"] == next_offset, offset
        assert page["total"] == 50, offset

    async with client.get(base_url + "/api/feed", params={"offset": "50"}) as response:
        assert response.status == 200
        page = await response.json()
    assert page["items"] == []
    assert page["nextOffset"] is None


async def test_api_feed_rejects_bad_offset(base_url: str, client: aiohttp.ClientSession) -> None:
    for params in ({"offset": "-1"}, {"offset": "51"}, {"offset": "ten"}, {"limit": "11"}):
        async with client.get(base_url + "/api/feed", params=params) as response:
            assert response.status == 400, params
            body = await response.json()
        assert "offset must be an integer from 0 to 50" in body["error"], params


async def test_feed_page_renders_first_posts(base_url: str, client: aiohttp.ClientSession) -> None:
    status, text = await fetch_text(client, base_url + "/feed")

    assert status == 200
    assert text.count('<li class="feed-item"') == 10
    assert 'data-next-offset="10"' in text
    assert "/static/feed.js" in parse_html(text).links


async def test_delayed_page_starts_empty(base_url: str, client: aiohttp.ClientSession) -> None:
    status, text = await fetch_text(client, base_url + "/delayed")
    assert status == 200
    assert '<ul class="card quotes" id="quotes" data-delay-ms="1500"></ul>' in text

    status, text = await fetch_text(client, base_url + "/delayed?delayMs=200")
    assert status == 200
    assert 'data-delay-ms="200"' in text

    status, text = await fetch_text(client, base_url + "/delayed?delayMs=-5")
    assert status == 400
    assert "delayMs must be an integer from 0 to 60000" in text

    async with client.get(base_url + "/api/quotes") as response:
        assert response.status == 200
        assert (await response.json())["quotes"] == expected_quotes()


async def test_table_has_header_and_rows(base_url: str, client: aiohttp.ClientSession) -> None:
    status, text = await fetch_text(client, base_url + "/table")

    assert status == 200
    headers = re.findall(r"<th>([^<]+)</th>", text)
    assert headers == ["Country", "Capital", "Continent", "Calling code"]
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td>", text)
    assert len(rows) == 20
    assert ("Japan", "Tokyo") in rows


async def test_broken_page_lacks_price(base_url: str, client: aiohttp.ClientSession) -> None:
    status, text = await fetch_text(client, base_url + "/broken")

    assert status == 200
    classes = parse_html(text).classes
    assert "product-name" in classes
    assert "product-sku" in classes
    assert "product-price" not in classes
    assert "/static/broken.js" in parse_html(text).links


async def test_unknown_page_is_html_404(base_url: str, client: aiohttp.ClientSession) -> None:
    status, text = await fetch_text(client, base_url + "/no-such-page")
    assert status == 404
    assert "Nothing is served at /no-such-page." in text

    status, text = await fetch_text(client, base_url + "/api/no-such-endpoint")
    assert status == 404
    assert "<html" not in text


# --- pages in Chromium ---------------------------------------------------------------------


def record_page_activity(page: Page, console_lines: list[str], request_urls: list[str]) -> None:
    page.on("console", lambda message: console_lines.append(message.text))
    page.on("request", lambda request: request_urls.append(request.url))


async def test_delayed_quotes_render_later(base_url: str, browser: Browser) -> None:
    page = await browser.newPage()
    console_lines: list[str] = []
    request_urls: list[str] = []
    record_page_activity(page, console_lines, request_urls)

    await page.goto(base_url + "/delayed", {"waitUntil": "load"})
    assert await page.evaluate("document.querySelectorAll('#quotes li').length") == 0

    await page.waitForSelector("#quotes li.quote", {"timeout": BROWSER_TIMEOUT_MS})
    symbols = await page.evaluate(
        "Array.from(document.querySelectorAll('#quotes .quote-symbol'), el => el.textContent)",
        force_expr=True,
    )
    assert symbols == [quote["symbol"] for quote in expected_quotes()]
    rendered_at_ms = await page.evaluate("Number(document.getElementById('quotes').dataset.renderedAtMs)")
    assert rendered_at_ms >= 1500

    assert "quotes: waiting 1500 ms for the quote feed" in console_lines
    assert "quotes: rendered 6 quotes" in console_lines
    assert all(url.startswith(base_url + "/") for url in request_urls), request_urls


async def test_feed_grows_after_scrolling(base_url: str, browser: Browser) -> None:
    page = await browser.newPage()
    console_lines: list[str] = []
    request_urls: list[str] = []
    record_page_activity(page, console_lines, request_urls)
    await page.goto(base_url + "/feed", {"waitUntil": "load"})
    count_expression = "document.querySelectorAll('#feed li.feed-item').length"
    assert await page.evaluate(count_expression) == 10

    for expected_count in (20, 30, 40, 50):
        await page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)", force_expr=True)
        await page.waitForFunction(
            f"{count_expression} >= {expected_count}", {"timeout": BROWSER_TIMEOUT_MS}
        )
        assert await page.evaluate(count_expression) == expected_count

    assert await page.evaluate("document.getElementById('feed-status').classList.contains('feed-end')")
    assert "feed: 50 of 50 posts shown" in console_lines
    assert f"{base_url}/api/feed?offset=40" in request_urls
    assert all(url.startswith(base_url + "/") for url in request_urls), request_urls


# --- example bot definitions ---------------------------------------------------------------


def test_example_bots_pass_validation() -> None:
    bots = example_bots("http://127.0.0.1:8123/")

    assert [definition["bot"]["name"] for definition in bots] == [
        "Catalog extraction",
        "Product search",
        "Account orders",
        "Live quotes",
        "Infinite feed",
        "Price watcher (broken)",
    ]
    for definition in bots:
        bot, manifest = definition["bot"], definition["manifest"]
        name = bot["name"]
        assert set(definition) == {"bot", "manifest"}, name
        assert set(bot) == {"name", "targetUrl", "description", "kind", "tags", "steps"}, name
        assert bot["targetUrl"].startswith("http://127.0.0.1:8123/"), name
        assert "//" not in bot["targetUrl"].removeprefix("http://"), name
        assert bot["kind"] in ("extraction", "action"), name
        assert set(manifest) == {"capabilities", "parameters"}, name

        # Each validator raises ValidationError, naming the bad field, when the bot breaks a rule.
        steps = validate_steps(bot["steps"])
        parameters = validate_parameter_definitions(manifest["parameters"])
        capabilities = validate_capabilities(manifest["capabilities"])
        assert len(steps) == len(bot["steps"]), name
        assert capabilities == manifest["capabilities"], name
        assert referenced_params(steps) <= set(parameters), name


def test_validation_rejects_misspelled_field() -> None:
    definition = example_bots("http://127.0.0.1:8123")[0]
    steps = copy.deepcopy(definition["bot"]["steps"])
    steps[1]["steps"][0]["multple"] = True

    with pytest.raises(ValidationError) as failure:
        validate_steps(steps)

    assert "steps[1].steps[0].multple" in failure.value.message


def test_bot_parameters_and_kinds() -> None:
    bots = {definition["bot"]["name"]: definition for definition in example_bots("http://127.0.0.1:1")}

    search = bots["Product search"]
    assert search["bot"]["kind"] == "action"
    assert search["manifest"]["parameters"]["searchQuery"]["required"] is True
    assert search["manifest"]["parameters"]["category"]["default"] == "all"

    password = bots["Account orders"]["manifest"]["parameters"]["password"]
    assert password["secret"] is True
    assert password["required"] is True
    assert bots["Account orders"]["manifest"]["parameters"]["username"]["default"] == DEMO_USERNAME

    assert bots["Catalog extraction"]["bot"]["steps"][1]["maxPages"] == 5


def test_expected_catalog_records() -> None:
    catalog = expected_catalog()

    assert len(catalog) == 24
    assert len({record["sku"] for record in catalog}) == 24
    assert catalog[0] == {
        "name": "Cast Iron Skillet",
        "price": "$34.50",
        "sku": "HP-1001",
        "url": "/products/HP-1001",
    }
    assert catalog[23]["sku"] == "HP-1024"
    assert all(re.fullmatch(r"\$\d+\.\d\d", record["price"]) for record in catalog)


# --- example bots run in Chromium ----------------------------------------------------------


class StepFailedError(Exception):
    """Failure of a step run by the test interpreter, with the top-level step's `index`."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"step {index}: {message}")
        self.index = index


EXTRACT_FUNCTION = """(selector, fields, multiple) => {
  const text = (el) => el === null ? null : el.textContent.trim();
  const readField = (item, spec) => {
    if (typeof spec === "string") return text(item.querySelector(spec));
    const el = item.querySelector(spec.selector);
    return el === null ? null : el.getAttribute(spec.attribute);
  };
  const readItem = (item) => {
    if (fields === null) return text(item);
    const record = {};
    for (const [name, spec] of Object.entries(fields)) record[name] = readField(item, spec);
    return record;
  };
  if (multiple) return Array.from(document.querySelectorAll(selector), readItem);
  const el = document.querySelector(selector);
  return el === null ? {missing: true} : {value: readItem(el)};
}"""


class StepInterpreter:
    """Minimal interpreter of the step program, enough to check the example bots' selectors.

    It is not the product's runner. It ignores per-step timeouts except in `waitFor`, and its
    `scroll` waits until the page grows (for up to `waitMs` or 5 s) instead of sleeping `waitMs`.
    """

    def __init__(self, page: Page, target_url: str, params: dict[str, str]) -> None:
        self.page = page
        self.target_url = target_url
        self.params = params
        self.data: dict[str, Any] = {}
        self.screenshots: list[bytes] = []

    def substitute(self, value: str) -> str:
        def replace(match: re.Match[str]) -> str:
            reference = match.group(1)
            if reference == "bot.targetUrl":
                return self.target_url
            return self.params[reference.removeprefix("params.")]

        return TEMPLATE_PATTERN.sub(replace, value)

    async def run(self, steps: list[dict[str, Any]]) -> None:
        for index, step in enumerate(steps):
            try:
                await self.run_step(step)
            except Exception as error:  # the test reports any pyppeteer error as a step failure
                raise StepFailedError(index, f"{step['action']} failed: {error}") from error

    async def run_step(self, step: dict[str, Any]) -> None:
        handler: Callable[[dict[str, Any]], Any] = getattr(self, "do_" + step["action"])
        await handler(step)

    async def do_goto(self, step: dict[str, Any]) -> None:
        await self.page.goto(self.substitute(step["url"]), {"waitUntil": "load"})

    async def do_type(self, step: dict[str, Any]) -> None:
        if step.get("clear"):
            await self.page.Jeval(step["selector"], "el => { el.value = ''; }")
        await self.page.type(step["selector"], self.substitute(step["text"]))

    async def do_select(self, step: dict[str, Any]) -> None:
        await self.page.select(step["selector"], self.substitute(step["value"]))

    async def do_click(self, step: dict[str, Any]) -> None:
        if step.get("waitForNavigation"):
            await asyncio.gather(self.page.waitForNavigation(), self.page.click(step["selector"]))
        else:
            await self.page.click(step["selector"])

    async def do_waitFor(self, step: dict[str, Any]) -> None:
        timeout_ms = step.get("timeoutMs", BROWSER_TIMEOUT_MS)
        await self.page.waitForSelector(step["selector"], {"timeout": timeout_ms})

    async def do_assert(self, step: dict[str, Any]) -> None:
        text = await self.page.Jeval(step["selector"], "el => el.textContent")
        expected = self.substitute(step.get("textContains", ""))
        if expected not in text:
            raise AssertionError(f"{step['selector']} text {text!r} lacks {expected!r}")

    async def do_scroll(self, step: dict[str, Any]) -> None:
        height_expression = "document.documentElement.scrollHeight"
        wait_ms = max(step.get("waitMs", 0), 5000)
        for _ in range(step.get("times", 1)):
            height = await self.page.evaluate(height_expression)
            await self.page.evaluate(f"window.scrollTo(0, {height_expression})", force_expr=True)
            await self.page.waitForFunction(f"{height_expression} > {height}", {"timeout": wait_ms})

    async def do_evaluate(self, step: dict[str, Any]) -> None:
        result = await self.page.evaluate(self.substitute(step["expression"]), force_expr=True)
        if "name" in step:
            self.data[step["name"]] = result

    async def do_extract(self, step: dict[str, Any]) -> None:
        multiple = bool(step.get("multiple"))
        result = await self.page.evaluate(
            EXTRACT_FUNCTION, step["selector"], step.get("fields"), multiple
        )
        if multiple:
            self.data.setdefault(step["name"], []).extend(result)
        elif result.get("missing"):
            raise LookupError(f"no element matches {step['selector']!r}")
        else:
            self.data[step["name"]] = result["value"]

    async def do_screenshot(self, step: dict[str, Any]) -> None:
        self.screenshots.append(await self.page.screenshot({"fullPage": bool(step.get("fullPage"))}))

    async def do_paginate(self, step: dict[str, Any]) -> None:
        pages_visited = 0
        while True:
            for nested in step["steps"]:
                await self.run_step(nested)
            pages_visited += 1
            if pages_visited >= step.get("maxPages", 1):
                break
            if await self.page.querySelector(step["next"]) is None:
                break
            await asyncio.gather(self.page.waitForNavigation(), self.page.click(step["next"]))
        self.data.setdefault("pagesVisited", []).append(pages_visited)


async def run_example_bot(
    browser: Browser, base_url: str, name: str, params: dict[str, str]
) -> StepInterpreter:
    definition = next(item for item in example_bots(base_url) if item["bot"]["name"] == name)
    declared = definition["manifest"]["parameters"]
    defaults = {key: spec["default"] for key, spec in declared.items() if "default" in spec}

    context = await browser.createIncognitoBrowserContext()
    page = await context.newPage()
    interpreter = StepInterpreter(page, definition["bot"]["targetUrl"], {**defaults, **params})
    try:
        await interpreter.run(definition["bot"]["steps"])
    finally:
        await context.close()
    return interpreter


async def test_catalog_bot_extracts_all_products(base_url: str, browser: Browser) -> None:
    result = await run_example_bot(browser, base_url, "Catalog extraction", {})

    assert result.data["products"] == expected_catalog()
    assert result.data["pagesVisited"] == [3]


async def test_search_bot_fills_form(base_url: str, browser: Browser) -> None:
    result = await run_example_bot(
        browser, base_url, "Product search", {"searchQuery": "lamp", "category": "office"}
    )

    assert result.data["results"] == expected_search_results("lamp", "office")
    assert [record["sku"] for record in result.data["results"]] == ["HP-1013"]


async def test_search_bot_default_category(base_url: str, browser: Browser) -> None:
    result = await run_example_bot(browser, base_url, "Product search", {"searchQuery": "Wool"})

    assert [record["sku"] for record in result.data["results"]] == ["HP-1012", "HP-1019"]


async def test_account_bot_signs_in(base_url: str, browser: Browser) -> None:
    result = await run_example_bot(browser, base_url, "Account orders", {"password": DEMO_PASSWORD})

    assert result.data["orders"] == expected_orders()


async def test_account_bot_wrong_password_fails(base_url: str, browser: Browser) -> None:
    with pytest.raises(StepFailedError) as failure:
        await run_example_bot(browser, base_url, "Account orders", {"password": "wrong"})

    # The login form is shown again with a 401, so the signed-in assertion fails.
    assert failure.value.index == 4
    assert "#account-name" in str(failure.value)


async def test_live_quotes_bot_waits(base_url: str, browser: Browser) -> None:
    started = time.monotonic()
    result = await run_example_bot(browser, base_url, "Live quotes", {})

    assert result.data["quotes"] == expected_quotes()
    assert time.monotonic() - started >= 1.5
    assert result.screenshots[0].startswith(b"\x89PNG\r\n\x1a\n")


async def test_feed_bot_loads_all_posts(base_url: str, browser: Browser) -> None:
    result = await run_example_bot(browser, base_url, "Infinite feed", {})

    assert result.data["postCount"] == 50
    assert result.data["posts"] == expected_feed_posts()


async def test_broken_bot_fails_on_price(base_url: str, browser: Browser) -> None:
    with pytest.raises(StepFailedError) as failure:
        await run_example_bot(browser, base_url, "Price watcher (broken)", {})

    assert failure.value.index == 2
    assert ".product-price" in str(failure.value)
