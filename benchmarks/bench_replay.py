"""Benchmark: replay of the event stream into a fresh read store, against raw reads.

Starts a private nats-server on 127.0.0.1, appends a realistic mix of execution events (steps,
logs, completions and failures), then measures in the same run:

1. replay: ``projections.projector.rebuild`` into a fresh SQLite read store;
2. store read: ``EventStore.read`` over the whole stream, describing every message but
   applying nothing (the transport and parsing share of a replay);
3. raw Direct Get: batched Direct Get requests that only count messages;
4. raw ordered consumer: an ordered push consumer that only counts messages;
5. a prototype replay that applies the same batches but reads through an ordered consumer.

Run it from the project root::

    python -m benchmarks.bench_replay --events 30000 [--repeat 3] [--profile]

The target is a replay of at least 20,000 events per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import itertools
import pstats
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from events.bot import Bot
from events.execution import Execution
from events.store import EventStore, RecordedEvent
from events.subjects import SubjectScheme
from infra.nats import NatsServerSupervisor, connect, ensure_stream
from infra.settings import Settings
from projections.projector import REPLAY_TRANSACTION_EVENTS, apply_batch, rebuild
from projections.read_store import ReadStore

TARGET_EVENTS_PER_S = 20_000
APPEND_CONCURRENCY = 64
DIRECT_GET_BATCH = 1000
READ_TIMEOUT_S = 5.0
ORGS = ("acme", "globex", "initech")


def execution_events(bot_id: str, org: str, number: int) -> Execution:
    """Build one execution of the mix: 3 of 4 complete, the rest fail at their last step."""
    execution = Execution(
        id=uuid.uuid4(), org_id=org, bot_id=bot_id, trigger="api",
        params={"searchQuery": f"query {number}", "password": "***"},
        encrypted_secrets="gAAAAABbenchmarkfernettoken" * 3, idempotency_key=None,
        program={"scriptVersion": 2, "targetUrl": "http://127.0.0.1/shop", "steps": [
            {"action": "goto", "url": "{{bot.targetUrl}}"},
            {"action": "type", "selector": "#q", "text": "{{params.searchQuery}}"},
            {"action": "extract", "name": "products", "selector": ".product", "multiple": True},
        ]},
    )
    execution.start(f"runner-{number % 4}", 1)
    fails = number % 4 == 3
    for index, action in enumerate(("goto", "type", "extract")):
        execution.start_step(index, action, None)
        if fails and index == 2:
            execution.fail_step(index, "No element matches '.product'", 120)
            break
        data = [{"name": f"Item {n}", "price": n * 3} for n in range(5)] if index == 2 else None
        execution.complete_step(index, data, 40 + index)
    execution.append_logs([
        {"time": 1_700_000_000_000 + n, "source": "runner" if n % 2 else "script",
         "level": "info", "message": f"line {n} of execution {number}"}
        for n in range(6)
    ])
    if fails:
        execution.fail("No element matches '.product'", 400, 2, "shots/x.png", "dom/x.html")
    else:
        execution.complete({"products": [{"name": "Item 1", "price": 3}]}, 380)
    return execution


async def append_events(event_store: EventStore, target_events: int) -> int:
    """Append executions until the stream contains at least ``target_events``; return the count."""
    bots = []
    for org in ORGS:
        bot = Bot(id=uuid.uuid4(), org_id=org, name="Shop", target_url="http://127.0.0.1/shop",
                  description="", kind="action", tags=[])
        bot.update_steps([{"action": "goto", "url": "{{bot.targetUrl}}"}])
        await event_store.save(bot)
        bots.append(bot)

    appended = 2 * len(bots)
    number = 0
    while appended < target_events:
        chunk = []
        for _ in range(APPEND_CONCURRENCY):
            bot = bots[number % len(bots)]
            chunk.append(execution_events(str(bot.id), bot.org_id, number))
            number += 1
        results = await asyncio.gather(*(event_store.save(e) for e in chunk))
        appended += sum(r.last_sequence - r.first_sequence + 1 for r in results)
    return appended


async def direct_get_messages(nc: NATS, stream: str, subject: str) -> AsyncGenerator[Msg, None]:
    """Yield every stored message from batched Direct Get requests, without decoding.

    A callback feeds a queue, which costs less per message than one ``next_msg`` task each.
    """
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def enqueue(msg: Msg) -> None:
        queue.put_nowait(msg)

    subscription = await nc.subscribe(nc.new_inbox(), cb=enqueue)
    sequence = 1
    try:
        while True:
            request = {"seq": sequence, "next_by_subj": subject, "batch": DIRECT_GET_BATCH}
            await nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", orjson.dumps(request), reply=subscription.subject
            )
            while True:
                msg = await asyncio.wait_for(queue.get(), READ_TIMEOUT_S)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":
                    return
                if status == "204":
                    break
                sequence = int(headers["Nats-Sequence"]) + 1
                yield msg
            if int(headers.get("Nats-Num-Pending", "0")) == 0:
                return
    finally:
        await subscription.unsubscribe()


async def ordered_consumer_messages(
    nc: NATS, stream: str, subject: str, last: int
) -> AsyncGenerator[Msg, None]:
    """Yield every stored message up to ``last`` from an ordered push consumer."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def enqueue(msg: Msg) -> None:
        queue.put_nowait(msg)

    subscription = await nc.jetstream().subscribe(
        subject, stream=stream, cb=enqueue, ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    try:
        while True:
            msg = await asyncio.wait_for(queue.get(), READ_TIMEOUT_S)
            yield msg
            if msg.metadata.sequence.stream >= last:
                return
    finally:
        await subscription.unsubscribe()


async def count(messages: AsyncGenerator[Msg, None]) -> int:
    total = 0
    async with contextlib.aclosing(messages):
        async for _ in messages:
            total += 1
    return total


async def replay_from_messages(
    event_store: EventStore, messages: AsyncGenerator[Msg, None], path: Path
) -> int:
    """Apply messages as rebuild() does, but from another transport (a prototype)."""
    read_store = ReadStore(path)
    batch: list[RecordedEvent] = []
    applied = 0
    try:
        async with contextlib.aclosing(messages):
            async for msg in messages:
                batch.append(event_store.recorded(msg))
                if len(batch) >= REPLAY_TRANSACTION_EVENTS:
                    apply_batch(read_store, batch)
                    applied += len(batch)
                    batch = []
        if batch:
            apply_batch(read_store, batch)
            applied += len(batch)
    finally:
        read_store.close()
    return applied


async def read_recorded(event_store: EventStore) -> int:
    count = 0
    async for _ in event_store.read(1):
        count += 1
    return count


async def timed(action: Callable[[], Awaitable[int]], repeat: int) -> tuple[int, float]:
    """Run ``action`` ``repeat`` times; return its count and the shortest duration."""
    best_s = float("inf")
    count = 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = await action()
        best_s = min(best_s, time.perf_counter() - started)
    return count, best_s


async def replay_into(event_store: EventStore, path: Path) -> int:
    read_store = ReadStore(path)
    try:
        return await rebuild(event_store, read_store)
    finally:
        read_store.close()


def print_rate(label: str, count: int, seconds: float) -> float:
    rate = count / seconds
    print(f"{label:<28} {count:>8,} events in {seconds:6.2f} s  {rate:>10,.0f} events/s")
    return rate


async def run(target_events: int, repeat: int, profile: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as directory:
        root = Path(directory)
        server = NatsServerSupervisor(root / "nats")
        await server.start()
        settings = Settings(data_dir=root / "data", stream_name="BENCH", subject_prefix="bench")
        nc = await connect(server.url, "bench-replay")
        try:
            await ensure_stream(nc, settings)
            event_store = EventStore(nc, settings.stream_name, SubjectScheme("bench"))
            await measure(nc, event_store, root, target_events, repeat)
            if profile:
                await profile_replay(event_store, root / "profiled.sqlite3")
        finally:
            await nc.close()
            await server.stop()


async def measure(
    nc: NATS, event_store: EventStore, root: Path, target_events: int, repeat: int
) -> None:
    appended, append_s = await timed(lambda: append_events(event_store, target_events), 1)
    last = await event_store.last_sequence()
    print(f"nats-server {nc.connected_server_version}, stream of {last:,} events")
    print(f"best of {repeat} runs each")
    print_rate("append (64 concurrent saves)", appended, append_s)

    files = (root / f"replay-{n}.sqlite3" for n in itertools.count())
    raw_direct, raw_direct_s = await timed(
        lambda: count(direct_get_messages(nc, "BENCH", "bench.>")), repeat
    )
    raw_ordered, raw_ordered_s = await timed(
        lambda: count(ordered_consumer_messages(nc, "BENCH", "bench.>", last)), repeat
    )
    recorded, recorded_s = await timed(lambda: read_recorded(event_store), repeat)
    replayed, replay_s = await timed(lambda: replay_into(event_store, next(files)), repeat)
    prototype, prototype_s = await timed(
        lambda: replay_from_messages(
            event_store, ordered_consumer_messages(nc, "BENCH", "bench.>", last), next(files)
        ),
        repeat,
    )

    direct_rate = print_rate("raw Direct Get", raw_direct, raw_direct_s)
    ordered_rate = print_rate("raw ordered consumer", raw_ordered, raw_ordered_s)
    print_rate("EventStore.read (no apply)", recorded, recorded_s)
    replay_rate = print_rate("replay (rebuild)", replayed, replay_s)
    print_rate("replay over ordered consumer", prototype, prototype_s)
    print(f"replay / raw Direct Get:       {replay_rate / direct_rate:.2f}")
    print(f"replay / raw ordered consumer: {replay_rate / ordered_rate:.2f}")
    print(
        f"time shares of replay: reading {recorded_s / replay_s:.0%}, "
        f"decoding and applying {(replay_s - recorded_s) / replay_s:.0%} (estimate)"
    )
    verdict = "meets" if replay_rate >= TARGET_EVENTS_PER_S else "misses"
    print(f"replay {verdict} the target of {TARGET_EVENTS_PER_S:,} events/s")



async def profile_replay(event_store: EventStore, path: Path) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    await replay_into(event_store, path)
    profiler.disable()
    report = io.StringIO()
    pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(18)
    print(report.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=30_000,
        help="events to append before measuring (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3,
        help="runs of each measurement; the fastest counts (default: %(default)s)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one replay with cProfile"
    )
    arguments: Any = parser.parse_args(argv)
    asyncio.run(run(arguments.events, arguments.repeat, arguments.profile))


if __name__ == "__main__":
    main()
