"""ArtifactStore and SeaweedFSSupervisor against a real SeaweedFS on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from events.errors import BotledgerError, NotFoundError, SettingsError, ValidationError
from infra.object_store import ArtifactStore, SeaweedFSSupervisor
from infra.processes import descendants, free_port, tcp_listeners, wait_for_tcp
from infra.settings import Settings

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

logger = logging.getLogger(__name__)

ACCESS_KEY = "test-access"
SECRET_KEY = "test-secret-value"
# The PNG signature and the start of an IHDR chunk, followed by bytes of every value.
PNG_LIKE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
# Short grace so tests also show that a SIGKILL after the grace loses no acknowledged object.
STOP_GRACE_S = 1.0


def make_supervisor(data_dir: Path) -> SeaweedFSSupervisor:
    return SeaweedFSSupervisor(
        data_dir, access_key=ACCESS_KEY, secret_key=SECRET_KEY, stop_grace_s=STOP_GRACE_S
    )


def make_store(endpoint: str, bucket: str, secret_key: str = SECRET_KEY) -> ArtifactStore:
    return ArtifactStore(endpoint, ACCESS_KEY, secret_key, bucket)


def fresh_bucket() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def seaweed(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[SeaweedFSSupervisor]:
    supervisor = make_supervisor(tmp_path_factory.mktemp("seaweed-shared"))
    started_at = time.monotonic()
    await supervisor.start()
    logger.info("SeaweedFS first start took %.2f s", time.monotonic() - started_at)
    yield supervisor
    await supervisor.stop()


@pytest.fixture
def endpoint(seaweed: SeaweedFSSupervisor) -> str:
    assert seaweed.endpoint is not None
    return seaweed.endpoint


@pytest_asyncio.fixture(loop_scope="module")
async def store(endpoint: str) -> AsyncIterator[ArtifactStore]:
    artifact_store = make_store(endpoint, fresh_bucket())
    await artifact_store.ensure_bucket()
    yield artifact_store
    artifact_store.close()


@pytest.fixture
def held_port() -> Iterator[int]:
    """Yield a port with a listener on 127.0.0.1 held open for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_put_get_roundtrip_png(store: ArtifactStore) -> None:
    key = f"executions/{uuid.uuid4()}/failure.png"

    await store.put_bytes(key, PNG_LIKE, "image/png")
    data, content_type = await store.get_bytes(key)

    assert data == PNG_LIKE
    assert content_type == "image/png"


async def test_put_replaces_existing_object(store: ArtifactStore) -> None:
    key = f"executions/{uuid.uuid4()}/dom.html"

    await store.put_bytes(key, b"<p>first</p>", "text/html")
    await store.put_bytes(key, b"<p>second</p>", "text/html; charset=utf-8")
    data, content_type = await store.get_bytes(key)

    assert data == b"<p>second</p>"
    assert content_type == "text/html; charset=utf-8"


async def test_get_missing_key_raises_not_found(store: ArtifactStore) -> None:
    missing_key = f"missing/{uuid.uuid4()}.png"

    with pytest.raises(NotFoundError) as caught:
        await store.get_bytes(missing_key)

    assert caught.value.details["s3_code"] == "NoSuchKey"
    assert missing_key in caught.value.message


async def test_get_from_missing_bucket_raises_not_found(endpoint: str) -> None:
    store = make_store(endpoint, fresh_bucket())
    try:
        with pytest.raises(NotFoundError) as caught:
            await store.get_bytes("any.png")
    finally:
        store.close()

    assert caught.value.details["s3_code"] == "NoSuchBucket"


async def test_ensure_bucket_twice(endpoint: str) -> None:
    store = make_store(endpoint, fresh_bucket())
    try:
        await store.ensure_bucket()
        await store.ensure_bucket()
        await store.put_bytes("after-ensure.txt", b"ok", "text/plain")
        data, _ = await store.get_bytes("after-ensure.txt")
    finally:
        store.close()

    assert data == b"ok"


async def test_delete_then_get_raises_not_found(store: ArtifactStore) -> None:
    key = f"executions/{uuid.uuid4()}/step-1.png"
    await store.put_bytes(key, PNG_LIKE, "image/png")

    await store.delete(key)

    with pytest.raises(NotFoundError):
        await store.get_bytes(key)
    # S3 deletes are idempotent: a second delete of the same key succeeds.
    await store.delete(key)


async def test_empty_key_raises_validation_error(store: ArtifactStore) -> None:
    with pytest.raises(ValidationError):
        await store.put_bytes("", b"data", "text/plain")
    with pytest.raises(ValidationError):
        await store.get_bytes("/absolute.png")


async def test_wrong_secret_raises_settings_error(endpoint: str, store: ArtifactStore) -> None:
    wrong = make_store(endpoint, store.bucket, secret_key="not-the-secret")
    try:
        with pytest.raises(SettingsError) as caught:
            await wrong.get_bytes("any.png")
    finally:
        wrong.close()

    assert caught.value.details["s3_code"] in ("SignatureDoesNotMatch", "AccessDenied")
    assert "not-the-secret" not in caught.value.message


