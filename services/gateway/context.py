"""The state every gateway handler reaches through the aiohttp application.

The gateway is built from one GatewayContext. Handlers read it with ``request.app[CONTEXT]``, and
the caller's identity with ``principal_of(request)``, which the auth middleware sets.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from aiohttp import web
from nats.aio.client import Client as NATS

from events.store import EventStore
from infra.secrets import SecretBox
from infra.settings import Settings
from projections.projector import Projector
from projections.read_store import ReadStore

Permission = Literal["read", "write", "admin"]
PERMISSION_LEVELS: dict[str, int] = {"read": 1, "write": 2, "admin": 3}


@dataclasses.dataclass(frozen=True)
class Principal:
    """The organization and permission of the API key of a request."""

    org_id: str
    key_id: str
    permission: Permission

    def allows(self, needed: Permission) -> bool:
        return PERMISSION_LEVELS[self.permission] >= PERMISSION_LEVELS[needed]


@dataclasses.dataclass
class GatewayContext:
    settings: Settings
    nc: NATS
    event_store: EventStore
    read_store: ReadStore
    projector: Projector
    secret_box: SecretBox
    # The object store of artifacts (screenshots, DOM snapshots); None when not configured.
    artifacts: object | None = None


CONTEXT = web.AppKey("botledger_context", GatewayContext)
PRINCIPAL = web.RequestKey("botledger_principal", Principal)


def principal_of(request: web.Request) -> Principal:
    """Return the identity the auth middleware stored on an authenticated request."""
    return request[PRINCIPAL]
