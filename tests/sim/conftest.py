"""Shared helpers of the world's tests: a sensor-driven driver whose behaviour depends on the sensor noise."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch

from fleetloop.sim import ScenarioSpec, World, detect_events, init_state, observe, step
from fleetloop.sim.sensors import LIDAR_BEAMS, Observation

Run = Callable[..., tuple[dict[int, Counter[str]], torch.Tensor]]


def sensor_driver(obs: Observation) -> torch.Tensor:
    """A crude lidar/radar follower: brake hard when the nearest return ahead is within 1.6 s of travel."""
    mid = LIDAR_BEAMS // 2
    lidar_m = obs.lidar_range_m[:, mid - 3 : mid + 3].min(-1).values
    ahead = obs.radar_valid & (obs.radar_azimuth_rad.abs() < 0.1)
    radar_m = torch.where(ahead, obs.radar_range_m, torch.full_like(obs.radar_range_m, 1e3)).min(-1).values
    nearest = torch.minimum(lidar_m, radar_m)
    headway_s = nearest / obs.ego_speed_mps.clamp_min(1.0)
    return torch.where(headway_s < 1.6, torch.full_like(nearest, -6.0), torch.full_like(nearest, 0.3))


def run_fleet(
    world: World,
    scenarios: Sequence[ScenarioSpec],
    ids: Sequence[int],
    seed: int,
    ticks: int,
    device: str = "cpu",
    driver: Callable[[Observation], torch.Tensor] = sensor_driver,
) -> tuple[dict[int, Counter[str]], torch.Tensor]:
    """Drive ``ids`` for ``ticks``; per vehicle id the event counts, and the final ego road positions."""
    state = init_state(world, scenarios, ids, seed, device)
    counts: dict[int, Counter[str]] = {i: Counter() for i in ids}
    for _ in range(ticks):
        nxt = step(world, state, driver(observe(world, state)), world.dt_s)
        ev = detect_events(world, state, nxt)
        for name in ("collision", "near_miss", "hard_brake", "phantom_brake", "harsh_jerk"):
            for row in torch.nonzero(getattr(ev, name)).flatten().tolist():
                counts[ids[row]][name] += 1
        state = nxt
    return counts, state.ego_s_m.cpu()


@pytest.fixture
def run() -> Run:
    return run_fleet


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The world's tests run small batches, where torch's thread pool costs more than it gives on a busy 2-core
    machine; one thread, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
