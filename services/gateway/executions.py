"""Execution routes: trigger, list, view, cancel, and read steps, extract, failure and logs."""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import uuid
from typing import Any, Protocol

from aiohttp import web

from events.bot import Bot
from events.errors import (
    BotledgerError,
    ConcurrencyError,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from events.execution import (
    FAILED,
    PENDING,
    TERMINAL_STATUSES,
    TIMED_OUT,
    Execution,
)
from events.store import AppendResult, last_sequence_of
from infra.secrets import MASK
from projections.read_store import loads
from services.gateway.bots import bot_row, check_live, timestamp_ms
from services.gateway.context import CONTEXT, GatewayContext, principal_of
from services.gateway.errors import ServiceUnavailableError
from services.gateway.http import (
    api_url,
    created_response,
    json_response,
    list_response,
    page_of,
    parse_page,
    path_uuid,
    raise_problems,
    read_json_object,
    unknown_field_problems,
)
from services.gateway.openapi import Answer, Operation
from services.gateway.writes import update_aggregate, wait_for_projection
from services.runner.program import check_params, referenced_params

logger = logging.getLogger(__name__)

# Execution ids of requests with an Idempotency-Key are uuid5(IDEMPOTENCY_NAMESPACE,
# "<org>:<bot>:<key>"), so a retry addresses the aggregate the first request created.
IDEMPOTENCY_NAMESPACE = uuid.UUID("78ec292f-e5a0-41ad-875b-c4661ae14547")
IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
API_TRIGGER = "api"
FAILURE_STATUSES = frozenset({FAILED, TIMED_OUT})


class ArtifactReader(Protocol):
    """The read interface of the artifact object store that the gateway uses."""

    async def get_bytes(self, key: str) -> tuple[bytes, str]:
        """Return an object's bytes and content type; raise NotFoundError when it is missing."""
        ...


# Views


def execution_view(row: sqlite3.Row) -> dict[str, Any]:
    status = row["status"]
    duration = row["duration_ms"]
    if duration is None and row["started_at"] is not None and status not in TERMINAL_STATUSES:
        duration = max(0, int(time.time() * 1000) - row["started_at"])
    return {
        "id": row["id"],
        "botId": row["bot_id"],
        "status": status,
        "trigger": row["trigger"],
        "params": loads(row["params"]),
        "createdAt": row["created_at"],
        "startedAt": row["started_at"],
        "completedAt": row["completed_at"],
        "duration": duration,
        "error": row["failure_reason"] if status in FAILURE_STATUSES else None,
        "cancelRequested": bool(row["cancel_requested"]),
        "scriptVersion": row["script_version"],
    }


def execution_view_of_aggregate(execution: Execution) -> dict[str, Any]:
    """Build the view from the aggregate, for when the read store lags behind a write.

    The aggregate has no start or end times, so those stay null.
    """
    failure = execution.failure or {}
    return {
        "id": str(execution.id),
        "botId": execution.bot_id,
        "status": execution.status,
        "trigger": execution.trigger,
        "params": execution.params,
        "createdAt": timestamp_ms(execution.created_on),
        "startedAt": None,
        "completedAt": None,
        "duration": None,
        "error": failure.get("reason") if execution.status in FAILURE_STATUSES else None,
        "cancelRequested": execution.cancel_requested,
        "scriptVersion": execution.program.get("scriptVersion"),
    }


def step_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "index": row["idx"],
        "action": row["action"],
        "label": row["label"],
        "status": row["status"],
        "data": loads(row["data"]),
        "error": row["error"],
        "startedAt": row["started_at"],
        "completedAt": row["completed_at"],
        "duration": row["duration_ms"],
    }


def unstarted_step_view(index: int, step: dict[str, Any], finished: bool) -> dict[str, Any]:
    return {
        "index": index,
        "action": step.get("action"),
        "label": step.get("label"),
        "status": "skipped" if finished else "pending",
        "data": None,
        "error": None,
        "startedAt": None,
        "completedAt": None,
        "duration": None,
    }


def extract_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "executionId": row["id"],
        "botId": row["bot_id"],
        "completedAt": row["completed_at"],
        "data": loads(row["extracted"]),
    }


def has_extract(row: sqlite3.Row) -> bool:
    return row["status"] == "completed" and bool(loads(row["extracted"]))


# Lookups


