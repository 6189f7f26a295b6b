"""Execution events over HTTP: server-sent event streams and the audit history.

- ``GET /api/v1/executions/{executionId}/events``: the execution's events as
  ``text/event-stream``, history first, then live, until its terminal event.
- ``GET /api/v1/events``: the live execution events of the caller's organization, filtered by
  ``botId`` and ``type``; it never ends by itself.
- ``GET /api/v1/executions/{executionId}/history``: the execution's events as a JSON list.

Every event is served in one public shape (``public_event``): the stream sequence, the event
name, the time JetStream stored it, the ids and the payload with its secrets removed. The SSE
``id`` is the stream sequence, so ``Last-Event-ID`` resumes exactly after the last event a
client received.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy

from events.codec import EVENT_CLASSES
from events.errors import BotledgerError, NotFoundError, ValidationError
from events.execution import Execution
from events.store import EventStore, RecordedEvent
from projections.handlers import public_webhook
from services.gateway.auth import require
from services.gateway.context import CONTEXT, GatewayContext
from services.gateway.http import check_query_names, json_response, path_uuid
from services.runner.program import closest_match

logger = logging.getLogger(__name__)

# Seconds between ": keep-alive" comment lines on an idle stream. Proxies and load balancers
# close connections that stay silent for about a minute; set the key on the application to
# change it.
KEEPALIVE_INTERVAL_S = web.AppKey("botledger_sse_keepalive_interval_s", float)
DEFAULT_KEEPALIVE_INTERVAL_S = 15.0

# The server deletes the ephemeral consumer of a stream this long after its client went away.
LIVE_CONSUMER_INACTIVE_S = 30.0

TERMINAL_EVENTS = frozenset(
    {"ExecutionCompleted", "ExecutionFailed", "ExecutionTimedOut", "ExecutionCancelled"}
)
# The codec's registry also lists eventsourcing's generic base classes; they are never stored.
_GENERIC_EVENT_NAMES = frozenset({"Created", "Event"})
EXECUTION_EVENT_NAMES: tuple[str, ...] = tuple(
    sorted(
        name
        for name, (aggregate_cls, _) in EVENT_CLASSES.items()
        if aggregate_cls is Execution and name not in _GENERIC_EVENT_NAMES
    )
)

# Payload fields that never leave the server: eventsourcing's bookkeeping (the schema version
# is in the envelope) and the Fernet token holding the values of secret parameters.
_HIDDEN_PAYLOAD_FIELDS = frozenset(
    {"originator_topic", "class_version", "encrypted_secrets", "encryptedSecrets"}
)
_SNAKE_SEPARATOR = re.compile(r"_([a-z0-9])")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

routes = web.RouteTableDef()


# The public shape of an event


def camel_case(name: str) -> str:
    return _SNAKE_SEPARATOR.sub(lambda match: match.group(1).upper(), name)


def iso_to_ms(text: str) -> int:
    # Integer arithmetic: float seconds times 1000 can come out 1 ms short.
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(milliseconds=1)


def public_payload(state: dict[str, Any]) -> dict[str, Any]:
    """Return a stored payload as served over HTTP: camelCase keys, no secrets.

    Only the top-level keys are renamed, because nested values (params, extracted data, step
    data) are the user's own names. ``timestamp``, the time the writer created the event,
    becomes Unix milliseconds like every other time of the API.
    """
    public: dict[str, Any] = {}
    for key, value in state.items():
        if key in _HIDDEN_PAYLOAD_FIELDS:
            continue
        if key == "timestamp" and isinstance(value, str):
            value = iso_to_ms(value)
        elif key == "webhook" and isinstance(value, dict):
            value = public_webhook(value)
        elif key == "program" and isinstance(value, dict):
            value = _public_program(value)
        public[camel_case(key)] = value
    return public


def _public_program(program: dict[str, Any]) -> dict[str, Any]:
    # The program snapshot of an execution may carry the bot's webhook section.
    public = {k: v for k, v in program.items() if k not in _HIDDEN_PAYLOAD_FIELDS}
    if isinstance(public.get("webhook"), dict):
        public["webhook"] = public_webhook(public["webhook"])
    return public


def public_event(recorded: RecordedEvent) -> dict[str, Any]:
    """Return one stored event in the shape of the SSE data, the history and the export."""
    return {
        "sequence": recorded.sequence,
        "type": recorded.name,
        "time": recorded.time_ms,
        "aggregateId": recorded.aggregate_id,
        "botId": recorded.bot_id,
        "schemaVersion": recorded.schema_version,
        "payload": public_payload(recorded.state()),
    }


def sse_frame(recorded: RecordedEvent) -> bytes:
    # orjson never emits a newline, so the JSON fits on one data line.
    data = orjson.dumps(public_event(recorded))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (
        recorded.sequence, recorded.name.encode(), data,
    )


KEEPALIVE_FRAME = b": keep-alive\n\n"


def check_event_type(event_type: str) -> str:
    """Return ``event_type`` if it names an execution event; ValidationError otherwise."""
    if event_type in EXECUTION_EVENT_NAMES:
        return event_type
    suggestion = closest_match(event_type, EXECUTION_EVENT_NAMES)
    raise ValidationError(
        f"Unknown event type '{event_type}'. Did you mean '{suggestion}'?",
        {"type": event_type, "suggestion": suggestion, "allowed": list(EXECUTION_EVENT_NAMES)},
    )


# Live events


class LiveEvents:
    """The events of one subject filter as JetStream stores them, from a stream sequence on.

    This is an ordered JetStream consumer, not a core NATS subscription, for two reasons. A
    core subscriber receives messages without their stream sequence, so it can neither
    deduplicate against the history nor give an SSE id. It also receives every publish,
    including appends that JetStream rejected (a lost optimistic-concurrency race, a failed
    atomic batch), which are not events. An ordered consumer delivers only stored messages,
    in stream order, and when it starts at the sequence after the last event of the history
    nothing is lost or repeated at the seam.
    """

    def __init__(
        self, subscription: Any, event_store: EventStore, start_sequence: int | None
    ) -> None:
        self._subscription = subscription
        self._event_store = event_store
        self.last_sequence = (start_sequence or 1) - 1

    @classmethod
    async def open(
        cls,
        nc: NATS,
        event_store: EventStore,
        filter_subject: str | list[str],
        start_sequence: int | None,
    ) -> LiveEvents:
        """Start delivering at ``start_sequence``, or with the next new event when None.

        A list of filter subjects delivers the events matching any of them.
        """
        if start_sequence is None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        else:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_sequence
            )
        config.inactive_threshold = LIVE_CONSUMER_INACTIVE_S
        subjects = [filter_subject] if isinstance(filter_subject, str) else filter_subject
        if len(subjects) > 1:
            config.filter_subjects = subjects
        subscription = await nc.jetstream().subscribe(
            subjects[0], stream=event_store.stream, ordered_consumer=True, config=config
        )
        logger.debug(
            "Opened live events on %s from sequence %s", subjects, start_sequence or "new"
        )
        return cls(subscription, event_store, start_sequence)

    async def next(self, timeout_s: float) -> RecordedEvent | None:
        """Return the next event, or None when none arrived within ``timeout_s``."""
        while True:
            try:
                msg = await self._subscription.next_msg(timeout=timeout_s)
            except NatsTimeoutError:
                return None
            recorded = self._event_store.recorded(msg)
            # The ordered consumer restarts itself after a gap; this also drops anything at or
            # before the sequence it was asked to start from.
            if recorded.sequence <= self.last_sequence:
                continue
            self.last_sequence = recorded.sequence
            return recorded

    async def close(self) -> None:
        await self._subscription.unsubscribe()


# Request parsing


async def resume_after(request: web.Request, event_store: EventStore) -> int | None:
    """Return the sequence given by ``Last-Event-ID`` (or ``lastEventId``), None without one.

    Raises ValidationError when the value is not a sequence number of the stream.
    """
    raw = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip()
    if not (value.isascii() and value.isdigit()):
        raise ValidationError(
            f"Invalid Last-Event-ID {raw!r}: send the id of the last event received from this "
            "stream, a whole number.",
            {"lastEventId": raw},
        )
    sequence = int(value)
    last = await event_store.last_sequence()
    if sequence > last:
        raise ValidationError(
            f"Invalid Last-Event-ID {raw!r}: the stream ends at sequence {last}; send the id "
            "of an event received from this stream.",
            {"lastEventId": raw, "lastSequence": last},
        )
    return sequence


def keepalive_interval_s(request: web.Request) -> float:
    return request.app.get(KEEPALIVE_INTERVAL_S, DEFAULT_KEEPALIVE_INTERVAL_S)


def execution_filter(context: GatewayContext, org_id: str, execution_id: str) -> str:
    """Return the subject filter of an execution of the organization; NotFoundError if none."""
    row = context.read_store.execution(org_id, execution_id)
    if row is None:
        raise NotFoundError(
            f"No execution with id {execution_id!r} exists.", {"executionId": execution_id}
        )
    return context.event_store.scheme.aggregate_filter(
        "execution", execution_id, org_id, row["bot_id"]
    )


async def read_history(
    event_store: EventStore, filter_subject: str, from_sequence: int = 1
) -> list[RecordedEvent]:
    return [recorded async for recorded in event_store.read(from_sequence, filter_subject)]


# Streaming


async def prepare_event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            # Reverse proxies such as nginx would otherwise buffer the stream.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


async def stream_live(
    request: web.Request,
    response: web.StreamResponse,
    live: LiveEvents,
    *,
    stop_after_terminal: bool,
) -> None:
    """Send live events and keep-alive comments until a terminal event or a disconnect."""
    interval_s = keepalive_interval_s(request)
    while True:
        recorded = await live.next(interval_s)
        if recorded is None:
            await response.write(KEEPALIVE_FRAME)
            continue
        await response.write(sse_frame(recorded))
        if stop_after_terminal and recorded.name in TERMINAL_EVENTS:
            return


@contextlib.contextmanager
def ending_stream(description: str) -> Iterator[None]:
    """End a prepared stream quietly when its client leaves or NATS fails.

    Once the response is prepared, no error status can be sent any more. The client reconnects
    with Last-Event-ID and resumes where it stopped.
    """
    try:
        yield
    except ConnectionResetError:
        logger.info("Client left the %s", description)
    except (BotledgerError, NatsError) as error:
        logger.warning("Ended the %s after an error: %r", description, error)


@routes.get("/api/v1/executions/{executionId}/events")
async def execution_events(request: web.Request) -> web.StreamResponse:
    """Stream an execution's events: the history, then live events until the terminal one."""
    principal = require(request, "read")
    check_query_names(request, ("lastEventId",))
    context = request.app[CONTEXT]
    execution_id = path_uuid(request, "executionId", "execution")
    filter_subject = execution_filter(context, principal.org_id, execution_id)
    after = await resume_after(request, context.event_store)

    # One execution's history is small enough to keep in memory, which shows whether the
    # client already has every event before anything is sent.
    history = await read_history(context.event_store, filter_subject)
    unsent = [r for r in history if after is None or r.sequence > after]
    finished = any(r.name in TERMINAL_EVENTS for r in history)
    if finished and not unsent:
        # The execution has ended, and a 204 makes an EventSource stop reconnecting.
        return web.Response(status=204)

    response = await prepare_event_stream(request)
    with ending_stream(f"event stream of execution {execution_id}"):
        for recorded in unsent:
            await response.write(sse_frame(recorded))
        if not finished:
            seen = max([after or 0, *(r.sequence for r in history)])
            live = await LiveEvents.open(
                context.nc, context.event_store, filter_subject, seen + 1
            )
            try:
                await stream_live(request, response, live, stop_after_terminal=True)
            finally:
                await live.close()
        await response.write_eof()
    return response


