"""The registry contract: the same tests run on real MLflow and on the in-memory backend, so the fake cannot drift.

Each test uses its own model name, so tests share one MLflow server without seeing each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetloop.platform.errors import DataError, NotFoundError, TransitionNotAllowed, UserInputError
from fleetloop.platform.registry import Registry, Stage
from fleetloop.platform.registry.backend import RegistryBackend
from fleetloop.platform.registry.memory import InMemoryBackend
from fleetloop.platform.registry.records import STAGE_TAG


class StepClock:
    """A clock that moves one second per reading, so the order of decisions is known."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(params=["memory", pytest.param("mlflow", marks=pytest.mark.integration)])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], RegistryBackend]]:
    """Makes backends that all see the same registry (like two processes talking to one server)."""
    if request.param == "memory":
        shared = InMemoryBackend(tmp_path / "memory-artifacts")
        yield lambda: shared
    else:
        from fleetloop.platform.registry.mlflow_backend import MlflowBackend

        uri = request.getfixturevalue("mlflow_uri")
        yield lambda: MlflowBackend(uri)


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def reg(backend_factory: Callable[[], RegistryBackend], clock: StepClock) -> Registry:
    return Registry(backend_factory(), clock=clock)


@pytest.fixture
def name() -> str:
    return f"fleet-policy-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    d = tmp_path / "policy"
    (d / "weights").mkdir(parents=True)
    (d / "weights" / "policy.bin").write_bytes(bytes(range(256)) * 4)
    (d / "config.json").write_text('{"hidden": 64}')
    return d


META = {"format": "safetensors", "input_schema_version": "1.0", "training_data_hashes": ["sha256:aa"]}


def register(reg: Registry, name: str, artifact: Path, **meta: object) -> str:
    return reg.register(name, artifact, {**META, **meta}, actor="trainer@ci").version


# -- registering ------------------------------------------------------------------------------------


def test_register_creates_a_candidate_with_metadata_and_a_log_entry(reg: Registry, name: str, artifact: Path) -> None:
    info = reg.register(name, artifact, META, actor="trainer@ci")
    assert (info.model, info.version, info.stage, info.aliases) == (name, "1", Stage.CANDIDATE, ())
    assert info.metadata == META
    assert datetime.fromisoformat(info.created).tzinfo is not None
    [entry] = reg.history(name)
    assert (entry.version, entry.from_stage, entry.to_stage, entry.actor) == ("1", None, "candidate", "trainer@ci")
    assert entry.reason == "registered"


def test_versions_count_up(reg: Registry, name: str, artifact: Path) -> None:
    assert [register(reg, name, artifact) for _ in range(3)] == ["1", "2", "3"]
    assert [v.version for v in reg.list_versions(name)] == ["1", "2", "3"]


def test_downloaded_artifact_is_byte_identical(reg: Registry, name: str, artifact: Path, tmp_path: Path) -> None:
    v = register(reg, name, artifact)
    out = reg.download(name, v, tmp_path / "dl")
    assert (out / "weights" / "policy.bin").read_bytes() == (artifact / "weights" / "policy.bin").read_bytes()
    assert (out / "config.json").read_text() == '{"hidden": 64}'


def test_a_single_file_artifact_is_kept_under_its_name(reg: Registry, name: str, tmp_path: Path) -> None:
    f = tmp_path / "policy.safetensors"
    f.write_bytes(b"\x00weights\xff")
    v = register(reg, name, f)
    assert (reg.download(name, v, tmp_path / "dl") / "policy.safetensors").read_bytes() == b"\x00weights\xff"


def test_download_model_returns_the_model_file_of_a_file_or_folder_artifact(
    reg: Registry, name: str, artifact: Path, tmp_path: Path
) -> None:
    f = tmp_path / "policy.safetensors"
    f.write_bytes(b"\x00weights\xff")
    v_file = register(reg, name, f)
    assert reg.download_model(name, v_file, tmp_path / "dl-file").read_bytes() == b"\x00weights\xff"
    (artifact / "weights" / "policy.safetensors").write_bytes(b"nested")
    v_dir = register(reg, name, artifact)
    got = reg.download_model(name, v_dir, tmp_path / "dl-dir")
    assert (got.name, got.read_bytes()) == ("policy.safetensors", b"nested")


