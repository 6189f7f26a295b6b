"""Run one runner process against a configured NATS server and object store.

    BOTLEDGER_NATS_URL=nats://127.0.0.1:4222 BOTLEDGER_S3_ENDPOINT=127.0.0.1:8333 \
        python -m services.runner

It stops cleanly on SIGTERM or SIGINT. ``botledger up`` runs a runner inside its own process
instead; this entry point is for deployments with more runner processes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from events.errors import BotledgerError
from infra.logging import configure_logging
from infra.settings import Settings
from services.runner.service import open_runner

logger = logging.getLogger("services.runner")


async def main() -> int:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    if not settings.nats_url:
        logger.error("BOTLEDGER_NATS_URL is not set: a separate runner needs the stack's NATS URL.")
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_runner(settings, settings.nats_url, settings.s3_endpoint):
        await stop.wait()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except BotledgerError as error:
        print(f"error: {error.message}", file=sys.stderr)
        sys.exit(1)
