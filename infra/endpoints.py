"""The endpoints file through which operator commands find a running stack.

``botledger up`` writes ``<data dir>/endpoints.json`` once its servers are ready; CLI commands
given the same ``--data-dir`` read it to reach the same NATS server, API and object store.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import orjson

from events.errors import SettingsError
from infra.settings import Settings

ENDPOINTS_FILE = "endpoints.json"
ADMIN_KEY_FILE = "admin-key"


@dataclasses.dataclass(frozen=True)
class Endpoints:
    api_url: str
    nats_url: str
    s3_endpoint: str
    stream_name: str
    subject_prefix: str
    pid: int

    def to_json(self) -> dict[str, Any]:
        return {
            "apiUrl": self.api_url,
            "natsUrl": self.nats_url,
            "s3Endpoint": self.s3_endpoint,
            "streamName": self.stream_name,
            "subjectPrefix": self.subject_prefix,
            "pid": self.pid,
        }


def write_endpoints(data_dir: Path, endpoints: Endpoints) -> Path:
    path = data_dir / ENDPOINTS_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(endpoints.to_json(), option=orjson.OPT_INDENT_2))
    os.replace(temporary, path)
    return path


def read_endpoints(data_dir: Path) -> Endpoints:
    path = data_dir / ENDPOINTS_FILE
    try:
        raw = orjson.loads(path.read_bytes())
        return Endpoints(
            api_url=raw["apiUrl"],
            nats_url=raw["natsUrl"],
            s3_endpoint=raw["s3Endpoint"],
            stream_name=raw["streamName"],
            subject_prefix=raw["subjectPrefix"],
            pid=int(raw["pid"]),
        )
    except FileNotFoundError:
        raise SettingsError(
            f"No running stack found: {path} does not exist. Start one with "
            f"`botledger --data-dir {data_dir} up`, or pass the --data-dir it uses."
        ) from None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise SettingsError(f"Unreadable endpoints file {path}: {error!r}.") from error


def nats_url_for(settings: Settings) -> str:
    """The NATS URL an operator command should use: the configured one, else the stack's."""
    if settings.nats_url:
        return settings.nats_url
    return read_endpoints(settings.data_dir).nats_url


def remove_endpoints(data_dir: Path) -> None:
    (data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
