"""Multi-GPU shard placement (planned without GPUs: the GPU count is faked) and K=3 shards on the CPU."""

from __future__ import annotations

import time

import pytest
import torch

from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.shards import ShardedFleet, ShardSpec
from fleetloop.platform.errors import FleetConfigError

CPU = FleetConfig(scenario="mixed", weather="mixed", seed=5, progress_reference=False)
CUDA = FleetConfig(scenario="mixed", weather="mixed", seed=5, progress_reference=False, device="cuda")
IDS = tuple(range(30))


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def _placement(specs: list[ShardSpec]) -> list[tuple[str, int, int]]:
    return [(s.config.device, s.vehicle_ids[0], len(s.vehicle_ids)) for s in specs]


@pytest.mark.usefixtures("four_gpus")
def test_one_shard_per_gpu_by_default() -> None:
    specs = ShardedFleet.plan(ShardSpec(CUDA, IDS), 8, "processes")
    assert [s.config.device for s in specs] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert sum((s.vehicle_ids for s in specs), ()) == IDS  # contiguous, complete, in order
    assert not torch.cuda.is_initialized()  # the driver only counts GPUs; CUDA starts in the shards


@pytest.mark.usefixtures("four_gpus")
def test_devices_lets_shards_share_gpus() -> None:
    specs = ShardedFleet.plan(ShardSpec(CUDA, IDS), 5, "processes", devices=2)
    assert _placement(specs) == [
        ("cuda:0", 0, 6),
        ("cuda:1", 6, 6),
        ("cuda:0", 12, 6),
        ("cuda:1", 18, 6),
        ("cuda:0", 24, 6),
    ]
    specs = ShardedFleet.plan(ShardSpec(CUDA, IDS), 3, "processes", devices=1)
    assert [s.config.device for s in specs] == ["cuda:0"] * 3
    assert sum((s.vehicle_ids for s in specs), ()) == IDS


@pytest.mark.usefixtures("four_gpus")
def test_bad_device_counts_are_refused() -> None:
    with pytest.raises(FleetConfigError, match="between 1 and the 4 visible GPU"):
        ShardedFleet.plan(ShardSpec(CUDA, IDS), 8, "processes", devices=5)
    with pytest.raises(FleetConfigError, match="between 1 and the 4 visible GPU"):
        ShardedFleet.plan(ShardSpec(CUDA, IDS), 2, "processes", devices=0)
    with pytest.raises(FleetConfigError, match="needs device cuda"):
        ShardedFleet.plan(ShardSpec(CPU, IDS), 2, "processes", devices=1)


def test_three_cpu_shards_give_the_single_process_totals() -> None:
    ticks = 40
    single = FleetRunner(CPU, IDS).run(ticks).to_dict()
    fleet = ShardedFleet(ShardSpec(CPU, IDS, torch_threads=1), 3, "processes")
    try:
        assert [len(s.vehicle_ids) for s in fleet.specs] == [10, 10, 10]
        assert fleet.last_busy_s == []
        t0 = time.perf_counter()
        part = fleet.advance(ticks)
        wall = time.perf_counter() - t0
        # Each shard's own time for the chunk, kept beside (not inside) the summed counts; lockstep: wall >= each.
        assert len(fleet.last_busy_s) == 3
        assert all(0 < b <= wall for b in fleet.last_busy_s)
        assert "busy_s" not in part
        assert part["ticks"] == ticks and part["vehicle_steps"] == len(IDS) * ticks
        merged = fleet.close().to_dict()
    finally:
        if not fleet.closed:
            fleet.kill()
    for key in ("events", "fallback_activations", "vehicle_steps", "vehicles"):
        assert merged[key] == single[key], key
    assert merged["km"] == pytest.approx(single["km"], rel=1e-6)
    assert merged["counts"]["uploads"] == single["counts"]["uploads"]  # type: ignore[index]