@routes.get("/api/v1/events")
async def organization_events(request: web.Request) -> web.StreamResponse:
    """Stream the execution events of the caller's organization, optionally filtered."""
    principal = require(request, "read")
    check_query_names(request, ("botId", "type", "lastEventId"))
    context = request.app[CONTEXT]
    bot_id = request.query.get("botId") or None
    event_type = request.query.get("type") or None
    if event_type is not None:
        check_event_type(event_type)
    if bot_id is not None and context.read_store.bot(principal.org_id, bot_id) is None:
        raise NotFoundError(f"No bot with id {bot_id!r} exists.", {"botId": bot_id})
    filter_subject = context.event_store.scheme.executions(principal.org_id, bot_id, event_type)
    after = await resume_after(request, context.event_store)
    description = f"event stream of organization {principal.org_id}"

    if after is None:
        # Live only: the consumer exists before the client sees the response headers, so every
        # event stored after that moment is delivered.
        live = await LiveEvents.open(context.nc, context.event_store, filter_subject, None)
        try:
            response = await prepare_event_stream(request)
            with ending_stream(description):
                await stream_live(request, response, live, stop_after_terminal=False)
        finally:
            await live.close()
        return response

    response = await prepare_event_stream(request)
    with ending_stream(description):
        seen = after
        async for recorded in context.event_store.read(after + 1, filter_subject):
            await response.write(sse_frame(recorded))
            seen = recorded.sequence
        live = await LiveEvents.open(context.nc, context.event_store, filter_subject, seen + 1)
        try:
            await stream_live(request, response, live, stop_after_terminal=False)
        finally:
            await live.close()
    return response


