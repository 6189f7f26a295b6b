"""Validation, normalization and parameter substitution of a bot's step program.

Everything here is pure (no browser, no I/O), so the gateway checks what a client saves or sends
with the same code that the runner uses before it runs a program. Every validator collects all
problems of its input and raises one ``ValidationError`` whose ``details["problems"]`` lists them.

Decisions that the step table leaves open:

- A ``paginate`` step may not contain another ``paginate`` step. Nested page loops multiply the
  pages visited (``maxPages`` squared) and make the order of extracted records hard to predict.
- Placeholders (``{{params.name}}``, ``{{bot.targetUrl}}``) are substituted only in the fields
  that reach the page: url, selector, text, value, key, to, expression, textContains, next and
  the selectors of ``extract.fields``. ``action``, ``label`` and ``name`` stay literal.
- In ``evaluate.expression`` a placeholder becomes a JSON literal (a string value arrives quoted),
  so a parameter value can never turn into JavaScript code. Everywhere else the value is inserted
  as plain text, and a non-string value as its JSON encoding.
- ``scroll`` waits ``waitMs`` between two scrolls, not after the last one. Follow it with a
  ``waitFor`` step to wait for the content that the last scroll loads.
- ``waitFor`` with ``navigation`` waits for a navigation that starts after the step begins. To
  follow a click, use ``click`` with ``waitForNavigation`` instead.
- A step's ``timeoutMs`` defaults to the runner's default (30 s). ``waitFor.ms`` and the waits of
  ``scroll`` are added to that default. For ``paginate``, ``timeoutMs`` bounds each page turn,
  and the nested steps keep their own timeouts.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import orjson
import textdistance

from events.errors import ValidationError

MAX_STEPS: Final = 500
MAX_STRING_CHARS: Final = 10_000
MAX_STEP_TIMEOUT_MS: Final = 600_000
MAX_SCROLL_TIMES: Final = 100
MAX_SCROLL_WAIT_MS: Final = 60_000
MAX_PAGES: Final = 1_000
MAX_EXTRACT_FIELDS: Final = 100
MAX_SELECT_VALUES: Final = 100
MAX_PARAMETERS: Final = 100
MAX_ALLOWED_VALUES: Final = 1_000
MAX_REPORTED_PROBLEMS: Final = 100

DEFAULT_SCROLL_WAIT_MS: Final = 500
DEFAULT_MAX_PAGES: Final = 10

PARAMETER_TYPES: Final = ("string", "number", "integer", "boolean", "array", "object")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
_PLACEHOLDER_PARAM = re.compile(r"params\.([A-Za-z_][A-Za-z0-9_]{0,63})")
_PLACEHOLDER_TARGET_URL = "bot.targetUrl"
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

_NO_DEFAULT: Final = object()


# --- Shared helpers -------------------------------------------------------------------------


def closest_match(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate with the smallest Levenshtein distance to ``name`` (ties: first in
    alphabetical order), or None when there are no candidates."""
    ranked = sorted(
        (textdistance.levenshtein.distance(name, candidate), candidate) for candidate in candidates
    )
    return ranked[0][1] if ranked else None


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    suggestion = closest_match(name, candidates)
    return f" Did you mean '{suggestion}'?" if suggestion is not None else ""


def json_type(value: object) -> str:
    """Name a JSON value's type for error messages: 'a string', 'a list', 'null'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _json_text(value: object, max_chars: int = 100) -> str:
    """Encode ``value`` as JSON for an error message, shortened to ``max_chars``."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _as_integer(value: object) -> int | None:
    """Return ``value`` as an int when it is a JSON integer (3 or 3.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


class _Problems:
    """Problems found in one input, each with the path of the value it concerns."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.items: list[dict[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append({"path": path, "message": message})

    def raise_if_any(self) -> None:
        if not self.items:
            return

        first = self.items[0]
        first_text = f"{first['path']}: {first['message']}"
        if len(self.items) == 1:
            message = first_text
        else:
            message = (
                f"The {self.subject} has {len(self.items)} problems, all listed in details.problems. "
                f"The first is {first_text}"
            )

        details: dict[str, Any] = {"problems": self.items[:MAX_REPORTED_PROBLEMS]}
        if len(self.items) > MAX_REPORTED_PROBLEMS:
            details["omittedProblems"] = len(self.items) - MAX_REPORTED_PROBLEMS
        raise ValidationError(message, details=details)


