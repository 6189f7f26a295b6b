"""API keys: creation (for the API and the CLI), listing and revocation.

A key reads ``blk_<8 hex>_<43 url-safe chars>``. Its first part (``blk_<8 hex>``) is the public
prefix shown in lists and logs; only the SHA-256 hash of the whole key is stored.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from events.bot import ApiKey
from events.errors import ConflictError, NotFoundError
from events.store import AppendResult, EventStore
from events.subjects import check_org_id
from services.gateway.context import CONTEXT, PERMISSION_LEVELS, Principal, principal_of
from services.gateway.http import (
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
from services.runner.program import json_type

logger = logging.getLogger(__name__)

KEY_SCHEME = "blk_"
PREFIX_BYTES = 4
MAX_KEY_NAME_CHARS = 200


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """Return a new random key and its public prefix."""
    prefix = f"{KEY_SCHEME}{secrets.token_hex(PREFIX_BYTES)}"
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def key_prefix(key: str) -> str:
    """Return the public prefix of a key made by ``new_api_key``."""
    return key[: len(KEY_SCHEME) + 2 * PREFIX_BYTES]


def check_key_fields(name: object, permission: object) -> list[dict[str, str]]:
    problems = []
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_KEY_NAME_CHARS:
        problems.append({
            "path": "name",
            "message": f"Expected a non-blank string of at most {MAX_KEY_NAME_CHARS} "
            f"characters, got {json_type(name)}.",
        })
    if permission not in PERMISSION_LEVELS:
        problems.append({
            "path": "permission",
            "message": (
                f"Expected one of {', '.join(PERMISSION_LEVELS)}, got "
                f"{orjson.dumps(permission).decode() if permission is not None else 'null'}."
            ),
        })
    return problems


async def create_api_key(
    event_store: EventStore, org_id: str, permission: str, name: str
) -> tuple[str, str, AppendResult]:
    """Create an API key of an organization; return its id, the secret key and the append.

    The secret key exists only in the return value: show it once, it cannot be read back.
    Raises ValidationError for an invalid organization id, permission or name.
    """
    check_org_id(org_id)
    raise_problems("API key", check_key_fields(name, permission))

    key, prefix = new_api_key()
    api_key = ApiKey(
        id=uuid.uuid4(),
        org_id=org_id,
        name=name,
        permission=permission,
        key_hash=hash_api_key(key),
        prefix=prefix,
    )
    result = await event_store.save(api_key)
    logger.info(
        "Created API key %s (%s, %s permission) of organization %s",
        api_key.id, prefix, permission, org_id,
    )
    return str(api_key.id), key, result


def key_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "permission": row["permission"],
        "prefix": row["prefix"],
        "createdAt": row["created_at"],
        "revokedAt": row["revoked_at"],
    }


async def create_key(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    principal = principal_of(request)
    body = await read_json_object(request)
    problems = unknown_field_problems(body, ("name", "permission"))
    problems += check_key_fields(body.get("name"), body.get("permission"))
    raise_problems("API key", problems)

    key_id, key, result = await create_api_key(
        context.event_store, principal.org_id, body["permission"], body["name"]
    )
    logger.info("API key %s created by key %s", key_id, principal.key_id)
    await wait_for_projection(context, result)

    row = context.read_store.api_key(principal.org_id, key_id)
    if row is not None:
        view = key_view(row)
    else:
        # The projection did not catch up in time, so respond with what was just written.
        view = {
            "id": key_id, "name": body["name"], "permission": body["permission"],
            "prefix": key_prefix(key), "createdAt": int(time.time() * 1000), "revokedAt": None,
        }
    return created_response({**view, "key": key}, f"/api/v1/keys/{key_id}")


async def list_keys(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    page = parse_page(request)
    rows = context.read_store.api_keys(principal_of(request).org_id, page.limit, page.before_seq)
    shown, cursor = page_of(rows, page)
    return list_response([key_view(row) for row in shown], cursor)


async def get_key(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    key_id = path_uuid(request, "keyId", "API key")
    row = context.read_store.api_key(principal_of(request).org_id, key_id)
    if row is None:
        raise NotFoundError(f"No API key with id {key_id} exists.", {"keyId": key_id})
    return json_response(key_view(row))


def check_not_own_key(principal: Principal, key_id: str) -> None:
    """Reject revoking the key of the request itself, which would lock its user out at once.

    Only admin keys revoke keys, so another admin key always remains to revoke this one.
    """
    if key_id == principal.key_id:
        raise ConflictError(
            f"API key {key_id} is the key of this request: revoke it with another admin key.",
            {"keyId": key_id},
        )


async def revoke_key(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    principal = principal_of(request)
    key_id = path_uuid(request, "keyId", "API key")
    check_not_own_key(principal, str(key_id))

    _, result = await update_aggregate(
        context, ApiKey, key_id, principal.org_id, lambda api_key: api_key.revoke()
    )
    logger.info("API key %s revoked by key %s", key_id, principal.key_id)
    # The next request with the revoked key must fail, so respond only once the read store,
    # where authentication looks keys up, contains the revocation.
    await wait_for_projection(context, result)
    return web.Response(status=204)


def operations() -> list[Operation]:
    return [
        Operation(
            "POST", "/keys", create_key, "admin", "createApiKey", "Create an API key", "API keys",
            answers=(
                Answer(201, "The new key, with the secret `key` shown only here.",
                       "ApiKeyCreated", location=True),
            ),
            request_schema="ApiKeyInput",
        ),
        Operation(
            "GET", "/keys", list_keys, "admin", "listApiKeys",
            "List the organization's API keys", "API keys",
            answers=(Answer(200, "Keys, newest first, without secrets or hashes.", "ApiKey",
                            kind="list"),),
            parameters=("limit", "cursor"),
        ),
        Operation(
            "GET", "/keys/{keyId}", get_key, "admin", "getApiKey", "Get an API key", "API keys",
            answers=(Answer(200, "The key, without its secret.", "ApiKey"),),
            parameters=("keyId",),
        ),
        Operation(
            "DELETE", "/keys/{keyId}", revoke_key, "admin", "revokeApiKey",
            "Revoke an API key", "API keys",
            description="The key is rejected with 401 from the next request on.",
            answers=(Answer(204, "Revoked.", kind="empty"),),
            parameters=("keyId",),
            errors=(409,),
        ),
    ]
