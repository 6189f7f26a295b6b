"""A self-contained HTML page that presents the OpenAPI document to people.

The page has inline CSS and no scripts, so it loads nothing from any other host.
"""

from __future__ import annotations

import html
import re
from typing import Any

import orjson

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem 2rem;
       color: #1d2330; }
h1 { margin-bottom: 0.2rem; }
h2 { border-bottom: 1px solid #ccd; margin-top: 2.5rem; }
section.op { border: 1px solid #dde; border-radius: 6px; margin: 1rem 0; padding: 0.6rem 1rem; }
.method { display: inline-block; min-width: 4.5rem; font-weight: bold; font-family: monospace; }
.GET { color: #1b6e3a; } .POST { color: #1f4fa8; } .PUT { color: #8a5a00; }
.DELETE { color: #a11; }
code, pre { font-family: ui-monospace, monospace; font-size: 13px; }
pre { background: #f5f6fa; padding: 0.6rem; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; margin: 0.4rem 0; }
td, th { border: 1px solid #dde; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
.perm { font-size: 12px; background: #eef; border-radius: 3px; padding: 0 0.4rem; }
nav a { margin-right: 0.8rem; }
"""


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _inline_markdown(text: object) -> str:
    """Escape text and render the two inline markups the descriptions use: **bold** and `code`."""
    escaped = _escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _resolve(document: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (#/components/...) one level."""
    ref = item.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return item
    target: Any = document
    for part in ref[2:].split("/"):
        target = target.get(part, {}) if isinstance(target, dict) else {}
    return target if isinstance(target, dict) else {}


def _json_block(value: object) -> str:
    return f"<pre>{_escape(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())}</pre>"


def _parameters_table(document: dict[str, Any], operation: dict[str, Any]) -> str:
    parameters = [_resolve(document, p) for p in operation.get("parameters", [])]
    if not parameters:
        return ""
    rows = "".join(
        f"<tr><td><code>{_escape(p.get('name'))}</code></td><td>{_escape(p.get('in'))}</td>"
        f"<td>{_escape(p.get('schema', {}).get('type', ''))}</td>"
        f"<td>{_inline_markdown(p.get('description', ''))}</td></tr>"
        for p in parameters
    )
    return (
        "<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Description</th></tr>"
        f"{rows}</table>"
    )


def _request_body(document: dict[str, Any], operation: dict[str, Any]) -> str:
    body = operation.get("requestBody")
    if not body:
        return ""
    parts = []
    for content_type, media in body.get("content", {}).items():
        schema = media.get("schema", {})
        name = str(schema.get("$ref", "")).rsplit("/", 1)[-1]
        parts.append(
            f"<p>Request body ({_escape(content_type)}"
            f"{', required' if body.get('required') else ', optional'}): "
            f"<a href='#schema-{_escape(name)}'>{_escape(name)}</a></p>"
        )
    return "".join(parts)


def _responses_table(document: dict[str, Any], operation: dict[str, Any]) -> str:
    rows = []
    for status, response in operation.get("responses", {}).items():
        resolved = _resolve(document, response)
        rows.append(
            f"<tr><td>{_escape(status)}</td><td>{_inline_markdown(resolved.get('description', ''))}"
            "</td></tr>"
        )
    return f"<table><tr><th>Status</th><th>Meaning</th></tr>{''.join(rows)}</table>"


def _operation_section(
    document: dict[str, Any], path: str, method: str, operation: dict[str, Any]
) -> str:
    permission = operation.get("x-permission")
    badge = (
        f" <span class='perm'>{_escape(permission)} key</span>" if permission else
        " <span class='perm'>no key</span>"
    )
    return (
        f"<section class='op' id='{_escape(operation.get('operationId', path))}'>"
        f"<div><span class='method {_escape(method.upper())}'>{_escape(method.upper())}</span>"
        f"<code>{_escape(path)}</code>{badge}</div>"
        f"<p><strong>{_escape(operation.get('summary', ''))}</strong></p>"
        f"<p>{_inline_markdown(operation.get('description', ''))}</p>"
        f"{_parameters_table(document, operation)}"
        f"{_request_body(document, operation)}"
        f"{_responses_table(document, operation)}"
        "</section>"
    )


def render_docs_html(document: dict[str, Any]) -> str:
    """Render an OpenAPI 3.1 document as one HTML page, grouped by tag."""
    info = document.get("info", {})
    groups: dict[str, list[str]] = {}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or method.startswith("x-"):
                continue
            tag = (operation.get("tags") or ["Other"])[0]
            groups.setdefault(tag, []).append(_operation_section(document, path, method, operation))

    nav = "".join(f"<a href='#tag-{_escape(tag)}'>{_escape(tag)}</a>" for tag in groups)
    sections = "".join(
        f"<h2 id='tag-{_escape(tag)}'>{_escape(tag)}</h2>{''.join(items)}"
        for tag, items in groups.items()
    )
    schemas = "".join(
        f"<h3 id='schema-{_escape(name)}'>{_escape(name)}</h3>{_json_block(schema)}"
        for name, schema in document.get("components", {}).get("schemas", {}).items()
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_escape(info.get('title', 'API'))}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_escape(info.get('title', 'API'))}</h1>"
        f"<p>Version {_escape(info.get('version', ''))}. "
        "Machine-readable: <a href='/api/v1/openapi.json'>openapi.json</a>.</p>"
        f"<p>{_inline_markdown(info.get('description', ''))}</p>"
        f"<nav>{nav}<a href='#schemas'>Schemas</a></nav>{sections}"
        f"<h2 id='schemas'>Schemas</h2>{schemas}</body></html>"
    )
