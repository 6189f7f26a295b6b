"""Fixtures shared by the suite: real servers on 127.0.0.1 with fresh ids."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from events.store import EventStore
from events.subjects import SubjectScheme
from infra.nats import NatsServerSupervisor, connect, ensure_stream
from infra.settings import Settings


@pytest.fixture
def fresh_settings(tmp_path: Path) -> Settings:
    """Settings with a private data directory, stream name and subject prefix."""
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        data_dir=tmp_path / "data",
        stream_name=f"TEST_{suffix}",
        subject_prefix=f"bl{suffix}",
        http_port=0,
    )


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServerSupervisor]:
    supervisor = NatsServerSupervisor(tmp_path / "nats")
    await supervisor.start()
    yield supervisor
    await supervisor.stop()


@pytest.fixture
async def nats_client(
    nats_server: NatsServerSupervisor, fresh_settings: Settings
) -> AsyncIterator[NATS]:
    nc = await connect(nats_server.url, "test")
    await ensure_stream(nc, fresh_settings)
    yield nc
    await nc.close()


@pytest.fixture
def event_store(nats_client: NATS, fresh_settings: Settings) -> EventStore:
    return EventStore(
        nats_client, fresh_settings.stream_name, SubjectScheme(fresh_settings.subject_prefix)
    )
