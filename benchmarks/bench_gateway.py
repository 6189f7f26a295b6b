"""Benchmark GET /api/v1/executions/:id against a bare aiohttp JSON handler.

Run: ``.venv/bin/python benchmarks/bench_gateway.py [--requests 5000] [--concurrency 8]``

A child process serves two apps on 127.0.0.1. The first is the gateway, with a private
nats-server, projector and SQLite read store, one API key, one bot and one execution. The second
is a bare aiohttp app whose single handler returns the same execution JSON without auth,
middlewares or a store. This process loads each with the same number of requests from the same number of concurrent
aiohttp clients and prints requests/s, p50 and p99 latency, and the gateway/bare ratio of
requests/s. The client runs on the same machine and can be the bottleneck, so it also prints
the server process's CPU time per request (from /proc, Linux only) and the ratio of those.
Targets: ratio >= 0.5 and gateway p99 < 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession, TCPConnector, web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WARMUP_REQUESTS = 300
TARGET_RATIO = 0.5
TARGET_P99_MS = 5.0


# The serving child process


async def _serve() -> None:
    from cryptography.fernet import Fernet

    from events.store import EventStore
    from events.subjects import SubjectScheme
    from infra.nats import NatsServerSupervisor, connect, ensure_stream
    from infra.secrets import SecretBox
    from infra.settings import Settings
    from projections.projector import Projector
    from projections.read_store import ReadStore
    from services.gateway.app import build_gateway_app
    from services.gateway.context import GatewayContext
    from services.gateway.keys import create_api_key

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as directory:
        data_dir = Path(directory)
        nats_server = NatsServerSupervisor(data_dir / "nats")
        await nats_server.start()
        settings = Settings(data_dir=data_dir / "data", http_port=0)
        nc = await connect(nats_server.url, "bench")
        await ensure_stream(nc, settings)
        event_store = EventStore(nc, settings.stream_name, SubjectScheme(settings.subject_prefix))
        read_store = ReadStore(data_dir / "views.sqlite3")
        projector = Projector(nc, event_store, read_store)
        await projector.start()
        context = GatewayContext(
            settings=settings, nc=nc, event_store=event_store, read_store=read_store,
            projector=projector, secret_box=SecretBox(Fernet.generate_key()),
        )
        _, key, result = await create_api_key(event_store, "bench", "write", "bench")
        await projector.wait_for(result.last_sequence, 5.0)

        gateway_runner = web.AppRunner(build_gateway_app(context), access_log=None)
        await gateway_runner.setup()
        gateway_site = web.TCPSite(gateway_runner, "127.0.0.1", 0)
        await gateway_site.start()
        gateway_url = f"http://127.0.0.1:{_port(gateway_runner)}"
        execution = await _create_execution(gateway_url, key)

        payload = {"data": execution}

        async def bare_handler(request: web.Request) -> web.Response:
            return web.Response(body=orjson.dumps(payload), content_type="application/json")

        bare_app = web.Application()
        bare_app.router.add_get("/api/v1/executions/{executionId}", bare_handler)
        bare_runner = web.AppRunner(bare_app, access_log=None)
        await bare_runner.setup()
        await web.TCPSite(bare_runner, "127.0.0.1", 0).start()

        ready = {
            "gateway": f"{gateway_url}/api/v1/executions/{execution['id']}",
            "bare": f"http://127.0.0.1:{_port(bare_runner)}/api/v1/executions/{execution['id']}",
            "key": key,
        }
        print(orjson.dumps(ready).decode(), flush=True)
        # Serve until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

        await bare_runner.cleanup()
        await gateway_runner.cleanup()
        await projector.stop()
        read_store.close()
        await nc.close()
        await nats_server.stop()


def _port(runner: web.AppRunner) -> int:
    server = runner.addresses[0]
    return int(server[1])


async def _create_execution(gateway_url: str, key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with ClientSession(headers=headers) as session:
        bot_body = {
            "name": "Bench",
            "targetUrl": "http://127.0.0.1:9/",
            "steps": [{"action": "goto", "url": "{{bot.targetUrl}}"}],
        }
        async with session.post(f"{gateway_url}/api/v1/bots", json=bot_body) as response:
            bot = (await response.json())["data"]
        async with session.post(
            f"{gateway_url}/api/v1/bots/{bot['id']}/executions", json={"params": {}}
        ) as response:
            execution: dict[str, Any] = (await response.json())["data"]
    return execution


# The measuring parent process


async def _load(url: str, headers: dict[str, str], requests: int, concurrency: int) -> list[float]:
    """Send ``requests`` GETs from ``concurrency`` workers; return each latency in ms."""
    latencies_ms: list[float] = []
    remaining = requests

    async def worker(session: ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {url} returned status {response.status}")
            latencies_ms.append((time.perf_counter() - started) * 1000)

    connector = TCPConnector(limit=concurrency)
    async with ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return latencies_ms


def _cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time a process has used, from /proc (Linux only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Measurement:
    """Latencies, wall time and server CPU time of one app's measured requests."""

    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    server_cpu_s: float = 0.0

    def summary(self) -> dict[str, float]:
        quantiles = statistics.quantiles(self.latencies_ms, n=100)
        return {
            "requests_per_s": len(self.latencies_ms) / self.elapsed_s,
            "p50_ms": quantiles[49],
            "p99_ms": quantiles[98],
            "server_cpu_us": self.server_cpu_s / len(self.latencies_ms) * 1e6,
        }


