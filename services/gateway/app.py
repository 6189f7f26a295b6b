"""The gateway's aiohttp application: every /api/v1 route, its middlewares and its docs."""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from services.gateway import bots, executions, keys
from services.gateway.auth import auth_middleware, guarded
from services.gateway.context import CONTEXT, GatewayContext
from services.gateway.docs import render_docs_html
from services.gateway.errors import Handler, error_middleware
from services.gateway.http import MAX_BODY_BYTES, check_query_names, json_response
from services.gateway.openapi import PARAMETERS, Answer, Operation, build_openapi

logger = logging.getLogger(__name__)

OPENAPI_DOCUMENT = web.AppKey("botledger_openapi_document", bytes)
DOCS_HTML = web.AppKey("botledger_docs_html", str)


async def health(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    connected = context.nc.is_connected
    data = {
        "status": "ok" if connected else "degraded",
        "projectionSequence": context.projector.last_sequence,
        "nats": "connected" if connected else "disconnected",
    }
    return json_response(data, status=200 if connected else 503)


async def openapi_document(request: web.Request) -> web.StreamResponse:
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type="application/json")


async def docs_page(request: web.Request) -> web.StreamResponse:
    return web.Response(
        text=request.app[DOCS_HTML],
        content_type="text/html",
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )


def _service_operations() -> list[Operation]:
    tag = "Service"
    return [
        Operation(
            "GET", "/health", health, None, "getHealth", "Check the gateway's health", tag,
            description="Needs no key. 503 while the NATS connection is down.",
            answers=(
                Answer(200, "Healthy.", "Health"),
                Answer(503, "NATS is disconnected; writes fail until it is back.", "Health"),
            ),
        ),
        Operation(
            "GET", "/openapi.json", openapi_document, None, "getOpenApi",
            "Get this OpenAPI document", tag,
            answers=(Answer(200, "The OpenAPI 3.1 document.", kind="raw"),),
        ),
        Operation(
            "GET", "/docs", docs_page, None, "getDocs", "Read the API documentation", tag,
            answers=(Answer(200, "An HTML page.", kind="raw", content_type="text/html"),),
        ),
    ]


def gateway_operations() -> list[Operation]:
    """Return every route the gateway itself serves, in documentation order."""
    return [
        *_service_operations(),
        *bots.operations(),
        *executions.operations(),
        *keys.operations(),
    ]


def with_query_check(handler: Handler, operation: Operation) -> Handler:
    """Wrap a handler so that a query parameter the operation does not take is a 400."""
    allowed = tuple(
        name for name in operation.parameters if PARAMETERS.get(name, {}).get("in") == "query"
    )

    @functools.wraps(handler)
    async def check_then_handle(request: web.Request) -> web.StreamResponse:
        check_query_names(request, allowed)
        return await handler(request)

    return check_then_handle


def build_gateway_app(
    context: GatewayContext,
    extra_routes: Sequence[web.AbstractRouteDef] = (),
    extra_openapi_paths: Mapping[str, dict[str, Any]] = types.MappingProxyType({}),
) -> web.Application:
    """Build the gateway application on a started context.

    ``extra_routes`` are served beside the gateway's routes and pass the same middlewares, so
    routes under /api/v1 get ``request[PRINCIPAL]`` and call ``auth.require`` for their
    permission. ``extra_openapi_paths`` (full path to OpenAPI path item) document them.
    """
    app = web.Application(
        middlewares=[error_middleware, auth_middleware], client_max_size=MAX_BODY_BYTES
    )
    app[CONTEXT] = context

    operations = gateway_operations()
    for operation in operations:
        app.router.add_route(
            operation.method,
            operation.full_path,
            with_query_check(guarded(operation.handler, operation.permission), operation),
            name=operation.operation_id,
        )
    app.router.add_routes(extra_routes)

    document = build_openapi(operations, extra_openapi_paths)
    app[OPENAPI_DOCUMENT] = orjson.dumps(document)
    app[DOCS_HTML] = render_docs_html(document)
    logger.info(
        "Gateway app built with %d routes and %d extra routes",
        len(operations), len(extra_routes),
    )
    return app
