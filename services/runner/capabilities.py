"""Apply a bot's manifest capabilities to a fresh page before its step program runs.

Call ``apply_capabilities`` once per page, before the first navigation. The overrides belong
to the page's DevTools session and persist across its navigations. Two capabilities are not
applied here:

- ``proxy`` belongs to the browser context, so the caller passes the proxy server when it
  creates the execution's incognito context.
- ``timeout`` is the execution's wall-clock limit, which the caller enforces around the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from pyppeteer.errors import NetworkError, PyppeteerError

from events.errors import BotledgerError

logger = logging.getLogger(__name__)

GEOLOCATION_ACCURACY_M: Final = 100

# Well-known advertising and tracking hosts. A request is blocked when its host is one of
# these names or a subdomain of one.
DEFAULT_AD_HOSTS: Final = frozenset(
    {
        "2mdn.net",
        "adform.net",
        "adnxs.com",
        "adroll.com",
        "ads-twitter.com",
        "adsrvr.org",
        "adservice.google.com",
        "advertising.com",
        "amazon-adsystem.com",
        "bidswitch.net",
        "casalemedia.com",
        "criteo.com",
        "criteo.net",
        "doubleclick.net",
        "google-analytics.com",
        "googleadservices.com",
        "googlesyndication.com",
        "googletagmanager.com",
        "googletagservices.com",
        "moatads.com",
        "openx.net",
        "outbrain.com",
        "pubmatic.com",
        "quantserve.com",
        "rubiconproject.com",
        "scorecardresearch.com",
        "smartadserver.com",
        "taboola.com",
        "teads.tv",
        "yieldmo.com",
    }
)


class CapabilityError(BotledgerError):
    """Chromium rejected a capability value (for example a locale that ICU does not know)."""

    code = "capability_failed"


async def apply_capabilities(
    page: Any, capabilities: Mapping[str, Any], *, ad_hosts: frozenset[str] = DEFAULT_AD_HOSTS
) -> None:
    """Apply validated capabilities to ``page``. Raises CapabilityError naming the rejected one."""
    if "resolution" in capabilities:
        resolution = capabilities["resolution"]
        await _apply(
            "resolution",
            page.setViewport({"width": resolution["width"], "height": resolution["height"]}),
        )

    if "userAgent" in capabilities or "locale" in capabilities:
        await _apply("userAgent", _override_user_agent(page, capabilities))

    if "locale" in capabilities:
        await _apply(
            "locale",
            page._client.send("Emulation.setLocaleOverride", {"locale": capabilities["locale"]}),
        )

    if "timezone" in capabilities:
        await _apply(
            "timezone",
            page._client.send(
                "Emulation.setTimezoneOverride", {"timezoneId": capabilities["timezone"]}
            ),
        )

    if "geolocation" in capabilities:
        await _apply("geolocation", _override_geolocation(page, capabilities["geolocation"]))

    if capabilities.get("adBlocking"):
        await _apply("adBlocking", _start_ad_blocking(page, ad_hosts))


async def _apply(name: str, operation: Any) -> None:
    try:
        await operation
    except PyppeteerError as error:
        raise CapabilityError(
            f"Chromium rejected the capability '{name}': {error}. Change or remove it in the manifest.",
            details={"capability": name},
        ) from None


async def _override_user_agent(page: Any, capabilities: Mapping[str, Any]) -> None:
    """Set the User-Agent and, with a locale, Accept-Language and navigator.language(s).

    One call sets both because each Network.setUserAgentOverride replaces the previous one.
    """
    user_agent = capabilities.get("userAgent") or await page.browser.userAgent()
    override: dict[str, str] = {"userAgent": user_agent}
    if "locale" in capabilities:
        override["acceptLanguage"] = accept_languages(capabilities["locale"])
    await page._client.send("Network.setUserAgentOverride", override)


def accept_languages(locale: str) -> str:
    """Return the language list for a locale: "de-DE" gives "de-DE,de".

    Chromium 156 adds the q-values itself, so the header becomes "de-DE,de;q=0.9".
    """
    language = locale.split("-", 1)[0]
    return locale if language == locale else f"{locale},{language}"


async def _override_geolocation(page: Any, position: Mapping[str, float]) -> None:
    # The permission covers every origin of the page's browser context, because the origins
    # that a program visits are not known before it runs. An incognito context per execution
    # keeps the grant from reaching other executions.
    grant: dict[str, Any] = {"permissions": ["geolocation"]}
    context_id = page.target._targetInfo.get("browserContextId")
    if context_id:
        grant["browserContextId"] = context_id
    await page.browser._connection.send("Browser.grantPermissions", grant)

    await page._client.send(
        "Emulation.setGeolocationOverride",
        {
            "latitude": position["latitude"],
            "longitude": position["longitude"],
            "accuracy": GEOLOCATION_ACCURACY_M,
        },
    )


def is_ad_host(host: str, ad_hosts: frozenset[str]) -> bool:
    """Return whether ``host`` is one of ``ad_hosts`` or a subdomain of one."""
    labels = host.lower().rstrip(".").split(".")
    return any(".".join(labels[start:]) in ad_hosts for start in range(len(labels)))


async def _start_ad_blocking(page: Any, ad_hosts: frozenset[str]) -> None:
    """Pause every request of the page and fail those whose host is an ad host.

    Chromium 156 no longer has Network.setRequestInterception, which pyppeteer 2.0's
    page.setRequestInterception uses, so this goes through the Fetch domain directly.
    """
    # NOTE: Fetch interception covers this page's own requests. Requests of out-of-process
    # iframes, workers and popups are separate targets and are not blocked.
    client = page._client
    blocker = _AdBlocker(client, ad_hosts)
    client.on("Fetch.requestPaused", blocker.on_request_paused)
    await client.send(
        "Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]}
    )
    logger.debug("Ad blocking started with %d hosts", len(ad_hosts))


class _AdBlocker:
    def __init__(self, client: Any, ad_hosts: frozenset[str]) -> None:
        self.client = client
        self.ad_hosts = ad_hosts

    def on_request_paused(self, event: dict[str, Any]) -> None:
        # pyppeteer emits CDP events synchronously, so the decision runs as its own task.
        task = asyncio.ensure_future(self.decide(event))
        task.add_done_callback(self.log_failure)

    async def decide(self, event: dict[str, Any]) -> None:
        request_id = event["requestId"]
        host = urlsplit(event["request"]["url"]).hostname
        if host is not None and is_ad_host(host, self.ad_hosts):
            logger.debug("Blocked a request to ad host %s", host)
            await self.client.send(
                "Fetch.failRequest", {"requestId": request_id, "errorReason": "BlockedByClient"}
            )
        else:
            await self.client.send("Fetch.continueRequest", {"requestId": request_id})

    @staticmethod
    def log_failure(task: asyncio.Future[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, NetworkError):
            # The page closed while the request was paused, which ends the request anyway.
            logger.debug("Could not resume a paused request: %s", error)
        elif error is not None:
            logger.error("Could not resume a paused request, which stays stalled: %s", error)