# --- Step program ---------------------------------------------------------------------------

_FieldKind = Literal["string", "boolean", "integer", "select_value", "fields", "steps"]


@dataclasses.dataclass(frozen=True)
class _Field:
    """Schema of one step field. ``template`` fields may contain placeholders."""

    kind: _FieldKind
    required: bool = False
    default: Any = _NO_DEFAULT
    minimum: int = 0
    maximum: int = 0
    template: bool = False
    allow_empty: bool = False


def _selector(required: bool = True) -> _Field:
    return _Field("string", required=required, template=True)


def _flag(default: Any = False) -> _Field:
    return _Field("boolean", default=default)


ACTION_FIELDS: Final[dict[str, dict[str, _Field]]] = {
    "goto": {"url": _Field("string", required=True, template=True)},
    "click": {"selector": _selector(), "waitForNavigation": _flag()},
    "type": {
        "selector": _selector(),
        "text": _Field("string", required=True, template=True, allow_empty=True),
        "clear": _flag(),
    },
    "select": {
        "selector": _selector(),
        "value": _Field("select_value", required=True, template=True),
    },
    "press": {
        "key": _Field("string", required=True, template=True),
        "selector": _selector(required=False),
    },
    "hover": {"selector": _selector()},
    "scroll": {
        "to": _Field("string", default="bottom", template=True),
        "times": _Field("integer", default=1, minimum=1, maximum=MAX_SCROLL_TIMES),
        "waitMs": _Field(
            "integer", default=DEFAULT_SCROLL_WAIT_MS, minimum=0, maximum=MAX_SCROLL_WAIT_MS
        ),
    },
    "waitFor": {
        "selector": _selector(required=False),
        "navigation": _flag(default=_NO_DEFAULT),
        "ms": _Field("integer", minimum=0, maximum=MAX_STEP_TIMEOUT_MS),
    },
    "evaluate": {
        "expression": _Field("string", required=True, template=True),
        "name": _Field("string"),
    },
    "extract": {
        "name": _Field("string", required=True),
        "selector": _selector(),
        "multiple": _flag(),
        "fields": _Field("fields"),
    },
    "screenshot": {"fullPage": _flag()},
    "assert": {"selector": _selector(), "textContains": _Field("string", template=True)},
    "paginate": {
        "next": _selector(),
        "maxPages": _Field("integer", default=DEFAULT_MAX_PAGES, minimum=1, maximum=MAX_PAGES),
        "steps": _Field("steps", required=True),
    },
}

COMMON_FIELDS: Final[dict[str, _Field]] = {
    "label": _Field("string"),
    "timeoutMs": _Field("integer", minimum=1, maximum=MAX_STEP_TIMEOUT_MS),
}

_EXTRACT_FIELD_KEYS: Final = ("selector", "attribute")


def validate_steps(steps: object) -> list[dict[str, Any]]:
    """Validate a step program and return a normalized copy with every default filled in.

    Raises ValidationError listing every problem, each with its path (``steps[2].slector``).
    Unknown actions and fields come with the closest valid name.
    """
    validator = _StepValidator()
    normalized = validator.validate_list(steps, "steps", nested=False)
    if validator.step_count > MAX_STEPS:
        validator.problems.add(
            "steps",
            f"The program has {validator.step_count} steps, nested steps included. The maximum is {MAX_STEPS}.",
        )
    validator.problems.raise_if_any()
    return normalized


