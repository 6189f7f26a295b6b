"""Bot routes: create, list, view and delete bots, their step program and their manifest."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from datetime import datetime
from typing import Any

from aiohttp import web

from events.bot import Bot
from events.errors import NotFoundError, ValidationError
from projections.handlers import public_webhook
from projections.read_store import loads
from services.gateway.context import CONTEXT, GatewayContext, principal_of
from services.gateway.http import (
    created_response,
    json_response,
    list_response,
    page_of,
    parse_page,
    path_uuid,
    problems_of,
    raise_problems,
    read_json,
    read_json_object,
    unknown_field_problems,
)
from services.gateway.manifest import prepare_manifest_update, url_problems
from services.gateway.openapi import Answer, Operation
from services.gateway.writes import update_aggregate, wait_for_projection
from services.runner.program import json_type, validate_steps

logger = logging.getLogger(__name__)

BOT_FIELDS = ("name", "targetUrl", "description", "kind", "tags", "steps")
BOT_KINDS = ("extraction", "action")
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000
MAX_TAGS = 50
MAX_TAG_CHARS = 100


def timestamp_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def bot_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "targetUrl": row["target_url"],
        "kind": row["kind"],
        "tags": loads(row["tags"]),
        "scriptVersion": row["script_version"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def bot_view_of_aggregate(bot: Bot) -> dict[str, Any]:
    """Build the bot view from the aggregate, for when the read store lags behind a write."""
    return {
        "id": str(bot.id),
        "name": bot.name,
        "description": bot.description,
        "targetUrl": bot.target_url,
        "kind": bot.kind,
        "tags": bot.tags,
        "scriptVersion": bot.script_version,
        "createdAt": timestamp_ms(bot.created_on),
        "updatedAt": timestamp_ms(bot.modified_on),
    }


def steps_view(bot_id: str, script_version: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"botId": bot_id, "scriptVersion": script_version, "steps": steps}


def manifest_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "capabilities": loads(row["capabilities"]),
        "parameters": loads(row["parameters"]),
        "webhook": loads(row["webhook"]),
    }


def manifest_view_of_aggregate(bot: Bot) -> dict[str, Any]:
    return {
        "capabilities": bot.capabilities,
        "parameters": bot.parameters,
        "webhook": public_webhook(bot.webhook) if bot.webhook is not None else None,
    }


def bot_row(context: GatewayContext, org_id: str, bot_id: str) -> sqlite3.Row:
    """Return the read store's row of a live bot of the organization; NotFoundError otherwise."""
    row = context.read_store.bot(org_id, bot_id)
    if row is None:
        raise NotFoundError(f"No bot with id {bot_id} exists.", {"botId": bot_id})
    return row


def check_live(bot: Bot) -> None:
    """Raise NotFoundError for a deleted bot: to clients it no longer exists."""
    if bot.deleted:
        raise NotFoundError(f"No bot with id {bot.id} exists.", {"botId": str(bot.id)})


# Validation of a new bot


def bot_input_problems(body: dict[str, Any]) -> list[dict[str, str]]:
    """List every problem of a POST /bots body, those of its steps included."""
    problems = unknown_field_problems(body, BOT_FIELDS)

    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        problems.append({
            "path": "name",
            "message": f"Expected a non-blank string of 1 to {MAX_NAME_CHARS} characters, got "
            f"{json_type(name) if not isinstance(name, str) else f'{len(name)} characters'}.",
        })
    if "targetUrl" not in body:
        problems.append({"path": "targetUrl", "message": "Missing required field 'targetUrl'."})
    else:
        problems += url_problems(body["targetUrl"], "targetUrl")

    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        problems.append({
            "path": "description",
            "message": f"Expected a string of at most {MAX_DESCRIPTION_CHARS} characters.",
        })
    kind = body.get("kind", "extraction")
    if kind not in BOT_KINDS:
        problems.append({
            "path": "kind",
            "message": f"Expected one of {', '.join(BOT_KINDS)}, got {kind!r}.",
        })
    problems += tag_problems(body.get("tags", []))

    if "steps" in body:
        try:
            body["steps"] = validate_steps(body["steps"])
        except ValidationError as error:
            problems += problems_of(error, "steps")
    return problems


