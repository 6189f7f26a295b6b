"""The runner service: takes requested executions from JetStream and runs them in Chromium.

All runner processes share one durable pull consumer of ``ExecutionRequested`` events, so each
request goes to one runner at a time. Appending ``ExecutionStarted`` with optimistic concurrency
makes exactly one runner the owner. While it works, the runner marks the message in progress.
When a runner dies, JetStream redelivers the request after the ack wait. The runner that gets
it fails the execution with a clear reason instead of running it twice, because a bot may have
done something (submitted a form) that must not happen again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pyppeteer.errors import PyppeteerError

from events.errors import BotledgerError, ConcurrencyError, NotFoundError
from events.execution import PENDING, Execution
from events.store import EventStore
from events.subjects import SubjectScheme
from infra.chromium import BrowserSupervisor
from infra.nats import ensure_stream, nats_connection
from infra.object_store import ArtifactStore
from infra.processes import become_subreaper
from infra.secrets import SecretBox
from infra.settings import Settings
from services.runner.capabilities import apply_capabilities
from services.runner.executor import ProgramRunner, StepError
from services.runner.recorder import Command, ExecutionRecorder

logger = logging.getLogger(__name__)

CONSUMER_NAME = "runners"
FETCH_TIMEOUT_S = 1.0
EVIDENCE_TIMEOUT_S = 5.0
HEARTBEAT_INTERVAL_S = 1.0


class _Job:
    """One execution in progress on this runner."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        self.task: asyncio.Task[dict[str, Any]] | None = None
        self.cancel_reason: str | None = None
        # A shutdown ends the execution as failed, a client's request as cancelled.
        self.shutdown = False

    def cancel(self, reason: str, shutdown: bool = False) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.shutdown = shutdown
            if self.task is not None:
                self.task.cancel()


