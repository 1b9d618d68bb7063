"""Byzantine vehicles against the strategies, on the real client code and Flower's strategies (in process, no Ray):
with 20 % sign-flip vehicles FedAvg's held-out quality degrades, FedMedian's stays near the honest-only run; with
20 % ALIE vehicles FedMedian stays near it too.

Measured, held-out command MSE [(m/s²)²], 10 clients, 2 held-out vehicles, 3 rounds, seed 0, 2 attackers:

- the 12-vehicle mixed-weather fleet of conftest: untrained start about 1.08; honest FedAvg 0.875; FedAvg with
  sign-flip 1.298 (+48 %, worse than the start); FedMedian with the same attackers 0.975 (+11 %). Asserted:
  FedAvg at least 30 % worse, FedMedian within 15 % of honest.
- partitions by condition (``condition_buffers``: clients 0-4 drove only in clear weather, 5-9 only in fog; one
  held-out vehicle of each): honest FedAvg 5.207; with sign-flip FedAvg 6.088 (+17 %), FedMedian 5.300 (+2 %);
  with ALIE FedAvg 5.241 (+0.7 %), FedMedian 5.058 (-3 %). Asserted: under sign-flip FedAvg at least 10 % worse and
  FedMedian within 5 %; under ALIE FedMedian within 5 % and FedAvg within 5 % either way. ALIE (z = 0.5, the
  paper's z_max for 10 replies and 2 attackers, spread estimated on the attacker's own buffer) is built to hide
  inside the honest spread, and it does: it does not degrade FedAvg here (nor at z = 3, 8, 30 or 100 on the mixed
  fleet: 0.884, 0.877, 0.866, 0.851 against 0.875 honest). The attack that breaks FedAvg is the sign-flip.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from fleetloop.edge_agent.model_artifact import load_artifact
from fleetloop.federation.buffers import scan_buffers, vehicle_frames
from fleetloop.federation.client_app import train_config_record, vehicle_train
from fleetloop.federation.config import AttackConfig, ClientTrainConfig, RoundsConfig
from fleetloop.federation.server_app import RoundPlan, federated_round
from fleetloop.federation.strategies import build_strategy
from fleetloop.federation.task import evaluate_heldout, labelled_data, model_from_arrays, model_to_arrays

from .conftest import InProcessGrid

ROUNDS = 3
# On the partitions by condition, held-out MSE over honest FedAvg's:
SIGN_FLIP_FEDAVG_AT_LEAST = 1.10  # FedAvg under sign-flip (measured 1.17)
SIGN_FLIP_MEDIAN_WITHIN = 1.05  # FedMedian under sign-flip (measured 1.02)
ALIE_MEDIAN_WITHIN = 1.05  # FedMedian under ALIE (measured 0.97)
ALIE_FEDAVG_BAND = 0.05  # FedAvg under ALIE, either way (measured 1.007)
# Aggregation is what is measured here, from an untrained start: no anchor to that start (ADR 0193's default pulls
# a fine-tune towards the production model it began from) and no hazard weighting, as when the numbers above were.
LOCAL = ClientTrainConfig(epochs=3, lr=3e-3, min_frames=16, parent_anchor_weight=0.0, balance_hazard=False)


def federate(buffers: Path, initial: Path, strategy: str, attack: str | None) -> float:
    """Held-out command MSE after ``ROUNDS`` rounds of 10 vehicles (2 attacking when ``attack``)."""
    vehicles = scan_buffers(buffers, now_s=0.0).vehicles
    clients, heldout_v = vehicles[:10], vehicles[10:]
    heldout_parts = [labelled_data(vehicle_frames(v.path, v.vehicle_id)) for v in heldout_v]
    heldout = {k: torch.cat([p[k] for p in heldout_parts]) for k in heldout_parts[0]}
    model = load_artifact(initial).model
    cfg = RoundsConfig(strategy=strategy, clients=10, byzantine=0.2 if attack else 0.0, local=LOCAL)
    ids = [v.vehicle_id for v in clients]
    attacker = None if attack is None else AttackConfig(kind=attack, vehicle_ids=frozenset(ids[3:5]))
    record = partial(train_config_record, ids, [str(v.path) for v in clients], model.config, LOCAL, 0, 10)
    plan = RoundPlan(10, 10, 2, 60.0, 0.0, 0, record)
    grid = InProcessGrid(10, lambda m, c: vehicle_train(m, c, attacker, None))
    strat = build_strategy(cfg, 10)
    arrays = model_to_arrays(model)

    def evaluate(a: dict) -> dict[str, float]:
        return evaluate_heldout(model_from_arrays(a, model.config), heldout)

    for r in range(1, ROUNDS + 1):
        arrays, report = federated_round(grid, strat, plan, r, arrays, evaluate)  # type: ignore[arg-type]
        assert report.aggregated, report.reason
    return report.heldout["heldout_accel_mse"]


@pytest.fixture(scope="module")
def honest_on_conditions(condition_buffers: Path, initial_model: Path) -> float:
    """Honest FedAvg's held-out MSE on the partitions by condition (the baseline of the tests below)."""
    return federate(condition_buffers, initial_model, "fedavg", None)


def test_on_partitions_by_condition_fedmedian_holds_where_fedavg_breaks_under_sign_flip(
    condition_buffers: Path, initial_model: Path, honest_on_conditions: float
) -> None:
    fedavg = federate(condition_buffers, initial_model, "fedavg", "sign-flip")
    median = federate(condition_buffers, initial_model, "fedmedian", "sign-flip")
    print(f"by condition: honest {honest_on_conditions:.4f}, fedavg + sign-flip {fedavg:.4f}, fedmedian {median:.4f}")
    assert fedavg > SIGN_FLIP_FEDAVG_AT_LEAST * honest_on_conditions
    assert median < SIGN_FLIP_MEDIAN_WITHIN * honest_on_conditions


def test_on_partitions_by_condition_fedmedian_stays_near_honest_under_alie(
    condition_buffers: Path, initial_model: Path, honest_on_conditions: float
) -> None:
    fedavg = federate(condition_buffers, initial_model, "fedavg", "alie")
    median = federate(condition_buffers, initial_model, "fedmedian", "alie")
    print(f"by condition: honest {honest_on_conditions:.4f}, fedavg + ALIE {fedavg:.4f}, fedmedian {median:.4f}")
    assert median < ALIE_MEDIAN_WITHIN * honest_on_conditions
    # ALIE hides inside the honest spread by design: here it moves FedAvg's model by under 1 % (see the module doc).
    assert abs(fedavg / honest_on_conditions - 1) < ALIE_FEDAVG_BAND


def test_fedmedian_holds_where_fedavg_breaks_under_sign_flip(fleet_buffers: Path, initial_model: Path) -> None:
    honest = federate(fleet_buffers, initial_model, "fedavg", None)
    fedavg = federate(fleet_buffers, initial_model, "fedavg", "sign-flip")
    median = federate(fleet_buffers, initial_model, "fedmedian", "sign-flip")
    print(f"held-out MSE: honest fedavg {honest:.4f}, fedavg + 20% sign-flip {fedavg:.4f}, fedmedian {median:.4f}")
    assert fedavg > 1.3 * honest
    assert median < 1.15 * honest
