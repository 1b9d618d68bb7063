"""The policy artifact: round trip, interoperability with safetensors, refusals before and after reading weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION, PolicyInputs
from fleetloop.edge_agent.model_artifact import (
    METADATA_KEY,
    ArtifactMetadata,
    CorruptArtifactError,
    NonFiniteWeightsError,
    SchemaMismatchError,
    content_hash,
    hash_tensors,
    load_artifact,
    read_metadata,
    save_artifact,
)
from fleetloop.edge_agent.policy import ARCHITECTURE, FusionPolicy, PolicyConfig
from fleetloop.platform.errors import DataError


def _model(seed: int = 0, config: PolicyConfig | None = None) -> FusionPolicy:
    torch.manual_seed(seed)
    return FusionPolicy(config).eval()


def _meta(model: FusionPolicy, **kw: object) -> ArtifactMetadata:
    return ArtifactMetadata(architecture=ARCHITECTURE, hyperparameters=model.config.to_dict(), **kw)  # type: ignore[arg-type]


def _inputs(n: int = 8) -> PolicyInputs:
    g = torch.Generator().manual_seed(1)
    return PolicyInputs(
        torch.rand(n, 128, generator=g),
        torch.rand(n, 32, generator=g),
        torch.randn(n, 8, 7, generator=g),
        torch.rand(n, 8, generator=g) > 0.5,
        torch.rand(n, 3, generator=g),
    )


def test_round_trip_keeps_weights_outputs_and_metadata(tmp_path: Path) -> None:
    model = _model()
    meta = _meta(model, parent_version="3", training_data_hashes=("sha256:ab",), metrics={"val_accel_mse": 0.2})
    path = save_artifact(tmp_path / "p.safetensors", model, meta)
    loaded = load_artifact(path, INPUT_SCHEMA_VERSION)
    torch.testing.assert_close(loaded.model.act(_inputs()), model.act(_inputs()), rtol=0, atol=0)
    assert loaded.metadata.parent_version == "3" and loaded.metadata.metrics == {"val_accel_mse": 0.2}
    assert loaded.metadata.created_at  # filled on save
    assert loaded.sha256 == content_hash(path)
    assert read_metadata(path) == loaded.metadata
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temporary file left behind


def test_our_files_and_safetensors_files_are_interchangeable(tmp_path: Path) -> None:
    model = _model()
    path = save_artifact(tmp_path / "ours.safetensors", model)
    theirs = load_file(str(path))
    for name, t in model.state_dict().items():
        torch.testing.assert_close(theirs[name], t, rtol=0, atol=0)
    with safe_open(str(path), framework="pt") as f:
        assert ArtifactMetadata.from_json(f.metadata()[METADATA_KEY]).architecture == ARCHITECTURE
    other = tmp_path / "theirs.safetensors"
    save_file(dict(model.state_dict()), str(other), metadata={METADATA_KEY: _meta(model).to_json()})
    torch.testing.assert_close(load_artifact(other).model.act(_inputs()), model.act(_inputs()), rtol=0, atol=0)


def test_schema_mismatch_is_refused_before_any_weight_is_read(tmp_path: Path) -> None:
    model = _model()
    path = save_artifact(tmp_path / "old.safetensors", model, _meta(model, input_schema_version="policy-input/0"))
    # Cut off every weight byte: a loader that read weights first would fail with a different error.
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    path.write_bytes(path.read_bytes()[: 8 + header_len])
    with pytest.raises(SchemaMismatchError) as err:
        load_artifact(path, INPUT_SCHEMA_VERSION)
    assert "policy-input/0" in str(err.value) and INPUT_SCHEMA_VERSION in str(err.value)
    assert isinstance(err.value, DataError)


def test_nan_weights_are_detected_and_named(tmp_path: Path) -> None:
    model = _model()
    state = dict(model.state_dict())
    state["heads.weight"] = state["heads.weight"].clone()
    state["heads.weight"][0, 0] = float("nan")
    state["trunk.0.bias"] = torch.full_like(state["trunk.0.bias"], float("inf"))
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path), metadata={METADATA_KEY: _meta(model).to_json()})
    with pytest.raises(NonFiniteWeightsError) as err:
        load_artifact(path)
    assert sorted(err.value.tensors) == ["heads.weight", "trunk.0.bias"]


def test_a_nan_model_is_never_saved(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        model.heads.bias[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"heads\.bias"):
        save_artifact(tmp_path / "x.safetensors", model)
    assert not list(tmp_path.iterdir())


def test_tensors_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    small = _model(config=PolicyConfig(trunk_width=8))
    path = tmp_path / "lying.safetensors"
    save_file(dict(small.state_dict()), str(path), metadata={METADATA_KEY: _meta(_model()).to_json()})
    with pytest.raises(CorruptArtifactError, match=r"trunk\.0\.weight.*shape"):
        load_artifact(path)


def test_truncated_or_foreign_files_are_refused(tmp_path: Path) -> None:
    path = save_artifact(tmp_path / "p.safetensors", _model())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptArtifactError, match="truncated"):
        load_artifact(path)
    foreign = tmp_path / "f.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CorruptArtifactError, match="not a fleetloop policy artifact"):
        load_artifact(foreign)
    (tmp_path / "junk").write_bytes(b"\xff" * 4)
    with pytest.raises(CorruptArtifactError, match="too short"):
        load_artifact(tmp_path / "junk")


def test_saving_again_replaces_the_file_and_changes_its_hash(tmp_path: Path) -> None:
    path = save_artifact(tmp_path / "p.safetensors", _model(0))
    first = content_hash(path)
    save_artifact(path, _model(1))
    assert content_hash(path) != first
    assert len(list(tmp_path.iterdir())) == 1


def test_data_hash_depends_on_content_not_order() -> None:
    a = {"x": torch.arange(4.0), "y": torch.ones(2)}
    b = {"y": torch.ones(2), "x": torch.arange(4.0)}
    assert hash_tensors(a) == hash_tensors(b)
    assert hash_tensors(a) != hash_tensors({**a, "x": torch.arange(4.0) + 1e-3})


def test_metadata_with_nonfinite_metric_stays_valid_json(tmp_path: Path) -> None:
    model = _model()
    meta = replace(_meta(model), metrics={"val_accel_corr": float("nan")})
    path = save_artifact(tmp_path / "p.safetensors", model, meta)
    value = read_metadata(path).metrics["val_accel_corr"]
    assert value != value  # NaN survives the round trip