class _StepValidator:
    def __init__(self) -> None:
        self.problems = _Problems("step program")
        self.step_count = 0

    def validate_list(self, steps: object, path: str, *, nested: bool) -> list[dict[str, Any]]:
        if not isinstance(steps, list):
            self.problems.add(path, f"Expected a JSON list of steps, got {json_type(steps)}.")
            return []

        normalized: list[dict[str, Any]] = []
        for index, step in enumerate(steps):
            self.step_count += 1
            result = self.validate_step(step, f"{path}[{index}]", nested=nested)
            if result is not None:
                normalized.append(result)
        return normalized

    def validate_step(self, step: object, path: str, *, nested: bool) -> dict[str, Any] | None:
        if not isinstance(step, dict):
            self.problems.add(
                path, f"Expected a step object with an 'action' field, got {json_type(step)}."
            )
            return None

        action = self.check_action(step, path, nested=nested)
        if action is None:
            return None

        fields = {**ACTION_FIELDS[action], **COMMON_FIELDS}
        for key in step:
            if key != "action" and key not in fields:
                self.problems.add(
                    f"{path}.{key}",
                    f"Unknown field '{key}' for action '{action}'."
                    + _did_you_mean(str(key), [*fields, "action"]),
                )

        normalized: dict[str, Any] = {"action": action}
        for name, field in fields.items():
            field_path = f"{path}.{name}"
            if name in step:
                value = self.check_value(step[name], field, field_path)
                if value is not None:
                    normalized[name] = value
            elif field.required:
                self.problems.add(
                    field_path, f"Missing required field '{name}' for action '{action}'."
                )
            elif field.default is not _NO_DEFAULT:
                normalized[name] = field.default

        self.check_action_rules(action, step, normalized, path)
        return normalized

    def check_action(self, step: dict[str, Any], path: str, *, nested: bool) -> str | None:
        action = step.get("action")
        if "action" not in step:
            self.problems.add(
                f"{path}.action",
                f"Missing required field 'action'. Valid actions: {', '.join(ACTION_FIELDS)}.",
            )
            return None
        if not isinstance(action, str):
            self.problems.add(
                f"{path}.action", f"Expected the action name as a string, got {json_type(action)}."
            )
            return None
        if action not in ACTION_FIELDS:
            self.problems.add(
                f"{path}.action",
                f"Unknown action '{action}'." + _did_you_mean(action, ACTION_FIELDS),
            )
            return None
        if nested and action == "paginate":
            self.problems.add(
                f"{path}.action",
                "A paginate step cannot contain another paginate step. Move the inner loop to a top-level step.",
            )
            return None
        return action

    def check_value(self, value: object, field: _Field, path: str) -> Any:
        """Return the normalized value, or None after recording a problem."""
        if field.kind == "string":
            return self.check_string(
                value, path, template=field.template, allow_empty=field.allow_empty
            )
        if field.kind == "boolean":
            if not isinstance(value, bool):
                self.problems.add(path, f"Expected true or false, got {json_type(value)}.")
                return None
            return value
        if field.kind == "integer":
            return self.check_integer(value, path, field.minimum, field.maximum)
        if field.kind == "select_value":
            return self.check_select_value(value, path)
        if field.kind == "fields":
            return self.check_extract_fields(value, path)
        return self.check_nested_steps(value, path)

    def check_string(
        self, value: object, path: str, *, template: bool, allow_empty: bool = False
    ) -> str | None:
        if not isinstance(value, str):
            self.problems.add(path, f"Expected a string, got {json_type(value)}.")
            return None
        if not value and not allow_empty:
            self.problems.add(path, "Expected a non-empty string.")
            return None
        if len(value) > MAX_STRING_CHARS:
            self.problems.add(
                path, f"The string has {len(value)} characters. The maximum is {MAX_STRING_CHARS}."
            )
            return None
        if template:
            self.check_placeholders(value, path)
        return value

    def check_placeholders(self, value: str, path: str) -> None:
        for match in _PLACEHOLDER.finditer(value):
            inner = match.group(1).strip()
            if inner != _PLACEHOLDER_TARGET_URL and not _PLACEHOLDER_PARAM.fullmatch(inner):
                self.problems.add(
                    path,
                    f"Unknown placeholder '{match.group(0)}'. Use {{{{params.NAME}}}} or {{{{bot.targetUrl}}}}.",
                )

    def check_integer(self, value: object, path: str, minimum: int, maximum: int) -> int | None:
        number = _as_integer(value)
        if number is None:
            self.problems.add(
                path, f"Expected an integer, got {json_type(value)} {_json_text(value)}."
            )
            return None
        if not minimum <= number <= maximum:
            self.problems.add(
                path, f"Expected an integer from {minimum} to {maximum}, got {number}."
            )
            return None
        return number

    def check_select_value(self, value: object, path: str) -> str | list[str] | None:
        if isinstance(value, str):
            return self.check_string(value, path, template=True, allow_empty=True)
        if not isinstance(value, list) or not value or len(value) > MAX_SELECT_VALUES:
            self.problems.add(
                path,
                f"Expected a string or a list of 1 to {MAX_SELECT_VALUES} strings, got {json_type(value)}.",
            )
            return None

        values = [
            self.check_string(item, f"{path}[{i}]", template=True, allow_empty=True)
            for i, item in enumerate(value)
        ]
        return [item for item in values if item is not None] if None not in values else None

    def check_extract_fields(self, value: object, path: str) -> dict[str, Any] | None:
        if not isinstance(value, dict) or not value or len(value) > MAX_EXTRACT_FIELDS:
            self.problems.add(
                path,
                f"Expected an object of 1 to {MAX_EXTRACT_FIELDS} fields (name to selector or "
                f"{{selector, attribute}}), got {json_type(value)}.",
            )
            return None

        normalized: dict[str, Any] = {}
        for name, spec in value.items():
            field_path = f"{path}.{name}"
            if not isinstance(name, str) or not name or len(name) > MAX_STRING_CHARS:
                self.problems.add(field_path, "Expected a non-empty field name.")
                continue
            checked: str | dict[str, str] | None
            if isinstance(spec, dict):
                checked = self.check_extract_field_object(spec, field_path)
            else:
                checked = self.check_string(spec, field_path, template=True)
            if checked is not None:
                normalized[name] = checked
        return normalized

    def check_extract_field_object(self, spec: dict[str, Any], path: str) -> dict[str, str] | None:
        for key in spec:
            if key not in _EXTRACT_FIELD_KEYS:
                self.problems.add(
                    f"{path}.{key}",
                    f"Unknown key '{key}' in an extract field."
                    + _did_you_mean(str(key), _EXTRACT_FIELD_KEYS),
                )
        if "selector" not in spec:
            self.problems.add(
                f"{path}.selector", "Missing required key 'selector' in an extract field."
            )
            return None

        selector = self.check_string(spec["selector"], f"{path}.selector", template=True)
        result: dict[str, str] = {}
        if selector is not None:
            result["selector"] = selector
        if "attribute" in spec:
            attribute = self.check_string(spec["attribute"], f"{path}.attribute", template=False)
            if attribute is not None:
                result["attribute"] = attribute
        return result

    def check_nested_steps(self, value: object, path: str) -> list[dict[str, Any]] | None:
        if isinstance(value, list) and not value:
            self.problems.add(path, "Expected at least one nested step.")
            return None
        return self.validate_list(value, path, nested=True)

    def check_action_rules(
        self, action: str, step: dict[str, Any], normalized: dict[str, Any], path: str
    ) -> None:
        if action == "goto" and isinstance(normalized.get("url"), str):
            self.check_url(normalized["url"], f"{path}.url")
        if action == "waitFor":
            self.check_wait_for(step, normalized, path)

    def check_url(self, url: str, path: str) -> None:
        # A URL that starts with a placeholder gets its scheme only at run time, where the
        # runner checks it again.
        if url.lstrip().startswith("{{"):
            return
        problem = url_scheme_problem(url)
        if problem is not None:
            self.problems.add(path, problem)

    def check_wait_for(self, step: dict[str, Any], normalized: dict[str, Any], path: str) -> None:
        given = [name for name in ("selector", "navigation", "ms") if name in step]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            self.problems.add(
                path,
                f"A waitFor step needs exactly one of 'selector', 'navigation' or 'ms', got {found}.",
            )
        if normalized.get("navigation") is False:
            self.problems.add(
                f"{path}.navigation",
                "Expected true: waitFor with navigation false waits for nothing.",
            )

        wait_ms = normalized.get("ms")
        timeout_ms = normalized.get("timeoutMs")
        if isinstance(wait_ms, int) and isinstance(timeout_ms, int) and wait_ms >= timeout_ms:
            self.problems.add(
                f"{path}.ms",
                f"The wait of {wait_ms} ms does not fit in the step's timeoutMs of {timeout_ms} ms.",
            )


