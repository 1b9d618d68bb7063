"""The fleet runner: outcomes of driving a small fleet (NaN models, model switches, uploads, the fallback on CCRs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig
from fleetloop.edge_agent.telemetry import CollectingSink
from fleetloop.edge_agent.triggers import TriggerConfig
from fleetloop.platform.bus import GROUND_TRUTH_FRAMES, TELEMETRY_FRAMES, FrameBatch
from fleetloop.platform.errors import FleetConfigError
from fleetloop.sim import euro_ncap_matrix


def _policy() -> FusionPolicy:
    torch.manual_seed(0)
    return FusionPolicy(PolicyConfig())


class NanPolicy(nn.Module):
    """A model whose every output is NaN (its weights are fine, so the engine loads it)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, camera: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return torch.full((camera.shape[0], 3), float("nan"))


def test_a_nan_model_never_reaches_the_actuators() -> None:
    config = FleetConfig(scenario="mixed", weather="clear", seed=1, progress_reference=False)
    runner = FleetRunner(config, range(12), {"nan": NanPolicy()}, "nan")
    for _ in range(20):
        runner.step()  # world.step raises StateError on a non-finite command
        assert runner.last_tick is not None
        assert bool(torch.isfinite(runner.last_tick.command_mps2).all())
        assert bool((runner.last_tick.decision.driver == 1).all())
    d = runner.summary().to_dict()
    assert d["fallback_activations"]["invalid_output"] == 12
    assert d["counts"]["inference_status"]["invalid_output"] == 12 * 20


def test_injected_nan_weights_hand_only_the_hit_vehicles_to_the_fallback() -> None:
    config = FleetConfig(scenario="following", seed=2, progress_reference=False, faults=("nan_weights:ids=1+3",))
    runner = FleetRunner(config, range(6), {"1": _policy()}, "1")
    for _ in range(5):
        runner.step()
        assert runner.last_tick is not None
        reasons = runner.last_tick.decision.reason.tolist()
        assert reasons[1] == reasons[3] == 2  # invalid_output
        assert bool(torch.isfinite(runner.last_tick.command_mps2).all())


def test_set_model_switches_chosen_vehicles_between_ticks() -> None:
    config = FleetConfig(scenario="following", seed=3, progress_reference=False)
    runner = FleetRunner(config, range(10), {"1": _policy(), "2": _policy()}, "1")
    runner.run(5)
    assert runner.set_model([2, 5, 99], "2") == 2
    runner.step()
    assert runner.last_tick is not None
    reasons = runner.last_tick.decision.reason.tolist()
    assert reasons[2] == reasons[5] == 7  # model_switch: the fallback drives while the new model warms up
    assert 7 not in reasons[:2] + reasons[3:5] + reasons[6:]
    runner.run(29)
    d = runner.summary().to_dict()
    assert set(d["by_version"]) == {"1", "2"}
    assert d["by_version"]["2"]["vehicle_hours"] == pytest.approx(2 * 30 * 0.1 / 3600)
    with pytest.raises(KeyError, match="loaded"):
        runner.set_model([1], "7")


def test_uploads_stay_within_budget_and_telemetry_carries_no_ground_truth() -> None:
    sink = CollectingSink()
    config = FleetConfig(scenario="mixed", weather="mixed", seed=4, progress_reference=False)
    runner = FleetRunner(config, range(30), {"1": _policy()}, "1", sink=sink)
    d = runner.run(150).to_dict()
    frames = sink.frames()
    assert frames is not None and frames.ground_truth is not None
    assert frames.n_frames == d["counts"]["uploads"]["frames_uploaded"] > 0
    # The budget: 2% of frames plus what each vehicle's bucket starts with: one clip and the near-miss reserve
    # (see triggers.py).
    assert frames.n_frames <= 30 * (0.02 * 150 + TriggerConfig().initial_frames)
    assert set(frames.telemetry) == {c.name for c in TELEMETRY_FRAMES.columns}
    assert set(frames.ground_truth) == {c.name for c in GROUND_TRUTH_FRAMES.columns}
    assert not {"true_ttc_s", "expert_accel_mps2", "true_visibility_m"} & set(frames.telemetry)
    np.testing.assert_array_equal(frames.telemetry["seq"], frames.ground_truth["seq"])
    assert (frames.telemetry["trigger_flags"] > 0).all()
    # Frames are the buffered frames, and the buffer knows which were uploaded.
    assert int(runner.buffer.columns["uploaded"].sum()) <= frames.n_frames
    one = frames.take(np.flatnonzero(frames.vehicle_ids == frames.vehicle_ids[0]))
    FrameBatch.build(TELEMETRY_FRAMES, str(one.vehicle_ids[0]), one.telemetry)  # valid against the schema


def test_fallback_alone_avoids_ccrs_up_to_40_kmh() -> None:
    tests = [t for t in euro_ncap_matrix() if t.name.startswith("ccrs") and t.ego_speed_mps <= 40 / 3.6 + 1e-6]
    config = FleetConfig(scenario=tuple(tests), respawn=False, progress_reference=False)
    runner = FleetRunner(config, range(len(tests)))
    for _ in range(110):
        runner.step()
    assert not bool(runner.state.collided.any()), [
        t.name for t, c in zip(tests, runner.state.collided, strict=True) if c
    ]
    assert bool((runner.state.ego_v_mps < 0.1).all())  # stopped in front of the target


def test_progress_reference_and_respawn() -> None:
    config = FleetConfig(scenario="pedestrian", seed=5)
    runner = FleetRunner(config, range(4))
    d = runner.run(205).to_dict()  # pedestrian scenes last 20 s: every vehicle respawns once
    assert d["counts"]["respawns"] >= 4
    assert 0.5 < d["progress_vs_expert"] <= 1.05


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"scenario": "motorway"}, "valid scenarios: free, following"),
        ({"weather": "snow"}, "valid weather: clear, fog"),
        ({"device": "tpu"}, "cpu, cuda"),
        ({"faults": ("melt",)}, "valid faults: latency_spike"),
    ],
)
def test_bad_configuration_says_what_is_valid(kw: dict[str, object], match: str) -> None:
    with pytest.raises(FleetConfigError, match=match):
        FleetConfig(**kw)  # type: ignore[arg-type]


def test_bad_vehicle_ids_and_buffer_are_refused() -> None:
    with pytest.raises(FleetConfigError, match="at least one vehicle"):
        FleetRunner(FleetConfig(), [])
    with pytest.raises(FleetConfigError, match="unique"):
        FleetRunner(FleetConfig(), [1, 1])
    with pytest.raises(FleetConfigError, match="buffer_frames must be >= 21"):
        FleetRunner(FleetConfig(buffer_frames=5), [0])
