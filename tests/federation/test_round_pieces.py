"""The round's pure pieces: plan checks, sampling that never waits forever, the privacy account, saved state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAdam

from fleetloop.federation.config import RoundsConfig
from fleetloop.federation.privacy import gaussian_epsilon
from fleetloop.federation.sampling import online_nodes, sample_round
from fleetloop.federation.state_store import (
    FederationState,
    capture_strategy_state,
    load_state,
    restore_strategy_state,
    save_state,
)
from fleetloop.federation.strategies import build_strategy, check_plan
from fleetloop.platform.errors import UserInputError


def test_bulyan_needs_4f_plus_3_replies() -> None:
    with pytest.raises(UserInputError, match="needs at least 7 replies"):
        check_plan("bulyan", 6, 1)
    assert check_plan("bulyan", 7, 1) == []


def test_fedavg_asked_to_tolerate_attackers_is_warned() -> None:
    (w,) = check_plan("fedavg", 10, 2)
    assert "tolerates no attacker" in w
    assert check_plan("fedmedian", 10, 2) == []


def test_every_named_strategy_builds() -> None:
    for name in ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"):
        assert build_strategy(RoundsConfig(strategy=name, clients=10), 10) is not None


class FewNodes:
    def get_node_ids(self) -> list[int]:
        return [3, 1]


def test_a_round_stops_waiting_for_vehicles_that_never_come() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    nodes = online_nodes(FewNodes(), want=5, wait_s=10.0, clock=lambda: now[0], sleep=sleep)  # type: ignore[arg-type]
    assert nodes == [1, 3] and now[0] == pytest.approx(10.0)


def test_sampling_is_seeded_by_run_and_round() -> None:
    nodes = list(range(100, 120))
    assert sample_round(nodes, 5, seed=1, server_round=3) == sample_round(nodes, 5, seed=1, server_round=3)
    assert sample_round(nodes, 5, seed=1, server_round=3) != sample_round(nodes, 5, seed=1, server_round=4)
    assert sample_round(nodes[:3], 5, seed=1, server_round=1) == nodes[:3]


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    e1, e10 = gaussian_epsilon(1.0, 1, 1e-5), gaussian_epsilon(1.0, 10, 1e-5)
    assert 0 < e1 < e10 and gaussian_epsilon(4.0, 10, 1e-5) < e10 and gaussian_epsilon(1.0, 0, 1e-5) == 0.0
    # The RDP bound is never tighter than the exact single-release Gaussian mechanism's (z=1: about 4.4 at 1e-5).
    assert e1 > 4.0


def test_the_parent_weights_and_calibration_survive_a_save_and_restore(tmp_path: Path) -> None:
    parent = {"w": np.arange(3, dtype=np.float32)}
    state = FederationState(
        "fedavg",
        2,
        {"w": np.zeros(3, np.float32)},
        parent_arrays=parent,
        parent_calibration={"val_uncertainty_p90": 0.7},
    )
    save_state(tmp_path / "s.npz", state)
    loaded = load_state(tmp_path / "s.npz")
    assert loaded is not None and loaded.parent_calibration == {"val_uncertainty_p90": 0.7}
    np.testing.assert_array_equal(loaded.parent_arrays["w"], parent["w"])
    np.testing.assert_array_equal(loaded.arrays["w"], np.zeros(3, np.float32))


def test_fedadam_moments_survive_a_save_and_restore(tmp_path: Path) -> None:
    adam = FedAdam()
    adam.m_t = {"w": np.ones(3, np.float32)}
    adam.v_t = {"w": np.full(3, 2.0, np.float32)}
    state = FederationState("fedadam", 4, {"w": np.zeros(3, np.float32)}, strategy_state=capture_strategy_state(adam))
    save_state(tmp_path / "s.npz", state)
    loaded = load_state(tmp_path / "s.npz")
    assert loaded is not None and loaded.server_round == 4
    fresh = FedAdam()
    restore_strategy_state(fresh, loaded.strategy_state)
    assert fresh.m_t is not None and fresh.v_t is not None
    np.testing.assert_array_equal(fresh.v_t["w"], adam.v_t["w"])
