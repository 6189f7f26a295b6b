"""Operator commands over the event log: tail, history, export, replay and verify.

Each command takes the Settings and a text stream to write to, so the CLI decides where output
goes. Without an explicit NATS URL the commands find the running stack through the endpoints
file in the data directory, which also gives the stream name and subject prefix.

Replay builds every view into a new read store file, one generation per replay
(``read-store.<stamp>.sqlite3``), and points ``read-store.sqlite3`` at it with a symbolic link
replaced by ``os.replace``. Replacing the database file itself would be unsafe while a stack
has it open in WAL mode: the stack keeps writing ``read-store.sqlite3-wal``, and SQLite would
apply that old log to the new file on its next open. SQLite resolves the link, so each
generation has its own ``-wal`` and ``-shm`` files and the old connection cannot touch the new
file. A running stack is then asked to reopen its read store on a control subject outside the
stream (see ``serve_control``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from events.codec import AGGREGATE_TYPES, EVENT_CLASSES
from events.errors import NotFoundError, ValidationError
from events.store import EventStore, RecordedEvent
from events.subjects import SubjectScheme, check_org_id
from infra.endpoints import read_endpoints
from infra.nats import nats_connection
from infra.settings import Settings
from projections.projector import REPLAY_TRANSACTION_EVENTS, apply_batch, rebuild
from projections.read_store import VIEW_TABLES, ReadStore
from services.gateway.event_routes import LiveEvents, public_event, public_payload
from services.runner.program import closest_match

logger = logging.getLogger(__name__)

CONTROL_REQUEST_TIMEOUT_S = 30.0
MAX_SHOWN_DIFFERENCES = 5
SHORT_TEXT_CHARS = 100
PROGRESS_BAR_WIDTH = 30

_GENERIC_EVENT_NAMES = frozenset({"Created", "Event"})
PUBLIC_EVENT_NAMES: tuple[str, ...] = tuple(
    sorted(name for name in EVENT_CLASSES if name not in _GENERIC_EVENT_NAMES)
)


# Finding the stack


@dataclasses.dataclass(frozen=True)
class StackAddress:
    """The NATS URL, stream name and subject prefix an operator command uses."""

    nats_url: str
    stream_name: str
    subject_prefix: str


def stack_address(settings: Settings) -> StackAddress:
    """Return the configured NATS URL with the settings' stream, else the running stack's."""
    if settings.nats_url:
        return StackAddress(settings.nats_url, settings.stream_name, settings.subject_prefix)
    endpoints = read_endpoints(settings.data_dir)
    return StackAddress(endpoints.nats_url, endpoints.stream_name, endpoints.subject_prefix)


@contextlib.asynccontextmanager
async def open_event_store(settings: Settings, name: str) -> AsyncIterator[EventStore]:
    address = stack_address(settings)
    async with nats_connection(address.nats_url, name) as nc:
        yield EventStore(nc, address.stream_name, SubjectScheme(address.subject_prefix))


def control_subject(stream_name: str) -> str:
    """Return the subject on which a running stack accepts "reopen the read store" requests.

    It lies outside the stream's ``<prefix>.>`` subjects, so control messages are never stored
    as events.
    """
    return f"_botledger.control.{stream_name}.reload"


# Formatting events for people


def format_time_ms(time_ms: int) -> str:
    moment = datetime.fromtimestamp(time_ms // 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def shorten(text: str, max_chars: int = SHORT_TEXT_CHARS) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _short_json(value: Any) -> str:
    return shorten(orjson.dumps(value).decode())


def _log_counts(lines: list[dict[str, Any]]) -> str:
    by_source = collections.Counter(str(line.get("source")) for line in lines)
    errors = sum(1 for line in lines if line.get("level") == "error")
    sources = ", ".join(f"{source} {count}" for source, count in sorted(by_source.items()))
    noun = "line" if len(lines) == 1 else "lines"
    summary = f"{len(lines)} log {noun} ({sources})"
    return summary + (f", {errors} at level error" if errors else "")


def _failure(state: dict[str, Any]) -> str:
    where = f" at step {state['failed_step']}" if state.get("failed_step") is not None else ""
    text = f"after {state.get('duration_ms')} ms{where}: {shorten(str(state.get('reason')))}"
    if state.get("screenshot_key"):
        text += f" (screenshot {state['screenshot_key']})"
    return text


def _requested(state: dict[str, Any]) -> str:
    params = state.get("params") or {}
    program = state.get("program") or {}
    text = f"trigger {state.get('trigger')}, {len(params)} params"
    if params:
        text += f" ({', '.join(sorted(params))})"
    if program.get("scriptVersion") is not None:
        text += f", script version {program['scriptVersion']}"
    if state.get("encrypted_secrets"):
        text += ", secret values encrypted"
    return text


def _step_started(state: dict[str, Any]) -> str:
    label = f" '{state['label']}'" if state.get("label") else ""
    return f"step {state.get('index')} {state.get('action')}{label}"


def _step_completed(state: dict[str, Any]) -> str:
    text = f"step {state.get('index')} completed in {state.get('duration_ms')} ms"
    if state.get("data") is not None:
        text += f", data {_short_json(state['data'])}"
    return text


def _completed(state: dict[str, Any]) -> str:
    extracted = state.get("extracted") or {}
    names = ", ".join(sorted(extracted)) if isinstance(extracted, dict) else "?"
    return f"completed in {state.get('duration_ms')} ms, extracted: {names or 'nothing'}"


# Key fields of each execution event, from its stored (snake_case) payload.
SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "ExecutionRequested": _requested,
    "ExecutionStarted": lambda s: f"runner {s.get('runner_id')}, attempt {s.get('attempt')}",
    "StepStarted": _step_started,
    "StepCompleted": _step_completed,
    "StepFailed": lambda s: (
        f"step {s.get('index')} failed after {s.get('duration_ms')} ms: "
        f"{shorten(str(s.get('error')))}"
    ),
    "LogsAppended": lambda s: _log_counts(list(s.get("lines") or [])),
    "ExecutionCompleted": _completed,
    "ExecutionFailed": _failure,
    "ExecutionTimedOut": _failure,
    "ExecutionCancelRequested": lambda s: f"requested by {s.get('requested_by')}",
    "ExecutionCancelled": lambda s: f"reason: {shorten(str(s.get('reason')))}",
}


def summarize(recorded: RecordedEvent) -> str:
    """Return the key fields of an event in one short line, without secrets."""
    state = recorded.state()
    summary = SUMMARIES.get(recorded.name)
    if summary is not None:
        return summary(state)
    payload = public_payload(state)
    payload.pop("timestamp", None)
    return _short_json(payload)


def tail_line(recorded: RecordedEvent) -> str:
    return (
        f"{format_time_ms(recorded.time_ms)}  #{recorded.sequence}  {recorded.org_id}  "
        f"{recorded.name}  {recorded.aggregate_type} {recorded.aggregate_id}  "
        f"{summarize(recorded)}"
    )


# events tail


def check_public_event_name(name: str) -> str:
    if name in PUBLIC_EVENT_NAMES:
        return name
    suggestion = closest_match(name, PUBLIC_EVENT_NAMES)
    raise ValidationError(
        f"Unknown event type '{name}'. Did you mean '{suggestion}'?",
        {"type": name, "suggestion": suggestion},
    )


def tail_filters(
    scheme: SubjectScheme, org: str | None, bot_id: str | None, event_type: str | None
) -> list[str]:
    """Return the subject filters of ``events tail``; every argument narrows the selection."""
    if event_type is None:
        if bot_id is None:
            return [scheme.organization(org) if org else scheme.all]
        return [
            scheme.executions(org, bot_id),
            scheme.aggregate_filter("bot", bot_id, org),
        ]

    check_public_event_name(event_type)
    aggregate_type = AGGREGATE_TYPES[EVENT_CLASSES[event_type][0]]
    if aggregate_type == "execution":
        return [scheme.executions(org, bot_id, event_type)]
    if aggregate_type == "apikey" and bot_id is not None:
        raise ValidationError(
            f"Event type {event_type} belongs to API keys, not bots: leave out the bot id.",
            {"type": event_type, "botId": bot_id},
        )
    org_token = check_org_id(org) if org else "*"
    if bot_id is not None:
        return [scheme.aggregate_filter("bot", bot_id, org)[:-1] + event_type]
    return [f"{scheme.prefix}.{org_token}.{aggregate_type}.*.{event_type}"]


async def events_tail(
    settings: Settings,
    org: str | None,
    bot_id: str | None,
    event_type: str | None,
    out: TextIO,
) -> None:
    """Print every new event that matches, one line each, until cancelled (Ctrl-C)."""
    if bot_id is not None:
        try:
            uuid.UUID(bot_id)
        except ValueError:
            raise ValidationError(
                f"Invalid bot id {bot_id!r}: bot ids are UUIDs, as GET /api/v1/bots lists them."
            ) from None
    async with open_event_store(settings, "botledger-events-tail") as store:
        filters = tail_filters(store.scheme, org, bot_id, event_type)
        live = await LiveEvents.open(store.nc, store, filters, None)
        logger.info("Tailing %s on stream %s", filters, store.stream)
        out.write(f"Tailing {' and '.join(filters)} on stream {store.stream} (Ctrl-C to stop)\n")
        out.flush()
        try:
            while True:
                recorded = await live.next(timeout_s=60.0)
                if recorded is None:
                    continue
                out.write(tail_line(recorded) + "\n")
                out.flush()
        finally:
            await live.close()


# history and export


async def execution_events(store: EventStore, execution_id: str) -> list[RecordedEvent]:
    """Return every event of an execution of any organization; NotFoundError if none."""
    filter_subject = store.scheme.aggregate_filter("execution", execution_id, None, None)
    events = [recorded async for recorded in store.read(1, filter_subject)]
    if not events:
        raise NotFoundError(
            f"No execution with id {execution_id!r} exists on stream {store.stream}.",
            {"executionId": execution_id},
        )
    return events


def write_timeline(events: list[RecordedEvent], out: TextIO) -> None:
    first = events[0]
    out.write(
        f"Execution {first.aggregate_id} of bot {first.bot_id} (organization {first.org_id})\n"
        f"{len(events)} events, stream sequences {first.sequence} to {events[-1].sequence}, "
        f"started {format_time_ms(first.time_ms)}\n"
    )
    width = max(len(recorded.name) for recorded in events)
    for recorded in events:
        offset_ms = recorded.time_ms - first.time_ms
        out.write(
            f"{offset_ms:>+9} ms  #{recorded.sequence:<8} {recorded.name:<{width}}  "
            f"{summarize(recorded)}\n"
        )


async def history(settings: Settings, execution_id: str, out: TextIO) -> None:
    """Print an execution's events as a timeline, in milliseconds from its first event."""
    async with open_event_store(settings, "botledger-history") as store:
        events = await execution_events(store, execution_id)
    write_timeline(events, out)