def execution_row(context: GatewayContext, request: web.Request) -> sqlite3.Row:
    execution_id = path_uuid(request, "executionId", "execution")
    row = context.read_store.execution(principal_of(request).org_id, execution_id)
    if row is None:
        raise NotFoundError(
            f"No execution with id {execution_id} exists.", {"executionId": execution_id}
        )
    return row


def program_steps(context: GatewayContext, row: sqlite3.Row) -> list[dict[str, Any]]:
    """Return the top-level steps of the script version the execution runs."""
    for script in context.read_store.scripts(row["bot_id"]):
        if script["version"] == row["script_version"]:
            steps: list[dict[str, Any]] = loads(script["steps"])
            return steps
    return []


def all_steps(context: GatewayContext, row: sqlite3.Row) -> list[dict[str, Any]]:
    """Return every top-level step: started ones from the read store, the rest from the program."""
    started = {step["idx"]: step for step in context.read_store.steps(row["id"])}
    program = program_steps(context, row)
    finished = row["status"] in TERMINAL_STATUSES
    count = max(len(program), max(started, default=-1) + 1)
    return [
        step_view(started[index])
        if index in started
        else unstarted_step_view(index, program[index] if index < len(program) else {}, finished)
        for index in range(count)
    ]


# Triggering


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise ValidationError(
            f"Invalid {IDEMPOTENCY_HEADER} header: use 1 to 255 visible ASCII characters.",
            {"header": IDEMPOTENCY_HEADER},
        )
    return key


def check_referenced_params(
    steps: list[dict[str, Any]], definitions: dict[str, Any], params: dict[str, Any]
) -> None:
    """Reject a trigger whose steps use a parameter that would have no value at run time.

    Without this check the execution would start and fail at the step, after the fact.
    """
    problems = []
    for name in sorted(referenced_params(steps) - set(params)):
        if name in definitions:
            message = (
                f"The steps use parameter '{name}', which has no value: pass it in params or "
                "give it a default in the manifest."
            )
        else:
            message = (
                f"The steps use parameter '{name}', which the manifest does not define: add it "
                "to manifest.parameters or change the steps."
            )
        problems.append({"parameter": name, "code": "missing_parameter", "message": message})
    if problems:
        summary = problems[0]["message"] if len(problems) == 1 else (
            f"The steps use {len(problems)} parameters without a value, all listed in "
            f"details.problems. The first: {problems[0]['message']}"
        )
        raise ValidationError(summary, {"problems": problems})