def url_scheme_problem(url: str) -> str | None:
    """Return why ``url`` cannot be opened by a goto step, or None when it is an http(s) URL.

    Other schemes are rejected because file:, chrome: and similar URLs would let a bot read
    the runner's machine.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return f"Invalid URL {_json_text(url)}."
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"Expected an absolute http or https URL, got {_json_text(url)}."
    return None


# --- Placeholders ---------------------------------------------------------------------------


def substitute(
    value: str, params: Mapping[str, Any], bot: Mapping[str, Any], *, json_literals: bool = False
) -> str:
    """Replace the ``{{params.name}}`` and ``{{bot.targetUrl}}`` placeholders in ``value``.

    Substitution is plain text and runs once: a placeholder inside a parameter value stays
    literal. A non-string value is inserted as its JSON encoding. With ``json_literals`` every
    value, strings included, is inserted as a JSON literal, which is how ``evaluate`` expressions
    receive parameters. Raises ValidationError naming a parameter that has no value.
    """

    def replace(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        if inner == _PLACEHOLDER_TARGET_URL:
            if "targetUrl" not in bot:
                raise ValidationError(
                    "The placeholder {{bot.targetUrl}} has no value because the bot has no targetUrl."
                )
            return _placeholder_text(bot["targetUrl"], json_literals=json_literals)

        param = _PLACEHOLDER_PARAM.fullmatch(inner)
        if param is None:
            raise ValidationError(
                f"Unknown placeholder '{match.group(0)}'. Use {{{{params.NAME}}}} or {{{{bot.targetUrl}}}}."
            )
        name = param.group(1)
        if name not in params:
            raise ValidationError(
                f"The step program uses parameter '{name}', which has no value. Define it in the manifest's "
                "parameters with a default, or pass it in params.",
                details={"parameter": name},
            )
        return _placeholder_text(params[name], json_literals=json_literals)

    return _PLACEHOLDER.sub(replace, value)


def _placeholder_text(value: Any, *, json_literals: bool) -> str:
    if isinstance(value, str) and not json_literals:
        return value
    return orjson.dumps(value).decode()


def render_step(
    step: Mapping[str, Any], params: Mapping[str, Any], bot: Mapping[str, Any]
) -> dict[str, Any]:
    """Return a copy of a validated step with the placeholders of its template fields substituted.

    The nested steps of a paginate step are left as they are: the runner renders each one
    when it runs it.
    """
    rendered = copy.deepcopy(dict(step))
    fields = ACTION_FIELDS.get(str(step.get("action")), {})
    for name, field in fields.items():
        if not field.template or name not in rendered:
            continue
        value = rendered[name]
        json_literals = name == "expression"
        if isinstance(value, str):
            rendered[name] = substitute(value, params, bot, json_literals=json_literals)
        elif isinstance(value, list):
            rendered[name] = [substitute(item, params, bot) for item in value]

    if isinstance(rendered.get("fields"), dict):
        rendered["fields"] = {
            name: _render_extract_field(spec, params, bot)
            for name, spec in rendered["fields"].items()
        }
    return rendered


def _render_extract_field(spec: Any, params: Mapping[str, Any], bot: Mapping[str, Any]) -> Any:
    if isinstance(spec, str):
        return substitute(spec, params, bot)
    return {**spec, "selector": substitute(spec["selector"], params, bot)}


def referenced_params(steps: Iterable[Mapping[str, Any]]) -> set[str]:
    """Return the names of the parameters that a validated program's placeholders use."""
    names: set[str] = set()
    for text in _template_strings(steps):
        for match in _PLACEHOLDER.finditer(text):
            param = _PLACEHOLDER_PARAM.fullmatch(match.group(1).strip())
            if param is not None:
                names.add(param.group(1))
    return names


