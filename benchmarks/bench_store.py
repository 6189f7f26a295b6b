"""Benchmark the event store against raw nats-py JetStream publishes in the same run.

Run: .venv/bin/python benchmarks/bench_store.py [--count 3000] [--concurrency 16]

It starts a private nats-server on a free 127.0.0.1 port and prints, for sequential and
concurrent writers, appends/s of EventStore.save next to raw ``js.publish`` of payloads of the
same size, the ratio, and aggregate loads/s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from events.execution import Execution
from events.store import EventStore
from events.subjects import SubjectScheme
from infra.nats import NatsServerSupervisor, connect, ensure_stream
from infra.settings import Settings


def new_execution() -> Execution:
    return Execution(
        id=uuid.uuid4(),
        org_id="bench",
        bot_id=str(uuid.uuid4()),
        trigger="api",
        params={"searchQuery": "running shoes", "page": 1},
        encrypted_secrets=None,
        idempotency_key=None,
        program={"targetUrl": "http://127.0.0.1/", "steps": [], "scriptVersion": 1},
    )


async def rate(count: int, concurrency: int, make: Callable[[int], Awaitable[object]]) -> float:
    """Run ``make(i)`` for i in range(count) with bounded concurrency; return operations/s."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            await make(i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return count / (time.perf_counter() - started)


async def main(count: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        supervisor = NatsServerSupervisor(Path(directory) / "nats")
        await supervisor.start()
        settings = Settings(data_dir=Path(directory), stream_name="BENCH", subject_prefix="bench")
        nc = await connect(supervisor.url, "bench")
        try:
            await ensure_stream(nc, settings)
            js = nc.jetstream()
            store = EventStore(nc, settings.stream_name, SubjectScheme(settings.subject_prefix))
            sample = store.codec.encode(new_execution().collect_events()[0]).payload
            print(f"nats-server {nc.connected_server_version}, payload {len(sample)} bytes")
            print(f"{'writers':>8} {'raw publish/s':>14} {'store append/s':>15} {'ratio':>6}")

            saved: list[Execution] = []
            for writers in (1, concurrency):
                async def raw(i: int) -> None:
                    await js.publish(f"bench.raw.x.{uuid.uuid4().hex}.Raw", sample)

                # Aggregates are built before timing: the benchmark measures the store.
                pending = [new_execution() for _ in range(count)]

                async def append(i: int) -> None:
                    await store.save(pending[i])
                    saved.append(pending[i])

                await rate(200, writers, raw)  # warm-up
                raw_rate = await rate(count, writers, raw)
                store_rate = await rate(count, writers, append)
                print(
                    f"{writers:>8} {raw_rate:>14.0f} {store_rate:>15.0f} "
                    f"{store_rate / raw_rate:>6.2f}"
                )

            async def load(i: int) -> None:
                execution = saved[i % len(saved)]
                await store.load(Execution, execution.id, "bench", execution.bot_id)

            for writers in (1, concurrency):
                print(f"loads/s with {writers} readers: {await rate(count, writers, load):.0f}")
        finally:
            await nc.close()
            await supervisor.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="operations per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent writers")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.count, arguments.concurrency))
