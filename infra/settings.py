"""Settings of every botledger service, read from ``BOTLEDGER_*`` environment variables.

Every value has a default that needs nothing configured: with no NATS URL and no S3 endpoint,
``botledger up`` starts a private nats-server and SeaweedFS under the data directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from events.errors import SettingsError

ENV_PREFIX = "BOTLEDGER_"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "botledger"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Configuration shared by the gateway, runner, projector and CLI."""

    data_dir: Path = dataclasses.field(default_factory=default_data_dir)

    # NATS: None starts a private nats-server under data_dir.
    nats_url: str | None = None
    stream_name: str = "BOTLEDGER"
    stream_replicas: int = 1
    subject_prefix: str = "botledger"

    # S3-compatible object store: None starts a private SeaweedFS under data_dir.
    s3_endpoint: str | None = None
    s3_access_key: str = "botledger"
    s3_secret_key: str = "botledger-secret"
    s3_bucket: str = "botledger-artifacts"
    s3_secure: bool = False
    s3_region: str = "us-east-1"

    http_host: str = "127.0.0.1"
    http_port: int = 8080

    chromium_path: str = "/usr/bin/chromium"
    runner_concurrency: int = 2
    runner_ack_wait_s: float = 30.0
    runner_max_deliveries: int = 3
    default_execution_timeout_s: float = 300.0
    # Outbound proxy used by bots whose manifest sets `capabilities.proxy`.
    proxy_url: str | None = None

    # Fernet key for secret parameter values; None reads or creates data_dir/secret.key.
    secret_key: str | None = None

    # How long a write waits for its projection before it responds anyway.
    read_your_writes_timeout_s: float = 5.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        # Child processes (SeaweedFS) run in their own working directories, so a relative
        # data directory would point somewhere else for them.
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().absolute())
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError naming the first setting that cannot work."""
        if not 1 <= self.http_port <= 65535 and self.http_port != 0:
            raise SettingsError(
                f"Invalid {ENV_PREFIX}HTTP_PORT {self.http_port}: use a port from 1 to 65535, or 0 "
                "for a free one."
            )
        if self.stream_replicas not in (1, 3, 5):
            raise SettingsError(
                f"Invalid {ENV_PREFIX}STREAM_REPLICAS {self.stream_replicas}: JetStream accepts 1, "
                "3 or 5 replicas."
            )
        if self.runner_concurrency < 1:
            raise SettingsError(
                f"Invalid {ENV_PREFIX}RUNNER_CONCURRENCY {self.runner_concurrency}: use 1 or more."
            )
        if self.runner_ack_wait_s < 1:
            raise SettingsError(
                f"Invalid {ENV_PREFIX}RUNNER_ACK_WAIT_S {self.runner_ack_wait_s}: use 1 second or "
                "more."
            )
        if self.runner_max_deliveries < 1:
            raise SettingsError(
                f"Invalid {ENV_PREFIX}RUNNER_MAX_DELIVERIES {self.runner_max_deliveries}: use 1 or "
                "more."
            )
        if self.default_execution_timeout_s <= 0:
            raise SettingsError(
                f"Invalid {ENV_PREFIX}DEFAULT_EXECUTION_TIMEOUT_S "
                f"{self.default_execution_timeout_s}: use a positive number of seconds."
            )
        if self.nats_url is not None and not self.nats_url.startswith(("nats://", "tls://")):
            raise SettingsError(
                f"Invalid {ENV_PREFIX}NATS_URL {self.nats_url!r}: use a nats:// or tls:// URL, "
                "or leave it unset for the embedded nats-server."
            )
        if self.s3_endpoint is not None and "://" in self.s3_endpoint:
            raise SettingsError(
                f"Invalid {ENV_PREFIX}S3_ENDPOINT {self.s3_endpoint!r}: give host:port without a "
                f"scheme and set {ENV_PREFIX}S3_SECURE for TLS."
            )

    @property
    def read_store_path(self) -> Path:
        return self.data_dir / "read-store.sqlite3"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``BOTLEDGER_<FIELD>`` variables; ``overrides`` win (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = ENV_PREFIX + field.name.upper()
            if key in environ:
                values[field.name] = _parse(key, environ[key], str(field.type))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(key: str, raw: str, type_name: str) -> Any:
    if "Path" in type_name:
        return Path(raw).expanduser()
    if type_name.startswith("bool"):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"Invalid {key} {raw!r}: use true or false.")
    if type_name.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"Invalid {key} {raw!r}: use a whole number.") from None
    if type_name.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"Invalid {key} {raw!r}: use a number.") from None
    if raw == "" and "None" in type_name:
        return None
    return raw