def test_download_model_says_when_a_version_holds_no_model_file(
    reg: Registry, name: str, artifact: Path, tmp_path: Path
) -> None:
    v = register(reg, name, artifact)  # weights/policy.bin and config.json: no .safetensors file
    with pytest.raises(DataError, match=rf"{name} version {v} holds no \.safetensors model file"):
        reg.download_model(name, v, tmp_path / "dl")


def test_production_is_the_promoted_version_and_a_clear_error_before_that(
    reg: Registry, name: str, artifact: Path
) -> None:
    with pytest.raises(NotFoundError, match=r"no production version.*`fleetloop model bootstrap`"):
        reg.production(name)  # not even registered
    v1 = register(reg, name, artifact)
    with pytest.raises(NotFoundError, match="no production version"):
        reg.production(name)  # registered, nothing released
    reg.promote(name, v1, Stage.PRODUCTION, reason="genesis")
    assert reg.production(name).version == v1


def test_register_refuses_a_missing_or_empty_artifact(reg: Registry, name: str, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        reg.register(name, tmp_path / "nope", META)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="empty"):
        reg.register(name, tmp_path / "empty", META)


def test_register_refuses_a_parent_that_does_not_exist(reg: Registry, name: str, artifact: Path) -> None:
    register(reg, name, artifact)
    assert reg.get(name, register(reg, name, artifact, parent_version="1")).metadata["parent_version"] == "1"
    with pytest.raises(NotFoundError, match="parent_version 7"):
        register(reg, name, artifact, parent_version="7")
    assert len(reg.list_versions(name)) == 2  # nothing half-registered


def test_unknown_model_and_version_say_what_exists(reg: Registry, name: str, artifact: Path) -> None:
    with pytest.raises(NotFoundError, match="not registered"):
        reg.list_versions(name)
    register(reg, name, artifact)
    with pytest.raises(NotFoundError, match=r"no version 5 \(versions: 1\)"):
        reg.promote(name, 5, Stage.STAGING)
    with pytest.raises(UserInputError, match="not a model version"):
        reg.get(name, "latest")


# -- the life of a release ------------------------------------------------------------------------------


def test_genesis_then_canary_rollout_replaces_production(reg: Registry, name: str, artifact: Path) -> None:
    v1 = register(reg, name, artifact)
    [genesis] = reg.promote(name, v1, Stage.PRODUCTION, reason="first model", actor="alice@lab")
    assert genesis.genesis and not genesis.forced
    assert reg.by_alias(name, "production").version == v1  # type: ignore[union-attr]

    v2 = register(reg, name, artifact, parent_version=v1)
    reg.promote(name, v2, Stage.STAGING, reason="offline gates passed")
    reg.promote(name, v2, Stage.CANARY, reason="start rollout")
    assert reg.get(name, v2).aliases == ("canary",)

    with pytest.raises(TransitionNotAllowed, match="through a rollout"):
        reg.promote(name, v2, Stage.PRODUCTION)
    assert reg.get(name, v2).stage is Stage.CANARY  # a refusal changes nothing

    done = reg.promote(name, v2, Stage.PRODUCTION, via_rollout=True, reason="all waves healthy", actor="ota")
    assert [(r.version, r.from_stage, r.to_stage) for r in done] == [
        (v2, "canary", "production"),
        (v1, "production", "archived"),
    ]
    assert done[0].via_rollout and done[1].caused_by == v2
    assert done[0].decision == done[1].decision and done[0].at == done[1].at

    stages = {v.version: (v.stage, v.aliases) for v in reg.list_versions(name)}
    assert stages == {v1: (Stage.ARCHIVED, ()), v2: (Stage.PRODUCTION, ("production",))}
    assert reg.by_alias(name, "canary") is None


def test_a_second_genesis_is_refused(reg: Registry, name: str, artifact: Path) -> None:
    v1, v2 = register(reg, name, artifact), register(reg, name, artifact)
    reg.promote(name, v1, Stage.PRODUCTION)
    with pytest.raises(TransitionNotAllowed, match=f"version {v1} is in production"):
        reg.promote(name, v2, Stage.PRODUCTION)