def _template_strings(steps: Iterable[Mapping[str, Any]]) -> Iterable[str]:
    for step in steps:
        fields = ACTION_FIELDS.get(str(step.get("action")), {})
        for name, field in fields.items():
            value = step.get(name)
            if field.template and isinstance(value, str):
                yield value
            elif field.template and isinstance(value, list):
                yield from (item for item in value if isinstance(item, str))

        extract_fields = step.get("fields")
        if isinstance(extract_fields, dict):
            for spec in extract_fields.values():
                yield spec if isinstance(spec, str) else str(spec.get("selector", ""))

        nested = step.get("steps")
        if isinstance(nested, list):
            yield from _template_strings(nested)


# --- Parameters -----------------------------------------------------------------------------

_PARAMETER_KEYS: Final = ("type", "required", "default", "description", "allowed", "secret")


def validate_parameter_definitions(defs: object) -> dict[str, dict[str, Any]]:
    """Validate the manifest's ``parameters`` section and return it normalized.

    Every definition gets ``type``, ``required`` (default false), ``description`` (default
    empty) and ``secret`` (default false). ``default`` and ``allowed`` appear only when given.
    Secret parameters must be strings, because the runner masks secret values as text.
    """
    problems = _Problems("parameters section")
    if defs is None:
        return {}
    if not isinstance(defs, dict):
        problems.add(
            "parameters",
            f"Expected an object mapping parameter names to definitions, got {json_type(defs)}.",
        )
        problems.raise_if_any()
        return {}
    if len(defs) > MAX_PARAMETERS:
        problems.add(
            "parameters",
            f"The section defines {len(defs)} parameters. The maximum is {MAX_PARAMETERS}.",
        )

    normalized: dict[str, dict[str, Any]] = {}
    for name, definition in defs.items():
        path = f"parameters.{name}"
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            problems.add(
                path,
                f"Invalid parameter name {_json_text(name)}: use 1 to 64 letters, digits or _, not starting with a digit.",
            )
            continue
        result = _validate_parameter_definition(definition, path, problems)
        if result is not None:
            normalized[name] = result

    problems.raise_if_any()
    return normalized


