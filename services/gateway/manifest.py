"""Validation of manifest updates, including the webhook section, and encryption of its secrets.

A manifest update names any subset of ``capabilities``, ``parameters`` and ``webhook``; each
named section replaces the stored one. The webhook's ``secret`` and ``password`` enter the event
only encrypted, as one SecretBox token under ``encryptedSecrets``. Left out of an update they
keep their stored values, so a client can change the URL without sending the secret again;
null removes them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from events.bot import Bot
from events.errors import ValidationError
from infra.secrets import SecretBox
from services.gateway.http import problems_of, raise_problems, unknown_field_problems
from services.runner.program import (
    json_type,
    url_scheme_problem,
    validate_capabilities,
    validate_parameter_definitions,
)

MANIFEST_SECTIONS = ("capabilities", "parameters", "webhook")
WEBHOOK_FIELDS = ("url", "auth", "secret", "loginUrl", "username", "password", "dataPath")
WEBHOOK_AUTH_MODES = ("none", "hmac", "jwt")
WEBHOOK_SECRET_FIELDS = ("secret", "password")
ENCRYPTED_SECRETS = "encryptedSecrets"
SECRET_FIELDS = "secretFields"

MAX_URL_CHARS = 2048
MAX_SECRET_CHARS = 4096
MAX_USERNAME_CHARS = 256
MAX_DATA_PATH_CHARS = 500
# Keys of the extracted data, or list indexes, separated by dots: products.0.name
_DATA_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True)
class ManifestUpdate:
    """The validated sections of an update; None for a section left out."""

    capabilities: dict[str, Any] | None
    parameters: dict[str, Any] | None
    webhook: dict[str, Any] | None


def prepare_manifest_update(
    body: Mapping[str, Any], bot: Bot, secret_box: SecretBox
) -> ManifestUpdate:
    """Validate an update body against the bot's stored manifest.

    Raises one ValidationError listing the problems of every section at once.
    """
    problems = unknown_field_problems(body, MANIFEST_SECTIONS)
    if not any(section in body for section in MANIFEST_SECTIONS):
        problems.append({
            "path": "",
            "message": "Expected at least one of the sections capabilities, parameters, webhook.",
        })

    capabilities = parameters = webhook = None
    if "capabilities" in body:
        try:
            capabilities = validate_capabilities(_section(body, "capabilities"))
        except ValidationError as error:
            problems += problems_of(error, "capabilities")
    if "parameters" in body:
        try:
            parameters = validate_parameter_definitions(_section(body, "parameters"))
            problems += secret_parameter_problems(parameters)
        except ValidationError as error:
            problems += problems_of(error, "parameters")
    if "webhook" in body:
        try:
            webhook = validate_webhook(
                _section(body, "webhook"), stored_webhook_secrets(bot, secret_box), secret_box
            )
        except ValidationError as error:
            problems += problems_of(error, "webhook")

    raise_problems("manifest", problems)
    return ManifestUpdate(capabilities, parameters, webhook)


def _section(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = body[name]
    if not isinstance(value, dict):
        message = f"Expected an object, got {json_type(value)}."
        raise ValidationError(
            f"{name}: {message}", {"problems": [{"path": name, "message": message}]}
        )
    return value


def secret_parameter_problems(parameters: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """Reject defaults and allowed values of secret parameters.

    The manifest is stored and shown in clear, so a secret's default or allowed values would be
    readable by every key of the organization and in the event stream.
    """
    problems = []
    for name, definition in parameters.items():
        if not definition.get("secret"):
            continue
        for key in ("default", "allowed"):
            if key in definition:
                problems.append({
                    "path": f"parameters.{name}.{key}",
                    "message": f"A secret parameter cannot have '{key}': the manifest is stored "
                    "in clear. Drop it and pass the value with each execution.",
                })
    return problems


def stored_webhook_secrets(bot: Bot, secret_box: SecretBox) -> dict[str, str]:
    """Decrypt the webhook secrets stored in the bot's manifest."""
    token = (bot.webhook or {}).get(ENCRYPTED_SECRETS)
    if not token:
        return {}
    secrets = secret_box.decrypt(token)
    return {k: v for k, v in secrets.items() if k in WEBHOOK_SECRET_FIELDS and isinstance(v, str)}


