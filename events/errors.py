"""The one exception hierarchy of botledger.

Infrastructure errors (nats-py, minio, pyppeteer, sqlite3) are translated into these classes at
the boundary, and the gateway maps them to HTTP statuses in one place.
"""

from __future__ import annotations

from typing import Any


class BotledgerError(Exception):
    """Base class of every error botledger raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class SettingsError(BotledgerError):
    code = "invalid_settings"


class ValidationError(BotledgerError):
    code = "invalid_request"


class NotFoundError(BotledgerError):
    code = "not_found"


class ConflictError(BotledgerError):
    code = "conflict"


class ConcurrencyError(ConflictError):
    """Another writer appended to the aggregate since it was loaded."""

    code = "concurrent_modification"


class InvalidTransitionError(ConflictError):
    """A command does not apply to the aggregate's current state (a finished execution)."""

    code = "invalid_state"


class EventStoreError(BotledgerError):
    """JetStream rejected or did not confirm an append; retrying the same events is safe."""

    code = "event_store_unavailable"
    retriable = True


class ServerVersionError(BotledgerError):
    code = "unsupported_server"
