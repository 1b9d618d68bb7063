"""The Euro NCAP matrix run: model + fallback drive it as they drive on a vehicle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fleetloop.edge_agent.bootstrap import BootstrapConfig, bootstrap_initial_model
from fleetloop.edge_agent.imitation import ImitationConfig
from fleetloop.edge_agent.model_artifact import load_artifact
from fleetloop.edge_agent.ncap_run import drive_ncap_matrix, score_conditions

pytestmark = pytest.mark.slow


def test_the_model_drives_the_matrix_with_the_arbiter_calibrated_to_it(tmp_path: Path) -> None:
    """Under the arbiter's default threshold (0.5 m/s²) a model whose own uncertainty runs higher is handed over
    to the fallback almost every tick (2-3 % of the ticks were the model's): "model + fallback" then measured the
    fallback. Calibrated as on a vehicle (``ArbiterConfig.for_model``), the model drives most of every test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        boot = BootstrapConfig(vehicles=8, ticks=20, imitation=ImitationConfig(epochs=1), output_dir=tmp_path)
        policy = load_artifact(bootstrap_initial_model(boot)[0])
        rows = drive_ncap_matrix(policy, ["dry"], groups=["CCRb"])
    finally:
        torch.set_num_threads(threads)
    assert [r["test"] for r in rows][:2] == ["ccrb_d2_g12_o100", "ccrb_d2_g40_o100"] and len(rows) == 12
    assert min(r["model_drove_share"] for r in rows) > 0.5, [r["model_drove_share"] for r in rows]
    scores = score_conditions(rows)["dry"]
    assert scores["CCRb"].tests == 12 and scores["car-to-car"].points == scores["CCRb"].points
    assert "pedestrian" not in scores  # a total over groups that were not driven is left out
