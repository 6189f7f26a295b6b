"""Authentication by API key and the permission check of every route.

Clients send ``Authorization: Bearer <key>``. The key's SHA-256 hash is looked up in the read
store, so revoking a key takes effect as soon as its ApiKeyRevoked event is projected.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import cast

from aiohttp import web

from services.gateway.context import (
    CONTEXT,
    PERMISSION_LEVELS,
    PRINCIPAL,
    Permission,
    Principal,
)
from services.gateway.errors import AuthenticationError, Handler, PermissionDeniedError
from services.gateway.keys import hash_api_key

logger = logging.getLogger(__name__)

# Routes under /api/v1 that respond without a key (canonical aiohttp paths).
PUBLIC_PATHS = frozenset({"/api/v1/health", "/api/v1/openapi.json", "/api/v1/docs"})
_BEARER = re.compile(r"^Bearer[ \t]+(\S{1,512})[ \t]*$", re.IGNORECASE)


def needs_key(request: web.Request) -> bool:
    """Return whether the request's matched route is under /api/v1 and not public.

    Requests that matched no route are left to the router's 404 or 405.
    """
    if request.match_info.http_exception is not None:
        return False
    resource = request.match_info.route.resource
    if resource is None:
        return False
    canonical = resource.canonical
    return canonical.startswith("/api/v1/") and canonical not in PUBLIC_PATHS


def authenticate(request: web.Request) -> Principal:
    """Return the principal of the request's API key; AuthenticationError otherwise."""
    header = request.headers.get("Authorization")
    if header is None:
        raise AuthenticationError(
            "Missing API key: send the header 'Authorization: Bearer <api-key>'."
        )
    match = _BEARER.match(header)
    if match is None:
        raise AuthenticationError(
            "Malformed Authorization header: use 'Authorization: Bearer <api-key>'."
        )

    context = request.app[CONTEXT]
    row = context.read_store.api_key_by_hash(hash_api_key(match.group(1)))
    if row is None:
        raise AuthenticationError(
            "Invalid API key: no key matches it. Check the key, or create a new one."
        )
    if row["revoked_at"] is not None:
        raise AuthenticationError(
            f"API key {row['prefix']} was revoked: use another key.",
            {"keyPrefix": row["prefix"]},
        )
    permission = row["permission"]
    if permission not in PERMISSION_LEVELS:
        logger.error("API key %s has unknown permission %r", row["id"], permission)
        raise AuthenticationError(f"API key {row['prefix']} has no valid permission.")
    return Principal(
        org_id=row["org_id"], key_id=row["id"], permission=cast(Permission, permission)
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Set ``request[PRINCIPAL]`` for every route under /api/v1 except the public ones."""
    if needs_key(request):
        request[PRINCIPAL] = authenticate(request)
    return await handler(request)


def require(request: web.Request, permission: Permission) -> Principal:
    """Return the request's principal if its key has ``permission`` or a higher one.

    Raises AuthenticationError when the request carries no authenticated key and
    PermissionDeniedError when the key's permission is lower.
    """
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        raise AuthenticationError(
            "Missing API key: send the header 'Authorization: Bearer <api-key>'."
        )
    if not principal.allows(permission):
        raise PermissionDeniedError(
            f"This request needs a key with {permission} permission; the key used has "
            f"{principal.permission} permission.",
            {"required": permission, "granted": principal.permission},
        )
    return principal


def guarded(handler: Handler, permission: Permission | None) -> Handler:
    """Wrap a handler so that it runs only for keys with ``permission`` (None: public)."""
    if permission is None:
        return handler

    @functools.wraps(handler)
    async def check_then_handle(request: web.Request) -> web.StreamResponse:
        require(request, permission)
        return await handler(request)

    return check_then_handle