def tag_problems(tags: object) -> list[dict[str, str]]:
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        return [{
            "path": "tags",
            "message": f"Expected a list of at most {MAX_TAGS} strings, got {json_type(tags)}.",
        }]
    return [
        {
            "path": f"tags[{index}]",
            "message": f"Expected a non-empty string of at most {MAX_TAG_CHARS} characters.",
        }
        for index, tag in enumerate(tags)
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_CHARS
    ]


# Handlers


async def list_bots(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    page = parse_page(request)
    rows = context.read_store.bots(principal_of(request).org_id, page.limit, page.before_seq)
    shown, cursor = page_of(rows, page)
    return list_response([bot_view(row) for row in shown], cursor)


async def create_bot(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    principal = principal_of(request)
    body = await read_json_object(request)
    raise_problems("bot", bot_input_problems(body))

    bot = Bot(
        id=uuid.uuid4(),
        org_id=principal.org_id,
        name=body["name"],
        target_url=body["targetUrl"],
        description=body.get("description", ""),
        kind=body.get("kind", "extraction"),
        tags=body.get("tags", []),
    )
    # Creation and the first step program go in one atomic append.
    if "steps" in body:
        bot.update_steps(body["steps"])
    result = await context.event_store.save(bot)
    logger.info("Bot %s created by key %s", bot.id, principal.key_id)

    bot_id = str(bot.id)
    row = None
    if await wait_for_projection(context, result):
        row = context.read_store.bot(principal.org_id, bot_id)
    view = bot_view(row) if row is not None else bot_view_of_aggregate(bot)
    return created_response(view, f"/api/v1/bots/{bot_id}")


async def get_bot(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    bot_id = path_uuid(request, "botId", "bot")
    return json_response(bot_view(bot_row(context, principal_of(request).org_id, bot_id)))


async def delete_bot(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    principal = principal_of(request)
    bot_id = path_uuid(request, "botId", "bot")

    def delete(bot: Bot) -> None:
        check_live(bot)
        bot.delete()

    _, result = await update_aggregate(context, Bot, bot_id, principal.org_id, delete)
    logger.info("Bot %s deleted by key %s", bot_id, principal.key_id)
    await wait_for_projection(context, result)
    return web.Response(status=204)


async def get_steps(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    bot_id = path_uuid(request, "botId", "bot")
    row = bot_row(context, principal_of(request).org_id, bot_id)
    return json_response(steps_view(bot_id, row["script_version"], loads(row["steps"])))


async def put_steps(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    principal = principal_of(request)
    bot_id = path_uuid(request, "botId", "bot")
    body = await read_json(request)
    if isinstance(body, dict):
        raise_problems("request body", unknown_field_problems(body, ("steps",)))
        if "steps" not in body:
            raise_problems(
                "request body", [{"path": "steps", "message": "Missing required field 'steps'."}]
            )
        body = body["steps"]
    steps = validate_steps(body)

    def update(bot: Bot) -> None:
        check_live(bot)
        bot.update_steps(steps)

    bot, result = await update_aggregate(context, Bot, bot_id, principal.org_id, update)
    logger.info(
        "Bot %s step program version %d saved by key %s",
        bot_id, bot.script_version, principal.key_id,
    )
    await wait_for_projection(context, result)
    return json_response(steps_view(bot_id, bot.script_version, bot.steps))


async def list_scripts(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    bot_id = path_uuid(request, "botId", "bot")
    bot_row(context, principal_of(request).org_id, bot_id)
    scripts = [
        {"version": row["version"], "steps": loads(row["steps"]), "createdAt": row["created_at"]}
        for row in context.read_store.scripts(bot_id)
    ]
    # NOTE: the version history is not paginated: every version comes in one page.
    return list_response(scripts, None)


async def get_manifest(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    bot_id = path_uuid(request, "botId", "bot")
    return json_response(manifest_view(bot_row(context, principal_of(request).org_id, bot_id)))


async def put_manifest(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    principal = principal_of(request)
    bot_id = path_uuid(request, "botId", "bot")
    body = await read_json_object(request)

    def update(bot: Bot) -> None:
        check_live(bot)
        update = prepare_manifest_update(body, bot, context.secret_box)
        bot.update_manifest(update.capabilities, update.parameters, update.webhook)

    bot, result = await update_aggregate(context, Bot, bot_id, principal.org_id, update)
    logger.info(
        "Bot %s manifest sections %s updated by key %s",
        bot_id, sorted(body), principal.key_id,
    )
    if await wait_for_projection(context, result):
        row = context.read_store.bot(principal.org_id, bot_id)
        if row is not None:
            return json_response(manifest_view(row))
    return json_response(manifest_view_of_aggregate(bot))


def operations() -> list[Operation]:
    bot_param = ("botId",)
    return [
        Operation(
            "GET", "/bots", list_bots, "read", "listBots", "List bots", "Bots",
            answers=(Answer(200, "The organization's bots, newest first.", "Bot", kind="list"),),
            parameters=("limit", "cursor"),
        ),
        Operation(
            "POST", "/bots", create_bot, "write", "createBot", "Create a bot", "Bots",
            description="With `steps`, the bot and its first step program are stored together.",
            answers=(Answer(201, "The new bot.", "Bot", location=True),),
            request_schema="BotInput",
        ),
        Operation(
            "GET", "/bots/{botId}", get_bot, "read", "getBot", "Get a bot", "Bots",
            answers=(Answer(200, "The bot.", "Bot"),),
            parameters=bot_param,
        ),
        Operation(
            "DELETE", "/bots/{botId}", delete_bot, "admin", "deleteBot", "Delete a bot", "Bots",
            description="Its executions stay readable by id.",
            answers=(Answer(204, "Deleted.", kind="empty"),),
            parameters=bot_param,
        ),
        Operation(
            "GET", "/bots/{botId}/steps", get_steps, "read", "getBotSteps",
            "Get the bot's step program", "Bots",
            answers=(Answer(200, "The current step program and its version.", "StepProgram"),),
            parameters=bot_param,
        ),
        Operation(
            "PUT", "/bots/{botId}/steps", put_steps, "write", "putBotSteps",
            "Replace the bot's step program", "Bots",
            description="Saves a new script version. Unknown actions and fields are a 400 "
            "naming them.",
            answers=(Answer(200, "The saved program and its new version.", "StepProgram"),),
            parameters=bot_param,
            request_schema="StepsInput",
        ),
        Operation(
            "GET", "/bots/{botId}/scripts", list_scripts, "read", "listBotScripts",
            "List the step program's versions", "Bots",
            description="Every version in one page, newest first; `cursor` is always null.",
            answers=(Answer(200, "The versions, newest first.", "Script", kind="list"),),
            parameters=bot_param,
        ),
        Operation(
            "GET", "/bots/{botId}/manifest", get_manifest, "read", "getBotManifest",
            "Get the bot's manifest", "Bots",
            description="Webhook secrets are never returned; `secretSet` and `passwordSet` "
            "tell whether they are stored.",
            answers=(Answer(200, "The manifest.", "Manifest"),),
            parameters=bot_param,
        ),
        Operation(
            "PUT", "/bots/{botId}/manifest", put_manifest, "write", "putBotManifest",
            "Update sections of the bot's manifest", "Bots",
            description="Each section given replaces the stored one; sections left out stay.",
            answers=(Answer(200, "The whole manifest after the update.", "Manifest"),),
            parameters=bot_param,
            request_schema="ManifestInput",
        ),
    ]
