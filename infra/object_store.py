"""The S3 object store of artifacts: a client over ``minio`` and the embedded SeaweedFS server.

ArtifactStore talks to any S3-compatible server (SeaweedFS, MinIO, AWS S3). When no endpoint is
configured, SeaweedFSSupervisor runs a private ``weed server`` under the data directory with
every listener on 127.0.0.1 and telemetry off.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from events.errors import (
    BotledgerError,
    ConflictError,
    NotFoundError,
    SettingsError,
    ValidationError,
)
from infra.processes import ManagedProcess, find_executable, free_port, is_port_free
from infra.settings import ENV_PREFIX, Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
READINESS_POLL_S = 0.1
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Every port weed server opens with the flags below. The gRPC ports default to the HTTP port
# plus 10000, which can exceed 65535 or be taken, so each one is chosen explicitly.
PORT_FLAGS = {
    "master": "-master.port",
    "master_grpc": "-master.port.grpc",
    "volume": "-volume.port",
    "volume_grpc": "-volume.port.grpc",
    "filer": "-filer.port",
    "filer_grpc": "-filer.port.grpc",
    "s3": "-s3.port",
    "s3_grpc": "-s3.port.grpc",
}

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject"})
CREDENTIAL_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
)


class SeaweedFSSupervisor:
    """Runs a private SeaweedFS (master, volume, filer and S3 gateway in one process).

    Data, logs, the S3 identity file and the chosen ports live under ``data_dir/seaweedfs``.
    A restart on the same folder keeps the objects and reuses the stored ports when they are
    still free, so object URLs stored elsewhere keep working.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key: str,
        secret_key: str,
        weed_path: str | None = None,
        startup_timeout_s: float = 60.0,
        stop_grace_s: float = 5.0,
    ) -> None:
        self.root = data_dir / "seaweedfs"
        self._access_key = access_key
        self._secret_key = secret_key
        self._weed_path = weed_path
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.ports: dict[str, int] = {}
        self._process: ManagedProcess | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SeaweedFSSupervisor:
        return cls(
            settings.data_dir,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
        )

    @property
    def endpoint(self) -> str | None:
        """The S3 endpoint as ``127.0.0.1:PORT`` while the server runs, else None."""
        if self._process is None or not self._process.is_running():
            return None
        return f"{LOOPBACK}:{self.ports['s3']}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def ports_path(self) -> Path:
        return self.root / "ports.json"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    async def start(self) -> str:
        """Start SeaweedFS and return the S3 endpoint ``127.0.0.1:PORT`` once it serves requests.

        Raises BotledgerError with the end of the server log if it exits or does not become
        ready within ``startup_timeout_s``.
        """
        if self._process is not None and self._process.is_running():
            return f"{LOOPBACK}:{self.ports['s3']}"

        weed = self._weed_path or find_executable("weed")
        data_path = self.root / "data"
        data_path.mkdir(parents=True, exist_ok=True)
        config_path = self._write_s3_config()
        self.ports = self._choose_ports()
        started_at = time.monotonic()

        self._process = ManagedProcess(
            "weed",
            weed,
            self._server_args(data_path, config_path),
            self.root,
            cwd=self.root,
            # Sets master.volume_growth.copy_1 of master.toml: grow one volume per collection.
            env={**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"},
        )
        await self._process.start()
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

        endpoint = f"{LOOPBACK}:{self.ports['s3']}"
        logger.info(
            "SeaweedFS ready at %s after %.1f s (data %s)",
            endpoint,
            time.monotonic() - started_at,
            data_path,
        )
        return endpoint

    async def stop(self) -> None:
        """Stop SeaweedFS. Safe to call when it is not running.

        weed server waits about 15 s for the filer's gRPC streams on SIGTERM (seen with 4.48),
        so after ``stop_grace_s`` the process group gets SIGKILL. Acknowledged writes are already
        in the volume files and the filer's LevelDB journal by then, and survive the kill of the
        process (tests restart after it), though not a power loss before the OS flushes them.
        """
        process = self._process
        if process is None:
            return
        self._process = None
        await process.stop(grace_s=self.stop_grace_s)
        _remove_unix_sockets(self.ports.values())

    def _server_args(self, data_path: Path, config_path: Path) -> list[str]:
        args = [
            "server",
            f"-dir={data_path}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            # A single master needs no saved Raft state. Resuming it makes a restart wait for
            # a leader election, and the volume server then retries its heartbeat only every
            # 5 s. Volume ids are rebuilt from the volume server's heartbeat.
            "-master.resumeState=false",
            "-volume.preStopSeconds=0",
            # Each S3 bucket is a collection with volumes of its own. The defaults (8 volume
            # slots of 30 GB, 7 volumes grown per collection) leave room for one bucket. Slots
            # sized by free disk space and 1 GB volumes, grown one at a time, leave room for many.
            "-volume.max=0",
            "-master.volumeSizeLimitMB=1024",
            "-filer",
            "-s3",
            f"-s3.config={config_path}",
            # These listeners are on by default (Iceberg 8181, Lance 9101) and unused here.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        args.extend(f"{flag}={self.ports[name]}" for name, flag in PORT_FLAGS.items())
        return args

    def _write_s3_config(self) -> Path:
        """Write the S3 identity file (mode 0600) with the configured access key."""
        config = {
            "identities": [
                {
                    "name": "botledger",
                    "credentials": [
                        {"accessKey": self._access_key, "secretKey": self._secret_key}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.root / "s3.json"
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as config_file:
            json.dump(config, config_file)
        os.chmod(path, 0o600)
        return path

    def _choose_ports(self) -> dict[str, int]:
        """Reuse the ports stored by the previous run that are still free, and pick new ones."""
        stored = self._load_ports()
        chosen: dict[str, int] = {}
        for name in PORT_FLAGS:
            port = stored.get(name)
            if port is not None and port not in chosen.values() and is_port_free(port):
                chosen[name] = port
                continue

            if port is not None:
                logger.warning("SeaweedFS %s port %s is taken; choosing another", name, port)
            new_port = free_port()
            while new_port in chosen.values():
                new_port = free_port()
            chosen[name] = new_port

        self._save_ports(chosen)
        return chosen

    def _load_ports(self) -> dict[str, int]:
        try:
            raw = json.loads(self.ports_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring unreadable %s: %s", self.ports_path, exc)
            return {}
        if not isinstance(raw, dict):
            logger.warning("Ignoring %s: expected a JSON object", self.ports_path)
            return {}
        return {
            name: port
            for name, port in raw.items()
            if name in PORT_FLAGS and isinstance(port, int) and 0 < port < 65536
        }

    def _save_ports(self, ports: dict[str, int]) -> None:
        temporary = self.ports_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(ports, indent=2, sort_keys=True), encoding="utf-8")
        temporary.replace(self.ports_path)

    async def _wait_ready(self) -> None:
        """Poll until a volume server has joined the master and the S3 port responds to HTTP.

        Without a registered volume server, the first upload would fail with "no writable
        volumes", so the S3 port alone is not enough.

        NOTE: with weed 4.48 a start takes about 3 s, but about 7 s when the volume server's
        first heartbeat comes before the master has elected itself leader: it retries after 5 s.
        """
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if not self._process.is_running():
                    raise BotledgerError(
                        f"SeaweedFS exited with code {self._process.returncode} during startup. "
                        f"End of {self.log_path}:\n{self._process.log_tail()}"
                    )
                if await self._volume_server_joined(session) and await self._s3_answers(session):
                    return
                if time.monotonic() >= deadline:
                    raise BotledgerError(
                        f"SeaweedFS did not become ready within {self.startup_timeout_s:.0f} s. "
                        f"End of {self.log_path}:\n{self._process.log_tail()}"
                    )
                await asyncio.sleep(READINESS_POLL_S)

    async def _volume_server_joined(self, session: aiohttp.ClientSession) -> bool:
        url = f"http://{LOOPBACK}:{self.ports['master']}/dir/status"
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    return False
                status = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return False
        return _count_data_nodes(status) > 0

    async def _s3_answers(self, session: aiohttp.ClientSession) -> bool:
        # An unsigned request gets 403 from a running gateway, which is all this checks.
        url = f"http://{LOOPBACK}:{self.ports['s3']}/"
        try:
            async with session.get(url) as response:
                await response.read()
                return True
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False


def _count_data_nodes(status: Any) -> int:
    """Count the volume servers in the JSON of the master's ``/dir/status``."""
    if not isinstance(status, dict):
        return 0
    topology = status.get("Topology") or {}
    count = 0
    for data_center in topology.get("DataCenters") or []:
        for rack in data_center.get("Racks") or []:
            count += len(rack.get("DataNodes") or [])
    return count


def _remove_unix_sockets(ports: Any) -> None:
    """Delete the Unix sockets weed creates per port in the temp folder and leaves behind.

    weed 4.48 also listens on ``$TMPDIR/seaweedfs-<service>-<port>.sock`` and does not remove
    the files when it is killed.
    """
    temp_dir = Path(os.environ.get("TMPDIR") or "/tmp")
    for port in ports:
        for path in temp_dir.glob(f"seaweedfs-*-{port}.sock"):
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
            except OSError as exc:
                logger.debug("Cannot remove %s: %s", path, exc)


class ArtifactStore:
    """Artifact bytes (screenshots, DOM snapshots) in one S3 bucket, through the minio client.

    The minio client is synchronous, so every call runs in a worker thread. Errors come out as
    NotFoundError (missing key or bucket), SettingsError (rejected credentials or an invalid
    bucket name), ConflictError (bucket owned by another account) or BotledgerError (server
    unreachable or failing).
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        if not endpoint or "://" in endpoint:
            raise SettingsError(
                f"Invalid S3 endpoint {endpoint!r}: give host:port without a scheme."
            )
        try:
            check_bucket_name(bucket)
        except ValueError:
            raise SettingsError(
                f"Invalid {ENV_PREFIX}S3_BUCKET {bucket!r}: use 3 to 63 lowercase letters, "
                "digits, dots or hyphens."
            ) from None

        self.endpoint = endpoint
        self.bucket = bucket
        self.secure = secure
        self.region = region
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            # Retries stay short: the caller decides whether to retry a whole artifact upload.
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )

    @classmethod
    def from_settings(cls, settings: Settings, endpoint: str | None = None) -> ArtifactStore:
        """Build the store from settings; ``endpoint`` (the embedded server's) wins if given."""
        resolved = endpoint or settings.s3_endpoint
        if resolved is None:
            raise SettingsError(
                f"No S3 endpoint: set {ENV_PREFIX}S3_ENDPOINT, or start the embedded SeaweedFS "
                "and pass its endpoint."
            )
        return cls(
            resolved,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._http.clear()

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists. Safe to call any number of times."""
        if await self._call("check bucket", "", lambda: self._client.bucket_exists(self.bucket)):
            return

        try:
            await self._call(
                "create bucket",
                "",
                lambda: self._client.make_bucket(self.bucket, location=self.region),
            )
        except ConflictError as exc:
            if exc.details.get("s3_code") != "BucketAlreadyOwnedByYou":
                raise
            logger.debug("Bucket %s was created concurrently by another process", self.bucket)
            return
        logger.info("Created bucket %s at %s", self.bucket, self.endpoint)

    async def put_bytes(
        self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None:
        """Store ``data`` under ``key``, replacing any object with that key."""
        _check_key(key)

        def upload() -> None:
            self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )

        await self._call("put", key, upload)
        logger.debug("Stored %s bytes at %s/%s", len(data), self.bucket, key)

    async def get_bytes(self, key: str) -> tuple[bytes, str]:
        """Return the bytes and content type of ``key``. Raises NotFoundError when it is missing."""
        _check_key(key)

        def download() -> tuple[bytes, str]:
            response = self._client.get_object(self.bucket, key)
            try:
                content_type = response.headers.get("Content-Type") or DEFAULT_CONTENT_TYPE
                return response.read(), content_type
            finally:
                response.close()
                response.release_conn()

        return await self._call("get", key, download)

    async def delete(self, key: str) -> None:
        """Delete ``key``. Deleting a missing key succeeds, as in S3."""
        _check_key(key)
        await self._call("delete", key, lambda: self._client.remove_object(self.bucket, key))
        logger.debug("Deleted %s/%s", self.bucket, key)

    async def _call(self, operation: str, key: str, function: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(function)
        except S3Error as exc:
            raise self._translate_s3_error(operation, key, exc) from exc
        except (MinioException, Urllib3HTTPError, OSError) as exc:
            logger.warning(
                "S3 %s of %r in bucket %s at %s failed: %s",
                operation,
                key,
                self.bucket,
                self.endpoint,
                exc,
            )
            raise BotledgerError(
                f"Object store {self.endpoint} failed to {operation} {key!r} in bucket "
                f"{self.bucket}: {exc}. Check that the S3 server is running and reachable.",
                {"endpoint": self.endpoint, "bucket": self.bucket, "key": key},
            ) from exc

    def _translate_s3_error(self, operation: str, key: str, exc: S3Error) -> BotledgerError:
        details = {"bucket": self.bucket, "key": key, "s3_code": exc.code}
        if exc.code == "NoSuchBucket":
            return NotFoundError(
                f"Bucket {self.bucket} not found at {self.endpoint}: call ensure_bucket() first.",
                details,
            )
        if exc.code in NOT_FOUND_CODES:
            return NotFoundError(
                f"Object {key!r} not found in bucket {self.bucket} at {self.endpoint}.", details
            )
        if exc.code in CREDENTIAL_CODES:
            logger.warning(
                "S3 %s of %r in bucket %s rejected: %s", operation, key, self.bucket, exc.code
            )
            return SettingsError(
                f"Object store {self.endpoint} rejected the {operation} of {key!r} with "
                f"{exc.code}: check {ENV_PREFIX}S3_ACCESS_KEY and {ENV_PREFIX}S3_SECRET_KEY.",
                details,
            )
        if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return ConflictError(
                f"Bucket {self.bucket} already exists at {self.endpoint} ({exc.code}).", details
            )

        logger.warning(
            "S3 %s of %r in bucket %s failed with %s: %s",
            operation,
            key,
            self.bucket,
            exc.code,
            exc.message,
        )
        return BotledgerError(
            f"Object store {self.endpoint} failed to {operation} {key!r} in bucket "
            f"{self.bucket}: {exc.code} {exc.message}.",
            details,
        )


def _check_key(key: str) -> None:
    if not key or key.startswith("/"):
        raise ValidationError(
            f"Invalid object key {key!r}: use a non-empty key that does not start with '/'."
        )
