"""Demo shop that example bots run against, served by aiohttp on 127.0.0.1.

Pages link only to their own origin and load only the CSS and JavaScript under /static, so a
bot tried against this site sends no request to any other host. Page kinds: a paginated
catalog, a search form, a login form guarding an account page, content that JavaScript renders
after a delay, an infinite-scroll feed, a data table, and a product page whose price element is
missing. All data is fixed, so tests can compare what a bot extracts with an exact expectation.
"""

from __future__ import annotations

import dataclasses
import datetime
import hmac
import html
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("site")

CATALOG_PAGE_SIZE = 8
SEARCH_CATEGORIES = ("all", "kitchen", "outdoor", "office", "home")

# The login page shows these credentials because the demo site protects nothing of value.
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"
SESSION_COOKIE = "demo_session"

FEED_TOTAL_ITEMS = 50
FEED_PAGE_SIZE = 10

DEFAULT_QUOTES_DELAY_MS = 1500
MAX_QUOTES_DELAY_MS = 60_000

# Product whose page lost its price element in a "redesign" (served at /broken).
BROKEN_PRODUCT_SKU = "HP-1002"

SESSIONS_KEY = web.AppKey("demo_sessions", dict[str, str])

# Served from code because package data covers only .html/.css/.js/.json/.txt files. Without an
# icon link, Chromium requests /favicon.ico and logs a 404 in every bot's script output.
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="6" fill="#2f6f5e"/>'
    '<path d="M16 5 L25 23 H7 Z" fill="#f6f4ef"/></svg>'
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class Product:
    sku: str
    name: str
    category: str
    price_cents: int
    rating: float

    @property
    def price_text(self) -> str:
        return f"${self.price_cents // 100}.{self.price_cents % 100:02d}"

    @property
    def path(self) -> str:
        return f"/products/{self.sku}"


@dataclasses.dataclass(frozen=True)
class Order:
    order_id: str
    placed_on: str
    items: str
    total_cents: int
    status: str

    @property
    def total_text(self) -> str:
        return f"${self.total_cents // 100}.{self.total_cents % 100:02d}"


PRODUCTS: tuple[Product, ...] = (
    Product("HP-1001", "Cast Iron Skillet", "kitchen", 3450, 4.7),
    Product("HP-1002", "Enamel Dutch Oven", "kitchen", 8900, 4.8),
    Product("HP-1003", "Chef's Knife 20 cm", "kitchen", 6200, 4.6),
    Product("HP-1004", "Bamboo Cutting Board", "kitchen", 2400, 4.4),
    Product("HP-1005", "Pour-Over Coffee Set", "kitchen", 3900, 4.5),
    Product("HP-1006", "Linen Tea Towels (Set of 3)", "kitchen", 1800, 4.3),
    Product("HP-1007", "Camping Lantern", "outdoor", 2950, 4.2),
    Product("HP-1008", "Trail Backpack 28 L", "outdoor", 7400, 4.6),
    Product("HP-1009", "Insulated Water Bottle", "outdoor", 2600, 4.7),
    Product("HP-1010", "Folding Camp Chair", "outdoor", 4500, 4.1),
    Product("HP-1011", "Ripstop Rain Jacket", "outdoor", 11900, 4.4),
    Product("HP-1012", "Wool Hiking Socks", "outdoor", 1600, 4.8),
    Product("HP-1013", "Desk Lamp", "office", 4800, 4.5),
    Product("HP-1014", "Recycled Paper Notebook", "office", 900, 4.6),
    Product("HP-1015", "Walnut Monitor Stand", "office", 6900, 4.3),
    Product("HP-1016", "Fountain Pen", "office", 3200, 4.4),
    Product("HP-1017", "Felt Desk Mat", "office", 2700, 4.2),
    Product("HP-1018", "Cable Organizer Box", "office", 2100, 4.0),
    Product("HP-1019", "Wool Throw Blanket", "home", 7900, 4.9),
    Product("HP-1020", "Ceramic Table Lamp", "home", 5600, 4.4),
    Product("HP-1021", "Scented Soy Candle", "home", 1900, 4.5),
    Product("HP-1022", "Cotton Bath Towel", "home", 2300, 4.6),
    Product("HP-1023", "Glass Storage Jars (Set of 4)", "home", 2800, 4.3),
    Product("HP-1024", "Oak Wall Shelf", "home", 4400, 4.1),
)

