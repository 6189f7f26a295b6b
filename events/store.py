"""The async event store over one NATS JetStream stream.

Appends are guarded per aggregate by ``Nats-Expected-Last-Subject-Sequence`` over the
aggregate's own subjects, so of two writers that loaded the same version exactly one wins.
Several events of one aggregate go in one atomic batch (nats-server 2.12+), so they are stored
all together or not at all. Reads use batched Direct Get, one request per page of messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson
from eventsourcing.domain import Aggregate, DomainEventProtocol
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.errors import TimeoutError as NatsTimeoutError

from events.codec import (
    AGGREGATE_TYPES,
    HEADER_AGGREGATE_ID,
    HEADER_EVENT,
    HEADER_MSG_ID,
    EncodedEvent,
    EventCodec,
    decode_payload,
)
from events.errors import ConcurrencyError, EventStoreError, NotFoundError, ValidationError
from events.subjects import SubjectScheme

logger = logging.getLogger(__name__)

TAggregate = TypeVar("TAggregate", bound=Aggregate)

# JetStream error codes this store reacts to.
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_BATCH_DUPLICATE_MSG_ID = 10201

MAX_BATCH_EVENTS = 1000
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_ATTEMPTS = 3
READ_PAGE_SIZE = 1000
READ_TIMEOUT_S = 5.0

# Aggregates loaded or saved by the store carry the stream sequence of their last event here.
LAST_SEQUENCE_ATTR = "_botledger_last_sequence"


@dataclasses.dataclass(frozen=True)
class RecordedEvent:
    """One stored event as read back from the stream."""

    sequence: int
    subject: str
    name: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    schema_version: int
    org_id: str
    bot_id: str | None
    time_ms: int
    headers: dict[str, str]
    payload: bytes

    def state(self) -> dict[str, Any]:
        """The payload as a dict, exactly as stored (its schema version may be older)."""
        return decode_payload(self.payload)

    def current_state(self) -> dict[str, Any]:
        """The payload as a dict, upcast to the event's current schema version."""
        return decode_payload(self.payload, self.name)


@dataclasses.dataclass(frozen=True)
class AppendResult:
    first_sequence: int
    last_sequence: int
    duplicate: bool = False


def last_sequence_of(aggregate: Aggregate) -> int:
    return int(getattr(aggregate, LAST_SEQUENCE_ATTR, 0))


