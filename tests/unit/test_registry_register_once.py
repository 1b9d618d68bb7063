"""Registration survives a crash: a training run's candidate is registered once, whatever was interrupted
(the in-memory backend; the same Registry code runs on MLflow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetloop.platform.errors import ServiceUnavailable
from fleetloop.platform.registry import Registry, Stage
from fleetloop.platform.registry.memory import InMemoryBackend
from fleetloop.platform.registry.records import STAGE_TAG

META = {"format": "safetensors", "training_run_id": "run-a"}


class DiesBeforeTheStage(InMemoryBackend):
    """A backend whose server goes away right after the version is created, before its stage is recorded."""

    dead = False

    def create_version(self, name, artifact, *, tags, run_tags):  # type: ignore[no-untyped-def]
        raw = super().create_version(name, artifact, tags=tags, run_tags=run_tags)
        self.dead = True
        return raw

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        if self.dead:
            raise ServiceUnavailable("MLflow went away")
        super().set_version_tag(name, version, key, value)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    p = tmp_path / "policy.safetensors"
    p.write_bytes(b"weights")
    return p


def test_registering_the_same_training_run_twice_gives_one_version(artifact: Path) -> None:
    reg = Registry(InMemoryBackend())
    first, created = reg.register_once("m", artifact, META)
    again, created_again = reg.register_once("m", artifact, META)
    assert (created, created_again) == (True, False)
    assert again.version == first.version and len(reg.list_versions("m")) == 1
    other, _ = reg.register_once("m", artifact, {**META, "training_run_id": "run-b"})
    assert other.version != first.version and len(reg.list_versions("m")) == 2


def test_a_version_left_without_a_stage_is_completed_not_registered_again(artifact: Path) -> None:
    backend = DiesBeforeTheStage()
    reg = Registry(backend)
    with pytest.raises(ServiceUnavailable):
        reg.register_once("m", artifact, META)
    (raw,) = backend.versions("m")
    assert STAGE_TAG not in raw.tags  # the crash left a version without its stage
    backend.dead = False
    info, created = reg.register_once("m", artifact, META)
    assert not created and info.version == raw.version and info.stage is Stage.CANDIDATE
    assert [r.to_stage for r in reg.history("m")] == ["candidate"]
    assert len(reg.list_versions("m")) == 1
