"""The on-board buffer: bounded rings, overwrite counting, atomic round trip through disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetloop.edge_agent.buffer import FRAME_COLUMNS, OnboardBuffer, OnboardBufferError


def _frames(n: int, tick: int) -> dict[str, np.ndarray]:
    out = {name: np.zeros((n, *shape), dtype=np.dtype(dt)) for name, (dt, shape) in FRAME_COLUMNS.items()}
    out["tick"][:] = tick
    out["seq"][:] = tick
    out["ego_speed_mps"][:] = np.arange(n) + tick / 100
    out["camera"][:] = tick % 256
    return out


def test_ring_keeps_the_newest_frames_and_counts_overwrites() -> None:
    buf = OnboardBuffer(np.array([10, 11, 12]), capacity=4)
    for t in range(6):
        buf.append(_frames(3, t))
    buf.append(_frames(1, 6), rows=np.array([1]))
    assert buf.count().tolist() == [4, 4, 4]
    assert buf.overwritten.tolist() == [2, 3, 2]
    f = buf.frames()
    assert f["vehicle_id"].tolist() == [10] * 4 + [11] * 4 + [12] * 4
    assert f["tick"].tolist() == [2, 3, 4, 5, 3, 4, 5, 6, 2, 3, 4, 5]


def test_round_trip_through_disk(tmp_path: Path) -> None:
    buf = OnboardBuffer(np.array([7, 8]), capacity=5)
    for t in range(7):
        buf.append(_frames(2, t))
    buf.save(tmp_path)
    buf.append(_frames(2, 7))
    buf.save(tmp_path)  # a second generation replaces the first
    assert sorted(p.name for p in tmp_path.glob("tick.*.npy")) == ["tick.2.npy"]
    back = OnboardBuffer.open(tmp_path)
    want, got = buf.frames(), back.frames()
    assert set(want) == set(got)
    for name in want:
        np.testing.assert_array_equal(want[name], got[name])
    assert back.overwritten.tolist() == [3, 3]
    with pytest.raises(OnboardBufferError, match="read-only"):
        back.append(_frames(2, 8))
    more = OnboardBuffer.open(tmp_path, writable=True)
    more.append(_frames(2, 8))
    assert more.frames()["tick"].tolist() == [4, 5, 6, 7, 8] * 2


def test_a_version_1_buffer_still_opens(tmp_path: Path) -> None:
    """Format 1 stored the rings vehicle-major; a state directory written then reads the same frames."""
    import json

    buf = OnboardBuffer(np.array([3, 4, 5]), capacity=3)
    for t in range(5):
        buf.append(_frames(3, t))
    buf.save(tmp_path)
    header = json.loads((tmp_path / "buffer.json").read_text())
    for name in FRAME_COLUMNS:
        path = tmp_path / header["files"][name]
        np.save(path, np.ascontiguousarray(np.moveaxis(np.load(path), 0, 1)))
    header["format_version"] = 1
    (tmp_path / "buffer.json").write_text(json.dumps(header))
    back = OnboardBuffer.open(tmp_path, writable=True)
    for name, want in buf.frames().items():
        np.testing.assert_array_equal(back.frames()[name], want)
    back.append(_frames(3, 5))
    assert back.frames()["tick"].tolist() == [3, 4, 5] * 3
    assert back.columns["tick"].shape == (3, 3)


def test_tensor_writes_match_numpy_writes() -> None:
    """The fleet's per-tick path (``append_tensors``, ``mark_uploaded``, ``gather``) stores what ``append`` does."""
    import torch

    ids = np.array([21, 22, 23, 24])
    by_np, by_t = OnboardBuffer(ids, capacity=3), OnboardBuffer(ids, capacity=3)
    for t in range(5):
        frames = _frames(4, t)
        by_np.append(frames)
        by_t.append_tensors({k: torch.from_numpy(v.astype(v.dtype.newbyteorder("="))) for k, v in frames.items()})
    rows = torch.tensor([1, 3])
    by_t.mark_uploaded(rows, back=1)
    got = by_t.gather(rows, 1, ["tick", "ego_speed_mps", "uploaded"])
    assert got["tick"].tolist() == [3, 3]
    np.testing.assert_allclose(got["ego_speed_mps"], [1.03, 3.03], rtol=1e-6)
    assert got["uploaded"].tolist() == [True, True]
    assert int(by_t.columns["uploaded"].sum()) == 2
    for name, want in by_np.frames().items():
        if name != "uploaded":
            np.testing.assert_array_equal(by_t.frames()[name], want)


def test_bad_input_is_refused(tmp_path: Path) -> None:
    buf = OnboardBuffer(np.array([1]), capacity=2)
    frames = _frames(1, 0)
    del frames["camera"]
    with pytest.raises(OnboardBufferError, match="missing \\['camera'\\]"):
        buf.append(frames)
    with pytest.raises(OnboardBufferError, match="expected shape"):
        buf.append(_frames(2, 0))
    with pytest.raises(OnboardBufferError, match="no on-board buffer"):
        OnboardBuffer.open(tmp_path / "nope")


def test_compiled_camera_packing_rounds_like_eager_and_numpy() -> None:
    """The compiled tick packs the camera in a graph (ADR 0101): same bytes as the eager path and as ``pack_camera``,
    halves to even, out-of-range contrast clamped."""
    import torch

    from fleetloop.edge_agent.buffer import pack_camera, pack_camera_tensor
    from fleetloop.sim.compile import compile_graph

    halves = (torch.arange(-2, 254, dtype=torch.float32) + 0.5) / 255.0  # 256 values
    x = torch.cat([halves, torch.rand(4096) * 1.4 - 0.2]).view(-1, 4, 4)
    eager = pack_camera_tensor(x)
    assert torch.equal(compile_graph(pack_camera_tensor)(x), eager)
    assert np.array_equal(eager.numpy(), pack_camera(x.numpy()))
    assert int(eager.min()) == 0 and int(eager.max()) == 255
