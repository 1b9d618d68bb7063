"""Shared fixtures. Integration fixtures start the REAL services with the same launcher as `fleetloop up`,
on free loopback ports under a temporary state directory, once per test session, and stop them afterwards."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fleetloop.platform.settings import Settings

# Set before any library is imported; spelled out here so that the sim tests also run on a machine that has
# only torch and numpy (the GPU box), where the platform's settings module (pydantic) cannot be imported.
os.environ.update(
    {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "DO_NOT_TRACK": "1",
    }
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env(*, drop: tuple[str, ...] = (), **settings: str) -> dict[str, str]:
    """The environment of a fleetloop process a test starts: this one's without any ``FLEETLOOP_`` setting (nor the
    variables in ``drop``), phone-home off, and ``settings`` on top."""
    # Imported here: the sim tests run this conftest on a machine with only torch and numpy (no pydantic).
    from fleetloop.platform.settings import PHONE_HOME_OFF

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLOOP_") and k not in drop}
    env.update(PHONE_HOME_OFF)
    env.update(settings)
    return env


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for a private stack: temporary state directory, free loopback ports."""
    from fleetloop.platform.settings import PHONE_HOME_OFF, Settings

    assert all(os.environ.get(k) == v for k, v in PHONE_HOME_OFF.items())
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
    from fleetloop.platform.services.kafka import SPEC as KAFKA

    launcher.up(stack_settings, [KAFKA])
    try:
        yield stack_settings.bootstrap_servers
    finally:
        launcher.down(stack_settings, [KAFKA])


@pytest.fixture(scope="session")
def mlflow_uri(stack_settings: Settings) -> Iterator[str]:
    """A real MLflow tracking server (SQLite, served artifacts), started by the launcher; yields its URL."""
    from fleetloop.platform import launcher
    from fleetloop.platform.services.mlflow_server import SPEC as MLFLOW

    launcher.up(stack_settings, [MLFLOW])
    try:
        yield stack_settings.tracking_uri
    finally:
        launcher.down(stack_settings, [MLFLOW])


# -- the integration marker is not optional -------------------------------------------------------------
# A test that starts Kafka or MLflow must carry @pytest.mark.integration, so that `-m "not integration"` really
# runs without services. Checked for fixtures requested by name (the test's fixture closure) and for those
# fetched with request.getfixturevalue when they are first set up.

SERVICE_FIXTURES = frozenset({"kafka_bootstrap", "mlflow_uri"})


def _unmarked_service_use(item: pytest.Item, names: frozenset[str] | set[str]) -> str | None:
    used = sorted(SERVICE_FIXTURES & set(names))
    if not used or item.get_closest_marker("integration") is not None:
        return None
    return (
        f"{item.nodeid} uses {', '.join(used)} (a real service) but is not marked @pytest.mark.integration; "
        "add the marker (or pytestmark = pytest.mark.integration in its module)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    why = _unmarked_service_use(item, set(getattr(item, "fixturenames", ())))
    if why:
        pytest.fail(why, pytrace=False)


class _ServiceFixtureGuard:
    """A global plugin: conftest hooks do not see session-scoped fixtures set up (their node is the session)."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest) -> None:
        item = getattr(request, "_pyfuncitem", None)  # the test that asked, also through getfixturevalue
        why = None if item is None else _unmarked_service_use(item, {fixturedef.argname})
        if why:
            pytest.fail(why, pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_ServiceFixtureGuard(), "fleetloop-service-fixture-guard")
