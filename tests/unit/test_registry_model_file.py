"""Which file of an artifact is the model: a file is itself, a folder must hold exactly one model file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetloop.platform.errors import DataError, NotFoundError
from fleetloop.platform.registry import find_model_file


def test_a_file_is_its_own_model_file_whatever_its_name(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"w")
    assert find_model_file(f) == f


def test_a_folder_yields_the_one_model_file_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / "model" / "v3").mkdir(parents=True)
    (tmp_path / "model" / "v3" / "policy.safetensors").write_bytes(b"w")
    (tmp_path / "model" / "notes.json").write_text("{}")
    assert find_model_file(tmp_path) == tmp_path / "model" / "v3" / "policy.safetensors"


def test_a_folder_without_a_model_file_is_malformed_and_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"fleet-policy version 2 holds no \.safetensors model file"):
        find_model_file(tmp_path, what="fleet-policy version 2")


def test_a_folder_with_two_model_files_is_refused_rather_than_guessed(tmp_path: Path) -> None:
    for n in ("a.safetensors", "b.safetensors"):
        (tmp_path / n).write_bytes(b"w")
    with pytest.raises(DataError, match=r"holds 2 model files \(a\.safetensors, b\.safetensors\)"):
        find_model_file(tmp_path)


def test_a_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        find_model_file(tmp_path / "nope")
