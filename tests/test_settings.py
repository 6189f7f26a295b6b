"""Settings from the environment, and the checks that run before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.errors import ServerVersionError, SettingsError
from infra.nats import check_server_version
from infra.settings import Settings


def test_defaults_need_no_configuration() -> None:
    settings = Settings.from_env({})

    assert settings.nats_url is None
    assert settings.s3_endpoint is None
    assert settings.http_host == "127.0.0.1"
    assert settings.stream_replicas == 1


def test_environment_values_are_parsed(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "BOTLEDGER_DATA_DIR": str(tmp_path),
        "BOTLEDGER_NATS_URL": "nats://127.0.0.1:4333",
        "BOTLEDGER_STREAM_REPLICAS": "3",
        "BOTLEDGER_S3_SECURE": "true",
        "BOTLEDGER_RUNNER_ACK_WAIT_S": "12.5",
    })

    assert settings.data_dir == tmp_path
    assert settings.nats_url == "nats://127.0.0.1:4333"
    assert settings.stream_replicas == 3
    assert settings.s3_secure is True
    assert settings.runner_ack_wait_s == 12.5


def test_overrides_win_over_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({"BOTLEDGER_HTTP_PORT": "9000"}, http_port=0, data_dir=tmp_path)

    assert settings.http_port == 0
    assert settings.data_dir == tmp_path


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BOTLEDGER_HTTP_PORT", "eighty", "Invalid BOTLEDGER_HTTP_PORT 'eighty'"),
        ("BOTLEDGER_HTTP_PORT", "70000", "Invalid BOTLEDGER_HTTP_PORT 70000"),
        ("BOTLEDGER_STREAM_REPLICAS", "2", "JetStream accepts 1, 3 or 5 replicas"),
        ("BOTLEDGER_RUNNER_CONCURRENCY", "0", "Invalid BOTLEDGER_RUNNER_CONCURRENCY 0"),
        ("BOTLEDGER_S3_SECURE", "maybe", "Invalid BOTLEDGER_S3_SECURE 'maybe'"),
        ("BOTLEDGER_NATS_URL", "http://127.0.0.1:4222", "use a nats:// or tls:// URL"),
        ("BOTLEDGER_S3_ENDPOINT", "http://127.0.0.1:9000", "without a scheme"),
        ("BOTLEDGER_RUNNER_ACK_WAIT_S", "fast", "Invalid BOTLEDGER_RUNNER_ACK_WAIT_S 'fast'"),
    ],
)
def test_invalid_value_names_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({key: value})


def test_old_nats_server_is_rejected() -> None:
    with pytest.raises(ServerVersionError, match="2.11 at nats://127.0.0.1:4222 is too old"):
        check_server_version(2, 11, "nats://127.0.0.1:4222")
    check_server_version(2, 12, "nats://127.0.0.1:4222")
    check_server_version(3, 0, "nats://127.0.0.1:4222")