def _validate_parameter_definition(
    definition: object, path: str, problems: _Problems
) -> dict[str, Any] | None:
    if not isinstance(definition, dict):
        problems.add(
            path, f"Expected a definition object with a 'type', got {json_type(definition)}."
        )
        return None
    for key in definition:
        if key not in _PARAMETER_KEYS:
            problems.add(
                f"{path}.{key}",
                f"Unknown key '{key}' in a parameter definition."
                + _did_you_mean(str(key), _PARAMETER_KEYS),
            )

    type_name = definition.get("type")
    if type_name not in PARAMETER_TYPES:
        hint = _did_you_mean(type_name, PARAMETER_TYPES) if isinstance(type_name, str) else ""
        problems.add(
            f"{path}.type",
            f"Expected one of {', '.join(PARAMETER_TYPES)}, got {_json_text(type_name)}." + hint,
        )
        return None

    result: dict[str, Any] = {"type": type_name}
    for key in ("required", "secret"):
        flag = definition.get(key, False)
        if not isinstance(flag, bool):
            problems.add(f"{path}.{key}", f"Expected true or false, got {json_type(flag)}.")
        result[key] = flag is True

    description = definition.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_STRING_CHARS:
        problems.add(
            f"{path}.description", f"Expected a string of at most {MAX_STRING_CHARS} characters."
        )
    result["description"] = description if isinstance(description, str) else ""

    if result["secret"] and type_name != "string":
        problems.add(
            f"{path}.secret",
            f"Only string parameters can be secret, this one has type {type_name}.",
        )

    if "allowed" in definition:
        allowed = _check_allowed_values(
            definition["allowed"], type_name, f"{path}.allowed", problems
        )
        if allowed is not None:
            result["allowed"] = allowed

    if "default" in definition:
        _check_default(definition, result, path, problems)
    return result


def _check_allowed_values(
    allowed: object, type_name: str, path: str, problems: _Problems
) -> list[Any] | None:
    if type_name == "object":
        problems.add(path, "Allowed values are not supported for object parameters.")
        return None
    if not isinstance(allowed, list) or not allowed or len(allowed) > MAX_ALLOWED_VALUES:
        problems.add(
            path, f"Expected a list of 1 to {MAX_ALLOWED_VALUES} values, got {json_type(allowed)}."
        )
        return None

    # An array parameter's allowed values constrain its items, which may be any JSON scalar.
    normalized: list[Any] = []
    for index, value in enumerate(allowed):
        if type_name == "array":
            valid = isinstance(value, (str, bool)) or _is_number(value)
            expected = "a string, number or boolean"
        else:
            valid = type_problem(value, type_name) is None
            expected = _TYPE_NAMES[type_name]
        if not valid:
            problems.add(f"{path}[{index}]", f"Expected {expected}, got {json_type(value)}.")
            continue
        normalized.append(_normalize_value(value, type_name))
    return normalized


def _check_default(
    definition: dict[str, Any], result: dict[str, Any], path: str, problems: _Problems
) -> None:
    default = definition["default"]
    type_name = result["type"]
    if result["required"]:
        problems.add(
            f"{path}.default",
            "A required parameter cannot have a default. Drop 'default' or set required to false.",
        )
        return

    problem = type_problem(default, type_name)
    if problem is not None:
        problems.add(f"{path}.default", f"The default {problem}.")
        return

    value = _normalize_value(default, type_name)
    if "allowed" in result and not is_allowed(value, result["allowed"], type_name):
        problems.add(
            f"{path}.default", f"The default {_json_text(value)} is not one of the allowed values."
        )
        return
    result["default"] = value


_TYPE_NAMES: Final = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "array": "a list",
    "object": "an object",
}


