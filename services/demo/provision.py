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
            if name in existing:
                bots.append(existing[name])
                continue
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
    session: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with session.request(method, url, json=body) as response:
        payload = await response.json()
        if response.status >= 300:
            raise BotledgerError(
                f"{method} {url} failed with {response.status}: {payload.get('error')}",
                payload.get("details"),
            )
        data: dict[str, Any] = payload["data"]
        return data
