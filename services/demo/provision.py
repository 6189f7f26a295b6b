"""Create the example bots of the demo site through the public API, once."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from events.errors import BotledgerError
from services.demo.bots import example_bots

logger = logging.getLogger(__name__)


async def provision_demo_bots(api_url: str, api_key: str, site_url: str) -> list[dict[str, Any]]:
    """Create every example bot that does not exist yet (matched by name); return all of them."""
    headers = {"Authorization": f"Bearer {api_key}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        existing = {bot["name"]: bot for bot in await _all_bots(session, api_url)}
        bots = []
        for example in example_bots(site_url):
            name = example["bot"]["name"]
            current = existing.get(name)
            if current is not None and current["targetUrl"] == example["bot"]["targetUrl"]:
                bots.append(current)
                continue
            if current is not None:
                # The demo site moved to another port, and a bot's target URL cannot change.
                await _call(session, "DELETE", f"{api_url}/bots/{current['id']}", None)
                logger.info("Replacing demo bot %s (%s): the site moved", current["id"], name)
            bot = await _call(session, "POST", f"{api_url}/bots", example["bot"])
            await _call(session, "PUT", f"{api_url}/bots/{bot['id']}/manifest", example["manifest"])
            logger.info("Created demo bot %s (%s)", bot["id"], name)
            bots.append(bot)
        return bots


async def _all_bots(session: aiohttp.ClientSession, api_url: str) -> list[dict[str, Any]]:
    bots: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        async with session.get(f"{api_url}/bots", params=params) as response:
            body = await response.json()
            if response.status != 200:
                raise BotledgerError(f"Listing bots failed: {body.get('error')}")
        bots.extend(body["data"])
        cursor = body.get("cursor")
        if not cursor:
            return bots


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None
) -> dict[str, Any]:
    async with session.request(method, url, json=body) as response:
        if response.status == 204:
            return {}
        payload = await response.json()
        if response.status >= 300:
            raise BotledgerError(
                f"{method} {url} failed with {response.status}: {payload.get('error')}",
                payload.get("details"),
            )
        data: dict[str, Any] = payload["data"]
        return data
