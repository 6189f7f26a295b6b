"""The route table of the gateway and the OpenAPI 3.1 document built from it.

Each handler module lists its routes as ``Operation`` values. The app registers exactly these
routes, the auth wrapper enforces each one's permission, and the document describes them, so the
three cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any, Literal

from services.gateway.context import Permission
from services.gateway.errors import Handler
from services.gateway.http import API_PREFIX, DEFAULT_PAGE_LIMIT, MAX_BODY_BYTES, MAX_PAGE_LIMIT

AnswerKind = Literal["data", "list", "raw", "empty"]


@dataclasses.dataclass(frozen=True)
class Answer:
    """A success response: ``data`` wraps one schema, ``list`` an array plus cursor."""

    status: int
    description: str
    schema: str | None = None
    kind: AnswerKind = "data"
    content_type: str = "application/json"
    location: bool = False


@dataclasses.dataclass(frozen=True)
class Operation:
    """One route: method, path below /api/v1, handler, permission and its documentation."""

    method: str
    path: str
    handler: Handler
    permission: Permission | None
    operation_id: str
    summary: str
    tag: str
    answers: tuple[Answer, ...]
    description: str = ""
    parameters: tuple[str, ...] = ()
    request_schema: str | None = None
    request_required: bool = True
    # Error statuses beyond those implied by auth, path ids and the request body.
    errors: tuple[int, ...] = ()

    @property
    def full_path(self) -> str:
        return API_PREFIX + self.path


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid input; `details` names every problem.",
    401: "Missing, invalid or revoked API key.",
    403: "The API key's permission is too low for this request.",
    404: "Unknown, or belonging to another organization.",
    409: "Conflicts with the resource's current state.",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes.",
    415: "The body is not declared as application/json.",
    500: "A bug in botledger; the body carries the request id to report.",
    503: "A backing service (NATS JetStream, the object store) is not available; retry later.",
}


def _nullable(schema_type: str, **extra: Any) -> dict[str, Any]:
    return {"type": [schema_type, "null"], **extra}


TIMESTAMP = {"type": "integer", "description": "Unix time in milliseconds."}
NULLABLE_TIMESTAMP = _nullable("integer", description="Unix time in milliseconds.")
UUID_SCHEMA = {"type": "string", "format": "uuid"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error", "code", "details"],
        "properties": {
            "error": {"type": "string", "description": "One human-readable sentence."},
            "code": {"type": "string", "description": "Stable snake_case error code."},
            "details": {"type": "object", "description": "Values behind the error."},
        },
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded"]},
            "projectionSequence": {
                "type": "integer",
                "description": "Last stream sequence the read store has applied.",
            },
            "nats": {"type": "string", "enum": ["connected", "disconnected"]},
        },
    },
    "Bot": {
        "type": "object",
        "properties": {
            "id": UUID_SCHEMA,
            "name": {"type": "string"},
            "description": {"type": "string"},
            "targetUrl": {"type": "string", "format": "uri"},
            "kind": {"type": "string", "enum": ["extraction", "action"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "scriptVersion": {
                "type": "integer",
                "description": "Version of the step program; 0 before the first one is saved.",
            },
            "createdAt": TIMESTAMP,
            "updatedAt": TIMESTAMP,
        },
    },
    "BotInput": {
        "type": "object",
        "required": ["name", "targetUrl"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "targetUrl": {"type": "string", "format": "uri", "description": "http or https URL."},
            "description": {"type": "string", "maxLength": 2000, "default": ""},
            "kind": {"type": "string", "enum": ["extraction", "action"], "default": "extraction"},
            "tags": {
                "type": "array",
                "maxItems": 50,
                "items": {"type": "string", "minLength": 1, "maxLength": 100},
            },
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
        },
    },
    "Step": {
        "type": "object",
        "required": ["action"],
        "description": (
            "One step of a bot's program. Fields depend on the action: goto (url), click "
            "(selector, waitForNavigation), type (selector, text, clear), select (selector, "
            "value), press (key, selector), hover (selector), scroll (to, times, waitMs), "
            "waitFor (one of selector, navigation, ms), evaluate (expression, name), extract "
            "(name, selector, multiple, fields), screenshot (fullPage), assert (selector, "
            "textContains), paginate (next, maxPages, steps). Every step may have label and "
            "timeoutMs. String values may use {{params.NAME}} and {{bot.targetUrl}}."
        ),
        "properties": {
            "action": {
                "type": "string",
                "enum": [
                    "goto", "click", "type", "select", "press", "hover", "scroll", "waitFor",
                    "evaluate", "extract", "screenshot", "assert", "paginate",
                ],
            },
            "label": {"type": "string"},
            "timeoutMs": {"type": "integer", "minimum": 1},
        },
    },
    "StepProgram": {
        "type": "object",
        "properties": {
            "botId": UUID_SCHEMA,
            "scriptVersion": {"type": "integer"},
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
        },
    },
    "StepsInput": {
        "type": "object",
        "required": ["steps"],
        "description": "The new step program. A bare JSON list of steps is accepted too.",
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
        },
    },
    "Script": {
        "type": "object",
        "properties": {
            "version": {"type": "integer"},
            "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
            "createdAt": TIMESTAMP,
        },
    },
    "Capabilities": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "proxy": {"type": "boolean"},
            "locale": {"type": "string", "examples": ["en-US"]},
            "userAgent": {"type": "string"},
            "timezone": {"type": "string", "examples": ["Europe/Berlin"]},
            "geolocation": {
                "type": "object",
                "required": ["latitude", "longitude"],
                "properties": {
                    "latitude": {"type": "number", "minimum": -90, "maximum": 90},
                    "longitude": {"type": "number", "minimum": -180, "maximum": 180},
                },
            },
            "adBlocking": {"type": "boolean"},
            "resolution": {
                "type": "object",
                "required": ["width", "height"],
                "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}},
            },
            "timeout": {
                "type": "number",
                "description": "Wall-clock limit of an execution in seconds.",
            },
        },
    },
    "ParameterDefinition": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {
                "type": "string",
                "enum": ["string", "number", "integer", "boolean", "array", "object"],
            },
            "required": {"type": "boolean", "default": False},
            "default": {"description": "Not allowed for required or secret parameters."},
            "description": {"type": "string"},
            "allowed": {"type": "array", "description": "Not allowed for secret parameters."},
            "secret": {
                "type": "boolean",
                "default": False,
                "description": "Secret values are stored encrypted and shown as ***.",
            },
        },
    },
    "Parameters": {
        "type": "object",
        "additionalProperties": {"$ref": "#/components/schemas/ParameterDefinition"},
    },
    "WebhookInput": {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "description": (
            "secret and password are stored encrypted and never returned. Left out, they keep "
            "their stored value; null removes it. hmac needs a secret; jwt needs a secret, or "
            "loginUrl with username and password."
        ),
        "properties": {
            "url": {"type": "string", "format": "uri"},
            "auth": {"type": "string", "enum": ["none", "hmac", "jwt"], "default": "none"},
            "secret": _nullable("string"),
            "loginUrl": {"type": "string", "format": "uri"},
            "username": {"type": "string"},
            "password": _nullable("string"),
            "dataPath": {
                "type": "string",
                "description": "Dot path into the extracted data, for example products.0.",
            },
        },
    },
    "Webhook": {
        "type": "object",
        "properties": {
            "url": {"type": "string"},
            "auth": {"type": "string", "enum": ["none", "hmac", "jwt"]},
            "loginUrl": {"type": "string"},
            "username": {"type": "string"},
            "dataPath": {"type": "string"},
            "secretSet": {"type": "boolean"},
            "passwordSet": {"type": "boolean"},
        },
    },
    "Manifest": {
        "type": "object",
        "properties": {
            "capabilities": {"$ref": "#/components/schemas/Capabilities"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "webhook": {
                "oneOf": [{"$ref": "#/components/schemas/Webhook"}, {"type": "null"}],
            },
        },
    },
    "ManifestInput": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "description": "Any subset of the sections; sections left out stay as they were.",
        "properties": {
            "capabilities": {"$ref": "#/components/schemas/Capabilities"},
            "parameters": {"$ref": "#/components/schemas/Parameters"},
            "webhook": {"$ref": "#/components/schemas/WebhookInput"},
        },
    },
    "TriggerInput": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "params": {
                "type": "object",
                "description": "Values of the bot's parameters; defaults fill the rest.",
            },
        },
    },
    "Execution": {
        "type": "object",
        "properties": {
            "id": UUID_SCHEMA,
            "botId": UUID_SCHEMA,
            "status": {
                "type": "string",
                "enum": ["pending", "running", "completed", "failed", "cancelled", "timed_out"],
            },
            "trigger": {"type": "string", "examples": ["api"]},
            "params": {"type": "object", "description": "Secret values appear as ***."},
            "createdAt": TIMESTAMP,
            "startedAt": NULLABLE_TIMESTAMP,
            "completedAt": NULLABLE_TIMESTAMP,
            "duration": _nullable(
                "integer",
                description="Milliseconds; while running, the time since it started.",
            ),
            "error": _nullable("string", description="Failure reason when failed or timed out."),
            "cancelRequested": {"type": "boolean"},
            "scriptVersion": _nullable("integer"),
        },
    },
    "ExecutionStep": {
        "type": "object",
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "action": _nullable("string"),
            "label": _nullable("string"),
            "status": {
                "type": "string",
                "enum": ["pending", "running", "completed", "failed", "skipped"],
                "description": "skipped: the execution ended before the step started.",
            },
            "data": {"description": "What the step produced, or null."},
            "error": _nullable("string"),
            "startedAt": NULLABLE_TIMESTAMP,
            "completedAt": NULLABLE_TIMESTAMP,
            "duration": _nullable("integer", description="Milliseconds."),
        },
    },
    "Extract": {
        "type": "object",
        "properties": {
            "executionId": UUID_SCHEMA,
            "botId": UUID_SCHEMA,
            "completedAt": TIMESTAMP,
            "data": {"type": "object", "description": "The extracted data by name."},
        },
    },
    "Failure": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["failed", "timed_out"]},
            "error": {"type": "string"},
            "failedStepIndex": _nullable("integer"),
            "screenshotUrl": _nullable("string", format="uri"),
            "domSnapshotUrl": _nullable("string", format="uri"),
        },
    },
    "LogLine": {
        "type": "object",
        "properties": {
            "line": {"type": "integer", "description": "Zero-based position in the log."},
            "time": TIMESTAMP,
            "source": {"type": "string", "examples": ["runner", "script", "system"]},
            "level": {"type": "string"},
            "message": {"type": "string"},
        },
    },
    "ApiKey": {
        "type": "object",
        "properties": {
            "id": UUID_SCHEMA,
            "name": {"type": "string"},
            "permission": {"type": "string", "enum": ["read", "write", "admin"]},
            "prefix": {"type": "string", "description": "Public start of the key, for display."},
            "createdAt": TIMESTAMP,
            "revokedAt": NULLABLE_TIMESTAMP,
        },
    },
    "ApiKeyCreated": {
        "allOf": [
            {"$ref": "#/components/schemas/ApiKey"},
            {
                "type": "object",
                "properties": {
                    "key": {
                        "type": "string",
                        "description": "The secret key. It is shown only in this response.",
                    },
                },
            },
        ],
    },
    "ApiKeyInput": {
        "type": "object",
        "required": ["name", "permission"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "permission": {"type": "string", "enum": ["read", "write", "admin"]},
        },
    },
}


def _path_id(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"Id of the {what}; a value that is not a UUID gets a 404.",
        "schema": UUID_SCHEMA,
    }


PARAMETERS: dict[str, dict[str, Any]] = {
    "botId": _path_id("botId", "bot"),
    "executionId": _path_id("executionId", "execution"),
    "keyId": _path_id("keyId", "API key"),
    "index": {
        "name": "index",
        "in": "path",
        "required": True,
        "description": "Zero-based step index; not an integer: 400, out of range: 404.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "limit": {
        "name": "limit",
        "in": "query",
        "description": "Page size; any other value is a 400.",
        "schema": {
            "type": "integer", "minimum": 1, "maximum": MAX_PAGE_LIMIT,
            "default": DEFAULT_PAGE_LIMIT,
        },
    },
    "cursor": {
        "name": "cursor",
        "in": "query",
        "description": "Opaque cursor of the previous page; absent for the first page.",
        "schema": {"type": "string"},
    },
    "Idempotency-Key": {
        "name": "Idempotency-Key",
        "in": "header",
        "description": (
            "Makes retries safe: a repeated request with the same key and params returns the "
            "same execution with status 200; the same key with other params is a 409."
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
}

_PATH_PARAMETERS = frozenset({"botId", "executionId", "keyId", "index"})


def _success_content(answer: Answer) -> dict[str, Any]:
    if answer.kind == "raw":
        schema: dict[str, Any] = (
            {"$ref": f"#/components/schemas/{answer.schema}"} if answer.schema else {}
        )
        return {answer.content_type: {"schema": schema}}
    item = {"$ref": f"#/components/schemas/{answer.schema}"} if answer.schema else {}
    if answer.kind == "list":
        body = {
            "type": "object",
            "required": ["data", "cursor"],
            "properties": {
                "data": {"type": "array", "items": item},
                "cursor": _nullable("string", description="Null on the last page."),
            },
        }
    else:
        body = {"type": "object", "required": ["data"], "properties": {"data": item}}
    return {"application/json": {"schema": body}}


def _responses(operation: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for answer in operation.answers:
        response: dict[str, Any] = {"description": answer.description}
        if answer.kind != "empty":
            response["content"] = _success_content(answer)
        if answer.location:
            response["headers"] = {
                "Location": {
                    "description": "URL of the created resource.",
                    "schema": {"type": "string"},
                }
            }
        responses[str(answer.status)] = response

    for status in _error_statuses(operation):
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    return responses


def _error_statuses(operation: Operation) -> list[int]:
    statuses = set(operation.errors) | {500}
    if operation.permission is not None:
        statuses |= {401, 403}
    if _PATH_PARAMETERS.intersection(operation.parameters):
        statuses.add(404)
    if {"limit", "cursor", "index"}.intersection(operation.parameters):
        statuses.add(400)
    if operation.request_schema is not None:
        statuses |= {400, 413, 415}
    return sorted(statuses)


def _operation_document(operation: Operation) -> dict[str, Any]:
    description = operation.description
    if operation.permission is not None:
        description = f"Needs a key with **{operation.permission}** permission. {description}"
    document: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "description": description.strip(),
        "tags": [operation.tag],
        "security": [{"bearerAuth": []}] if operation.permission is not None else [],
        "x-permission": operation.permission,
        "parameters": [
            {"$ref": f"#/components/parameters/{name}"} for name in operation.parameters
        ],
        "responses": _responses(operation),
    }
    if operation.request_schema is not None:
        document["requestBody"] = {
            "required": operation.request_required,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{operation.request_schema}"}
                }
            },
        }
    return document


def _version() -> str:
    try:
        return metadata.version("botledger")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_openapi(
    operations: Iterable[Operation], extra_paths: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of the operations plus the path items of extra routes."""
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        item = paths.setdefault(operation.full_path, {})
        item[operation.method.lower()] = _operation_document(operation)
    for path, extra_item in extra_paths.items():
        paths.setdefault(path, {}).update(extra_item)

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "botledger API",
            "version": _version(),
            "description": (
                "Bots, executions and API keys of botledger. Every request except health and "
                "these docs needs `Authorization: Bearer <api-key>`. Success bodies are "
                '`{"data": ...}`, lists `{"data": [...], "cursor": ...}` (newest first), '
                'errors `{"error", "code", "details"}`. Timestamps are Unix milliseconds.'
            ),
        },
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "parameters": PARAMETERS,
            "responses": {
                f"Error{status}": {
                    "description": description,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for status, description in ERROR_DESCRIPTIONS.items()
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key of the organization, for example blk_1a2b3c4d_....",
                }
            },
        },
    }
