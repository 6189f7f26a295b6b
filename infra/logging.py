"""Logging set-up shared by every botledger process."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    # pyppeteer logs every DevTools message at DEBUG, typed secret values included.
    logging.getLogger("pyppeteer").setLevel(max(logging.INFO, logging.getLogger().level))
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))