def split_secrets(
    definitions: dict[str, Any], params: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the params with secret values masked, and the secret values by name."""
    masked: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for name, value in params.items():
        if definitions.get(name, {}).get("secret"):
            secrets[name] = value
            masked[name] = MASK
        else:
            masked[name] = value
    return masked, secrets


def program_snapshot(bot: Bot, secret_names: list[str]) -> dict[str, Any]:
    return {
        "botName": bot.name,
        "kind": bot.kind,
        "targetUrl": bot.target_url,
        "steps": bot.steps,
        "scriptVersion": bot.script_version,
        "capabilities": bot.capabilities,
        "secretParams": secret_names,
    }


async def trigger_execution(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    principal = principal_of(request)
    bot_id = path_uuid(request, "botId", "bot")
    body = await read_json_object(request, allow_empty=True)
    raise_problems("request body", unknown_field_problems(body, ("params",)))
    key = idempotency_key(request)

    bot = await context.event_store.load(Bot, uuid.UUID(bot_id), org_id=principal.org_id)
    check_live(bot)
    if not bot.steps:
        raise ConflictError(
            f"Bot {bot_id} has no steps yet: save a step program with "
            f"PUT /api/v1/bots/{bot_id}/steps first.",
            {"botId": bot_id},
        )
    params = check_params(bot.parameters, body.get("params"))
    check_referenced_params(bot.steps, bot.parameters, params)
    masked, secrets = split_secrets(bot.parameters, params)

    if key is None:
        execution_id = uuid.uuid4()
    else:
        execution_id = uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{principal.org_id}:{bot_id}:{key}")
    execution = Execution(
        id=execution_id,
        org_id=principal.org_id,
        bot_id=bot_id,
        trigger=API_TRIGGER,
        params=masked,
        encrypted_secrets=context.secret_box.encrypt(secrets) if secrets else None,
        idempotency_key=key,
        program=program_snapshot(bot, sorted(secrets)),
        requested_by=f"apikey:{principal.key_id}",
    )
    try:
        result = await context.event_store.save(execution)
    except ConcurrencyError:
        if key is None:
            raise
        return await _repeated_trigger(request, context, execution_id, bot_id, key, masked, secrets)

    logger.info(
        "Execution %s of bot %s requested by key %s", execution_id, bot_id, principal.key_id
    )
    return await _execution_answer(context, request, execution, result, status=201)


async def _repeated_trigger(
    request: web.Request,
    context: GatewayContext,
    execution_id: uuid.UUID,
    bot_id: str,
    key: str,
    masked: dict[str, Any],
    secrets: dict[str, Any],
) -> web.StreamResponse:
    """Respond to a retry of a trigger with the execution that its Idempotency-Key created."""
    principal = principal_of(request)
    existing = await context.event_store.load(
        Execution, execution_id, org_id=principal.org_id, bot_id=bot_id
    )
    stored_secrets = (
        context.secret_box.decrypt(existing.encrypted_secrets)
        if existing.encrypted_secrets
        else {}
    )
    if existing.params != masked or stored_secrets != secrets:
        raise ConflictError(
            f"{IDEMPOTENCY_HEADER} {key!r} was already used for an execution of this bot with "
            "other params: use a new key for a new request.",
            {"idempotencyKey": key, "executionId": str(execution_id)},
        )
    logger.info(
        "Execution %s returned again for %s of key %s",
        execution_id, IDEMPOTENCY_HEADER, principal.key_id,
    )
    result = AppendResult(last_sequence_of(existing), last_sequence_of(existing))
    return await _execution_answer(context, request, existing, result, status=200)


async def _execution_answer(
    context: GatewayContext,
    request: web.Request,
    execution: Execution,
    result: AppendResult,
    status: int,
) -> web.StreamResponse:
    execution_id = str(execution.id)
    row = None
    if await wait_for_projection(context, result):
        row = context.read_store.execution(principal_of(request).org_id, execution_id)
    view = execution_view(row) if row is not None else execution_view_of_aggregate(execution)
    return created_response(view, f"/api/v1/executions/{execution_id}", status=status)


# Handlers


async def list_executions(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    org_id = principal_of(request).org_id
    bot_id = path_uuid(request, "botId", "bot")
    page = parse_page(request)
    bot_row(context, org_id, bot_id)
    rows = context.read_store.executions(org_id, bot_id, page.limit, page.before_seq)
    shown, cursor = page_of(rows, page)
    return list_response([execution_view(row) for row in shown], cursor)


async def latest_execution(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    org_id = principal_of(request).org_id
    bot_id = path_uuid(request, "botId", "bot")
    bot_row(context, org_id, bot_id)
    row = context.read_store.latest_execution(org_id, bot_id)
    if row is None:
        raise NotFoundError(f"Bot {bot_id} has no executions yet.", {"botId": bot_id})
    return json_response(execution_view(row))


async def latest_extract(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    org_id = principal_of(request).org_id
    bot_id = path_uuid(request, "botId", "bot")
    bot_row(context, org_id, bot_id)
    # NOTE: the read store returns the latest completed execution. When it extracted nothing,
    # this returns 404 even if an older execution has data.
    row = context.read_store.latest_execution(org_id, bot_id, status="completed")
    if row is None or not has_extract(row):
        raise NotFoundError(
            f"Bot {bot_id} has no completed execution with extracted data yet.",
            {"botId": bot_id},
        )
    return json_response(extract_view(row))


async def get_execution(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    return json_response(execution_view(execution_row(context, request)))


async def list_steps(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    row = execution_row(context, request)
    return list_response(all_steps(context, row), None)


async def get_step(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    raw_index = request.match_info["index"]
    if not re.fullmatch(r"[+-]?[0-9]{1,18}", raw_index):
        raise ValidationError(
            f"Invalid step index {raw_index!r}: use a whole number from 0.",
            {"index": raw_index},
        )
    index = int(raw_index)
    row = execution_row(context, request)
    steps = all_steps(context, row)
    if not 0 <= index < len(steps):
        raise NotFoundError(
            f"Execution {row['id']} has no step {index}: it has {len(steps)} steps, "
            f"numbered from 0.",
            {"executionId": row["id"], "index": index, "steps": len(steps)},
        )
    return json_response(steps[index])


async def get_extract(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    row = execution_row(context, request)
    if not has_extract(row):
        reason = (
            "it completed without extracting data"
            if row["status"] == "completed"
            else f"its status is {row['status']}, not completed"
        )
        raise NotFoundError(
            f"Execution {row['id']} has no extracted data: {reason}.",
            {"executionId": row["id"], "status": row["status"]},
        )
    return json_response(extract_view(row))


async def get_failure(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    row = execution_row(context, request)
    if row["status"] not in FAILURE_STATUSES:
        raise NotFoundError(
            f"Execution {row['id']} has no failure: its status is {row['status']}.",
            {"executionId": row["id"], "status": row["status"]},
        )
    base = f"/executions/{row['id']}/artifacts"
    return json_response({
        "status": row["status"],
        "error": row["failure_reason"],
        "failedStepIndex": row["failed_step"],
        "screenshotUrl": api_url(request, f"{base}/screenshot") if row["screenshot_key"] else None,
        "domSnapshotUrl": api_url(request, f"{base}/dom") if row["dom_key"] else None,
    })


async def get_logs(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    row = execution_row(context, request)
    lines = [
        {
            "line": line["line"],
            "time": line["time"],
            "source": line["source"],
            "level": line["level"],
            "message": line["message"],
        }
        for line in context.read_store.logs(row["id"])
    ]
    # NOTE: logs are not paginated: every line comes in one page.
    return list_response(lines, None)


async def cancel_execution(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    principal = principal_of(request)
    execution_id = path_uuid(request, "executionId", "execution")
    requested_by = f"apikey:{principal.key_id}"

    def cancel(execution: Execution) -> None:
        # A pending execution has no runner to stop it, so it is cancelled at once. A running
        # one is stopped by its runner, which watches for the request.
        execution.request_cancel(requested_by)
        if execution.status == PENDING:
            execution.cancel(f"Cancelled by API key {principal.key_id} before it started.")

    execution, result = await update_aggregate(
        context, Execution, execution_id, principal.org_id, cancel
    )
    logger.info(
        "Cancellation of execution %s (%s) requested by key %s",
        execution_id, execution.status, principal.key_id,
    )
    row = None
    if await wait_for_projection(context, result):
        row = context.read_store.execution(principal.org_id, execution_id)
    view = execution_view(row) if row is not None else execution_view_of_aggregate(execution)
    return json_response(view)


async def _artifact(request: web.Request, column: str, what: str) -> web.StreamResponse:
    context = request.app[CONTEXT]
    row = execution_row(context, request)
    key = row[column]
    if not key:
        raise NotFoundError(
            f"Execution {row['id']} has no {what}.", {"executionId": row["id"]}
        )
    artifacts: ArtifactReader | None = context.artifacts  # type: ignore[assignment]
    if artifacts is None:
        raise ServiceUnavailableError(
            f"The {what} of execution {row['id']} is in the object store, which this gateway "
            "was started without. Configure the object store (BOTLEDGER_S3_ENDPOINT)."
        )
    try:
        body, content_type = await artifacts.get_bytes(key)
    except NotFoundError:
        logger.warning(
            "Artifact %s of execution %s is missing from the object store", key, row["id"]
        )
        raise NotFoundError(
            f"The {what} of execution {row['id']} is no longer in the object store.",
            {"executionId": row["id"]},
        ) from None
    except BotledgerError as error:
        # Unreachable server, rejected credentials: the store's message names internals
        # (endpoint, bucket), so it goes to the log and the client gets a 503.
        logger.error(
            "Reading artifact %s of execution %s failed: %s", key, row["id"], error.message
        )
        raise ServiceUnavailableError(
            f"The object store did not return the {what} of execution {row['id']}; retry "
            "later.",
            {"executionId": row["id"]},
        ) from None
    return web.Response(
        body=body,
        headers={
            # Set as a header because the stored type may carry a charset parameter.
            "Content-Type": content_type,
            "Cache-Control": "private, max-age=86400, immutable",
            "X-Content-Type-Options": "nosniff",
            # A DOM snapshot is the page's HTML: never let its scripts run on the API's origin.
            "Content-Security-Policy": "sandbox",
        },
    )


async def get_screenshot(request: web.Request) -> web.StreamResponse:
    return await _artifact(request, "screenshot_key", "failure screenshot")


async def get_dom_snapshot(request: web.Request) -> web.StreamResponse:
    return await _artifact(request, "dom_key", "DOM snapshot")


def operations() -> list[Operation]:
    bot_param = ("botId",)
    execution_param = ("executionId",)
    tag = "Executions"
    return [
        Operation(
            "GET", "/bots/{botId}/executions", list_executions, "read", "listExecutions",
            "List the bot's executions", tag,
            answers=(Answer(200, "Executions, newest first.", "Execution", kind="list"),),
            parameters=(*bot_param, "limit", "cursor"),
        ),
        Operation(
            "POST", "/bots/{botId}/executions", trigger_execution, "write", "triggerExecution",
            "Trigger an execution", tag,
            description=(
                "Checks params against the manifest's parameters and reports every problem at "
                "once; an unknown name suggests the closest defined one. Secret values are "
                "stored encrypted and shown as ***. An empty body means no params. A bot "
                "without steps is a 409."
            ),
            answers=(
                Answer(201, "The new execution, status pending.", "Execution", location=True),
                Answer(200, "A retry with the same Idempotency-Key: the execution it created.",
                       "Execution", location=True),
            ),
            parameters=(*bot_param, "Idempotency-Key"),
            request_schema="TriggerInput",
            request_required=False,
            errors=(409,),
        ),
        Operation(
            "GET", "/bots/{botId}/latest-execution", latest_execution, "read",
            "getLatestExecution", "Get the bot's latest execution", tag,
            answers=(Answer(200, "The newest execution.", "Execution"),),
            parameters=bot_param,
        ),
        Operation(
            "GET", "/bots/{botId}/latest-extract", latest_extract, "read", "getLatestExtract",
            "Get the extracted data of the bot's latest completed execution", tag,
            answers=(Answer(200, "The extracted data.", "Extract"),),
            parameters=bot_param,
        ),
        Operation(
            "GET", "/executions/{executionId}", get_execution, "read", "getExecution",
            "Get an execution", tag,
            answers=(Answer(200, "The execution.", "Execution"),),
            parameters=execution_param,
        ),
        Operation(
            "GET", "/executions/{executionId}/steps", list_steps, "read", "listExecutionSteps",
            "List the execution's steps", tag,
            description="Every top-level step of the program, in order; `cursor` is null.",
            answers=(Answer(200, "The steps.", "ExecutionStep", kind="list"),),
            parameters=execution_param,
        ),
        Operation(
            "GET", "/executions/{executionId}/steps/{index}", get_step, "read",
            "getExecutionStep", "Get one step of the execution", tag,
            answers=(Answer(200, "The step.", "ExecutionStep"),),
            parameters=(*execution_param, "index"),
        ),
        Operation(
            "GET", "/executions/{executionId}/extract", get_extract, "read",
            "getExecutionExtract", "Get the execution's extracted data", tag,
            description="404 unless the execution completed with extracted data.",
            answers=(Answer(200, "The extracted data.", "Extract"),),
            parameters=execution_param,
        ),
        Operation(
            "GET", "/executions/{executionId}/failure", get_failure, "read",
            "getExecutionFailure", "Get the execution's failure", tag,
            description="404 unless the execution failed or timed out.",
            answers=(Answer(200, "The failure with links to its artifacts.", "Failure"),),
            parameters=execution_param,
        ),
        Operation(
            "GET", "/executions/{executionId}/artifacts/screenshot", get_screenshot, "read",
            "getFailureScreenshot", "Get the screenshot taken at the failure", tag,
            answers=(Answer(200, "The PNG.", kind="raw", content_type="image/png"),),
            parameters=execution_param,
            errors=(503,),
        ),
        Operation(
            "GET", "/executions/{executionId}/artifacts/dom", get_dom_snapshot, "read",
            "getFailureDomSnapshot", "Get the DOM snapshot taken at the failure", tag,
            description="Served with `Content-Security-Policy: sandbox`.",
            answers=(Answer(200, "The page's HTML.", kind="raw", content_type="text/html"),),
            parameters=execution_param,
            errors=(503,),
        ),
        Operation(
            "GET", "/executions/{executionId}/logs", get_logs, "read", "listExecutionLogs",
            "List the execution's log lines", tag,
            description="Runner, script (page console) and system lines in order; `cursor` is "
            "null.",
            answers=(Answer(200, "The log lines.", "LogLine", kind="list"),),
            parameters=execution_param,
        ),
        Operation(
            "POST", "/executions/{executionId}/cancel", cancel_execution, "write",
            "cancelExecution", "Cancel an execution", tag,
            description=(
                "A pending execution is cancelled at once; a running one gets "
                "`cancelRequested` and its runner stops it. A finished one is a 409 naming its "
                "status."
            ),
            answers=(Answer(200, "The execution after the request.", "Execution"),),
            parameters=execution_param,
            errors=(409,),
        ),
    ]