async def _measure_round(
    measurement: Measurement,
    url: str,
    headers: dict[str, str],
    requests: int,
    concurrency: int,
    server_pid: int,
) -> None:
    cpu_before = _cpu_seconds(server_pid)
    started = time.perf_counter()
    measurement.latencies_ms += await _load(url, headers, requests, concurrency)
    measurement.elapsed_s += time.perf_counter() - started
    measurement.server_cpu_s += _cpu_seconds(server_pid) - cpu_before


def _print_summary(name: str, summary: dict[str, float]) -> None:
    print(
        f"{name:8s} {summary['requests_per_s']:8.0f} req/s   p50 {summary['p50_ms']:6.2f} ms   "
        f"p99 {summary['p99_ms']:6.2f} ms   server CPU {summary['server_cpu_us']:6.0f} us/request"
    )


async def _run(requests: int, concurrency: int, rounds: int) -> int:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert child.stdout is not None and child.stdin is not None
    bare, gateway = Measurement(), Measurement()
    try:
        ready = orjson.loads(child.stdout.readline())
        headers = {"Authorization": f"Bearer {ready['key']}"}
        print(
            f"GET /api/v1/executions/:id, {requests} requests in {rounds} alternating rounds, "
            f"{concurrency} concurrent, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
        )
        await _load(ready["bare"], {}, WARMUP_REQUESTS, concurrency)
        await _load(ready["gateway"], headers, WARMUP_REQUESTS, concurrency)
        # Alternating rounds spread a burst of load from other processes over both apps.
        per_round = max(1, requests // rounds)
        for _ in range(rounds):
            await _measure_round(bare, ready["bare"], {}, per_round, concurrency, child.pid)
            await _measure_round(
                gateway, ready["gateway"], headers, per_round, concurrency, child.pid
            )
    finally:
        child.stdin.close()
        child.wait(timeout=30)

    bare_summary, gateway_summary = bare.summary(), gateway.summary()
    _print_summary("bare", bare_summary)
    _print_summary("gateway", gateway_summary)

    # The client shares the machine with the server and may be the bottleneck, so the
    # server's CPU time per request is printed too. Its ratio is the capacity ratio.
    ratio = gateway_summary["requests_per_s"] / bare_summary["requests_per_s"]
    cpu_ratio = bare_summary["server_cpu_us"] / gateway_summary["server_cpu_us"]
    meets = ratio >= TARGET_RATIO and gateway_summary["p99_ms"] < TARGET_P99_MS
    print(
        f"ratio    {ratio:.2f} req/s gateway/bare (target >= {TARGET_RATIO}), "
        f"{cpu_ratio:.2f} by server CPU per request; gateway p99 target < {TARGET_P99_MS} ms; "
        f"{'met' if meets else 'NOT met'}"
    )
    return 0 if meets else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000, help="measured requests per app")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent client requests")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per app")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        asyncio.run(_serve())
        return 0
    return asyncio.run(_run(args.requests, args.concurrency, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
