"""The projector: feeds the read store from the event stream.

Each read store has its own durable JetStream consumer, named after the store's id. On start the
consumer is recreated at the store's last applied sequence plus one, because the store, not the
consumer, records what has been applied: the rows and the sequence change in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError as JsNotFoundError

from events.errors import BotledgerError
from events.store import EventStore, RecordedEvent
from projections.handlers import apply_event
from projections.read_store import ReadStore

logger = logging.getLogger(__name__)

FETCH_BATCH = 500
FETCH_TIMEOUT_S = 1.0
REPLAY_TRANSACTION_EVENTS = 2000
# Consumers of read stores that are gone (a replaced replay store) vanish after this idle time.
CONSUMER_INACTIVE_THRESHOLD_S = 24 * 3600.0


def apply_batch(read_store: ReadStore, events: Iterable[RecordedEvent]) -> int:
    """Apply events in one transaction with the new last sequence; return that sequence."""
    last = read_store.last_sequence
    with read_store.transaction() as conn:
        for recorded in events:
            if recorded.sequence <= last:
                continue
            _apply_one(conn, recorded)
            last = recorded.sequence
        read_store.set_last_sequence(last)
    return last


def _apply_one(conn: sqlite3.Connection, recorded: RecordedEvent) -> None:
    # A savepoint per event keeps one undecodable event from undoing the rest of the batch.
    conn.execute("SAVEPOINT event")
    try:
        apply_event(conn, recorded)
    except (KeyError, TypeError, ValueError, sqlite3.Error, BotledgerError) as error:
        conn.execute("ROLLBACK TO SAVEPOINT event")
        logger.error(
            "Skipped event %s at sequence %d of %s %s: %r",
            recorded.name, recorded.sequence, recorded.aggregate_type, recorded.aggregate_id,
            error,
        )
    conn.execute("RELEASE SAVEPOINT event")


async def rebuild(
    event_store: EventStore,
    read_store: ReadStore,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Apply the whole stream from the store's next sequence; return how many events applied."""
    target = await event_store.last_sequence()
    applied = 0
    batch: list[RecordedEvent] = []
    async for recorded in event_store.replay(read_store.last_sequence + 1, target):
        batch.append(recorded)
        if len(batch) >= REPLAY_TRANSACTION_EVENTS:
            apply_batch(read_store, batch)
            applied += len(batch)
            batch = []
            if progress is not None:
                progress(recorded.sequence, target)
    if batch:
        apply_batch(read_store, batch)
        applied += len(batch)
    if progress is not None:
        progress(read_store.last_sequence, target)
    return applied


class Projector:
    """Keep one read store up to date with the stream, and let writers wait for it."""

    def __init__(self, nc: NATS, event_store: EventStore, read_store: ReadStore) -> None:
        self.nc = nc
        self.event_store = event_store
        self.read_store = read_store
        self.durable = f"projector-{read_store.store_id}"
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.listeners: list[Callable[[list[RecordedEvent]], None]] = []

    @property
    def last_sequence(self) -> int:
        return self.read_store.last_sequence

    async def start(self) -> None:
        # Catch up with a replay first: it streams a long backlog faster than the durable
        # consumer's fetch requests.
        applied = await rebuild(self.event_store, self.read_store)
        logger.info(
            "Projector %s caught up: %d events applied, at sequence %d",
            self.durable, applied, self.last_sequence,
        )
        self._task = asyncio.create_task(self._run(), name=self.durable)

    async def stop(self) -> None:
        # nats-py's fetch turns a cancellation into a timeout, so the loop also checks a flag.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for _, future in self._waiters:
            future.cancel()
        self._waiters.clear()
        logger.info("Projector %s stopped at sequence %d", self.durable, self.last_sequence)

    async def wait_for(self, sequence: int, timeout_s: float) -> bool:
        """Wait until the store has applied ``sequence``; False when the timeout ran out."""
        if self.last_sequence >= sequence:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((sequence, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
            return True
        except asyncio.TimeoutError:
            logger.warning(
                "Projector %s did not reach sequence %d within %.1f s (at %d)",
                self.durable, sequence, timeout_s, self.last_sequence,
            )
            return False
        finally:
            self._waiters = [(s, f) for s, f in self._waiters if f is not future]

    def _notify(self, last: int) -> None:
        for sequence, future in self._waiters:
            if sequence <= last and not future.done():
                future.set_result(None)

    async def _messages(self) -> AsyncIterator[list[Msg]]:
        js = self.nc.jetstream()
        try:
            await js.delete_consumer(self.event_store.stream, self.durable)
        except JsNotFoundError:
            pass
        config = ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.last_sequence + 1,
            ack_policy=AckPolicy.ALL,
            max_ack_pending=-1,
            inactive_threshold=CONSUMER_INACTIVE_THRESHOLD_S,
        )
        subscription = await js.pull_subscribe(
            self.event_store.scheme.all,
            durable=self.durable,
            stream=self.event_store.stream,
            config=config,
        )
        logger.info(
            "Projector %s consuming from sequence %d", self.durable, self.last_sequence + 1
        )
        try:
            while not self._stopping:
                try:
                    yield await subscription.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
                except asyncio.TimeoutError:  # nats-py raises both its own and asyncio's
                    continue
        finally:
            # A pull subscription left open keeps late replies queued and stalls drain().
            await _unsubscribe(subscription, self.durable)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                async for messages in self._messages():
                    if not messages:
                        continue
                    self._apply(messages)
                    await messages[-1].ack()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the projector must outlive any failure
                logger.exception("Projector %s failed; restarting in 1 s: %r", self.durable, error)
                await asyncio.sleep(1.0)

    def _apply(self, messages: list[Msg]) -> None:
        started = time.perf_counter()
        recorded = [self.event_store.recorded(msg) for msg in messages]
        last = apply_batch(self.read_store, recorded)
        self._notify(last)
        for listener in self.listeners:
            listener(recorded)
        logger.debug(
            "Projector %s applied %d events up to %d in %.1f ms",
            self.durable, len(recorded), last, (time.perf_counter() - started) * 1000,
        )



async def _unsubscribe(subscription: Any, name: str) -> None:
    try:
        await subscription.unsubscribe()
    except (nats.errors.Error, asyncio.TimeoutError) as error:
        logger.warning("Unsubscribing %s failed: %r", name, error)
