"""Fixtures for signed releases: a real repository on disk, a real HTTP server on 127.0.0.1, a vehicle's client."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetloop.edge_agent.ota_verify import OtaClientConfig
from fleetloop.platform.releases.api import utc_now
from fleetloop.platform.releases.cohorts import VehicleList
from fleetloop.platform.releases.fields import ReleaseFields
from fleetloop.platform.releases.repository import ReleaseRepository
from fleetloop.platform.releases.server import RangeRequestHandler, start_in_thread
from tests.platform.release_data import SCHEMA, release_meta


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return ReleaseRepository.initialise(tmp_path / "state", utc_now())


@pytest.fixture
def make_artifact(tmp_path: Path) -> Callable[[str, int], Path]:
    def make(name: str, length_bytes: int = 200_000) -> Path:
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(os.urandom(length_bytes))
        return path

    return make


@pytest.fixture
def publish(repo: ReleaseRepository, make_artifact: Callable[[str, int], Path]) -> Callable[..., ReleaseFields]:
    """Publish a fresh artifact as (policy, version) and sign wave 1 for the given vehicles."""

    def do(version: str, vehicles: tuple[str, ...] = ("v-0001",), **meta: Any) -> ReleaseFields:
        fields = repo.publish(
            "policy", version, make_artifact(f"policy-{version}", 200_000), release_meta(**meta), utc_now()
        )
        repo.assign_wave(fields.release, 1, VehicleList(vehicles), utc_now())
        return fields

    return do


@pytest.fixture
def serve(repo: ReleaseRepository) -> Iterator[Callable[..., str]]:
    """Start the release server on the repository (optionally with another handler); return its base URL."""
    servers = []

    def start(handler: type[RangeRequestHandler] = RangeRequestHandler) -> str:
        server, url = start_in_thread(repo.root_dir, handler=handler)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def vehicle(repo: ReleaseRepository, serve: Callable[..., str], tmp_path: Path) -> Callable[..., OtaClientConfig]:
    """A shard's client config: built with root version 1, its own metadata dir and artifact cache."""

    def make(url: str | None = None, shard: str = "shard-0") -> OtaClientConfig:
        return OtaClientConfig(
            repo_url=url or serve(),
            trusted_root=repo.trusted_root(),
            metadata_dir=tmp_path / shard / "metadata",
            cache_dir=tmp_path / shard / "cache",
            supported_input_schemas=frozenset({SCHEMA}),
            max_attempts=3,
            timeout_s=5.0,
        )

    return make
