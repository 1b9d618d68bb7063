"""Shared fixtures. Integration fixtures start the REAL services with the same launcher as `fleetloop up`,
on free loopback ports under a temporary state directory, once per test session, and stop them afterwards."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetloop.platform.settings import PHONE_HOME_OFF, Settings

os.environ.update(PHONE_HOME_OFF)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for a private stack: temporary state directory, free loopback ports."""
    state = tmp_path_factory.mktemp("fleetloop-state")
    libs = os.environ.get("FLEETLOOP_KAFKA_LIBS_DIR") or str(Path.home() / ".cache" / "fleetloop" / "kafka-libs")
    return Settings(
        state_dir=state,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        mlflow_port=free_port(),
        kafka_libs_dir=Path(libs),
        kafka_heap_mb=512,
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_settings: Settings) -> Iterator[str]:
    """A real single-node Kafka broker (KRaft), started by the launcher; yields host:port."""
    from fleetloop.platform import launcher

    launcher.up(stack_settings, ["kafka"])
    try:
        yield stack_settings.bootstrap_servers
    finally:
        launcher.down(stack_settings, ["kafka"])


@pytest.fixture(scope="session")
def mlflow_uri(stack_settings: Settings) -> Iterator[str]:
    """A real MLflow tracking server (SQLite, served artifacts), started by the launcher; yields its URL."""
    from fleetloop.platform import launcher

    launcher.up(stack_settings, ["mlflow"])
    try:
        yield stack_settings.tracking_uri
    finally:
        launcher.down(stack_settings, ["mlflow"])
