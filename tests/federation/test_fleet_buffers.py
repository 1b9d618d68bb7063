"""The data of a federation: a fleet run saves every vehicle's on-board ring where the rounds look for it, from
whichever process drives the vehicle, without changing what the fleet does."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from fleetloop.cli.sim import persist_buffers, simulate
from fleetloop.edge_agent.buffer import FRAME_COLUMNS, OnboardBuffer
from fleetloop.edge_agent.buffer_store import FRAME_BYTES, prune_buffers, shard_buffer_name
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.shards import ShardedFleet, ShardSpec
from fleetloop.federation.buffers import SUPERSEDED, buffer_dir, scan_buffers, vehicle_frames
from fleetloop.platform.errors import UserInputError
from fleetloop.platform.settings import Settings

IDS = tuple(range(6))
RING = 25  # frames: the smallest ring the triggers allow is 21
TICKS = 60  # two turn-overs and a partial third: saved at ticks 25 and 50, and at close


def _config(save_dir: Path | None) -> FleetConfig:
    return FleetConfig(
        scenario="mixed",
        seed=5,
        progress_reference=False,
        ground_truth_audit=False,
        buffer_frames=RING,
        buffer_save_dir=None if save_dir is None else str(save_dir),
    )


def test_a_frame_costs_the_bytes_the_help_states() -> None:
    columns = sum(np.dtype(dt).itemsize * math.prod(shape) for dt, shape in FRAME_COLUMNS.values())
    assert FRAME_BYTES == columns == 281


def test_saving_the_ring_changes_nothing_the_fleet_does_and_the_saved_ring_is_the_one_on_board(tmp_path: Path) -> None:
    plain = FleetRunner(_config(None), IDS).run(TICKS).to_dict()
    runner = FleetRunner(_config(tmp_path), IDS)
    saved = runner.run(TICKS).to_dict()
    assert saved["events"] == plain["events"] and saved["counts"] == plain["counts"]
    folder = tmp_path / shard_buffer_name(IDS)
    assert OnboardBuffer.open(folder).written.tolist() == [50] * len(IDS)  # the second turn-over's save
    runner.close()
    back = OnboardBuffer.open(folder)
    want = runner.buffer.frames()
    got = back.frames()
    assert back.written.tolist() == [TICKS] * len(IDS)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert got["tick"][:RING].tolist() == list(range(TICKS - RING, TICKS))  # the newest RING ticks, oldest first


@pytest.mark.parametrize("backend", ["processes", "ray"])
def test_each_shard_saves_its_own_vehicles_from_its_own_process(backend: str, tmp_path: Path) -> None:
    fleet = ShardedFleet(ShardSpec(_config(tmp_path), IDS, torch_threads=1), 2, backend)
    try:
        fleet.advance(TICKS)
        fleet.close()
    finally:
        if not fleet.closed:
            fleet.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard_buffer_name((0, 1, 2)), shard_buffer_name((3, 4, 5))]
    one = FleetRunner(_config(None), IDS)
    one.run(TICKS)
    scan = scan_buffers(tmp_path, now_s=time.time())
    assert [v.vehicle_id for v in scan.vehicles] == list(IDS) and not scan.skipped
    for v in scan.vehicles:  # randomness per vehicle id: the shards' frames are the single process's
        np.testing.assert_array_equal(
            vehicle_frames(v.path, v.vehicle_id)["ego_speed_mps"],
            one.buffer.frames(np.array([v.vehicle_id]))["ego_speed_mps"],
        )


def test_a_vehicle_saved_again_by_a_later_split_is_read_from_the_newer_folder(tmp_path: Path) -> None:
    old = OnboardBuffer(np.array([0, 1, 2, 3]), 4)
    new = OnboardBuffer(np.array([2, 3]), 4)
    for buf in (old, new):
        for t in range(3):
            buf.append({k: np.full((len(buf.vehicle_ids), *s), t, dtype=dt) for k, (dt, s) in FRAME_COLUMNS.items()})
    old.save(tmp_path / shard_buffer_name((0, 3)))
    new.save(tmp_path / shard_buffer_name((2, 3)))
    past = time.time() - 60
    os.utime(tmp_path / shard_buffer_name((0, 3)) / "buffer.json", (past, past))
    scan = scan_buffers(tmp_path, now_s=time.time())
    assert [(v.vehicle_id, v.path.name) for v in scan.vehicles] == [
        (0, shard_buffer_name((0, 3))),
        (1, shard_buffer_name((0, 3))),
        (2, shard_buffer_name((2, 3))),
        (3, shard_buffer_name((2, 3))),
    ]
    assert scan.skipped == {SUPERSEDED: 2}
    (tmp_path / "operator-notes").mkdir()  # not a shard folder: never removed
    assert prune_buffers(tmp_path, [shard_buffer_name((2, 3))]) == [shard_buffer_name((0, 3))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["operator-notes", shard_buffer_name((2, 3))]


def test_a_ring_too_short_to_decide_an_upload_is_refused_naming_the_least(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    with pytest.raises(UserInputError, match=r"--buffer-seconds 2\.1 or more"):
        persist_buffers(settings, FleetConfig(), 1.0)
    cfg = persist_buffers(settings, FleetConfig(), 25.0)
    assert cfg.buffer_frames == 250 and cfg.buffer_save_dir == str(buffer_dir(tmp_path))
    assert persist_buffers(settings, FleetConfig(), None) == FleetConfig()


def test_sim_run_leaves_the_buffers_where_fl_round_looks_and_only_this_runs_split(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    run = {"vehicles": 6, "minutes": 0.1, "fallback_only": True, "telemetry": False, "buffer_seconds": 3.0}
    simulate(settings, **run, shards=2)
    out = simulate(settings, **run)  # one shard now: the two-shard folders are an earlier split
    b = out["buffers"]
    assert b["shards"] == [shard_buffer_name(range(6))] and len(b["removed_earlier"]) == 2
    assert (b["frames_per_vehicle"], b["bytes"]) == (30, 6 * 30 * FRAME_BYTES)
    scan = scan_buffers(buffer_dir(tmp_path), now_s=time.time())
    assert [(v.vehicle_id, v.frames) for v in scan.vehicles] == [(i, 30) for i in range(6)]