class EventStore:
    """Append and read botledger events on one JetStream stream."""

    def __init__(self, nc: NATS, stream: str, scheme: SubjectScheme) -> None:
        self.nc = nc
        self.stream = stream
        self.scheme = scheme
        self.codec = EventCodec()

    # Appending

    async def save(self, aggregate: Aggregate) -> AppendResult:
        """Append the aggregate's pending events; raise ConcurrencyError if it is stale."""
        pending = aggregate.collect_events()
        if not pending:
            last = last_sequence_of(aggregate)
            return AppendResult(last, last)
        result = await self.append(
            aggregate,
            pending,
            expected_last_sequence=last_sequence_of(aggregate),
        )
        object.__setattr__(aggregate, LAST_SEQUENCE_ATTR, result.last_sequence)
        return result

    async def append(
        self,
        aggregate: Aggregate,
        events: Sequence[DomainEventProtocol[Any]],
        *,
        expected_last_sequence: int,
    ) -> AppendResult:
        if len(events) > MAX_BATCH_EVENTS:
            raise ValidationError(
                f"Cannot append {len(events)} events at once: the limit is {MAX_BATCH_EVENTS}."
            )
        aggregate_type = AGGREGATE_TYPES[type(aggregate)]
        org_id: str = getattr(aggregate, "org_id")
        bot_id: str | None = getattr(aggregate, "bot_id", None)
        filter_subject = self.scheme.aggregate_filter(
            aggregate_type, str(aggregate.id), org_id, bot_id
        )
        encoded = [self.codec.encode(event) for event in events]
        subjects = [
            self.scheme.event_subject(aggregate_type, e.aggregate_id, org_id, e.name, bot_id)
            for e in encoded
        ]

        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                ack = await self._publish(subjects, encoded, filter_subject, expected_last_sequence)
            except (NatsTimeoutError, NoRespondersError) as error:
                logger.warning(
                    "Append of %d events to %s %s got no response (attempt %d of %d): %r",
                    len(encoded), aggregate_type, aggregate.id, attempt, PUBLISH_ATTEMPTS, error,
                )
                if attempt == PUBLISH_ATTEMPTS:
                    raise EventStoreError(
                        f"JetStream did not confirm the append to {aggregate_type} "
                        f"{aggregate.id} after {PUBLISH_ATTEMPTS} attempts; retry the request."
                    ) from error
                await asyncio.sleep(0.2 * attempt)
                continue
            return await self._check_ack(ack, encoded, filter_subject, expected_last_sequence)
        raise AssertionError("unreachable")

    async def _publish(
        self,
        subjects: list[str],
        encoded: list[EncodedEvent],
        filter_subject: str,
        expected_last_sequence: int,
    ) -> dict[str, Any]:
        guard = {
            "Nats-Expected-Last-Subject-Sequence": str(expected_last_sequence),
            "Nats-Expected-Last-Subject-Sequence-Subject": filter_subject,
        }
        if len(encoded) == 1:
            headers = {**encoded[0].headers, **guard}
            msg = await self.nc.request(
                subjects[0], encoded[0].payload, timeout=PUBLISH_TIMEOUT_S, headers=headers
            )
            return _parse_ack(msg)

        # Atomic batch: only the first message carries the concurrency guard, and only the
        # commit message gets a response, the ack of the whole batch.
        batch_id = uuid.uuid4().hex
        last = len(encoded)
        for number, (subject, event) in enumerate(zip(subjects, encoded, strict=True), start=1):
            headers = {
                **event.headers,
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(number),
            }
            if number == 1:
                headers.update(guard)
            if number < last:
                await self.nc.publish(subject, event.payload, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            msg = await self.nc.request(
                subject, event.payload, timeout=PUBLISH_TIMEOUT_S, headers=headers
            )
            return _parse_ack(msg)
        raise AssertionError("unreachable")

    async def _check_ack(
        self,
        ack: dict[str, Any],
        encoded: list[EncodedEvent],
        filter_subject: str,
        expected_last_sequence: int,
    ) -> AppendResult:
        error = ack.get("error")
        if error is None:
            last = int(ack["seq"])
            if ack.get("duplicate"):
                return AppendResult(last, last, duplicate=True)
            return AppendResult(last - len(encoded) + 1, last)

        err_code = error.get("err_code")
        if err_code in (ERR_WRONG_LAST_SEQUENCE, ERR_BATCH_DUPLICATE_MSG_ID):
            # A retry of events that were already stored fails the guard just like a real
            # conflict, so the stored events decide which of the two this is.
            stored = await self._find_stored(encoded, filter_subject, expected_last_sequence)
            if stored is not None:
                return AppendResult(stored[0], stored[-1], duplicate=True)
            raise ConcurrencyError(
                f"Another writer changed {filter_subject.rsplit('.', 1)[0]} first "
                f"(expected last sequence {expected_last_sequence}); reload it and try again.",
                {"expectedLastSequence": expected_last_sequence},
            )
        raise EventStoreError(
            f"JetStream rejected the append: {error.get('description')} "
            f"(error {err_code}).",
            {"errCode": err_code},
        )

    async def _find_stored(
        self, encoded: list[EncodedEvent], filter_subject: str, after_sequence: int
    ) -> list[int] | None:
        expected_ids = [event.headers[HEADER_MSG_ID] for event in encoded]
        found: dict[str, int] = {}
        async for raw in self._read_raw(after_sequence + 1, filter_subject):
            msg_id = (raw.headers or {}).get(HEADER_MSG_ID)
            if msg_id in expected_ids:
                found[msg_id] = int(raw.headers["Nats-Sequence"])  # type: ignore[index]
        if len(found) != len(expected_ids):
            return None
        return [found[msg_id] for msg_id in expected_ids]

    # Reading

    async def load(
        self,
        aggregate_cls: type[TAggregate],
        aggregate_id: uuid.UUID | str,
        org_id: str | None = None,
        bot_id: str | None = None,
    ) -> TAggregate:
        """Rebuild an aggregate from its events; NotFoundError when it has none."""
        aggregate_type = AGGREGATE_TYPES[aggregate_cls]
        filter_subject = self.scheme.aggregate_filter(
            aggregate_type, str(aggregate_id), org_id, bot_id
        )
        aggregate: Any = None
        last_sequence = 0
        async for recorded in self.read(1, filter_subject):
            domain_event = self.codec.decode(recorded.headers, recorded.payload)
            aggregate = domain_event.mutate(aggregate)  # type: ignore[attr-defined]
            last_sequence = recorded.sequence
        if aggregate is None:
            raise NotFoundError(
                f"No {aggregate_type} with id {aggregate_id} exists.",
                {"aggregateId": str(aggregate_id)},
            )
        object.__setattr__(aggregate, LAST_SEQUENCE_ATTR, last_sequence)
        return aggregate  # type: ignore[no-any-return]

    async def read(
        self, from_sequence: int = 1, filter_subject: str | None = None
    ) -> AsyncIterator[RecordedEvent]:
        """Yield stored events from a sequence number up to the end of the stream as of now."""
        # aclosing ends the Direct Get subscription even when the caller stops early.
        pages = self._read_raw(from_sequence, filter_subject or self.scheme.all)
        async with contextlib.aclosing(pages):
            async for raw in pages:
                yield self.recorded(raw)

    async def replay(self, from_sequence: int, to_sequence: int) -> AsyncIterator[RecordedEvent]:
        """Yield every stored event from one sequence through another, for rebuilding views.

        An ordered push consumer with flow control streams a long range about twice as fast as
        paged Direct Get with nats-py 2.16, measured by benchmarks/bench_replay.py.
        """
        if from_sequence > to_sequence:
            return
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_message(msg: Msg) -> None:
            queue.put_nowait(msg)

        subscription = await self.nc.jetstream().subscribe(
            self.scheme.all,
            stream=self.stream,
            cb=on_message,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_sequence
            ),
        )
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), READ_TIMEOUT_S)
                except asyncio.TimeoutError as error:
                    raise EventStoreError(
                        f"Replay of stream {self.stream} stalled after sequence "
                        f"{from_sequence - 1}; check that nats-server is running."
                    ) from error
                recorded = self.recorded(msg)
                yield recorded
                from_sequence = recorded.sequence + 1
                if recorded.sequence >= to_sequence or _ack_fields(msg.reply)[2] == 0:
                    return
        finally:
            await subscription.unsubscribe()

    def recorded(self, msg: Msg) -> RecordedEvent:
        """Describe a stored message from a Direct Get or a JetStream consumer."""
        headers = dict(msg.headers or {})
        if "Nats-Sequence" in headers:
            subject = headers["Nats-Subject"]
            sequence = int(headers["Nats-Sequence"])
            time_ms = _timestamp_ms(headers["Nats-Time-Stamp"])
        else:
            subject = msg.subject
            sequence, time_ms, _ = _ack_fields(msg.reply)
        parts = self.scheme.parse(subject)
        return RecordedEvent(
            sequence=sequence,
            subject=subject,
            name=headers.get(HEADER_EVENT, parts["event"]),
            aggregate_type=parts["aggregateType"],
            aggregate_id=headers.get(HEADER_AGGREGATE_ID, parts["aggregateId"]),
            aggregate_version=int(headers.get("Botledger-Aggregate-Version", "0")),
            schema_version=int(headers.get("Botledger-Schema-Version", "1")),
            org_id=parts["orgId"],
            bot_id=parts.get("botId"),
            time_ms=time_ms,
            headers=headers,
            payload=msg.data,
        )

    def decode(self, recorded: RecordedEvent) -> DomainEventProtocol[Any]:
        return self.codec.decode(recorded.headers, recorded.payload)

    async def last_sequence(self) -> int:
        msg = await self.nc.request(
            f"$JS.API.STREAM.INFO.{self.stream}", b"", timeout=READ_TIMEOUT_S
        )
        info = orjson.loads(msg.data)
        if "error" in info:
            raise EventStoreError(f"Cannot read stream {self.stream}: {info['error']}.")
        return int(info["state"]["last_seq"])

    async def _read_raw(self, from_sequence: int, filter_subject: str) -> AsyncGenerator[Msg, None]:
        """Page through stored messages with batched Direct Get requests."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            sequence = max(1, from_sequence)
            # The server scans until a batch is full, so the first page requests one message
            # and reads from its Nats-Num-Pending header how many more match.
            page_size = 1
            while True:
                request = {"seq": sequence, "next_by_subj": filter_subject, "batch": page_size}
                await self.nc.publish(
                    f"$JS.API.DIRECT.GET.{self.stream}", orjson.dumps(request), reply=inbox
                )
                more = False
                while True:
                    try:
                        msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
                    except NatsTimeoutError as error:
                        raise EventStoreError(
                            f"Reading stream {self.stream} from sequence {sequence} timed out."
                        ) from error
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status == "404":
                        return
                    if status == "204":
                        pending = int(headers.get("Nats-Num-Pending", "0"))
                        more = pending > 0
                        page_size = max(1, min(pending, READ_PAGE_SIZE))
                        break
                    if status is not None:
                        raise EventStoreError(
                            f"Direct Get on stream {self.stream} failed with status {status}: "
                            f"{headers.get('Description')}."
                        )
                    sequence = int(headers["Nats-Sequence"]) + 1
                    yield msg
                if not more:
                    return
        finally:
            await sub.unsubscribe()


def _parse_ack(msg: Msg) -> dict[str, Any]:
    try:
        ack = orjson.loads(msg.data)
    except orjson.JSONDecodeError as error:
        raise EventStoreError(f"JetStream sent an unreadable ack: {msg.data[:200]!r}.") from error
    if not isinstance(ack, dict):
        raise EventStoreError(f"JetStream sent an unexpected ack: {ack!r}.")
    return ack


def _timestamp_ms(value: str) -> int:
    """Milliseconds of an RFC 3339 ``Nats-Time-Stamp``, truncated like _ack_timestamp_ms.

    Both paths use integer arithmetic so that a view built live and one built by replay hold
    the same millisecond for the same event.
    """
    head, _, rest = value.partition(".")
    seconds = int(datetime.fromisoformat(head.rstrip("Z") + "+00:00").timestamp())
    fraction = rest.rstrip("Z")
    return seconds * 1000 + int((fraction[:3] or "0").ljust(3, "0"))


def _ack_fields(reply: str) -> tuple[int, int, int]:
    """Stream sequence, time in milliseconds and pending count from a JetStream ack subject.

    The subject is ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``, or
    the newer form with domain and account hash after ``$JS.ACK`` and a random token at the end.
    Parsing it here costs a fraction of nats-py's Msg.metadata, which matters during replay.
    """
    tokens = reply.split(".")
    offset = 0 if len(tokens) == 9 else 2
    return (
        int(tokens[5 + offset]),
        int(tokens[7 + offset]) // 1_000_000,
        int(tokens[8 + offset]),
    )