async def export(settings: Settings, execution_id: str, out: TextIO) -> None:
    """Write every event of an execution as JSON, in the shape of the HTTP history."""
    async with open_event_store(settings, "botledger-export") as store:
        events = await execution_events(store, execution_id)
    document = {"data": [public_event(recorded) for recorded in events]}
    out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


# replay


class ProgressBar:
    """A one-line progress display: percent, events done and events per second."""

    def __init__(self, out: TextIO, first_sequence: int, last_sequence: int) -> None:
        self.out = out
        self.first_sequence = first_sequence
        self.total = max(0, last_sequence - first_sequence + 1)
        self.started = time.perf_counter()

    def update(self, sequence: int, target: int) -> None:
        total = max(self.total, target - self.first_sequence + 1)
        done = min(total, max(0, sequence - self.first_sequence + 1))
        fraction = done / total if total else 1.0
        filled = int(fraction * PROGRESS_BAR_WIDTH)
        elapsed_s = max(time.perf_counter() - self.started, 1e-9)
        self.out.write(
            f"\rReplaying [{'#' * filled}{'-' * (PROGRESS_BAR_WIDTH - filled)}] "
            f"{fraction:4.0%}  {done:,}/{total:,} events  {done / elapsed_s:,.0f} events/s"
        )
        self.out.flush()

    def finish(self) -> None:
        self.out.write("\n")
        self.out.flush()


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    """The figures of one replay."""

    events: int
    last_sequence: int
    duration_s: float
    rows: dict[str, int]
    store_file: Path
    stack_reloaded: bool

    @property
    def events_per_s(self) -> float:
        return self.events / self.duration_s if self.duration_s > 0 else 0.0


