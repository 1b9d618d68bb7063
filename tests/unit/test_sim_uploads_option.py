"""`sim run --uploads / --upload-budget`: the vehicles' upload selection by name, reported with the run, and bad
names refused with what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetloop.cli.sim import DEFAULT_UPLOAD_BUDGET, simulate
from fleetloop.edge_agent.triggers import UPLOAD_POLICIES, TriggerConfig, upload_policy
from fleetloop.platform.errors import FleetConfigError
from fleetloop.platform.settings import Settings


def test_each_policy_name_builds_its_selection_under_the_budget() -> None:
    assert upload_policy("triggers", 0.02) == TriggerConfig()
    # the CLI's default (kept apart so `sim --help` loads no torch) is the vehicles' own
    assert TriggerConfig().budget_fraction == DEFAULT_UPLOAD_BUDGET
    valued = upload_policy("valued", 0.01)
    assert valued.value_weighting and valued.budget_fraction == 0.01 and valued.common_headroom_clips > 0
    rand = upload_policy("random", 0.05)
    assert rand.trigger_mask == 1 << 5 and rand.reserve_clips == 0 and rand.budget_fraction == 0.05
    assert set(UPLOAD_POLICIES) == {"triggers", "valued", "random"}
    with pytest.raises(FleetConfigError, match="valid: triggers, valued, random"):
        upload_policy("best")
    with pytest.raises(FleetConfigError, match=r"share of frames in \(0, 1\]"):
        upload_policy("valued", 0.0)


def test_a_valued_fleet_in_fog_uploads_fog_and_the_run_says_which_policy(tmp_path: Path) -> None:
    settings = Settings.model_validate({"state_dir": tmp_path})
    out = {
        name: simulate(
            settings,
            vehicles=16,
            minutes=0.5,
            scenario="mixed",
            weather="fog",
            seed=3,
            fallback_only=True,
            telemetry=False,
            uploads=name,
            upload_budget=0.02,
        )
        for name in ("valued", "random")
    }
    for name, run in out.items():
        assert run["run"]["uploads"] == {"policy": name, "budget_fraction": 0.02}
    by = out["valued"]["counts"]["uploads"]["uploaded_by_condition"]
    assert by["fog"] > 0 and by["clear"] == 0  # steady fog: every frame the vehicles estimate as fog
    assert sum(by.values()) == out["valued"]["counts"]["uploads"]["frames_uploaded"]
