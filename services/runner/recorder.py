"""Turn what a running program does into events on its Execution aggregate.

The recorder is the runner's StepReporter. Every append goes through one lock and one retry
loop: when another writer changed the execution (a client asked to cancel it), the recorder
reloads the aggregate, notes the cancel request and applies its own command again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from events.errors import ConcurrencyError
from events.execution import Execution
from events.store import EventStore
from infra.secrets import mask_secrets
from services.runner.executor import mask_secrets as mask_value

logger = logging.getLogger(__name__)

APPEND_ATTEMPTS = 5
# Caps that keep one LogsAppended event far below JetStream's 1 MiB message limit.
MAX_LOG_MESSAGE_CHARS = 2000
MAX_LOG_LINES_PER_EVENT = 200
MAX_LOG_LINES_PER_EXECUTION = 5000

Command = Callable[[Execution], None]


def now_ms() -> int:
    return int(time.time() * 1000)


class ExecutionRecorder:
    """Append the events of one execution for its runner, with secrets masked."""

    def __init__(
        self,
        event_store: EventStore,
        execution: Execution,
        secrets: set[str],
        artifact_saver: Callable[[str, bytes, str], Any] | None = None,
    ) -> None:
        self.event_store = event_store
        self.execution = execution
        self.secrets = secrets
        self.artifact_saver = artifact_saver
        self.on_cancel_requested: Callable[[], None] | None = None
        self._lock = asyncio.Lock()
        self._log_buffer: list[dict[str, Any]] = []
        self._log_count = 0
        self._dropped_logs = 0
        self._artifact_count = 0
        self._step_started_at: dict[int, float] = {}

    @property
    def execution_id(self) -> str:
        return str(self.execution.id)

    async def commit(self, *commands: Command, with_logs: bool = False) -> None:
        """Apply commands to the aggregate and append their events.

        Logs go out on their own (``with_logs``) from the heartbeat and before the terminal
        event: adding them to every step event would make each step a two-event atomic batch,
        which costs nats-server about ten times a single append (benchmarks/bench_runner.py).
        """
        async with self._lock:
            for attempt in range(1, APPEND_ATTEMPTS + 1):
                lines = self._take_logs() if with_logs else []
                if lines:
                    self.execution.append_logs(lines)
                for command in commands:
                    command(self.execution)
                try:
                    await self.event_store.save(self.execution)
                    return
                except ConcurrencyError:
                    logger.info(
                        "Execution %s changed by another writer; reloading (attempt %d)",
                        self.execution_id, attempt,
                    )
                    self._log_buffer[:0] = lines
                    await self._reload()
            raise ConcurrencyError(
                f"Execution {self.execution_id} kept changing under its runner; gave up after "
                f"{APPEND_ATTEMPTS} attempts."
            )

    async def _reload(self) -> None:
        self.execution = await self.event_store.load(
            Execution, self.execution.id, self.execution.org_id, self.execution.bot_id
        )
        if self.execution.cancel_requested and self.on_cancel_requested is not None:
            self.on_cancel_requested()

    async def flush_logs(self) -> None:
        """Append every buffered log line, one event per MAX_LOG_LINES_PER_EVENT lines."""
        while self._log_buffer and not self.execution.is_finished:
            await self.commit(with_logs=True)

    def _take_logs(self) -> list[dict[str, Any]]:
        lines = self._log_buffer[:MAX_LOG_LINES_PER_EVENT]
        del self._log_buffer[:MAX_LOG_LINES_PER_EVENT]
        return lines

    # StepReporter

    async def step_started(self, index: int, step: dict[str, Any]) -> None:
        action, label = step["action"], step.get("label")
        await self.commit(lambda e: e.start_step(index, action, label))
        self._step_started_at[index] = time.monotonic()

    def close_open_steps(self) -> list[Command]:
        """Commands that fail every step still running, for an execution that ends early.

        A cancelled or timed-out program stops inside a step without reporting it, and the
        step's view would otherwise stay running forever.
        """
        commands: list[Command] = []
        for index, step in self.execution.steps.items():
            if step.get("status") != "running":
                continue
            started = self._step_started_at.get(index, time.monotonic())
            duration_ms = int((time.monotonic() - started) * 1000)
            commands.append(functools.partial(_fail_interrupted_step, index, duration_ms))
        return commands

    async def step_completed(self, index: int, data: object, duration_ms: int) -> None:
        masked = mask_value(data, self.secrets)
        await self.commit(lambda e: e.complete_step(index, masked, duration_ms))

    async def step_failed(self, index: int, error: str, duration_ms: int) -> None:
        message = mask_secrets(error, self.secrets)
        await self.commit(lambda e: e.fail_step(index, message, duration_ms))

    def log(self, source: str, level: str, message: str) -> None:
        if self._log_count >= MAX_LOG_LINES_PER_EXECUTION:
            self._dropped_logs += 1
            return
        self._log_count += 1
        text = mask_secrets(message, self.secrets)
        if len(text) > MAX_LOG_MESSAGE_CHARS:
            text = text[:MAX_LOG_MESSAGE_CHARS] + " [truncated]"
        self._log_buffer.append(
            {"time": now_ms(), "source": source, "level": level, "message": text}
        )

    def note_dropped_logs(self) -> None:
        if self._dropped_logs:
            self._log_count -= 1  # room for the note itself
            self.log(
                "system", "warning",
                f"{self._dropped_logs} log lines were dropped: an execution keeps at most "
                f"{MAX_LOG_LINES_PER_EXECUTION}.",
            )

    async def save_artifact(self, name: str, data: bytes, content_type: str) -> str:
        if self.artifact_saver is None:
            raise RuntimeError("No object store is configured for artifacts.")
        self._artifact_count += 1
        key = f"{self.execution.org_id}/{self.execution_id}/{self._artifact_count:03d}-{name}"
        await self.artifact_saver(key, data, content_type)
        return key



def _fail_interrupted_step(index: int, duration_ms: int, execution: Execution) -> None:
    execution.fail_step(index, "The execution ended before this step finished.", duration_ms)