async def test_unreachable_endpoint_raises_botledger_error() -> None:
    store = ArtifactStore(
        f"127.0.0.1:{free_port()}", ACCESS_KEY, SECRET_KEY, fresh_bucket(), connect_timeout_s=1.0
    )
    try:
        with pytest.raises(BotledgerError) as caught:
            await store.get_bytes("any.png")
    finally:
        store.close()

    assert type(caught.value) is BotledgerError
    assert store.endpoint in caught.value.message


async def test_invalid_bucket_name_raises_settings_error() -> None:
    with pytest.raises(SettingsError):
        ArtifactStore("127.0.0.1:9000", ACCESS_KEY, SECRET_KEY, "No_Such Bucket")


async def test_from_settings_without_endpoint_raises_settings_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)

    with pytest.raises(SettingsError):
        ArtifactStore.from_settings(settings)


async def test_from_settings_uses_given_endpoint(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, s3_bucket="artifacts-from-settings")

    store = ArtifactStore.from_settings(settings, "127.0.0.1:18333")
    store.close()

    assert store.endpoint == "127.0.0.1:18333"
    assert store.bucket == "artifacts-from-settings"
    assert store.secure is False


async def test_s3_config_is_private(seaweed: SeaweedFSSupervisor) -> None:
    config_path = seaweed.root / "s3.json"

    mode = stat.S_IMODE(config_path.stat().st_mode)
    identities = json.loads(config_path.read_text())["identities"]

    assert mode == 0o600
    assert identities[0]["credentials"] == [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]


async def test_weed_listens_only_on_chosen_loopback_ports(seaweed: SeaweedFSSupervisor) -> None:
    assert seaweed.pid is not None
    listeners = tcp_listeners(descendants(seaweed.pid))

    hosts = {host for host, _ in listeners}
    ports = {port for _, port in listeners}

    assert hosts == {"127.0.0.1"}
    assert ports == set(seaweed.ports.values())
    assert len(seaweed.ports) == 8


async def test_restart_keeps_objects_and_ports(tmp_path: Path) -> None:
    supervisor = make_supervisor(tmp_path)
    key = f"executions/{uuid.uuid4()}/failure.png"
    bucket = fresh_bucket()

    first_endpoint = await supervisor.start()
    try:
        store = make_store(first_endpoint, bucket)
        await store.ensure_bucket()
        await store.put_bytes(key, PNG_LIKE, "image/png")
        store.close()
    finally:
        await supervisor.stop()
    assert supervisor.endpoint is None

    started_at = time.monotonic()
    second_endpoint = await supervisor.start()
    restart_s = time.monotonic() - started_at
    try:
        store = make_store(second_endpoint, bucket)
        data, content_type = await store.get_bytes(key)
        store.close()
    finally:
        await supervisor.stop()

    logger.info("SeaweedFS restart took %.2f s", restart_s)
    assert second_endpoint == first_endpoint
    assert data == PNG_LIKE
    assert content_type == "image/png"


async def test_taken_stored_port_is_replaced(tmp_path: Path, held_port: int) -> None:
    ports_path = tmp_path / "seaweedfs" / "ports.json"
    ports_path.parent.mkdir(parents=True)
    ports_path.write_text(json.dumps({"s3": held_port}))
    supervisor = make_supervisor(tmp_path)

    endpoint = await supervisor.start()
    try:
        store = make_store(endpoint, fresh_bucket())
        await store.ensure_bucket()
        store.close()
    finally:
        await supervisor.stop()

    stored = json.loads(ports_path.read_text())
    assert endpoint != f"127.0.0.1:{held_port}"
    assert endpoint == f"127.0.0.1:{stored['s3']}"
    assert sorted(stored) == sorted(supervisor.ports)


async def test_stop_leaves_no_process_or_socket(tmp_path: Path) -> None:
    supervisor = make_supervisor(tmp_path)
    await supervisor.start()
    pid = supervisor.pid
    assert pid is not None

    await supervisor.stop()

    assert descendants(pid) == []
    temp_dir = Path(os.environ.get("TMPDIR") or "/tmp")
    leftover = [
        path.name
        for port in supervisor.ports.values()
        for path in temp_dir.glob(f"seaweedfs-*-{port}.sock")
    ]
    assert leftover == []


async def test_wait_for_tcp_times_out_on_closed_port() -> None:
    port = free_port()
    started_at = time.monotonic()

    with pytest.raises(BotledgerError) as caught:
        await wait_for_tcp("127.0.0.1", port, timeout_s=0.3)

    assert time.monotonic() - started_at < 5.0
    assert str(port) in caught.value.message


async def test_missing_weed_binary_raises_botledger_error(tmp_path: Path) -> None:
    supervisor = SeaweedFSSupervisor(
        tmp_path, access_key=ACCESS_KEY, secret_key=SECRET_KEY, weed_path=str(tmp_path / "weed")
    )

    with pytest.raises(BotledgerError) as caught:
        await supervisor.start()

    assert str(tmp_path / "weed") in caught.value.message
    assert supervisor.endpoint is None
