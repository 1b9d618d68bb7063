"""The world's public surface: what it imports, what it exports, and the calls the fleet runner builds on."""

from __future__ import annotations

import subprocess
import sys

import torch

import fleetloop.sim
from fleetloop.sim import (
    World,
    detect_events,
    draw_scenarios,
    expert_control,
    ground_truth,
    init_state,
    progress_ratio,
    respawn,
    step,
    weather_preset,
)


def test_sim_imports_only_torch_numpy_and_the_standard_library() -> None:
    code = (
        "import sys, fleetloop.sim.world, fleetloop.sim.sensors, fleetloop.sim.probe;"
        "mods = {m.split('.')[0] for m in sys.modules};"
        "print(sorted(m for m in sys.modules if m.startswith('fleetloop.') and not m.startswith('fleetloop.sim')));"
        "print(sorted(mods & {'yaml', 'pyarrow', 'kafka', 'mlflow', 'pydantic', 'rich', 'flwr', 'ray', 'pandas'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "[]"]


def test_every_exported_name_resolves() -> None:
    for name in fleetloop.sim.__all__:
        assert getattr(fleetloop.sim, name) is not None


def test_respawn_restarts_only_the_masked_scenes() -> None:
    world = World(weather=weather_preset("rain"))
    ids = [3, 4, 5, 6]
    scen = draw_scenarios("ccrs", ids, 1)
    state = init_state(world, scen, ids, 1)
    for _ in range(130):  # drive into the stationary targets without braking
        state = step(world, state, torch.zeros(4), world.dt_s)
    assert bool(state.collided.all())
    gt = ground_truth(world, state)
    assert gt.actor_kind.shape == (4, world.slots) and bool(gt.collided.all())
    mask = torch.tensor([True, False, True, False])
    fresh = respawn(world, state, mask, draw_scenarios("free", [3, 5], 1))
    assert fresh.collided.tolist() == [False, True, False, True]
    assert torch.equal(fresh.ego_s_m, state.ego_s_m)  # scenes restart where the egos are
    assert torch.equal(fresh.actor_x_m[1], state.actor_x_m[1])
    nxt = step(world, fresh, expert_control(world, fresh), world.dt_s)
    ev = detect_events(world, fresh, nxt)
    assert not bool(ev.collision.any())
    assert bool((progress_ratio(nxt, nxt) == 1.0).all())
