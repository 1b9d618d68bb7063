"""The lake's replay set: written and read back with its hash checked, sampled reproducibly, and a damaged or
missing set named without stopping a fine-tune."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fleetloop.pipelines.replay import read_replay_set, replay_path, sample_frames, write_replay_set
from fleetloop.pipelines.train import TrainConfig, TrainingSet, _with_replay
from fleetloop.platform.errors import DataError


def _frames(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "camera": torch.randn(n, 128, generator=g),
        "lidar": torch.randn(n, 32, generator=g),
        "radar": torch.randn(n, 8, 7, generator=g),
        "radar_mask": torch.rand(n, 8, generator=g) > 0.5,
        "ego": torch.randn(n, 3, generator=g),
        "accel_mps2": torch.randn(n, generator=g),
        "hazard": (torch.rand(n, generator=g) > 0.8).float(),
    }


def test_a_replay_set_reads_back_as_written_with_where_it_came_from(tmp_path: Path) -> None:
    data = _frames(50)
    info = write_replay_set(tmp_path, data, {"role": "initial", "seed": 3})
    frames, again = read_replay_set(tmp_path) or ({}, None)
    assert again == info and info.frames == 50 and info.source == {"role": "initial", "seed": "3"}
    assert info.hazard_rate == pytest.approx(float(data["hazard"].mean()))
    assert all(torch.equal(frames[k], data[k]) for k in data)
    assert read_replay_set(tmp_path / "elsewhere") is None


def test_a_damaged_replay_set_is_refused_with_what_to_do(tmp_path: Path) -> None:
    write_replay_set(tmp_path, _frames(20), {"role": "initial"})
    raw = bytearray(replay_path(tmp_path).read_bytes())
    raw[-3] ^= 0xFF  # one byte of the frames
    replay_path(tmp_path).write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"does not match its hash.*bootstrap --force"):
        read_replay_set(tmp_path)
    replay_path(tmp_path).write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="unreadable"):
        read_replay_set(tmp_path)


def test_sampling_keeps_at_most_the_frames_asked_for_in_order_and_reproducibly() -> None:
    data = _frames(100)
    data["index"] = torch.arange(100)
    a, b = sample_frames(data, 30, seed=1), sample_frames(data, 30, seed=1)
    assert torch.equal(a["index"], b["index"]) and len(a["index"]) == 30
    assert bool((a["index"].diff() > 0).all())  # in their order, no frame twice
    assert not torch.equal(a["index"], sample_frames(data, 30, seed=2)["index"])
    assert len(sample_frames(data, 500, seed=1)["index"]) == 100


def _uploads(n: int) -> TrainingSet:
    data = _frames(n, seed=5)
    data["weight"] = torch.full((n,), 0.5)
    return TrainingSet(data, ("ds1",), ("sha256:ds1",), {"fog": n})


def test_a_fine_tune_replays_the_lakes_set_or_says_why_it_did_not(tmp_path: Path) -> None:
    ups = _uploads(40)
    ts, why = _with_replay(tmp_path, ups, TrainConfig(replay_share=0.3))
    assert ts is ups and why["frames"] == 0 and "no replay set" in why["reason"]
    info = write_replay_set(tmp_path, _frames(60), {"role": "initial"})
    ts, got = _with_replay(tmp_path, ups, TrainConfig(replay_share=0.3))
    assert (got["frames"], got["sha256"], got["share"]) == (60, info.sha256, 0.3)
    assert ts.frames == 100 and int(ts.data["replay"].sum()) == 60 and not bool(ts.data["replay"][:40].any())
    assert torch.equal(ts.data["weight"][40:], torch.ones(60))
    assert torch.equal(ts.data["weight"][:40], ups.data["weight"])
    assert ts.dataset_ids == ups.dataset_ids
    off, why = _with_replay(tmp_path, ups, TrainConfig(replay_share=0.0))
    assert off is ups and "off" in why["reason"]
    replay_path(tmp_path).write_bytes(b"damaged")
    kept, why = _with_replay(tmp_path, ups, TrainConfig(replay_share=0.3))
    assert kept is ups and "unreadable" in why["reason"]


def test_train_config_refuses_a_replay_share_outside_zero_to_one() -> None:
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="replay_share"):
            TrainConfig(replay_share=bad)
