"""Example bots for the bundled demo shop, and the data each one is expected to extract.

`example_bots(base_url)` returns, per bot, the body of `POST /api/v1/bots` under "bot" and the
body of `PUT /api/v1/bots/:botId/manifest` under "manifest". The steps use only the actions and
fields of the step program, and `{{bot.targetUrl}}` so that the program does not repeat the URL.
"""

from __future__ import annotations

from typing import Any

from services.demo.site import (
    DEMO_USERNAME,
    FEED_TOTAL_ITEMS,
    ORDERS,
    PRODUCTS,
    QUOTES,
    SEARCH_CATEGORIES,
    feed_items,
    search_products,
)

BotDefinition = dict[str, Any]

# Field selectors apply inside each item that the extract step's `selector` matches. The catalog
# and the search results render products with the same markup.
PRODUCT_FIELDS: dict[str, Any] = {
    "name": ".product-name",
    "price": ".product-price",
    "sku": ".product-sku",
    "url": {"selector": "a.product-link", "attribute": "href"},
}

FEED_SCROLL_TIMES = 4


def default_capabilities(timeout_s: int) -> dict[str, Any]:
    return {
        "proxy": False,
        "adBlocking": False,
        "locale": "en-US",
        "timezone": "UTC",
        "resolution": {"width": 1280, "height": 800},
        "timeout": timeout_s,
    }


def catalog_bot(base_url: str) -> BotDefinition:
    steps = [
        {"action": "goto", "label": "Open catalog page 1", "url": "{{bot.targetUrl}}"},
        {
            "action": "paginate",
            "label": "Walk every catalog page",
            "next": "a.next",
            "maxPages": 5,
            "steps": [
                {
                    "action": "extract",
                    "label": "Extract the page's products",
                    "name": "products",
                    "selector": "li.product",
                    "multiple": True,
                    "fields": PRODUCT_FIELDS,
                }
            ],
        },
    ]
    return {
        "bot": {
            "name": "Catalog extraction",
            "targetUrl": f"{base_url}/catalog",
            "description": "Follows the catalog's Next links and extracts every product.",
            "kind": "extraction",
            "tags": ["demo", "pagination"],
            "steps": steps,
        },
        "manifest": {"capabilities": default_capabilities(60), "parameters": {}},
    }


def search_bot(base_url: str) -> BotDefinition:
    steps = [
        {"action": "goto", "label": "Open the search form", "url": "{{bot.targetUrl}}"},
        {"action": "type", "selector": "#q", "text": "{{params.searchQuery}}", "clear": True},
        {"action": "select", "selector": "#category", "value": "{{params.category}}"},
        {
            "action": "click",
            "label": "Submit the search",
            "selector": "#search-submit",
            "waitForNavigation": True,
        },
        {
            "action": "extract",
            "label": "Extract the matching products",
            "name": "results",
            "selector": "li.result",
            "multiple": True,
            "fields": PRODUCT_FIELDS,
        },
    ]
    parameters = {
        "searchQuery": {
            "type": "string",
            "required": True,
            "description": "Text to find in product names, case-insensitive.",
        },
        "category": {
            "type": "string",
            "required": False,
            "default": "all",
            "allowed": list(SEARCH_CATEGORIES),
            "description": "Product category to search in.",
        },
    }
    return {
        "bot": {
            "name": "Product search",
            "targetUrl": f"{base_url}/search",
            "description": "Fills in the search form with the given query and category.",
            "kind": "action",
            "tags": ["demo", "form"],
            "steps": steps,
        },
        "manifest": {"capabilities": default_capabilities(60), "parameters": parameters},
    }


def account_orders_bot(base_url: str) -> BotDefinition:
    steps = [
        # /account redirects to the login form and back again after a successful sign-in.
        {"action": "goto", "label": "Open the account page", "url": "{{bot.targetUrl}}"},
        {"action": "type", "selector": "#username", "text": "{{params.username}}", "clear": True},
        {"action": "type", "selector": "#password", "text": "{{params.password}}", "clear": True},
        {
            "action": "click",
            "label": "Sign in",
            "selector": "#login-submit",
            "waitForNavigation": True,
        },
        # Fails at once when the login form rejected the credentials and is shown again.
        {"action": "assert", "selector": "#account-name", "textContains": "{{params.username}}"},
        {
            "action": "waitFor",
            "label": "Wait for the order history",
            "selector": "#orders tbody tr",
            "timeoutMs": 10_000,
        },
        {
            "action": "extract",
            "label": "Extract the orders",
            "name": "orders",
            "selector": "#orders tbody tr",
            "multiple": True,
            "fields": {
                "orderId": ".order-id",
                "date": ".order-date",
                "items": ".order-items",
                "total": ".order-total",
                "status": ".order-status",
            },
        },
    ]
    parameters = {
        "username": {
            "type": "string",
            "required": False,
            "default": DEMO_USERNAME,
            "description": "Account to sign in with.",
        },
        "password": {
            "type": "string",
            "required": True,
            "secret": True,
            "description": "Password of the account; the demo shop's is shown on its login page.",
        },
    }
    return {
        "bot": {
            "name": "Account orders",
            "targetUrl": f"{base_url}/account",
            "description": "Signs in and extracts the order history table.",
            "kind": "action",
            "tags": ["demo", "login"],
            "steps": steps,
        },
        "manifest": {"capabilities": default_capabilities(60), "parameters": parameters},
    }


