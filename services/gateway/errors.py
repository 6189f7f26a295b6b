"""HTTP errors of the gateway and the middleware that turns every error into one JSON body.

Every error response has the body ``{"error": "<sentence>", "code": "<snake_case>", "details": {}}``
and the status of its class in ``STATUS_BY_ERROR``. The same middleware tags each response with
an ``X-Request-Id`` and writes the per-request log line.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from events.errors import (
    BotledgerError,
    ConflictError,
    EventStoreError,
    NotFoundError,
    ServerVersionError,
    ValidationError,
)
from services.gateway.context import PRINCIPAL, Principal

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("services.gateway.access")

REQUEST_ID = web.RequestKey("botledger_request_id", str)
REQUEST_ID_HEADER = "X-Request-Id"
# A client may pass its own request id for tracing; anything else is replaced by a fresh one.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuthenticationError(BotledgerError):
    """The request has no API key, or one that is unknown or revoked."""

    code = "unauthorized"


class PermissionDeniedError(BotledgerError):
    """The API key is valid but its permission is too low for the request."""

    code = "forbidden"


class PayloadTooLargeError(BotledgerError):
    code = "payload_too_large"


class UnsupportedMediaTypeError(BotledgerError):
    code = "unsupported_media_type"


class ServiceUnavailableError(BotledgerError):
    """A backing service the request needs is not configured or not reachable."""

    code = "service_unavailable"


# Checked in order, so subclasses come before their bases. ConflictError covers
# ConcurrencyError and InvalidTransitionError.
STATUS_BY_ERROR: tuple[tuple[type[BotledgerError], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (ValidationError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (EventStoreError, 503),
    (ServerVersionError, 503),
    (ServiceUnavailableError, 503),
)


def status_of(error: BotledgerError) -> int:
    """Return the HTTP status of an error; 500 for classes without a mapping."""
    for error_class, status in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return status
    return 500


def error_response(
    status: int, message: str, code: str, details: dict[str, Any] | None = None
) -> web.Response:
    body = {"error": message, "code": code, "details": details or {}}
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json"
    )


def _request_id(request: web.Request) -> str:
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    if _CLIENT_REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def _botledger_error_response(
    request: web.Request, error: BotledgerError, request_id: str
) -> web.Response:
    status = status_of(error)
    if status == 500:
        # A BotledgerError without a mapping (a codec or decryption failure) is a server-side
        # problem: its message may name internals, so the client gets the generic one.
        logger.error(
            "Request %s %s %s failed with %s: %s",
            request_id, request.method, request.path, type(error).__name__, error.message,
        )
        return _internal_error_response(request_id)
    response = error_response(status, error.message, error.code, error.details)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="botledger"'
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


def _internal_error_response(request_id: str) -> web.Response:
    return error_response(
        500,
        f"Internal server error. Report request id {request_id} to the operator.",
        "internal_error",
        {"requestId": request_id},
    )


def _http_exception_response(request: web.Request, error: web.HTTPException) -> web.Response:
    """Translate aiohttp's own exceptions (router misses, body limits) into the error body."""
    if isinstance(error, web.HTTPNotFound):
        return error_response(
            404,
            f"No route matches {request.method} {request.path}; see /api/v1/docs for the API.",
            "route_not_found",
            {"method": request.method, "path": request.path},
        )
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = sorted(error.allowed_methods)
        response = error_response(
            405,
            f"Method {request.method} is not allowed on {request.path}; use "
            f"{', '.join(allowed)}.",
            "method_not_allowed",
            {"method": request.method, "allowed": allowed},
        )
        response.headers["Allow"] = ", ".join(allowed)
        return response
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        limit = request.client_max_size
        return error_response(
            413,
            f"The request body is larger than the limit of {limit} bytes; send a smaller one.",
            PayloadTooLargeError.code,
            {"maxBytes": limit},
        )
    code = re.sub(r"[^a-z0-9]+", "_", (error.reason or "error").lower()).strip("_")
    response = error_response(error.status, error.reason or "HTTP error.", code)
    for name in ("Allow", "Location", "Retry-After"):
        if name in error.headers:
            response.headers[name] = error.headers[name]
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Respond to every failure with the JSON error body, tag the response and log the request.

    Handlers that stream (server-sent events) must handle errors that happen after they
    prepared their response themselves, because no second response can be sent then.
    """
    request_id = _request_id(request)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()

    try:
        response = await handler(request)
    except BotledgerError as error:
        response = _botledger_error_response(request, error, request_id)
    except web.HTTPException as error:
        response = _http_exception_response(request, error)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception(
            "Request %s %s %s failed with an unexpected error",
            request_id, request.method, request.path,
        )
        response = _internal_error_response(request_id)

    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    _log_request(request, response.status, request_id, started)
    return response


def _log_request(request: web.Request, status: int, request_id: str, started: float) -> None:
    duration_ms = (time.perf_counter() - started) * 1000
    principal: Principal | None = request.get(PRINCIPAL)
    org_id = principal.org_id if principal else "-"
    key_id = principal.key_id if principal else "-"
    if status >= 500:
        level = logging.ERROR
    elif status >= 400:
        level = logging.WARNING
    else:
        level = logging.DEBUG
    if access_logger.isEnabledFor(level):
        access_logger.log(
            level,
            "%s %s -> %d in %.1f ms (request %s, org %s, key %s)",
            request.method, request.path, status, duration_ms, request_id, org_id, key_id,
        )
