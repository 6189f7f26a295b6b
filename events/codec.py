"""Mapping between domain events and the bytes and headers stored on JetStream.

The payload of a message is the event's state encoded by eventsourcing's Mapper with an orjson
transcoder. Everything a subscriber filters or routes on travels in the subject and in headers:

- ``Nats-Msg-Id``: unique id of the stored event, so JetStream drops a retried publish.
- ``Botledger-Event``: the public event name, for example ``ExecutionFailed``.
- ``Botledger-Schema-Version``: the event's schema version; older versions are upcast on load.
- ``Botledger-Aggregate-Id`` and ``Botledger-Aggregate-Version``.

Upcasters follow eventsourcing's convention: an event class with ``class_version = N`` defines
static methods ``upcast_v1_v2`` ... ``upcast_vN-1_vN`` that rewrite an older state dict in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import get_topic

from events.bot import ApiKey, Bot
from events.errors import BotledgerError
from events.execution import Execution

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_EVENT = "Botledger-Event"
HEADER_SCHEMA_VERSION = "Botledger-Schema-Version"
HEADER_AGGREGATE_ID = "Botledger-Aggregate-Id"
HEADER_AGGREGATE_VERSION = "Botledger-Aggregate-Version"

# Subject token of each aggregate type.
AGGREGATE_TYPES: dict[type[Aggregate], str] = {
    Execution: "execution",
    Bot: "bot",
    ApiKey: "apikey",
}


class CodecError(BotledgerError):
    code = "undecodable_event"


class OrjsonTranscoder(Transcoder):
    """Encode event state with orjson; ``timestamp`` values come back as aware datetimes.

    Event fields other than the originator's timestamp are plain JSON values by design, so no
    per-type transcodings are needed and the stored payload stays readable by any subscriber.
    """

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def decode(self, data: bytes) -> Any:
        state = orjson.loads(data)
        if isinstance(state, dict) and isinstance(state.get("timestamp"), str):
            state["timestamp"] = datetime.fromisoformat(state["timestamp"])
        return state


def _public_event_classes() -> dict[str, tuple[type[Aggregate], type[Any]]]:
    registry: dict[str, tuple[type[Aggregate], type[Any]]] = {}
    for aggregate_cls in AGGREGATE_TYPES:
        for value in vars(aggregate_cls).values():
            # eventsourcing also attaches its generic Created and Event bases to each class.
            is_event = isinstance(value, type) and issubclass(value, Aggregate.Event)
            if is_event and value.__name__ not in ("Created", "Event"):
                registry[value.__name__] = (aggregate_cls, value)
    return registry


EVENT_CLASSES = _public_event_classes()
PUBLIC_EVENT_NAMES = frozenset(EVENT_CLASSES)


@dataclasses.dataclass(frozen=True)
class EncodedEvent:
    name: str
    aggregate_id: str
    aggregate_version: int
    payload: bytes
    headers: dict[str, str]


class EventCodec:
    """Encode domain events for publishing and decode stored messages back into events."""

    def __init__(self) -> None:
        self.mapper: Mapper[UUID] = Mapper(transcoder=OrjsonTranscoder())

    def encode(self, domain_event: DomainEventProtocol[Any]) -> EncodedEvent:
        name = type(domain_event).__name__
        if name not in EVENT_CLASSES:
            raise CodecError(f"Event class {type(domain_event).__qualname__} is not public.")
        stored = self.mapper.to_stored_event(domain_event)
        schema_version = getattr(type(domain_event), "class_version", 1)

        # The content hash makes the id unique per event yet equal for a retry of the same
        # event object, so JetStream's duplicate window drops only true retries.
        digest = hashlib.sha256(stored.state).hexdigest()[:16]
        msg_id = f"{stored.originator_id}:{stored.originator_version}:{digest}"
        headers = {
            HEADER_MSG_ID: msg_id,
            HEADER_EVENT: name,
            HEADER_SCHEMA_VERSION: str(schema_version),
            HEADER_AGGREGATE_ID: str(stored.originator_id),
            HEADER_AGGREGATE_VERSION: str(stored.originator_version),
        }
        return EncodedEvent(
            name=name,
            aggregate_id=str(stored.originator_id),
            aggregate_version=stored.originator_version,
            payload=stored.state,
            headers=headers,
        )

    def decode(self, headers: dict[str, str], payload: bytes) -> DomainEventProtocol[Any]:
        try:
            name = headers[HEADER_EVENT]
            _, event_cls = EVENT_CLASSES[name]
            stored = StoredEvent(
                originator_id=UUID(headers[HEADER_AGGREGATE_ID]),
                originator_version=int(headers[HEADER_AGGREGATE_VERSION]),
                topic=get_topic(event_cls),
                state=payload,
            )
            return self.mapper.to_domain_event(stored)
        except (KeyError, ValueError) as error:
            raise CodecError(
                f"Cannot decode stored event with headers {headers}: {error!r}."
            ) from error


def decode_payload(payload: bytes, name: str | None = None) -> dict[str, Any]:
    """Return an event's payload as a plain dict, upcast to the current schema when named.

    Projections read payloads this way rather than as domain events, so they get the same
    upcasting as EventCodec.decode.
    """
    state = orjson.loads(payload)
    if not isinstance(state, dict):
        raise CodecError("An event payload must be a JSON object.")
    if name is not None and name in EVENT_CLASSES:
        upcast_state(EVENT_CLASSES[name][1], state)
    return state


def upcast_state(event_cls: type[Any], state: dict[str, Any]) -> None:
    """Rewrite an older event state in place to the class's current schema version."""
    current = getattr(event_cls, "class_version", 1)
    version = state.pop("class_version", 1)
    while version < current:
        getattr(event_cls, f"upcast_v{version}_v{version + 1}")(state)
        version += 1
    if current > 1:
        state["class_version"] = current