ORDERS: tuple[Order, ...] = (
    Order("HP-50231", "2024-11-02", "Cast Iron Skillet, Wool Hiking Socks", 5050, "Delivered"),
    Order("HP-50388", "2024-12-14", "Wool Throw Blanket", 7900, "Delivered"),
    Order("HP-50412", "2025-01-09", "Desk Lamp, Recycled Paper Notebook", 5700, "Returned"),
    Order("HP-50597", "2025-02-21", "Trail Backpack 28 L", 7400, "Shipped"),
    Order("HP-50640", "2025-03-03", "Fountain Pen", 3200, "Processing"),
)

QUOTES: tuple[dict[str, str], ...] = (
    {"symbol": "HRBR", "price": "142.18", "change": "+1.24%"},
    {"symbol": "PINE", "price": "87.40", "change": "-0.35%"},
    {"symbol": "OAKW", "price": "23.95", "change": "+0.08%"},
    {"symbol": "LNTN", "price": "311.02", "change": "+2.61%"},
    {"symbol": "TRLB", "price": "56.77", "change": "-1.12%"},
    {"symbol": "FELT", "price": "9.31", "change": "0.00%"},
)

CAPITALS: tuple[tuple[str, str, str, str], ...] = (
    ("Argentina", "Buenos Aires", "South America", "+54"),
    ("Australia", "Canberra", "Oceania", "+61"),
    ("Brazil", "Brasília", "South America", "+55"),
    ("Canada", "Ottawa", "North America", "+1"),
    ("Chile", "Santiago", "South America", "+56"),
    ("Egypt", "Cairo", "Africa", "+20"),
    ("France", "Paris", "Europe", "+33"),
    ("Germany", "Berlin", "Europe", "+49"),
    ("India", "New Delhi", "Asia", "+91"),
    ("Italy", "Rome", "Europe", "+39"),
    ("Japan", "Tokyo", "Asia", "+81"),
    ("Kenya", "Nairobi", "Africa", "+254"),
    ("Mexico", "Mexico City", "North America", "+52"),
    ("New Zealand", "Wellington", "Oceania", "+64"),
    ("Norway", "Oslo", "Europe", "+47"),
    ("Poland", "Warsaw", "Europe", "+48"),
    ("Portugal", "Lisbon", "Europe", "+351"),
    ("South Korea", "Seoul", "Asia", "+82"),
    ("Spain", "Madrid", "Europe", "+34"),
    ("Sweden", "Stockholm", "Europe", "+46"),
)

FEED_TOPICS = (
    "New arrivals in the kitchen range",
    "How we test our rain jackets",
    "Workshop visit: the oak shelf makers",
    "Five ways to season cast iron",
    "Trail notes from the coastal path",
)