class Runner:
    """Run requested executions, at most ``settings.runner_concurrency`` at once."""

    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        event_store: EventStore,
        browser: BrowserSupervisor,
        secret_box: SecretBox,
        artifacts: Any | None,
        runner_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.event_store = event_store
        self.browser = browser
        self.secret_box = secret_box
        self.artifacts = artifacts
        self.runner_id = runner_id or f"runner-{uuid.uuid4().hex[:8]}"
        self.program_runner = ProgramRunner()
        self.jobs: dict[str, _Job] = {}
        self._slots = asyncio.Semaphore(settings.runner_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._cancel_sub: Subscription | None = None
        self._stopping = False

    async def start(self) -> None:
        scheme = self.event_store.scheme
        js = self.nc.jetstream()
        config = ConsumerConfig(
            durable_name=CONSUMER_NAME,
            filter_subject=scheme.executions(event_name="ExecutionRequested"),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.runner_ack_wait_s,
            max_deliver=self.settings.runner_max_deliveries,
            max_ack_pending=-1,
        )
        await js.add_consumer(self.event_store.stream, config)
        subscription = await js.pull_subscribe_bind(CONSUMER_NAME, self.event_store.stream)
        # A JetStream consumer, not a core subscription: core subscribers also see appends
        # that JetStream then rejects, and a rejected cancel request must not stop a job.
        self._cancel_sub = await js.subscribe(
            scheme.executions(event_name="ExecutionCancelRequested"),
            stream=self.event_store.stream,
            cb=self._on_cancel_request,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
        )
        await self.browser.start()
        self._loop_task = asyncio.create_task(self._fetch_loop(subscription), name=self.runner_id)
        logger.info(
            "Runner %s started: concurrency %d, ack wait %.0f s",
            self.runner_id, self.settings.runner_concurrency, self.settings.runner_ack_wait_s,
        )

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking work, give running executions ``grace_s`` to end, then end them."""
        self._stopping = True
        if self._loop_task is not None:
            await _cancel_and_wait(self._loop_task)
        if self._cancel_sub is not None:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await self._cancel_sub.unsubscribe()
        if self._tasks:
            _, running = await asyncio.wait(self._tasks, timeout=grace_s)
            for job in list(self.jobs.values()):
                job.cancel("The runner was shut down during the execution.", shutdown=True)
            if running:
                await asyncio.wait(running, timeout=EVIDENCE_TIMEOUT_S + 5)
        await self.browser.stop()
        logger.info("Runner %s stopped", self.runner_id)

    # Intake

    async def _fetch_loop(self, subscription: Any) -> None:
        try:
            await self._fetch_until_stopped(subscription)
        finally:
            # A pull subscription left open keeps late replies queued and stalls drain().
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await subscription.unsubscribe()

    async def _fetch_until_stopped(self, subscription: Any) -> None:
        while not self._stopping:
            await self._slots.acquire()
            try:
                messages = await subscription.fetch(1, timeout=FETCH_TIMEOUT_S)
            except asyncio.TimeoutError:  # nats-py raises both its own and asyncio's
                self._slots.release()
                continue
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except Exception as error:  # noqa: BLE001 - the intake must outlive NATS hiccups
                self._slots.release()
                logger.warning("Runner %s failed to fetch work: %r", self.runner_id, error)
                await asyncio.sleep(1.0)
                continue
            if not messages:
                self._slots.release()
                continue
            task = asyncio.create_task(self._handle(messages[0]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg) -> None:
        try:
            await self._handle_request(msg)
        except Exception:  # noqa: BLE001 - one bad request must not stop the runner
            logger.exception("Runner %s failed to handle message %s", self.runner_id, msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
        finally:
            self._slots.release()

    async def _handle_request(self, msg: Msg) -> None:
        recorded = self.event_store.recorded(msg)
        delivery = msg.metadata.num_delivered
        try:
            execution = await self.event_store.load(
                Execution, recorded.aggregate_id, recorded.org_id, recorded.bot_id
            )
        except NotFoundError:
            logger.error("Execution %s of a request is missing; dropping", recorded.aggregate_id)
            await msg.term()
            return

        if execution.is_finished:
            logger.info(
                "Execution %s already ended as %s; acknowledging", execution.id, execution.status
            )
            await msg.ack()
            return
        if execution.status != PENDING:
            await self._fail_abandoned(execution, delivery)
            await msg.ack()
            return

        attempt = delivery
        try:
            execution.start(self.runner_id, attempt)
            await self.event_store.save(execution)
        except ConcurrencyError:
            logger.info(
                "Execution %s was changed or taken by another runner first", execution.id
            )
            await msg.ack()
            return
        await self._run_with_heartbeat(msg, execution)
        await msg.ack()

    async def _fail_abandoned(self, execution: Execution, delivery: int) -> None:
        reason = (
            f"Runner {execution.runner_id} stopped responding while it ran this execution; "
            "it was not retried because a bot's steps may not be safe to repeat."
        )
        logger.warning(
            "Execution %s of bot %s was abandoned by runner %s (delivery %d); failing it",
            execution.id, execution.bot_id, execution.runner_id, delivery,
        )
        recorder = ExecutionRecorder(self.event_store, execution, set())
        recorder.log("system", "error", reason)
        try:
            await recorder.flush_logs()
            await recorder.commit(lambda e: e.fail(reason, 0))
        except BotledgerError as error:
            logger.info("Execution %s ended meanwhile: %r", execution.id, error)

    async def _run_with_heartbeat(self, msg: Msg, execution: Execution) -> None:
        secrets = self._decrypt_secrets(execution)
        recorder = ExecutionRecorder(
            self.event_store, execution, set(secrets.values()), self._save_artifact
        )
        heartbeat = asyncio.create_task(self._heartbeat(msg, recorder))
        try:
            await self._run(execution, recorder, secrets)
        finally:
            await _cancel_and_wait(heartbeat)

    async def _heartbeat(self, msg: Msg, recorder: ExecutionRecorder) -> None:
        """Keep the request message alive and flush logs while the execution runs."""
        in_progress_every_s = max(1.0, self.settings.runner_ack_wait_s / 3)
        last_in_progress = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            try:
                if time.monotonic() - last_in_progress >= in_progress_every_s:
                    await msg.in_progress()
                    last_in_progress = time.monotonic()
                await recorder.flush_logs()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a missed beat is retried next second
                logger.warning(
                    "Heartbeat of execution %s failed: %r", recorder.execution_id, error
                )

    def _decrypt_secrets(self, execution: Execution) -> dict[str, Any]:
        if not execution.encrypted_secrets:
            return {}
        values = self.secret_box.decrypt(execution.encrypted_secrets)
        return {name: value for name, value in values.items() if isinstance(value, str)}

    async def _save_artifact(self, key: str, data: bytes, content_type: str) -> None:
        if self.artifacts is None:
            raise BotledgerError("No object store is configured for artifacts.")
        await self.artifacts.put_bytes(key, data, content_type)

    # Running one execution

    async def _run(
        self, execution: Execution, recorder: ExecutionRecorder, secrets: dict[str, Any]
    ) -> None:
        execution_id = str(execution.id)
        job = _Job(execution_id)
        self.jobs[execution_id] = job
        recorder.on_cancel_requested = lambda: job.cancel("Cancelled at the request of a client.")
        started = time.monotonic()
        logger.info(
            "Execution %s of bot %s started on %s (attempt %d)",
            execution_id, execution.bot_id, self.runner_id, execution.attempt,
        )
        recorder.log("system", "info", f"Execution started on {self.runner_id}.")
        holder: dict[str, Any] = {}
        try:
            outcome = await self._execute(execution, recorder, secrets, job, started, holder)
        finally:
            self.jobs.pop(execution_id, None)
            # The context closes before the terminal event, so a reader that sees the execution
            # finished also sees its browser context closed.
            if "context" in holder:
                await self.browser.close_context(holder["context"])
        recorder.note_dropped_logs()
        await recorder.flush_logs()
        await recorder.commit(*recorder.close_open_steps(), outcome)

    async def _execute(
        self,
        execution: Execution,
        recorder: ExecutionRecorder,
        secrets: dict[str, Any],
        job: _Job,
        started: float,
        holder: dict[str, Any],
    ) -> Command:
        """Run the program and return the command that records how it ended."""
        program = execution.program
        capabilities = program.get("capabilities") or {}
        timeout_s = float(capabilities.get("timeout") or self.settings.default_execution_timeout_s)
        page = None
        try:
            if execution.cancel_requested:
                job.cancel("Cancelled at the request of a client.")
                raise asyncio.CancelledError
            holder["context"] = await self.browser.new_context(self._proxy_for(capabilities))
            page = await holder["context"].newPage()
            await apply_capabilities(page, capabilities)
            params = {**execution.params, **secrets}
            bot = {"targetUrl": program.get("targetUrl"), "name": program.get("botName")}
            job.task = asyncio.create_task(
                self.program_runner.run(
                    page, program.get("steps") or [], params, bot, recorder,
                    set(secrets.values()), execution_id=str(execution.id),
                )
            )
            if job.cancel_reason is not None:
                job.task.cancel()
            extracted = await asyncio.wait_for(asyncio.shield(job.task), timeout_s)
            duration_ms = _elapsed_ms(started)
            recorder.log("system", "info", f"Execution completed in {duration_ms} ms.")
            return lambda e: e.complete(extracted, duration_ms)
        except asyncio.TimeoutError:
            if job.task is not None:
                await _cancel_and_wait(job.task)
            return await self._failure(
                recorder, page, started, timed_out=True,
                reason=f"The execution exceeded its time limit of {timeout_s:g} s.",
            )
        except asyncio.CancelledError:
            if job.cancel_reason is None:
                raise
            return await self._cancellation(recorder, job, page, started)
        except StepError as error:
            return await self._failure(
                recorder, page, started, timed_out=False, reason=str(error),
                failed_step=error.index,
            )
        except (BotledgerError, PyppeteerError, OSError) as error:
            logger.warning("Execution %s failed outside a step: %r", execution.id, error)
            return await self._failure(
                recorder, page, started, timed_out=False,
                reason=f"The runner could not run the execution: {error}",
            )

    async def _cancellation(
        self, recorder: ExecutionRecorder, job: _Job, page: Any, started: float
    ) -> Command:
        reason = job.cancel_reason or "Cancelled."
        if job.task is not None and not job.task.done():
            await _cancel_and_wait(job.task)
        if job.shutdown:
            return await self._failure(recorder, page, started, timed_out=False, reason=reason)
        logger.info("Execution %s cancelled: %s", recorder.execution_id, reason)
        recorder.log("system", "info", reason)
        return lambda e: e.cancel(reason)

    async def _failure(
        self,
        recorder: ExecutionRecorder,
        page: Any,
        started: float,
        *,
        timed_out: bool,
        reason: str,
        failed_step: int | None = None,
    ) -> Command:
        """Capture the failure evidence and return the command that records the failure."""
        screenshot_key, dom_key = await self._capture_evidence(recorder, page)
        duration_ms = _elapsed_ms(started)
        logger.info(
            "Execution %s of bot %s %s: %s", recorder.execution_id,
            recorder.execution.bot_id, "timed out" if timed_out else "failed", reason,
        )
        recorder.log("system", "error", reason)
        if timed_out:
            return lambda e: e.time_out(reason, duration_ms, failed_step, screenshot_key, dom_key)
        return lambda e: e.fail(reason, duration_ms, failed_step, screenshot_key, dom_key)

    async def _capture_evidence(
        self, recorder: ExecutionRecorder, page: Any
    ) -> tuple[str | None, str | None]:
        """Store a screenshot and the DOM of the page; a failure here never changes the outcome."""
        if page is None or self.artifacts is None:
            return None, None
        screenshot_key = dom_key = None
        try:
            png = await asyncio.wait_for(page.screenshot({"type": "png"}), EVIDENCE_TIMEOUT_S)
            screenshot_key = await recorder.save_artifact("failure.png", png, "image/png")
        except asyncio.TimeoutError:
            # A page too busy to paint is too busy to serialize its DOM: skip both.
            logger.warning(
                "Page of execution %s did not respond; no evidence captured",
                recorder.execution_id,
            )
            recorder.log("system", "warning", "The page did not respond; no screenshot was taken.")
            return None, None
        except (PyppeteerError, BotledgerError, OSError) as error:
            logger.warning(
                "Failure screenshot of execution %s not captured: %r", recorder.execution_id, error
            )
            recorder.log("system", "warning", f"The failure screenshot could not be taken: {error!r}")
        try:
            html = await asyncio.wait_for(page.content(), EVIDENCE_TIMEOUT_S)
            dom_key = await recorder.save_artifact(
                "failure.html", html.encode(), "text/html; charset=utf-8"
            )
        except (asyncio.TimeoutError, PyppeteerError, BotledgerError, OSError) as error:
            logger.warning(
                "DOM snapshot of execution %s not captured: %r", recorder.execution_id, error
            )
            recorder.log("system", "warning", f"The DOM snapshot could not be taken: {error!r}")
        return screenshot_key, dom_key

    def _proxy_for(self, capabilities: dict[str, Any]) -> str | None:
        if not capabilities.get("proxy"):
            return None
        if not self.settings.proxy_url:
            raise BotledgerError(
                "The bot's manifest asks for a proxy, but no proxy is configured: set "
                "BOTLEDGER_PROXY_URL on the runner, or set capabilities.proxy to false."
            )
        return self.settings.proxy_url

    # Cancellation

    async def _on_cancel_request(self, msg: Msg) -> None:
        parts = self.event_store.scheme.parse(msg.subject)
        job = self.jobs.get(parts["aggregateId"])
        if job is not None:
            logger.info("Cancel requested for execution %s on %s", job.execution_id, self.runner_id)
            job.cancel("Cancelled at the request of a client.")


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


@contextlib.asynccontextmanager
async def open_runner(
    settings: Settings, nats_url: str, s3_endpoint: str | None
) -> AsyncIterator[Runner]:
    """Connect a runner to NATS and the object store, run it, and stop it on exit."""
    become_subreaper()
    artifacts = ArtifactStore.from_settings(settings, s3_endpoint) if s3_endpoint else None
    async with nats_connection(nats_url, "botledger-runner") as nc:
        await ensure_stream(nc, settings)
        if artifacts is not None:
            await artifacts.ensure_bucket()
        event_store = EventStore(nc, settings.stream_name, SubjectScheme(settings.subject_prefix))
        browser = BrowserSupervisor(settings.chromium_path)
        runner = Runner(
            settings, nc, event_store, browser, SecretBox.from_settings(settings), artifacts
        )
        await runner.start()
        try:
            yield runner
        finally:
            await runner.stop()
            if artifacts is not None:
                artifacts.close()