def live_quotes_bot(base_url: str) -> BotDefinition:
    steps = [
        {"action": "goto", "label": "Open the quotes page", "url": "{{bot.targetUrl}}"},
        {
            "action": "waitFor",
            "label": "Wait for the quotes to render",
            "selector": "#quotes li.quote",
            "timeoutMs": 10_000,
        },
        {
            "action": "extract",
            "label": "Extract the quotes",
            "name": "quotes",
            "selector": "#quotes li.quote",
            "multiple": True,
            "fields": {"symbol": ".quote-symbol", "price": ".quote-price", "change": ".quote-change"},
        },
        {"action": "screenshot", "label": "Capture the quote board", "fullPage": True},
    ]
    return {
        "bot": {
            "name": "Live quotes",
            "targetUrl": f"{base_url}/delayed",
            "description": "Waits for quotes that JavaScript renders after a delay, then extracts them.",
            "kind": "extraction",
            "tags": ["demo", "javascript"],
            "steps": steps,
        },
        "manifest": {"capabilities": default_capabilities(60), "parameters": {}},
    }


def infinite_feed_bot(base_url: str) -> BotDefinition:
    steps = [
        {"action": "goto", "label": "Open the journal", "url": "{{bot.targetUrl}}"},
        {
            "action": "scroll",
            "label": "Scroll to load more posts",
            "to": "bottom",
            "times": FEED_SCROLL_TIMES,
            "waitMs": 1000,
        },
        # The scroll step waits only between scrolls, so wait here for the last page of posts.
        {
            "action": "waitFor",
            "label": "Wait for the end of the journal",
            "selector": "#feed-status.feed-end",
            "timeoutMs": 10_000,
        },
        {
            "action": "evaluate",
            "name": "postCount",
            "expression": "document.querySelectorAll('#feed li.feed-item').length",
        },
        {
            "action": "extract",
            "label": "Extract the posts",
            "name": "posts",
            "selector": "#feed li.feed-item",
            "multiple": True,
            "fields": {"title": ".feed-title", "date": ".feed-date"},
        },
    ]
    return {
        "bot": {
            "name": "Infinite feed",
            "targetUrl": f"{base_url}/feed",
            "description": "Scrolls an infinite-scroll page four times and extracts every loaded post.",
            "kind": "extraction",
            "tags": ["demo", "scroll"],
            "steps": steps,
        },
        "manifest": {"capabilities": default_capabilities(60), "parameters": {}},
    }


def broken_price_bot(base_url: str) -> BotDefinition:
    steps = [
        {"action": "goto", "label": "Open the product page", "url": "{{bot.targetUrl}}"},
        {
            "action": "extract",
            "label": "Extract the product name",
            "name": "name",
            "selector": ".product-name",
        },
        # The page no longer has a .product-price element, so this step fails.
        {
            "action": "extract",
            "label": "Extract the price",
            "name": "price",
            "selector": ".product-price",
            "timeoutMs": 3000,
        },
    ]
    return {
        "bot": {
            "name": "Price watcher (broken)",
            "targetUrl": f"{base_url}/broken",
            "description": "Watches a product price on a page whose redesign removed the price element.",
            "kind": "extraction",
            "tags": ["demo", "failure"],
            "steps": steps,
        },
        "manifest": {"capabilities": default_capabilities(30), "parameters": {}},
    }


def example_bots(base_url: str) -> list[BotDefinition]:
    """Return the example bots for the demo shop served at `base_url` (no trailing slash)."""
    base = base_url.rstrip("/")
    return [
        catalog_bot(base),
        search_bot(base),
        account_orders_bot(base),
        live_quotes_bot(base),
        infinite_feed_bot(base),
        broken_price_bot(base),
    ]


# --- expected extraction results -----------------------------------------------------------
# `url` values are the href attributes as written in the page (site-relative paths).


def expected_catalog() -> list[dict[str, str]]:
    """Return the 24 records that "Catalog extraction" extracts as `products`, in page order."""
    return [
        {"name": product.name, "price": product.price_text, "sku": product.sku, "url": product.path}
        for product in PRODUCTS
    ]


def expected_search_results(search_query: str, category: str = "all") -> list[dict[str, str]]:
    """Return the records that "Product search" extracts as `results` for these parameters."""
    return [
        {"name": product.name, "price": product.price_text, "sku": product.sku, "url": product.path}
        for product in search_products(search_query, category)
    ]


def expected_orders() -> list[dict[str, str]]:
    """Return the records that "Account orders" extracts as `orders`."""
    return [
        {
            "orderId": order.order_id,
            "date": order.placed_on,
            "items": order.items,
            "total": order.total_text,
            "status": order.status,
        }
        for order in ORDERS
    ]


def expected_quotes() -> list[dict[str, str]]:
    """Return the records that "Live quotes" extracts as `quotes`."""
    return [dict(quote) for quote in QUOTES]


def expected_feed_posts() -> list[dict[str, str]]:
    """Return the records that "Infinite feed" extracts as `posts` after its four scrolls.

    The page shows 10 posts and each scroll that reaches the bottom loads 10 more, so four
    scrolls show all FEED_TOTAL_ITEMS.
    """
    posts = feed_items()[:FEED_TOTAL_ITEMS]
    return [{"title": post["title"], "date": post["date"]} for post in posts]