def catalog_page_count() -> int:
    return -(-len(PRODUCTS) // CATALOG_PAGE_SIZE)


def catalog_page(page: int) -> tuple[Product, ...]:
    """Return the products shown on catalog page `page` (1-based)."""
    start = (page - 1) * CATALOG_PAGE_SIZE
    return PRODUCTS[start : start + CATALOG_PAGE_SIZE]


def search_products(query: str, category: str) -> list[Product]:
    """Return the products whose name contains `query` (case-insensitive) in `category`."""
    needle = query.strip().casefold()
    return [
        product
        for product in PRODUCTS
        if needle in product.name.casefold() and category in ("all", product.category)
    ]


def feed_items() -> list[dict[str, Any]]:
    """Return the fixed feed of FEED_TOTAL_ITEMS posts, newest first, one per day."""
    newest_date = datetime.date(2025, 3, 31)
    items = []
    for number in range(1, FEED_TOTAL_ITEMS + 1):
        topic = FEED_TOPICS[(number - 1) % len(FEED_TOPICS)]
        published_on = newest_date - datetime.timedelta(days=number - 1)
        items.append(
            {
                "id": number,
                "title": f"#{number}: {topic}",
                "body": f"Post {number} of {FEED_TOTAL_ITEMS} in the Harbor & Pine journal.",
                "date": published_on.isoformat(),
            }
        )
    return items


# --- rendering -----------------------------------------------------------------------------


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def render_page(title: str, body: str, *, scripts: tuple[str, ...] = ()) -> str:
    """Wrap `body` in the shared layout. `scripts` are file names under /static to load."""
    script_tags = "\n".join(
        f'<script src="/static/{escape(name)}" defer></script>' for name in ("site.js", *scripts)
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · Harbor &amp; Pine Supply</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/site.css">
{script_tags}
</head>
<body>
<header class="site-header">
  <a class="brand" href="/">Harbor &amp; Pine Supply</a>
  <nav class="site-nav">
    <a href="/catalog">Catalog</a>
    <a href="/search">Search</a>
    <a href="/feed">Journal</a>
    <a href="/account">Account</a>
  </nav>
</header>
<main class="content">
{body}
</main>
<footer class="site-footer">
  Demo shop bundled with botledger. Every page is served from this machine; nothing is sold.
</footer>
</body>
</html>
"""


def html_response(
    title: str, body: str, *, status: int = 200, scripts: tuple[str, ...] = ()
) -> web.Response:
    return web.Response(
        text=render_page(title, body, scripts=scripts),
        status=status,
        content_type="text/html",
        charset="utf-8",
    )


def error_response(request: web.Request, status: int, title: str, message: str) -> web.Response:
    logger.info("demo site responded %s to %s: %s", status, request.path_qs, message)
    body = f"""<h1>{escape(title)}</h1>
<p class="error-message">{escape(message)}</p>
<p><a href="/">Back to the start page</a></p>"""
    return html_response(title, body, status=status)


def render_product_card(product: Product, css_class: str) -> str:
    return f"""<li class="{css_class}" data-sku="{escape(product.sku)}">
  <a class="product-link" href="{escape(product.path)}"><h2 class="product-name">{escape(product.name)}</h2></a>
  <p class="product-meta"><span class="label">SKU</span> <span class="product-sku">{escape(product.sku)}</span></p>
  <p class="product-rating" title="Average rating {product.rating:.1f} out of 5">★ {product.rating:.1f}</p>
  <p class="product-price">{escape(product.price_text)}</p>
</li>"""


def render_pagination(page: int, page_count: int) -> str:
    links = []
    if page > 1:
        links.append(f'<a class="prev" rel="prev" href="/catalog?page={page - 1}">Previous</a>')
    links.append(f'<span class="page-indicator">Page {page} of {page_count}</span>')
    if page < page_count:
        links.append(f'<a class="next" rel="next" href="/catalog?page={page + 1}">Next</a>')
    return '<nav class="pagination">' + " ".join(links) + "</nav>"


def render_login_form(next_path: str, error: str | None = None) -> str:
    error_html = f'<p class="form-error" id="login-error">{escape(error)}</p>' if error else ""
    return f"""<h1>Sign in</h1>
<p class="hint">Demo credentials: username <code>{DEMO_USERNAME}</code>,
password <code>{DEMO_PASSWORD}</code>.</p>
{error_html}
<form class="card form" id="login-form" method="post" action="/login">
  <input type="hidden" name="next" value="{escape(next_path)}">
  <label for="username">Username</label>
  <input id="username" name="username" type="text" autocomplete="username" required>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password" required>
  <button id="login-submit" type="submit">Sign in</button>
</form>"""


# --- input parsing -------------------------------------------------------------------------


def parse_int_query(
    request: web.Request, name: str, default: int, low: int, high: int
) -> int | None:
    """Return the integer query value `name`, or None when it is not an integer in low..high."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if low <= value <= high else None


def safe_next_path(raw: str) -> str:
    # Accept only same-origin paths, because "//host" and backslashes let a redirect leave the site.
    if raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/account"


def current_user(request: web.Request) -> str | None:
    token = request.cookies.get(SESSION_COOKIE)
    if token is None:
        return None
    return request.app[SESSIONS_KEY].get(token)


def credentials_match(username: str, password: str) -> bool:
    username_ok = hmac.compare_digest(username.encode(), DEMO_USERNAME.encode())
    password_ok = hmac.compare_digest(password.encode(), DEMO_PASSWORD.encode())
    return username_ok and password_ok


# --- handlers ------------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    pages = (
        ("/catalog", "Catalog", "24 products on 3 pages, each with a Next link except the last."),
        ("/search", "Search", "A form with a text field and a category select."),
        ("/login", "Sign in", f"A login form; use {DEMO_USERNAME} / {DEMO_PASSWORD}."),
        ("/account", "Account", "Order history, redirects to the login form until you sign in."),
        ("/delayed", "Live quotes", "JavaScript renders the quotes 1.5 s after the page loads."),
        ("/feed", "Journal", "Infinite scroll: 10 posts, 10 more near the bottom, up to 50."),
        ("/table", "Capitals table", "A data table of 20 countries."),
        ("/broken", "Redesigned product page", "A product page whose price element is missing."),
    )
    items = "\n".join(
        f'<li><a href="{path}">{escape(name)}</a><span class="muted"> {escape(text)}</span></li>'
        for path, name, text in pages
    )
    body = f"""<h1>Welcome to Harbor &amp; Pine Supply</h1>
<p class="lead">A small demo shop for trying bots. Each page below shows one thing bots meet on
real websites.</p>
<ul class="card demo-pages">
{items}
</ul>"""
    return html_response("Start", body)


async def catalog(request: web.Request) -> web.Response:
    page_count = catalog_page_count()
    page = parse_int_query(request, "page", 1, 1, page_count)
    if page is None:
        message = f"The catalog has pages 1 to {page_count}. Try /catalog?page=1."
        return error_response(request, 404, "Page not found", message)

    cards = "\n".join(render_product_card(product, "product") for product in catalog_page(page))
    body = f"""<h1>Catalog</h1>
<p class="muted">Showing {len(catalog_page(page))} of {len(PRODUCTS)} products.</p>
<ul class="products" id="products">
{cards}
</ul>
{render_pagination(page, page_count)}"""
    return html_response(f"Catalog, page {page}", body)


async def product_detail(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    product = next((item for item in PRODUCTS if item.sku == sku), None)
    if product is None:
        return error_response(request, 404, "Product not found", f"No product has the SKU {sku!r}.")

    body = f"""<article class="card product-detail" data-sku="{escape(product.sku)}">
  <h1 class="product-name">{escape(product.name)}</h1>
  <p class="product-meta"><span class="label">SKU</span> <span class="product-sku">{escape(product.sku)}</span>
  · <span class="product-category">{escape(product.category)}</span></p>
  <p class="product-rating">★ {product.rating:.1f}</p>
  <p class="product-price">{escape(product.price_text)}</p>
  <button class="add-to-cart" type="button">Add to cart</button>
</article>
<p><a href="/catalog">Back to the catalog</a></p>"""
    return html_response(product.name, body)


async def search_form(request: web.Request) -> web.Response:
    options = "\n".join(
        f'<option value="{name}">{name.capitalize()}</option>' for name in SEARCH_CATEGORIES
    )
    body = f"""<h1>Search products</h1>
<form class="card form" id="search-form" method="get" action="/search/results">
  <label for="q">Product name</label>
  <input id="q" name="q" type="search" placeholder="e.g. lamp">
  <label for="category">Category</label>
  <select id="category" name="category">
{options}
  </select>
  <button id="search-submit" type="submit">Search</button>
</form>"""
    return html_response("Search", body)


async def search_results(request: web.Request) -> web.Response:
    query = request.query.get("q", "")
    category = request.query.get("category", "all")
    if category not in SEARCH_CATEGORIES:
        allowed = ", ".join(SEARCH_CATEGORIES)
        message = f"Unknown category {category!r}. Use one of {allowed}."
        return error_response(request, 400, "Invalid category", message)

    matches = search_products(query, category)
    if matches:
        cards = "\n".join(render_product_card(product, "product result") for product in matches)
        listing = f'<ul class="products results" id="results">\n{cards}\n</ul>'
    else:
        listing = f'<p class="no-results" id="no-results">No results for “{escape(query)}”.</p>'
    body = f"""<h1>Search results</h1>
<p class="result-count" id="result-count">{len(matches)} result(s) for “{escape(query)}” in {escape(category)}</p>
{listing}
<p><a href="/search">New search</a></p>"""
    return html_response("Search results", body)


async def login_page(request: web.Request) -> web.Response:
    next_path = safe_next_path(request.query.get("next", ""))
    return html_response("Sign in", render_login_form(next_path))


async def login_submit(request: web.Request) -> web.Response:
    form = await request.post()
    username = str(form.get("username", ""))
    password = str(form.get("password", ""))
    next_path = safe_next_path(str(form.get("next", "")))

    if not credentials_match(username, password):
        logger.info("demo login rejected for username %r", username)
        body = render_login_form(next_path, "Invalid username or password.")
        return html_response("Sign in", body, status=401)

    token = secrets.token_urlsafe(24)
    request.app[SESSIONS_KEY][token] = username
    logger.info("demo login accepted for username %r", username)
    response = web.Response(status=303, headers={"Location": next_path})
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Lax", path="/")
    return response


async def logout(request: web.Request) -> web.Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token is not None:
        request.app[SESSIONS_KEY].pop(token, None)
    response = web.Response(status=303, headers={"Location": "/"})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def account(request: web.Request) -> web.Response:
    username = current_user(request)
    if username is None:
        raise web.HTTPFound("/login?" + urlencode({"next": "/account"}))

    rows = "\n".join(
        f"""<tr>
  <td class="order-id">{escape(order.order_id)}</td>
  <td class="order-date">{escape(order.placed_on)}</td>
  <td class="order-items">{escape(order.items)}</td>
  <td class="order-total">{escape(order.total_text)}</td>
  <td class="order-status">{escape(order.status)}</td>
</tr>"""
        for order in ORDERS
    )
    body = f"""<h1>Your account</h1>
<p id="account-name">Signed in as <strong>{escape(username)}</strong>. <a id="logout" href="/logout">Sign out</a></p>
<h2>Order history</h2>
<table class="data-table" id="orders">
<thead><tr><th>Order</th><th>Date</th><th>Items</th><th>Total</th><th>Status</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>"""
    return html_response("Account", body)


async def delayed(request: web.Request) -> web.Response:
    delay_ms = parse_int_query(request, "delayMs", DEFAULT_QUOTES_DELAY_MS, 0, MAX_QUOTES_DELAY_MS)
    if delay_ms is None:
        message = f"delayMs must be an integer from 0 to {MAX_QUOTES_DELAY_MS}."
        return error_response(request, 400, "Invalid delay", message)

    body = f"""<h1>Live quotes</h1>
<p class="muted" id="quotes-status">Connecting to the quote feed…</p>
<ul class="card quotes" id="quotes" data-delay-ms="{delay_ms}"></ul>"""
    return html_response("Live quotes", body, scripts=("delayed.js",))


async def favicon(request: web.Request) -> web.Response:
    return web.Response(text=FAVICON_SVG, content_type="image/svg+xml")


async def api_quotes(request: web.Request) -> web.Response:
    return web.json_response({"quotes": list(QUOTES)})


def render_feed_item(item: dict[str, Any]) -> str:
    return f"""<li class="feed-item" data-id="{item['id']}">
  <h3 class="feed-title">{escape(item['title'])}</h3>
  <time class="feed-date">{escape(item['date'])}</time>
  <p class="feed-body">{escape(item['body'])}</p>
</li>"""


async def feed(request: web.Request) -> web.Response:
    first_items = feed_items()[:FEED_PAGE_SIZE]
    rendered = "\n".join(render_feed_item(item) for item in first_items)
    body = f"""<h1>Journal</h1>
<ul class="feed" id="feed" data-next-offset="{len(first_items)}">
{rendered}
</ul>
<p class="muted" id="feed-status"></p>"""
    return html_response("Journal", body, scripts=("feed.js",))


async def api_feed(request: web.Request) -> web.Response:
    offset = parse_int_query(request, "offset", 0, 0, FEED_TOTAL_ITEMS)
    limit = parse_int_query(request, "limit", FEED_PAGE_SIZE, 1, FEED_PAGE_SIZE)
    if offset is None or limit is None:
        message = (
            f"offset must be an integer from 0 to {FEED_TOTAL_ITEMS} "
            f"and limit one from 1 to {FEED_PAGE_SIZE}."
        )
        logger.info("demo site responded 400 to %s: %s", request.path_qs, message)
        return web.json_response({"error": message}, status=400)

    items = feed_items()[offset : offset + limit]
    end = offset + len(items)
    next_offset = end if end < FEED_TOTAL_ITEMS else None
    return web.json_response({"items": items, "nextOffset": next_offset, "total": FEED_TOTAL_ITEMS})


async def table(request: web.Request) -> web.Response:
    rows = "\n".join(
        f"<tr><td>{escape(country)}</td><td>{escape(capital)}</td>"
        f"<td>{escape(continent)}</td><td>{escape(code)}</td></tr>"
        for country, capital, continent, code in CAPITALS
    )
    body = f"""<h1>Capitals</h1>
<table class="data-table" id="capitals">
<thead><tr><th>Country</th><th>Capital</th><th>Continent</th><th>Calling code</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>"""
    return html_response("Capitals", body)


async def broken(request: web.Request) -> web.Response:
    product = next(item for item in PRODUCTS if item.sku == BROKEN_PRODUCT_SKU)
    # The redesign dropped the .product-price element, and its replacement widget never loads.
    body = f"""<article class="card product-detail redesign" data-sku="{escape(product.sku)}">
  <p class="badge">New look!</p>
  <h1 class="product-name">{escape(product.name)}</h1>
  <p class="product-meta"><span class="label">SKU</span> <span class="product-sku">{escape(product.sku)}</span></p>
  <p class="product-rating">★ {product.rating:.1f}</p>
  <div class="price-widget" id="price-widget" data-sku="{escape(product.sku)}">Loading price…</div>
  <button class="add-to-cart" type="button">Add to cart</button>
</article>"""
    return html_response(product.name, body, scripts=("broken.js",))


@web.middleware
async def html_not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Unknown pages get the shop layout. Unknown /api and /static paths keep aiohttp's plain 404.
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if request.path.startswith(("/api/", "/static/")):
            raise
        message = f"Nothing is served at {request.path}."
        return error_response(request, 404, "Page not found", message)


def build_demo_app() -> web.Application:
    """Build the demo shop application (not started)."""
    app = web.Application(middlewares=[html_not_found])
    app[SESSIONS_KEY] = {}
    app.router.add_get("/", index)
    app.router.add_get("/catalog", catalog)
    app.router.add_get("/products/{sku}", product_detail)
    app.router.add_get("/search", search_form)
    app.router.add_get("/search/results", search_results)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login_submit)
    app.router.add_get("/logout", logout)
    app.router.add_get("/account", account)
    app.router.add_get("/delayed", delayed)
    app.router.add_get("/feed", feed)
    app.router.add_get("/table", table)
    app.router.add_get("/broken", broken)
    app.router.add_get("/favicon.svg", favicon)
    app.router.add_get("/api/quotes", api_quotes)
    app.router.add_get("/api/feed", api_feed)
    app.router.add_static("/static/", STATIC_DIR)
    return app


async def start_demo_site(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start the demo shop and return its runner and base URL (no trailing slash).

    Port 0 picks a free port. Stop the site with `await runner.cleanup()`.
    """
    app = build_demo_app()
    bound_urls: list[str] = []

    async def log_stop(app: web.Application) -> None:
        logger.info("demo site stopped at %s", bound_urls[0] if bound_urls else f"{host}:{port}")

    app.on_cleanup.append(log_stop)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        logger.exception("demo site failed to bind %s:%s", host, port)
        await runner.cleanup()
        raise

    bound_port = runner.addresses[0][1]
    url_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{url_host}:{bound_port}"
    bound_urls.append(base_url)
    logger.info("demo site started at %s", base_url)
    return runner, base_url
