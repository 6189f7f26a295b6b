"""Example subscriber: print every ExecutionFailed event of one bot as a JSON line.

Copy this file to start a service that reacts to botledger events. It needs only nats-py and
talks to the stream directly; nothing of botledger is imported. Run it with::

    python -m services.subscriber_example --nats-url nats://127.0.0.1:4222 --org acme --bot BOT_ID

The server does the filtering: the consumer's filter subject
``<prefix>.<org>.execution.<botId>.*.ExecutionFailed`` matches the failures of that bot's
executions and nothing else. Two kinds of consumer are shown:

- without ``--durable``: an ordered consumer, ephemeral and without acknowledgements. It starts
  with the next new event (or the first stored one with ``--from-start``), and a restarted
  subscriber starts over.
- with ``--durable NAME``: a durable pull consumer. The server remembers which events were
  acknowledged, so a restarted subscriber continues where it stopped and receives what was
  stored meanwhile. An event is acknowledged once the caller has handled it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncGenerator
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

FETCH_BATCH = 100
FETCH_TIMEOUT_S = 5.0
# The schema version of ExecutionFailed this code was written for. A newer version only adds
# fields, so reading the known ones stays valid.
KNOWN_SCHEMA_VERSION = 1


def failure_subject(prefix: str, org: str, bot: str) -> str:
    return f"{prefix}.{org}.execution.{bot}.*.ExecutionFailed"


def describe(msg: Msg) -> dict[str, Any]:
    """Turn a stored message into the JSON record this example prints."""
    headers = msg.headers or {}
    metadata = msg.metadata
    payload = json.loads(msg.data)
    schema_version = int(headers.get("Botledger-Schema-Version", "1"))
    return {
        "sequence": metadata.sequence.stream,
        "time": int(metadata.timestamp.timestamp() * 1000),
        "type": headers.get("Botledger-Event"),
        "schemaVersion": schema_version,
        "newerSchema": schema_version > KNOWN_SCHEMA_VERSION,
        "executionId": headers.get("Botledger-Aggregate-Id"),
        "botId": msg.subject.split(".")[3],
        "reason": payload.get("reason"),
        "failedStep": payload.get("failed_step"),
        "durationMs": payload.get("duration_ms"),
        "screenshotKey": payload.get("screenshot_key"),
    }


async def failed_executions(
    nc: NATS,
    stream: str,
    prefix: str,
    org: str,
    bot: str,
    *,
    from_start: bool = False,
    durable: str | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield every ExecutionFailed of one bot, in stream order, as it is stored.

    With ``durable`` the events come from a durable pull consumer of that name. Each event is
    acknowledged when the caller asks for the next one or stops iterating. If the process
    dies while handling an event, the server delivers it again after the consumer's
    acknowledgement timeout (30 s by default).
    """
    subject = failure_subject(prefix, org, bot)
    deliver_policy = DeliverPolicy.ALL if from_start else DeliverPolicy.NEW
    if durable is None:
        messages = _ordered_messages(nc, stream, subject, deliver_policy)
    else:
        messages = _durable_messages(nc, stream, subject, deliver_policy, durable)
    async with contextlib.aclosing(messages):
        async for msg in messages:
            yield describe(msg)


async def _ordered_messages(
    nc: NATS, stream: str, subject: str, deliver_policy: DeliverPolicy
) -> AsyncGenerator[Msg, None]:
    subscription = await nc.jetstream().subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=deliver_policy),
    )
    try:
        while True:
            yield await subscription.next_msg(timeout=None)
    finally:
        await subscription.unsubscribe()


async def _durable_messages(
    nc: NATS, stream: str, subject: str, deliver_policy: DeliverPolicy, durable: str
) -> AsyncGenerator[Msg, None]:
    # The deliver policy applies when the consumer is created; later runs resume after its
    # last acknowledged event.
    subscription = await nc.jetstream().pull_subscribe(
        subject,
        durable=durable,
        stream=stream,
        config=ConsumerConfig(deliver_policy=deliver_policy, ack_policy=AckPolicy.EXPLICIT),
    )
    try:
        while True:
            try:
                batch = await subscription.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
            except NatsTimeoutError:
                continue
            for position, msg in enumerate(batch):
                try:
                    yield msg
                except GeneratorExit:
                    # The caller stopped after handling this event. Hand the rest of the batch
                    # back for redelivery now rather than after the acknowledgement timeout.
                    await msg.ack()
                    for unhandled in batch[position + 1 :]:
                        await unhandled.nak()
                    raise
                # The caller asked for the next event, so it has handled this one.
                await msg.ack()
    finally:
        await subscription.unsubscribe()


async def run(arguments: argparse.Namespace) -> None:
    nc = await nats.connect(arguments.nats_url, name="botledger-subscriber-example")
    try:
        events = failed_executions(
            nc,
            arguments.stream,
            arguments.prefix,
            arguments.org,
            arguments.bot,
            from_start=arguments.from_start,
            durable=arguments.durable,
        )
        async with contextlib.aclosing(events):
            printed = 0
            async for event in events:
                print(json.dumps(event), flush=True)
                printed += 1
                if arguments.limit and printed >= arguments.limit:
                    break
    finally:
        await nc.drain()


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.subscriber_example",
        description="Print every ExecutionFailed event of one bot as a JSON line.",
    )
    parser.add_argument(
        "--nats-url",
        default="nats://127.0.0.1:4222",
        help="NATS server URL; a botledger stack started by `botledger up` writes its URL "
        "to endpoints.json in its data directory (default: %(default)s)",
    )
    parser.add_argument("--stream", default="BOTLEDGER", help="stream name (default: %(default)s)")
    parser.add_argument(
        "--prefix", default="botledger", help="subject prefix (default: %(default)s)"
    )
    parser.add_argument("--org", required=True, help="organization id")
    parser.add_argument("--bot", required=True, help="bot id")
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="start with the first stored failure instead of the next new one",
    )
    parser.add_argument(
        "--durable",
        metavar="NAME",
        help="use a durable consumer of this name, which resumes after a restart",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="stop after this many events (default: never)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        asyncio.run(run(arguments))
    except KeyboardInterrupt:
        pass
    except (OSError, nats.errors.NoServersError) as error:
        print(f"Cannot reach NATS at {arguments.nats_url}: {error!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