@routes.get("/api/v1/executions/{executionId}/history")
async def execution_history(request: web.Request) -> web.Response:
    """Return every event of an execution, oldest first: the audit view."""
    principal = require(request, "read")
    check_query_names(request, ())
    context = request.app[CONTEXT]
    execution_id = path_uuid(request, "executionId", "execution")
    filter_subject = execution_filter(context, principal.org_id, execution_id)
    history = await read_history(context.event_store, filter_subject)
    return json_response([public_event(recorded) for recorded in history])


# OpenAPI 3.1 path items of the routes above.

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "code", "details"],
    "properties": {
        "error": {"type": "string"},
        "code": {"type": "string"},
        "details": {"type": "object"},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["sequence", "type", "time", "aggregateId", "schemaVersion", "payload"],
    "properties": {
        "sequence": {"type": "integer", "description": "Stream sequence; also the SSE id."},
        "type": {"type": "string", "enum": list(EXECUTION_EVENT_NAMES)},
        "time": {"type": "integer", "description": "When JetStream stored it, Unix ms."},
        "aggregateId": {"type": "string", "format": "uuid"},
        "botId": {"type": ["string", "null"]},
        "schemaVersion": {"type": "integer", "minimum": 1},
        "payload": {
            "type": "object",
            "description": "The event's fields in camelCase, without secrets; see docs/events.md.",
        },
    },
}