def type_problem(value: object, type_name: str) -> str | None:
    """Return why ``value`` does not have the parameter type ``type_name``, or None.

    Booleans are neither numbers nor integers. An integer may arrive as an integral float
    (3.0), but not as 3.5.
    """
    if type_name == "string":
        valid = isinstance(value, str)
    elif type_name == "number":
        valid = _is_number(value)
    elif type_name == "integer":
        valid = _as_integer(value) is not None
    elif type_name == "boolean":
        valid = isinstance(value, bool)
    elif type_name == "array":
        valid = isinstance(value, list)
    else:
        valid = isinstance(value, dict)
    if valid:
        return None

    got = json_type(value)
    if type_name == "integer" and _is_number(value):
        got = "a number with a fractional part"
    return f"must be {_TYPE_NAMES[type_name]}, got {got}"


def _normalize_value(value: Any, type_name: str) -> Any:
    if type_name == "integer":
        return _as_integer(value)
    return copy.deepcopy(value)


def _json_equal(left: object, right: object) -> bool:
    # Python treats True == 1, but JSON booleans and numbers are distinct values.
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    return left == right


def is_allowed(value: object, allowed: list[Any], type_name: str) -> bool:
    """Return whether ``value`` is one of ``allowed``. An array's items must each be allowed."""
    if type_name == "array" and isinstance(value, list):
        return all(any(_json_equal(item, option) for option in allowed) for item in value)
    return any(_json_equal(value, option) for option in allowed)