def validate_webhook(
    section: Mapping[str, Any], stored_secrets: Mapping[str, str], secret_box: SecretBox
) -> dict[str, Any]:
    """Validate a webhook section and return it as stored, its secrets encrypted.

    ``stored_secrets`` fill the secret fields that the section leaves out. Raises
    ValidationError listing every problem in ``details["problems"]``.
    """
    problems = unknown_field_problems(section, WEBHOOK_FIELDS, "webhook.")
    stored: dict[str, Any] = {}

    url = section.get("url")
    if "url" not in section:
        problems.append({"path": "webhook.url", "message": "Missing required field 'url'."})
    else:
        problems += url_problems(url, "webhook.url")
        stored["url"] = url

    auth = section.get("auth", "none")
    if auth not in WEBHOOK_AUTH_MODES:
        problems.append({
            "path": "webhook.auth",
            "message": f"Expected one of {', '.join(WEBHOOK_AUTH_MODES)}, got {auth!r}.",
        })
    stored["auth"] = auth

    if "loginUrl" in section:
        problems += url_problems(section["loginUrl"], "webhook.loginUrl")
        stored["loginUrl"] = section["loginUrl"]
    if "username" in section:
        problems += _string_problems(section["username"], "webhook.username", MAX_USERNAME_CHARS)
        stored["username"] = section["username"]
    if "dataPath" in section:
        problems += _data_path_problems(section["dataPath"])
        stored["dataPath"] = section["dataPath"]

    secrets = _merged_secrets(section, stored_secrets, problems)
    problems += _auth_problems(auth, section, stored, secrets)
    raise_problems("webhook section", problems)

    # A kept secret that the new auth mode does not use is dropped, not carried along.
    used = {"hmac": ("secret",), "jwt": ("secret", "password")}.get(auth, ())
    kept = {name: value for name, value in secrets.items() if name in used}
    if kept:
        stored[ENCRYPTED_SECRETS] = secret_box.encrypt(kept)
        # The names, not the values, stay readable so views can tell which secrets are set.
        stored[SECRET_FIELDS] = sorted(kept)
    return stored


def _merged_secrets(
    section: Mapping[str, Any], stored_secrets: Mapping[str, str], problems: list[dict[str, str]]
) -> dict[str, str]:
    secrets = dict(stored_secrets)
    for name in WEBHOOK_SECRET_FIELDS:
        if name not in section:
            continue
        value = section[name]
        if value is None:
            secrets.pop(name, None)
            continue
        # The value is never echoed: an error message could end up in a log.
        if not isinstance(value, str) or not value or len(value) > MAX_SECRET_CHARS:
            problems.append({
                "path": f"webhook.{name}",
                "message": f"Expected a non-empty string of at most {MAX_SECRET_CHARS} "
                f"characters, or null to remove it; got {json_type(value)}.",
            })
            continue
        secrets[name] = value
    return secrets


def _auth_problems(
    auth: object, section: Mapping[str, Any], stored: Mapping[str, Any], secrets: Mapping[str, str]
) -> list[dict[str, str]]:
    problems: list[dict[str, str]] = []
    if auth not in WEBHOOK_AUTH_MODES:
        return problems
    if auth == "hmac" and "secret" not in secrets:
        problems.append({
            "path": "webhook.secret",
            "message": "auth 'hmac' needs a secret to sign the payload with.",
        })
    if auth == "jwt":
        has_login = "loginUrl" in stored and "username" in stored and "password" in secrets
        if "secret" not in secrets and not has_login:
            problems.append({
                "path": "webhook.auth",
                "message": "auth 'jwt' needs a secret to sign tokens with, or loginUrl, username "
                "and password to fetch one.",
            })
    if auth != "jwt":
        for name in ("loginUrl", "username", "password"):
            if section.get(name) is not None:
                problems.append({
                    "path": f"webhook.{name}",
                    "message": f"'{name}' is used only with auth 'jwt', not {auth!r}.",
                })
    if auth == "none" and section.get("secret") is not None:
        problems.append({
            "path": "webhook.secret",
            "message": "auth 'none' sends no signature: drop the secret or use 'hmac' or 'jwt'.",
        })
    return problems


def url_problems(value: object, path: str) -> list[dict[str, str]]:
    if not isinstance(value, str) or not value:
        message = f"Expected an http or https URL, got {json_type(value)}."
        return [{"path": path, "message": message}]
    if len(value) > MAX_URL_CHARS or _WHITESPACE_OR_CONTROL.search(value):
        return [{
            "path": path,
            "message": f"Expected a URL of at most {MAX_URL_CHARS} characters without spaces.",
        }]
    problem = url_scheme_problem(value)
    return [] if problem is None else [{"path": path, "message": problem}]


def _string_problems(value: object, path: str, max_chars: int) -> list[dict[str, str]]:
    if isinstance(value, str) and value and len(value) <= max_chars:
        return []
    return [{
        "path": path,
        "message": f"Expected a non-empty string of at most {max_chars} characters, got "
        f"{json_type(value)}.",
    }]


def _data_path_problems(value: object) -> list[dict[str, str]]:
    if (
        isinstance(value, str)
        and len(value) <= MAX_DATA_PATH_CHARS
        and _DATA_PATH.match(value)
    ):
        return []
    return [{
        "path": "webhook.dataPath",
        "message": "Expected a dot path of names or list indexes into the extracted data, such "
        f"as products.0.name, got {value!r}.",
    }]