_EXECUTION_ID_PARAMETER: dict[str, Any] = {
    "name": "executionId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_LAST_EVENT_ID_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "Resume after this event id (a stream sequence).",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    {
        "name": "lastEventId",
        "in": "query",
        "required": False,
        "description": "Same as the Last-Event-ID header, for clients that cannot set headers.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
]
_SSE_DESCRIPTION = (
    "A text/event-stream. Each event has `id` (the stream sequence), `event` (the event name) "
    "and `data` (one JSON object in the shape of the Event schema). Idle streams get a "
    "`: keep-alive` comment line, by default every 15 seconds."
)

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/executions/{executionId}/events": {
        "get": {
            "operationId": "streamExecutionEvents",
            "summary": "Stream an execution's events: history first, then live",
            "description": (
                "Replays the execution's stored events, then sends new ones as they are "
                "stored, and ends after the terminal event (ExecutionCompleted, "
                "ExecutionFailed, ExecutionTimedOut or ExecutionCancelled). Resuming with "
                "Last-Event-ID sends only the events after that id. Needs Read permission."
            ),
            "parameters": [_EXECUTION_ID_PARAMETER, *_LAST_EVENT_ID_PARAMETERS],
            "responses": {
                "200": {
                    "description": _SSE_DESCRIPTION,
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "204": {
                    "description": "The execution has ended and the client has every event."
                },
                "400": _error("Invalid Last-Event-ID."),
                "401": _error("Missing, invalid or revoked API key."),
                "404": _error("No such execution in the caller's organization."),
            },
        }
    },
    "/api/v1/events": {
        "get": {
            "operationId": "streamOrganizationEvents",
            "summary": "Stream the execution events of the caller's organization",
            "description": (
                "Sends execution events as they are stored; never ends by itself. Without "
                "Last-Event-ID only new events are sent; with it, the stored events after that "
                "id come first. Needs Read permission."
            ),
            "parameters": [
                {
                    "name": "botId",
                    "in": "query",
                    "required": False,
                    "description": "Only events of this bot's executions.",
                    "schema": {"type": "string"},
                },
                {
                    "name": "type",
                    "in": "query",
                    "required": False,
                    "description": "Only events with this name.",
                    "schema": {"type": "string", "enum": list(EXECUTION_EVENT_NAMES)},
                },
                *_LAST_EVENT_ID_PARAMETERS,
            ],
            "responses": {
                "200": {
                    "description": _SSE_DESCRIPTION,
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _error("Unknown event type or invalid Last-Event-ID."),
                "401": _error("Missing, invalid or revoked API key."),
                "404": _error("No such bot in the caller's organization."),
            },
        }
    },
    "/api/v1/executions/{executionId}/history": {
        "get": {
            "operationId": "getExecutionHistory",
            "summary": "Every event of an execution, oldest first (audit view)",
            "parameters": [_EXECUTION_ID_PARAMETER],
            "responses": {
                "200": {
                    "description": "The execution's events in stream order.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["data"],
                                "properties": {
                                    "data": {"type": "array", "items": _EVENT_SCHEMA}
                                },
                            }
                        }
                    },
                },
                "401": _error("Missing, invalid or revoked API key."),
                "404": _error("No such execution in the caller's organization."),
            },
        }
    },
}
