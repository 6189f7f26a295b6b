"""The Execution aggregate: one run of a bot, from request to a terminal state.

Commands (``start``, ``complete_step``, ``fail`` ...) check the current state first and raise
InvalidTransitionError when the command does not apply, so a finished execution never changes.
Event methods (prefixed with an underscore) only apply state, because they also run on replay.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from events.errors import InvalidTransitionError

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})


class Execution(Aggregate):
    """One execution of a bot's step program, with everything it produced."""

    class ExecutionRequested(Aggregate.Created):
        """An execution was asked for. Schema version 2 added ``requested_by``."""

        class_version = 2
        org_id: str
        bot_id: str
        trigger: str
        params: dict[str, Any]
        encrypted_secrets: str | None
        idempotency_key: str | None
        program: dict[str, Any]
        requested_by: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            # Version 1 did not record who asked for the execution.
            state["requested_by"] = None

    @event(ExecutionRequested)
    def __init__(
        self,
        id: UUID,
        org_id: str,
        bot_id: str,
        trigger: str,
        params: dict[str, Any],
        encrypted_secrets: str | None,
        idempotency_key: str | None,
        program: dict[str, Any],
        requested_by: str | None = None,
    ) -> None:
        # `program` is a snapshot of the bot (target URL, steps, script version, capabilities)
        # at request time, so the runner and any audit see exactly what was asked for.
        self.org_id = org_id
        self.bot_id = bot_id
        self.trigger = trigger
        self.params = params
        self.encrypted_secrets = encrypted_secrets
        self.idempotency_key = idempotency_key
        self.program = program
        self.requested_by = requested_by
        self.status = PENDING
        self.runner_id: str | None = None
        self.attempt = 0
        self.cancel_requested = False
        self.steps: dict[int, dict[str, Any]] = {}
        self.extracted: dict[str, Any] | None = None
        self.failure: dict[str, Any] | None = None

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def check_not_finished(self, command: str) -> None:
        if self.is_finished:
            raise InvalidTransitionError(
                f"Cannot {command} execution {self.id}: it already ended as {self.status}.",
                {"executionId": str(self.id), "status": self.status},
            )

    def check_running(self, command: str) -> None:
        self.check_not_finished(command)
        if self.status != RUNNING:
            raise InvalidTransitionError(
                f"Cannot {command} execution {self.id}: it is {self.status}, not running.",
                {"executionId": str(self.id), "status": self.status},
            )

    # Commands

    def start(self, runner_id: str, attempt: int) -> None:
        self.check_not_finished("start")
        if self.status != PENDING:
            raise InvalidTransitionError(
                f"Cannot start execution {self.id}: runner {self.runner_id} already started it.",
                {"executionId": str(self.id), "status": self.status},
            )
        self._started(runner_id=runner_id, attempt=attempt)

    def start_step(self, index: int, action: str, label: str | None) -> None:
        self.check_running("start a step of")
        self._step_started(index=index, action=action, label=label)

    def complete_step(self, index: int, data: Any, duration_ms: int) -> None:
        self.check_running("complete a step of")
        self._step_completed(index=index, data=data, duration_ms=duration_ms)

    def fail_step(self, index: int, error: str, duration_ms: int) -> None:
        self.check_running("fail a step of")
        self._step_failed(index=index, error=error, duration_ms=duration_ms)

    def append_logs(self, lines: list[dict[str, Any]]) -> None:
        # Logs may still arrive while an execution is being finished, never after.
        self.check_not_finished("append logs to")
        self._logs_appended(lines=lines)

    def complete(self, extracted: dict[str, Any], duration_ms: int) -> None:
        self.check_running("complete")
        self._completed(extracted=extracted, duration_ms=duration_ms)

    def fail(
        self,
        reason: str,
        duration_ms: int,
        failed_step: int | None = None,
        screenshot_key: str | None = None,
        dom_key: str | None = None,
    ) -> None:
        # A pending execution can fail too: its runner may die before it starts a step.
        self.check_not_finished("fail")
        self._failed(
            reason=reason,
            duration_ms=duration_ms,
            failed_step=failed_step,
            screenshot_key=screenshot_key,
            dom_key=dom_key,
        )

    def time_out(
        self,
        reason: str,
        duration_ms: int,
        failed_step: int | None = None,
        screenshot_key: str | None = None,
        dom_key: str | None = None,
    ) -> None:
        self.check_running("time out")
        self._timed_out(
            reason=reason,
            duration_ms=duration_ms,
            failed_step=failed_step,
            screenshot_key=screenshot_key,
            dom_key=dom_key,
        )

    def request_cancel(self, requested_by: str) -> None:
        self.check_not_finished("cancel")
        if self.cancel_requested:
            return
        self._cancel_requested(requested_by=requested_by)

    def cancel(self, reason: str) -> None:
        self.check_not_finished("cancel")
        self._cancelled(reason=reason)

    # Events

    @event("ExecutionStarted")
    def _started(self, runner_id: str, attempt: int) -> None:
        self.status = RUNNING
        self.runner_id = runner_id
        self.attempt = attempt

    @event("StepStarted")
    def _step_started(self, index: int, action: str, label: str | None) -> None:
        self.steps[index] = {"index": index, "action": action, "label": label, "status": RUNNING}

    @event("StepCompleted")
    def _step_completed(self, index: int, data: Any, duration_ms: int) -> None:
        step = self.steps.setdefault(index, {"index": index})
        step.update(status=COMPLETED, data=data, durationMs=duration_ms)

    @event("StepFailed")
    def _step_failed(self, index: int, error: str, duration_ms: int) -> None:
        step = self.steps.setdefault(index, {"index": index})
        step.update(status=FAILED, error=error, durationMs=duration_ms)

    @event("LogsAppended")
    def _logs_appended(self, lines: list[dict[str, Any]]) -> None:
        pass

    @event("ExecutionCompleted")
    def _completed(self, extracted: dict[str, Any], duration_ms: int) -> None:
        self.status = COMPLETED
        self.extracted = extracted

    @event("ExecutionFailed")
    def _failed(
        self,
        reason: str,
        duration_ms: int,
        failed_step: int | None,
        screenshot_key: str | None,
        dom_key: str | None,
    ) -> None:
        self.status = FAILED
        self.failure = {"reason": reason, "failedStep": failed_step}

    @event("ExecutionTimedOut")
    def _timed_out(
        self,
        reason: str,
        duration_ms: int,
        failed_step: int | None,
        screenshot_key: str | None,
        dom_key: str | None,
    ) -> None:
        self.status = TIMED_OUT
        self.failure = {"reason": reason, "failedStep": failed_step}

    @event("ExecutionCancelRequested")
    def _cancel_requested(self, requested_by: str) -> None:
        self.cancel_requested = True

    @event("ExecutionCancelled")
    def _cancelled(self, reason: str) -> None:
        self.status = CANCELLED
