"""Encryption of secret values (secret parameters, webhook secrets) before they enter an event.

Fernet from the cryptography package gives authenticated encryption with a URL-safe key. The key
comes from the settings, or from ``<data dir>/secret.key``, created with mode 0600 on first use.
Losing that file makes the secret values of past executions unreadable, nothing else.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken

from events.errors import BotledgerError, SettingsError
from infra.settings import Settings

logger = logging.getLogger(__name__)

MASK = "***"


class SecretBox:
    """Encrypt and decrypt JSON values with one Fernet key."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as error:
            raise SettingsError(
                "Invalid BOTLEDGER_SECRET_KEY: use a Fernet key (32 url-safe base64-encoded "
                "bytes), for example the output of "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`."
            ) from error

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.secret_key:
            return cls(settings.secret_key.encode())
        return cls(load_or_create_key(settings.data_dir / "secret.key"))

    def encrypt(self, value: Any) -> str:
        return self._fernet.encrypt(orjson.dumps(value)).decode()

    def decrypt(self, token: str) -> Any:
        try:
            return orjson.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as error:
            raise BotledgerError(
                "Cannot decrypt a stored secret: the secret key differs from the one it was "
                "encrypted with. Restore the original BOTLEDGER_SECRET_KEY or secret.key file."
            ) from error


def load_or_create_key(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as key_file:
        key_file.write(key)
    logger.info("Created a new secret key at %s", path)
    return key


def mask_secrets(text: str, secrets: set[str]) -> str:
    """Replace every secret value in a text with the mask, longest first."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
