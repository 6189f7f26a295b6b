"""The ``botledger`` command line: run the stack, manage keys, trigger bots, audit events."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from events.errors import BotledgerError
from infra.endpoints import ADMIN_KEY_FILE
from infra.logging import configure_logging
from infra.settings import Settings

logger = logging.getLogger(__name__)

DEMO_PORT_FILE = "demo-port"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", type=Path, default=argparse.SUPPRESS,
        help="directory of the stack's data and endpoints.json (default: BOTLEDGER_DATA_DIR "
        "or ~/.local/share/botledger)",
    )
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING or ERROR"
    )
    # The common options are accepted before and after the command name.
    parser = argparse.ArgumentParser(
        prog="botledger",
        description="Self-hosted, event-sourced service that runs browser bots.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", parents=[common], help="run the whole stack in this process tree"
    )
    up.add_argument("--port", type=int, default=None, help="HTTP port of the API (default 8080)")
    up.add_argument("--demo", action="store_true", help="also serve the demo site and bots")

    keys = commands.add_parser("keys", parents=[common], help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser(
        "create", parents=[common], help="create a key and print it on stdout"
    )
    create.add_argument("--org", required=True, help="organization id, e.g. acme")
    create.add_argument("--permission", required=True, choices=["read", "write", "admin"])
    create.add_argument("--name", required=True, help="a name to recognize the key by")

    run = commands.add_parser("run", parents=[common], help="trigger a bot through the API")
    run.add_argument("bot_id", metavar="BOT_ID")
    run.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="a parameter; a string parameter takes VALUE as typed, others read it as JSON "
        "when it parses (2, true, [1])",
    )
    run.add_argument("--wait", action="store_true", help="follow progress until it ends")
    run.add_argument("--api-key", default=None, help="API key (default: the stack's admin key)")

    events = commands.add_parser("events", parents=[common], help="follow the event stream")
    event_commands = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    tail = event_commands.add_parser(
        "tail", parents=[common], help="print execution events as they happen"
    )
    tail.add_argument("--org", default=None, help="organization id (default: all)")
    tail.add_argument("--bot", default=None, help="only events of this bot id")
    tail.add_argument("--type", default=None, help="only this event name, e.g. ExecutionFailed")

    history = commands.add_parser(
        "history", parents=[common], help="print an execution's timeline"
    )
    history.add_argument("execution_id", metavar="EXECUTION_ID")
    export = commands.add_parser(
        "export", parents=[common], help="print an execution's events as JSON"
    )
    export.add_argument("execution_id", metavar="EXECUTION_ID")
    commands.add_parser(
        "replay", parents=[common], help="rebuild every view from the log and swap it in"
    )
    commands.add_parser(
        "verify", parents=[common], help="rebuild views aside and compare them with the live ones"
    )
    return parser


def settings_from(arguments: argparse.Namespace, **overrides: Any) -> Settings:
    return Settings.from_env(
        data_dir=getattr(arguments, "data_dir", None),
        log_level=getattr(arguments, "log_level", None),
        **overrides,
    )


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        settings = settings_from(
            arguments, http_port=getattr(arguments, "port", None)
        )
        configure_logging(settings.log_level if arguments.command == "up" else "WARNING")
        return asyncio.run(dispatch(arguments, settings, sys.stdout))
    except BotledgerError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output (head, a closed pager) went away: not an error of ours.
        sys.stderr.close()
        return 0


async def dispatch(arguments: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from services import operator

    command = arguments.command
    if command == "up":
        return await up(settings, arguments.demo, out)
    if command == "keys":
        return await create_key(settings, arguments.org, arguments.permission, arguments.name, out)
    if command == "run":
        from services.run_command import run_bot

        return await run_bot(settings, arguments.bot_id, arguments.param, arguments.wait,
                             arguments.api_key, out)
    if command == "events":
        await operator.events_tail(settings, arguments.org, arguments.bot, arguments.type, out)
        return 0
    if command == "history":
        await operator.history(settings, arguments.execution_id, out)
        return 0
    if command == "export":
        await operator.export(settings, arguments.execution_id, out)
        return 0
    if command == "replay":
        await operator.replay(settings, out)
        return 0
    if command == "verify":
        return await operator.verify(settings, out)
    raise AssertionError(f"unhandled command {command}")


async def create_key(
    settings: Settings, org: str, permission: str, name: str, out: TextIO
) -> int:
    from events.store import EventStore
    from events.subjects import SubjectScheme
    from infra.endpoints import nats_url_for, read_endpoints
    from infra.nats import nats_connection
    from services.gateway.keys import create_api_key

    if not settings.nats_url:
        endpoints = read_endpoints(settings.data_dir)
        settings = settings.replace(
            stream_name=endpoints.stream_name, subject_prefix=endpoints.subject_prefix
        )
    async with nats_connection(nats_url_for(settings), "botledger-cli") as nc:
        store = EventStore(nc, settings.stream_name, SubjectScheme(settings.subject_prefix))
        _, key, _ = await create_api_key(store, org, permission, name)
    print(key, file=out)
    return 0


async def up(settings: Settings, demo: bool, out: TextIO) -> int:
    from services.stack import open_stack

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async with open_stack(settings) as stack:
        endpoints = stack.endpoints
        print(f"botledger is ready in {stack.ready_s:.2f} s", file=out)
        print(f"  API:         {endpoints.api_url}  (docs: {endpoints.api_url}/docs)", file=out)
        print(f"  NATS:        {endpoints.nats_url}  (stream {endpoints.stream_name})", file=out)
        print(f"  S3 endpoint: {endpoints.s3_endpoint}", file=out)
        print(f"  Data:        {settings.data_dir}", file=out)
        if stack.new_admin_key:
            print(
                f"  Admin key:   {stack.new_admin_key}  (shown once; saved in "
                f"{settings.data_dir / ADMIN_KEY_FILE})",
                file=out,
            )
        else:
            print(f"  Admin key:   in {settings.data_dir / ADMIN_KEY_FILE}", file=out)
        site_runner = await _start_demo(settings, endpoints.api_url, out) if demo else None
        print("Press Ctrl-C to stop.", file=out, flush=True)
        try:
            await stop.wait()
        finally:
            print("Stopping...", file=out, flush=True)
            if site_runner is not None:
                await site_runner.cleanup()
    print("Stopped.", file=out, flush=True)
    return 0


async def _start_demo(settings: Settings, api_url: str, out: TextIO) -> Any:
    """Serve the demo site (on the port of the last run when free) and create its bots."""
    from services.demo.provision import provision_demo_bots
    from services.demo.site import start_demo_site

    port_file = settings.data_dir / DEMO_PORT_FILE
    port = int(port_file.read_text()) if port_file.exists() else 0
    try:
        site_runner, site_url = await start_demo_site(port=port)
    except OSError:
        logger.warning("Demo site port %d is taken; using a new one", port)
        site_runner, site_url = await start_demo_site(port=0)
    port_file.write_text(site_url.rsplit(":", 1)[1])
    admin_key = (settings.data_dir / ADMIN_KEY_FILE).read_text().strip()
    bots = await provision_demo_bots(api_url, admin_key, site_url)
    print(f"  Demo site:   {site_url}", file=out)
    print("  Demo bots:", file=out)
    for bot in bots:
        print(f"    {bot['id']}  {bot['name']}", file=out)
    return site_runner


if __name__ == "__main__":
    sys.exit(main())