def test_forced_transition_records_actor_reason_and_flag(reg: Registry, name: str, artifact: Path) -> None:
    v1, v2 = register(reg, name, artifact), register(reg, name, artifact)
    reg.promote(name, v1, Stage.PRODUCTION)
    with pytest.raises(UserInputError, match="needs a reason"):
        reg.promote(name, v2, Stage.PRODUCTION, force=True)
    records = reg.promote(name, v2, Stage.PRODUCTION, force=True, reason="hotfix for incident 7", actor="oncall@ops")
    assert records[0].forced and records[0].actor == "oncall@ops" and records[0].reason == "hotfix for incident 7"
    assert reg.get(name, v1).stage is Stage.ARCHIVED


def test_history_is_the_whole_log_in_time_order(reg: Registry, name: str, artifact: Path, clock: StepClock) -> None:
    v1, v2 = register(reg, name, artifact), register(reg, name, artifact)
    reg.promote(name, v2, Stage.STAGING)
    reg.promote(name, v1, Stage.REJECTED, reason="fails gates")
    reg.promote(name, v2, Stage.PRODUCTION)
    log = reg.history(name)
    assert [(r.version, r.to_stage) for r in log] == [
        (v1, "candidate"),
        (v2, "candidate"),
        (v2, "staging"),
        (v1, "rejected"),
        (v2, "production"),
    ]
    assert [r.at for r in log] == sorted(r.at for r in log)
    assert all(r.at.endswith("+00:00") for r in log)
    assert [r.to_stage for r in reg.history(name, v1)] == ["candidate", "rejected"]


def test_another_client_sees_the_same_state_and_log(
    backend_factory: Callable[[], RegistryBackend], name: str, artifact: Path
) -> None:
    writer, reader = Registry(backend_factory()), Registry(backend_factory())
    v = writer.register(name, artifact, META).version
    writer.promote(name, v, Stage.PRODUCTION, reason="genesis")
    assert reader.get(name, v).stage is Stage.PRODUCTION
    assert [r.to_stage for r in reader.history(name)] == ["candidate", "production"]
    assert reader.history(name)[-1].actor == writer.history(name)[-1].actor


def test_repeating_a_promotion_records_nothing_new(reg: Registry, name: str, artifact: Path) -> None:
    v = register(reg, name, artifact)
    reg.promote(name, v, Stage.STAGING)
    assert reg.promote(name, v, Stage.STAGING) == []
    assert len(reg.history(name)) == 2


def test_an_interrupted_promotion_is_completed_by_repeating_it(
    backend_factory: Callable[[], RegistryBackend], name: str, artifact: Path
) -> None:
    backend = backend_factory()
    reg = Registry(backend)
    v1, v2 = register(reg, name, artifact), register(reg, name, artifact)
    reg.promote(name, v1, Stage.PRODUCTION)
    reg.promote(name, v2, Stage.STAGING)
    reg.promote(name, v2, Stage.CANARY)
    # A crash right after the new production's stage tag was written: alias and old production untouched.
    backend.set_version_tag(name, v2, STAGE_TAG, "production")
    records = reg.promote(name, v2, Stage.PRODUCTION, via_rollout=True)
    assert [(r.version, r.to_stage, r.caused_by) for r in records] == [(v1, "archived", v2)]
    assert reg.by_alias(name, "production").version == v2  # type: ignore[union-attr]
    assert reg.by_alias(name, "canary") is None


def test_a_version_registered_outside_fleetloop_is_adopted_as_candidate(
    backend_factory: Callable[[], RegistryBackend], name: str, artifact: Path
) -> None:
    backend = backend_factory()
    backend.ensure_model(name)
    raw = backend.create_version(name, artifact, tags={}, run_tags={})
    reg = Registry(backend)
    assert reg.get(name, raw.version).stage is None
    with pytest.raises(TransitionNotAllowed, match="no stage to staging"):
        reg.promote(name, raw.version, Stage.STAGING)
    [adopted] = reg.promote(name, raw.version, Stage.CANDIDATE, reason="adopted")
    assert adopted.from_stage is None and reg.get(name, raw.version).stage is Stage.CANDIDATE