def row_counts(read_store: ReadStore) -> dict[str, int]:
    return {
        table: int(read_store.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
        for table in VIEW_TABLES
    }


def new_generation_path(live_path: Path) -> Path:
    stamp = datetime.now(tz=timezone.utc).strftime("%Y%m%dT%H%M%S")
    return live_path.with_name(f"{live_path.stem}.{stamp}-{uuid.uuid4().hex[:6]}{live_path.suffix}")


def close_for_handover(read_store: ReadStore) -> None:
    """Fold the WAL into the database file and close it, so the file alone contains the views."""
    read_store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    read_store.close()


def point_live_store_at(generation: Path, live_path: Path) -> Path | None:
    """Atomically make ``live_path`` a link to ``generation``; return the file it replaced.

    Returns the previous generation when ``live_path`` was a link, and None when it was a
    regular file (replacing unlinks that file) or did not exist.
    """
    previous = None
    if live_path.is_symlink():
        previous = live_path.parent / os.readlink(live_path)
    temporary_link = live_path.with_name(f".{live_path.name}.{uuid.uuid4().hex[:8]}.link")
    os.symlink(generation.name, temporary_link)
    os.replace(temporary_link, live_path)
    logger.info("Read store %s now points to %s", live_path, generation.name)
    return previous


def remove_database_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        candidate = path.with_name(path.name + suffix)
        candidate.unlink(missing_ok=True)


def remove_previous_store(previous: Path | None, live_path: Path, reopened: bool | None) -> None:
    """Delete the replaced read store once no stack uses it: it reopened, or none listens."""
    if reopened is False:
        return
    if previous is not None:
        remove_database_files(previous)
        return
    # A regular file was replaced, which already unlinked it; only its WAL files may remain.
    for suffix in ("-wal", "-shm"):
        live_path.with_name(live_path.name + suffix).unlink(missing_ok=True)


async def request_reopen(nc: NATS, stream_name: str, live_path: Path) -> bool | None:
    """Ask a running stack to reopen its read store.

    Returns True when it reopened, False when it failed or did not respond in time, and None
    when no stack listens.
    """
    subject = control_subject(stream_name)
    body = orjson.dumps({"readStorePath": str(live_path.absolute())})
    try:
        msg = await nc.request(subject, body, timeout=CONTROL_REQUEST_TIMEOUT_S)
    except NoRespondersError:
        logger.info("No running stack listens on %s", subject)
        return None
    except NatsTimeoutError:
        logger.warning(
            "The running stack did not confirm the reopen on %s within %.0f s",
            subject, CONTROL_REQUEST_TIMEOUT_S,
        )
        return False
    reply = orjson.loads(msg.data)
    if not reply.get("ok"):
        logger.error("The running stack failed to reopen its read store: %s", reply.get("error"))
        return False
    return True


async def replay(settings: Settings, out: TextIO) -> ReplayReport:
    """Rebuild every view from the log into a new read store and switch the live one to it."""
    live_path = settings.read_store_path
    generation = new_generation_path(live_path)
    async with open_event_store(settings, "botledger-replay") as store:
        info = await store.nc.jetstream().stream_info(store.stream)
        progress = ProgressBar(out, info.state.first_seq, info.state.last_seq)
        logger.info("Replaying stream %s into %s", store.stream, generation)

        fresh = ReadStore(generation)
        started = time.perf_counter()
        try:
            applied = await rebuild(store, fresh, progress=progress.update)
        except BaseException:
            fresh.close()
            remove_database_files(generation)
            raise
        duration_s = time.perf_counter() - started
        progress.finish()
        rows = row_counts(fresh)
        last_sequence = fresh.last_sequence
        close_for_handover(fresh)

        previous = point_live_store_at(generation, live_path)
        reopened = await request_reopen(store.nc, store.stream, live_path)

    remove_previous_store(previous, live_path, reopened)

    report = ReplayReport(
        events=applied,
        last_sequence=last_sequence,
        duration_s=duration_s,
        rows=rows,
        store_file=generation,
        stack_reloaded=bool(reopened),
    )
    write_replay_report(report, reopened, live_path, out)
    return report


def write_replay_report(
    report: ReplayReport, reopened: bool | None, live_path: Path, out: TextIO
) -> None:
    rows = ", ".join(f"{table} {count}" for table, count in report.rows.items())
    out.write(
        f"Replayed {report.events:,} events up to sequence {report.last_sequence} in "
        f"{report.duration_s:.2f} s ({report.events_per_s:,.0f} events/s).\n"
        f"Rows: {rows}.\n"
        f"{live_path} now points to {report.store_file.name}.\n"
    )
    if reopened is True:
        out.write("The running stack reopened its read store and restarted its projector.\n")
    elif reopened is None:
        out.write("No running stack responded; the next start uses the new views.\n")
    else:
        out.write(
            "The running stack did not confirm the reopen: restart it to serve the new views. "
            "The previous read store file was kept.\n"
        )
    out.flush()


async def serve_control(
    nc: NATS, settings: Settings, reopen: Callable[[Path], Awaitable[None]]
) -> Subscription:
    """Respond to replay's "reopen the read store" requests for the stack that runs ``settings``.

    ``reopen(path)`` is awaited with the read store path after a replay switched it to a new
    file. It must stop the projector, open a new ReadStore at ``path``, make the gateway use
    it, start a projector on it and close the old store. Requests for another data directory
    (another stack on the same NATS server) get no response. Unsubscribe the returned
    subscription on shutdown.
    """
    live_path = settings.read_store_path

    async def handle(msg: Msg) -> None:
        try:
            requested = Path(orjson.loads(msg.data)["readStorePath"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            logger.warning("Ignored a malformed control request on %s: %r", msg.subject, error)
            return
        if not _same_file_name(requested, live_path):
            logger.debug("Ignored a reopen request for %s (this stack uses %s)", requested, live_path)
            return

        logger.info("Reopening read store %s on request", live_path)
        try:
            await reopen(live_path)
        except Exception as error:  # noqa: BLE001 - the requester must hear about any failure
            logger.exception("Reopening read store %s failed: %r", live_path, error)
            await msg.respond(orjson.dumps({"ok": False, "error": repr(error)}))
            return
        logger.info("Read store %s reopened", live_path)
        await msg.respond(orjson.dumps({"ok": True}))

    subscription = await nc.subscribe(control_subject(settings.stream_name), cb=handle)
    logger.info("Serving read store control requests on %s", subscription.subject)
    return subscription


def _same_file_name(first: Path, second: Path) -> bool:
    # Resolve the directories only: the file names are links that replay switches.
    return (
        Path(os.path.realpath(first.parent)) / first.name
        == Path(os.path.realpath(second.parent)) / second.name
    )


# verify


@dataclasses.dataclass(frozen=True)
class TableDump:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@dataclasses.dataclass(frozen=True)
class Difference:
    table: str
    key: str
    column: str | None
    live: Any
    rebuilt: Any

    def describe(self) -> str:
        if self.column is None and self.rebuilt is None:
            return f"{self.table} {self.key}: only in the live store"
        if self.column is None:
            return f"{self.table} {self.key}: missing from the live store"
        return (
            f"{self.table} {self.key}, column {self.column}: live {self.live!r}, "
            f"rebuilt {self.rebuilt!r}"
        )


def dump_views(conn: sqlite3.Connection) -> tuple[int, dict[str, TableDump]]:
    """Return the applied sequence and every view row, read in one transaction.

    This is ReadStore.dump() with column names, inside one read transaction, so the rows of a
    store that a projector keeps writing belong to the sequence returned with them.
    """
    conn.execute("BEGIN")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'last_sequence'").fetchone()
        dumps: dict[str, TableDump] = {}
        for table, order in VIEW_TABLES.items():
            cursor = conn.execute(f"SELECT * FROM {table} ORDER BY {order}")  # noqa: S608
            columns = tuple(description[0] for description in cursor.description)
            dumps[table] = TableDump(columns, [tuple(r) for r in cursor.fetchall()])
    finally:
        conn.execute("COMMIT")
    return int(row[0]), dumps


def open_read_only(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise NotFoundError(
            f"No read store at {path}: start the stack once, or pass the --data-dir it uses.",
            {"path": str(path)},
        )
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


async def rebuild_until(event_store: EventStore, read_store: ReadStore, to_sequence: int) -> int:
    """Apply the stream's events up to ``to_sequence`` only; return how many were applied."""
    applied = 0
    if to_sequence <= read_store.last_sequence:
        return applied
    batch: list[RecordedEvent] = []
    # NOTE: the loop reads to the end of the stream instead of breaking at ``to_sequence``,
    # because EventStore.read does not close its inner Direct Get subscription when the
    # caller stops early, which leaves the subscription open until the connection drains.
    async for recorded in event_store.read(read_store.last_sequence + 1):
        if recorded.sequence > to_sequence:
            continue
        batch.append(recorded)
        if len(batch) >= REPLAY_TRANSACTION_EVENTS:
            apply_batch(read_store, batch)
            applied += len(batch)
            batch = []
    if batch:
        apply_batch(read_store, batch)
        applied += len(batch)
    return applied


def compare_views(live: dict[str, TableDump], rebuilt: dict[str, TableDump]) -> list[Difference]:
    differences: list[Difference] = []
    for table, order in VIEW_TABLES.items():
        columns = rebuilt[table].columns
        key_indexes = [columns.index(name.strip()) for name in order.split(",")]

        def key_of(row: tuple[Any, ...], cols: tuple[str, ...] = columns) -> str:
            return " ".join(f"{cols[i]}={row[i]}" for i in key_indexes)

        live_rows = {key_of(row): row for row in live[table].rows}
        rebuilt_rows = {key_of(row): row for row in rebuilt[table].rows}
        for key in sorted(live_rows.keys() | rebuilt_rows.keys()):
            live_row, rebuilt_row = live_rows.get(key), rebuilt_rows.get(key)
            if rebuilt_row is None:
                differences.append(Difference(table, key, None, live_row, None))
            elif live_row is None:
                differences.append(Difference(table, key, None, None, rebuilt_row))
            else:
                differences.extend(
                    Difference(table, key, column, live_value, rebuilt_value)
                    for column, live_value, rebuilt_value in zip(
                        columns, live_row, rebuilt_row, strict=True
                    )
                    if live_value != rebuilt_value
                )
    return differences


async def verify(settings: Settings, out: TextIO) -> int:
    """Rebuild the views aside and compare them with the live ones; return the exit code.

    Only the events up to the live store's applied sequence are replayed, so a store that is
    merely behind the stream still matches. Returns 0 when every row matches, 1 otherwise.
    """
    live_path = settings.read_store_path
    live_conn = open_read_only(live_path)
    try:
        live_sequence, live_dump = dump_views(live_conn)
    finally:
        live_conn.close()

    async with open_event_store(settings, "botledger-verify") as store:
        with tempfile.TemporaryDirectory(prefix=".verify-", dir=live_path.parent) as directory:
            rebuilt_store = ReadStore(Path(directory) / "rebuilt.sqlite3")
            try:
                applied = await rebuild_until(store, rebuilt_store, live_sequence)
                _, rebuilt_dump = dump_views(rebuilt_store.conn)
            finally:
                rebuilt_store.close()

    differences = compare_views(live_dump, rebuilt_dump)
    rows = sum(len(dump.rows) for dump in live_dump.values())
    if not differences:
        out.write(f"views match the log ({applied} events, {rows} rows)\n")
        return 0

    tables = sorted({difference.table for difference in differences})
    out.write(
        f"views differ from the log: {len(differences)} differences in {', '.join(tables)} "
        f"(compared at sequence {live_sequence}, {applied} events, {rows} live rows)\n"
    )
    for difference in differences[:MAX_SHOWN_DIFFERENCES]:
        out.write(f"  {shorten(difference.describe(), 200)}\n")
    hidden = len(differences) - MAX_SHOWN_DIFFERENCES
    if hidden > 0:
        out.write(f"  and {hidden} more\n")
    out.write("Run `botledger replay` to rebuild the views from the log.\n")
    return 1
