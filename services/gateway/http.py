"""Request parsing and response building shared by the gateway's handlers.

Bodies are JSON objects of at most ``MAX_BODY_BYTES``, and responses are ``{"data": ...}``, lists
``{"data": [...], "cursor": ...}``. Path ids that are not UUIDs name nothing, so they are a 404
like any unknown id.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from events.errors import NotFoundError, ValidationError
from projections.read_store import decode_cursor, encode_cursor
from services.gateway.errors import PayloadTooLargeError, UnsupportedMediaTypeError
from services.runner.program import closest_match, json_type

MAX_BODY_BYTES = 1024 * 1024
DEFAULT_PAGE_LIMIT = 20
MAX_PAGE_LIMIT = 100
API_PREFIX = "/api/v1"


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps({"data": data}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def list_response(items: list[Any], cursor: str | None) -> web.Response:
    return web.Response(
        body=orjson.dumps({"data": items, "cursor": cursor}), content_type="application/json"
    )


def created_response(data: dict[str, Any], location: str, status: int = 201) -> web.Response:
    return json_response(data, status=status, headers={"Location": location})


def _is_json_content_type(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


class _NoBody:
    """Marker for an absent body, which differs from a JSON ``null``."""


NO_BODY: Any = _NoBody()


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Any:
    """Read and parse the JSON body; an empty body is ``NO_BODY`` when ``allow_empty``.

    Raises UnsupportedMediaTypeError for a body that is not declared as JSON,
    PayloadTooLargeError above the size limit and ValidationError for invalid JSON.
    """
    length = request.content_length
    if length is not None and length > request.client_max_size:
        raise PayloadTooLargeError(
            f"The request body has {length} bytes; the limit is {request.client_max_size}.",
            {"maxBytes": request.client_max_size, "bytes": length},
        )
    if not request.body_exists and allow_empty:
        return NO_BODY
    if not _is_json_content_type(request.content_type):
        raise UnsupportedMediaTypeError(
            f"Unsupported Content-Type {request.content_type!r}: send the body as "
            "application/json.",
            {"contentType": request.content_type},
        )

    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(
            f"The request body is larger than the limit of {request.client_max_size} bytes.",
            {"maxBytes": request.client_max_size},
        ) from None
    if not raw:
        if allow_empty:
            return NO_BODY
        raise ValidationError("The request body is empty: send a JSON object.")

    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ValidationError(
            f"The request body is not valid JSON: {error}.",
            {"position": error.pos},
        ) from None


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """Read a JSON object body; an allowed empty body reads as ``{}``."""
    body = await read_json(request, allow_empty=allow_empty)
    if body is NO_BODY:
        return {}
    if not isinstance(body, dict):
        raise ValidationError(
            f"Expected a JSON object as the request body, got {json_type(body)}.",
        )
    return body


def unknown_field_problems(
    body: Mapping[str, Any], known: Sequence[str], path: str = ""
) -> list[dict[str, str]]:
    """List a problem for each key of ``body`` outside ``known``, with the closest known name."""
    problems = []
    for key in body:
        if key in known:
            continue
        suggestion = closest_match(key, known)
        hint = f" Did you mean '{suggestion}'?" if suggestion else ""
        problems.append(
            {"path": f"{path}{key}", "message": f"Unknown field '{key}'.{hint}"}
        )
    return problems


def raise_problems(subject: str, problems: list[dict[str, str]]) -> None:
    """Raise one ValidationError listing every problem, or return when there are none."""
    if not problems:
        return
    path = problems[0]["path"]
    first = f"{path}: {problems[0]['message']}" if path else problems[0]["message"]
    if len(problems) == 1:
        message = first
    else:
        message = (
            f"The {subject} has {len(problems)} problems, all listed in details.problems. "
            f"The first is {first}"
        )
    raise ValidationError(message, {"problems": problems})


def problems_of(error: ValidationError, fallback_path: str) -> list[dict[str, str]]:
    """Return the problems a validator listed, or one problem made of its message."""
    problems = error.details.get("problems")
    if isinstance(problems, list) and problems:
        return list(problems)
    return [{"path": fallback_path, "message": error.message}]


def path_uuid(request: web.Request, name: str, what: str) -> str:
    """Return the path value ``name`` as a canonical UUID string; NotFoundError otherwise."""
    value = request.match_info[name]
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFoundError(f"No {what} with id {value!r} exists.", {name: value}) from None


def api_url(request: web.Request, path: str) -> str:
    """Return the absolute URL of an API path, built from the request's scheme and host."""
    return f"{request.scheme}://{request.host}{API_PREFIX}{path}"


@dataclasses.dataclass(frozen=True)
class Page:
    """The requested page of a list: its size and the sequence it starts below."""

    limit: int
    before_seq: int | None


def parse_page(request: web.Request) -> Page:
    """Read ``limit`` (1..100, default 20) and ``cursor`` from the query string."""
    raw_limit = request.query.get("limit")
    limit = DEFAULT_PAGE_LIMIT
    if raw_limit is not None:
        stripped = raw_limit.strip()
        if not stripped.isascii() or not stripped.isdigit() or not (
            1 <= int(stripped) <= MAX_PAGE_LIMIT
        ):
            raise ValidationError(
                f"Invalid limit {raw_limit!r}: use a whole number from 1 to {MAX_PAGE_LIMIT}.",
                {"limit": raw_limit},
            )
        limit = int(stripped)

    cursor = request.query.get("cursor")
    before_seq = None
    if cursor is not None and cursor != "":
        before_seq = decode_cursor(cursor)
        if before_seq < 1:
            raise ValidationError(
                f"Invalid cursor {cursor!r}: pass the cursor of a previous page unchanged.",
                {"cursor": cursor},
            )
    return Page(limit, before_seq)


def page_of(rows: Sequence[sqlite3.Row], page: Page) -> tuple[Sequence[sqlite3.Row], str | None]:
    """Split a query result of ``limit + 1`` rows into the page and the next page's cursor."""
    if len(rows) <= page.limit:
        return rows, None
    shown = rows[: page.limit]
    return shown, encode_cursor(int(shown[-1]["seq"]))


def check_query_names(request: web.Request, allowed: Collection[str]) -> None:
    """Reject query parameters the route does not take, and repeated ones, all at once.

    Ignoring a misspelt ``limt`` or ``tpye`` would silently return something else than asked.
    """
    problems = []
    for name in sorted(set(request.query)):
        if name not in allowed:
            suggestion = closest_match(name, allowed)
            hint = f" Did you mean '{suggestion}'?" if suggestion else " This route takes none."
            problems.append({"path": f"query.{name}",
                             "message": f"Unknown query parameter '{name}'.{hint}"})
        elif len(request.query.getall(name)) > 1:
            problems.append({"path": f"query.{name}",
                             "message": f"Query parameter '{name}' is given more than once; "
                             "give it once."})
    raise_problems("query string", problems)
