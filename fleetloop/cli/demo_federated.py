"""The demo's federated step: a federated round on the vehicles' own on-board buffers (the function `fleetloop fl
round` runs, ``cli.fl.federate``, on Flower's simulation engine), its candidate validated the same way as the data
loop's (``validate_stage`` on the tiny held-out suite).

The fleet's first drive saves its buffers (``FL_BUFFER_SECONDS``, as `sim run --buffer-seconds` does); the round
starts a new federation from production (the genesis model), so a rerun of the demo tells the same story.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleetloop.cli.demo_steps import DemoPlan, candidate_summary, verdict_text
from fleetloop.cli.fl import federate
from fleetloop.cli.pipeline_stages import validate_stage
from fleetloop.federation.config import ClientTrainConfig, RoundsConfig
from fleetloop.platform.settings import Settings

__all__ = ["FL_BUFFER_SECONDS", "federated_config", "step_federated"]

FL_BUFFER_SECONDS = 25.0
"""[s] of driving each vehicle of the first drive keeps on board and saves for the federated round (250 frames,
about 100 kB a vehicle)."""


def federated_config(plan: DemoPlan, seed: int) -> RoundsConfig:
    """The demo's round: quick, one round of up to 6 vehicles and one local epoch; full, two rounds of up to 10
    vehicles and two epochs; two vehicles are held out for the server's evaluation either way."""
    clients = max(2, min(6 if plan.quick else 10, plan.vehicles - 2))
    return RoundsConfig(
        rounds=1 if plan.quick else 2,
        clients=clients,
        strategy="fedavg",
        seed=seed,
        restart=True,
        local=ClientTrainConfig(epochs=1 if plan.quick else 2),
    )


def step_federated(settings: Settings, plan: DemoPlan, seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    """A federated round over the first drive's buffers, then validate on its candidate (see the module doc)."""
    from fleetloop.pipelines.suite import tiny_suite  # pipelines load torch (seconds): only when the step runs
    from fleetloop.pipelines.validate import ValidateConfig

    cfg = federated_config(plan, seed)
    say(f"federated: {cfg.clients} vehicles train on their own buffers ({cfg.rounds} round(s), Ray)")
    fl = federate(
        settings,
        cfg,
        verdict_wait_s=0.0,
        on_round=lambda r: say(f"round {r.server_round}: {len(r.participants)} vehicles aggregated"),
    )
    say("validate: the federated candidate on the frozen held-out suite")
    validated = validate_stage(settings, say, ValidateConfig(suite=tiny_suite()))["validated"]
    candidates = [candidate_summary(v, "federated") for v in validated]
    before = fl["heldout_before"].get("heldout_accel_mse")
    after = fl["heldout_after"].get("heldout_accel_mse")
    mse = f"held-out command MSE {before:.3f} -> {after:.3f} (m/s²)²; " if before and after else ""
    verdict = "; ".join(verdict_text(c) for c in candidates) or "no candidate reached validate"
    return {
        "rounds": [fl["first_round"], fl["last_round"]],
        "participants": fl["participants"],
        "heldout_before": fl["heldout_before"],
        "heldout_after": fl["heldout_after"],
        "run_id": fl["run_id"],
        "candidates": candidates,
        "line": f"{len(fl['participants'])} vehicles trained on their own on-board buffers, no frame left them; "
        f"{mse}{verdict}",
    }
