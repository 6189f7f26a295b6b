"""The Bot and ApiKey aggregates."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from events.errors import InvalidTransitionError


class Bot(Aggregate):
    """A bot: its identity, its versioned step program and its manifest."""

    @event("BotCreated")
    def __init__(
        self,
        id: UUID,
        org_id: str,
        name: str,
        target_url: str,
        description: str,
        kind: str,
        tags: list[str],
    ) -> None:
        self.org_id = org_id
        self.name = name
        self.target_url = target_url
        self.description = description
        self.kind = kind
        self.tags = tags
        self.steps: list[dict[str, Any]] = []
        self.script_version = 0
        self.capabilities: dict[str, Any] = {}
        self.parameters: dict[str, Any] = {}
        self.webhook: dict[str, Any] | None = None
        self.deleted = False

    def check_not_deleted(self, command: str) -> None:
        if self.deleted:
            raise InvalidTransitionError(
                f"Cannot {command} bot {self.id}: it was deleted.", {"botId": str(self.id)}
            )

    def update_steps(self, steps: list[dict[str, Any]]) -> None:
        self.check_not_deleted("update the steps of")
        self._steps_updated(steps=steps, version=self.script_version + 1)

    def update_manifest(
        self,
        capabilities: dict[str, Any] | None,
        parameters: dict[str, Any] | None,
        webhook: dict[str, Any] | None,
    ) -> None:
        """Replace the sections given; a section passed as None stays as it was."""
        self.check_not_deleted("update the manifest of")
        self._manifest_updated(capabilities=capabilities, parameters=parameters, webhook=webhook)

    def delete(self) -> None:
        self.check_not_deleted("delete")
        self._deleted()

    @event("BotStepsUpdated")
    def _steps_updated(self, steps: list[dict[str, Any]], version: int) -> None:
        self.steps = steps
        self.script_version = version

    @event("BotManifestUpdated")
    def _manifest_updated(
        self,
        capabilities: dict[str, Any] | None,
        parameters: dict[str, Any] | None,
        webhook: dict[str, Any] | None,
    ) -> None:
        if capabilities is not None:
            self.capabilities = capabilities
        if parameters is not None:
            self.parameters = parameters
        if webhook is not None:
            self.webhook = webhook

    @event("BotDeleted")
    def _deleted(self) -> None:
        self.deleted = True


class ApiKey(Aggregate):
    """An API key of one organization; only the SHA-256 hash of the secret is ever stored."""

    @event("ApiKeyCreated")
    def __init__(
        self, id: UUID, org_id: str, name: str, permission: str, key_hash: str, prefix: str
    ) -> None:
        self.org_id = org_id
        self.name = name
        self.permission = permission
        self.key_hash = key_hash
        self.prefix = prefix
        self.revoked = False

    def revoke(self) -> None:
        if self.revoked:
            raise InvalidTransitionError(
                f"API key {self.id} is already revoked.", {"keyId": str(self.id)}
            )
        self._revoked()

    @event("ApiKeyRevoked")
    def _revoked(self) -> None:
        self.revoked = True