def check_params(defs: Mapping[str, Mapping[str, Any]], params: object) -> dict[str, Any]:
    """Check execution params against validated definitions and return them with defaults applied.

    Raises ValidationError listing every problem (unknown, missing, wrongly typed or not allowed)
    in ``details["problems"]``. Messages never contain the value of a secret parameter.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        message = f"params must be a JSON object mapping parameter names to values, got {json_type(params)}."
        raise ValidationError(
            message,
            details={"problems": [{"parameter": None, "code": "invalid_type", "message": message}]},
        )

    problems: list[dict[str, Any]] = []
    for name in params:
        if str(name) not in defs:
            problems.append(_unknown_parameter_problem(str(name), defs))

    checked: dict[str, Any] = {}
    for name, definition in defs.items():
        if name in params:
            problem = _check_param_value(name, definition, params[name])
            if problem is not None:
                problems.append(problem)
            else:
                checked[name] = _normalize_value(params[name], definition["type"])
        elif definition.get("required"):
            problems.append(
                {
                    "parameter": name,
                    "code": "missing_parameter",
                    "message": f"Missing required parameter '{name}' of type {definition['type']}.",
                }
            )
        elif "default" in definition:
            checked[name] = copy.deepcopy(definition["default"])

    if problems:
        raise ValidationError(_params_summary(problems), details={"problems": problems})
    return checked


def _unknown_parameter_problem(name: str, defs: Mapping[str, Any]) -> dict[str, Any]:
    suggestion = closest_match(name, defs)
    if suggestion is None:
        return {
            "parameter": name,
            "code": "unknown_parameter",
            "message": f"Unknown parameter '{name}'. This bot defines no parameters.",
        }
    return {
        "parameter": name,
        "code": "unknown_parameter",
        "message": f"Unknown parameter '{name}'. Did you mean '{suggestion}'?",
        "suggestion": suggestion,
    }


def _check_param_value(
    name: str, definition: Mapping[str, Any], value: object
) -> dict[str, Any] | None:
    type_name = definition["type"]
    problem = type_problem(value, type_name)
    if problem is not None:
        return {
            "parameter": name,
            "code": "invalid_type",
            "message": f"Parameter '{name}' {problem}.",
        }

    allowed = definition.get("allowed")
    if allowed is None or is_allowed(value, allowed, type_name):
        return None
    if definition.get("secret"):
        message = f"Parameter '{name}' is not one of its allowed values."
    else:
        options = ", ".join(_json_text(option) for option in allowed[:20])
        more = f" (and {len(allowed) - 20} more)" if len(allowed) > 20 else ""
        message = f"Parameter '{name}' must be one of {options}{more}, got {_json_text(value)}."
    return {"parameter": name, "code": "value_not_allowed", "message": message}


def _params_summary(problems: list[dict[str, Any]]) -> str:
    first = str(problems[0]["message"])
    if len(problems) == 1:
        return first
    return f"The params have {len(problems)} problems, all listed in details.problems. The first is: {first}"


# --- Capabilities ---------------------------------------------------------------------------

_CAPABILITY_KEYS: Final = (
    "proxy",
    "locale",
    "userAgent",
    "timezone",
    "geolocation",
    "adBlocking",
    "resolution",
    "timeout",
)
_RESOLUTION_LIMITS: Final = {"width": (200, 7680), "height": (200, 4320)}
_GEOLOCATION_LIMITS: Final = {"latitude": (-90.0, 90.0), "longitude": (-180.0, 180.0)}
MAX_EXECUTION_TIMEOUT_S: Final = 3600


@functools.cache
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def validate_capabilities(capabilities: object) -> dict[str, Any]:
    """Validate the manifest's ``capabilities`` section and return a copy of it.

    Keys left out stay out: the runner applies its own defaults for them. ``timeout`` is the
    execution's wall-clock limit in seconds.
    """
    problems = _Problems("capabilities section")
    if capabilities is None:
        return {}
    if not isinstance(capabilities, dict):
        problems.add("capabilities", f"Expected an object, got {json_type(capabilities)}.")
        problems.raise_if_any()
        return {}

    result: dict[str, Any] = {}
    for key, value in capabilities.items():
        path = f"capabilities.{key}"
        if key not in _CAPABILITY_KEYS:
            problems.add(
                path, f"Unknown capability '{key}'." + _did_you_mean(str(key), _CAPABILITY_KEYS)
            )
            continue
        checked = _check_capability(key, value, path, problems)
        if checked is not None:
            result[key] = checked

    problems.raise_if_any()
    return result


def _check_capability(key: str, value: object, path: str, problems: _Problems) -> Any:
    if key in ("proxy", "adBlocking"):
        if not isinstance(value, bool):
            problems.add(path, f"Expected true or false, got {json_type(value)}.")
            return None
        return value
    if key == "locale":
        if not isinstance(value, str) or len(value) > 35 or not _LOCALE.fullmatch(value):
            problems.add(
                path, f"Expected a BCP 47 language tag such as en-US, got {_json_text(value)}."
            )
            return None
        return value
    if key == "userAgent":
        # Control characters would let the value end the User-Agent header early.
        if (
            not isinstance(value, str)
            or not value
            or len(value) > 1000
            or _CONTROL_CHARACTERS.search(value)
        ):
            problems.add(
                path,
                "Expected a non-empty string of at most 1000 characters without control characters.",
            )
            return None
        return value
    if key == "timezone":
        if not isinstance(value, str) or value not in _known_timezones():
            problems.add(
                path,
                f"Expected an IANA time zone name such as Europe/Berlin, got {_json_text(value)}.",
            )
            return None
        return value
    if key == "timeout":
        if (
            not isinstance(value, (int, float))
            or not _is_number(value)
            or not 1 <= value <= MAX_EXECUTION_TIMEOUT_S
        ):
            problems.add(
                path,
                f"Expected a number of seconds from 1 to {MAX_EXECUTION_TIMEOUT_S}, got {_json_text(value)}.",
            )
            return None
        return value
    if key == "geolocation":
        return _check_bounded_object(
            value, path, _GEOLOCATION_LIMITS, integers=False, problems=problems
        )
    return _check_bounded_object(value, path, _RESOLUTION_LIMITS, integers=True, problems=problems)


def _check_bounded_object(
    value: object,
    path: str,
    limits: Mapping[str, tuple[float, float]],
    *,
    integers: bool,
    problems: _Problems,
) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        problems.add(
            path, f"Expected an object with {' and '.join(limits)}, got {json_type(value)}."
        )
        return None

    result: dict[str, Any] = {}
    for key in value:
        if key not in limits:
            problems.add(f"{path}.{key}", f"Unknown key '{key}'." + _did_you_mean(str(key), limits))
    for key, (low, high) in limits.items():
        item = value.get(key)
        kind = "an integer" if integers else "a number"
        if integers:
            number = _as_integer(item)
        else:
            number = item if _is_number(item) else None
        if key not in value:
            problems.add(f"{path}.{key}", f"Missing required key '{key}'.")
        elif number is None or not low <= number <= high:
            problems.add(
                f"{path}.{key}",
                f"Expected {kind} from {low:g} to {high:g}, got {_json_text(item)}.",
            )
        else:
            result[key] = number
    return result if len(result) == len(limits) else None
