"""The server loop of a federated run, whichever engine runs it: ``RoundsJob`` and ``server_loop``.

A ``RoundsJob`` is everything the ServerApp's main needs (the settings, the run's configuration, the vehicles the
preflight found, the federation's state at the start, the MLflow run): a plain value. The simulation engine
builds the loop in the calling process; the deployment engine hands the job to the ServerApp process the
SuperLink starts (``deployed_apps``), which builds the same loop from it. The loop runs ``federated_round`` for
each round, saves the state atomically after each (``state_store``), logs the round to the MLflow run and tells
the caller's ``on_round``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fleetloop.edge_agent.policy import PolicyConfig
from fleetloop.federation.buffers import VehicleBuffer, vehicle_frames
from fleetloop.federation.client_app import train_config_record
from fleetloop.federation.config import RoundsConfig
from fleetloop.federation.privacy import gaussian_epsilon
from fleetloop.federation.server_app import RoundPlan, RoundReport, federated_round
from fleetloop.federation.state_store import (
    FederationState,
    capture_strategy_state,
    restore_strategy_state,
    save_state,
    state_path,
)
from fleetloop.federation.strategies import build_strategy
from fleetloop.federation.task import evaluate_heldout, labelled_data, model_from_arrays
from fleetloop.platform.errors import UserInputError

if TYPE_CHECKING:
    from flwr.app import Context
    from flwr.serverapp import Grid

    from fleetloop.platform.settings import Settings
    from fleetloop.platform.tracking import Tracking

__all__ = ["RoundsJob", "heldout_data", "privacy_report", "server_loop"]


@dataclass(frozen=True)
class RoundsJob:
    """What a run's server loop needs (see the module doc)."""

    settings: Settings
    cfg: RoundsConfig
    model_name: str
    clients: list[VehicleBuffer]
    heldout: list[VehicleBuffer]
    sample_size: int
    expected_nodes: int
    """Vehicles (nodes) the run started; a round waits for these at most ``cfg.node_wait_s``."""
    state: FederationState
    run_id: str
    """The MLflow run every round logs to."""


def heldout_data(vehicles: list[VehicleBuffer]) -> dict[str, torch.Tensor]:
    """The server's held-out set: the held-out vehicles' buffers, labelled like a vehicle's."""
    parts = [labelled_data(vehicle_frames(v.path, v.vehicle_id)) for v in vehicles]
    parts = [p for p in parts if p]
    if not parts:
        raise UserInputError("the held-out vehicles hold no validly labelled frame; drive the fleet longer")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def privacy_report(cfg: RoundsConfig, releases: int) -> dict[str, Any]:
    """The privacy a run has spent after ``releases`` aggregated rounds (epsilon for the fixed-clipping modes)."""
    dp = cfg.dp
    if not dp.enabled:
        return {"mode": "off"}
    out: dict[str, Any] = {
        "mode": dp.mode,
        "noise_multiplier": dp.noise_multiplier,
        "clipping_norm": dp.clipping_norm,
        "releases": releases,
        "delta": dp.target_delta,
    }
    if dp.mode.endswith("fixed"):
        out["epsilon"] = gaussian_epsilon(dp.noise_multiplier, releases, dp.target_delta)
        out["accounting"] = "Gaussian mechanism, RDP composition, no sampling amplification"
    else:
        out["epsilon"] = None
        out["accounting"] = "not accounted: adaptive clipping also spends on the clipped count"
    return out


def _round_metrics(r: RoundReport, privacy: Mapping[str, Any]) -> dict[str, float]:
    m = {f"{k}": v for k, v in r.heldout.items() if np.isfinite(v)}
    m.update({f"train_{k.replace('-', '_')}": v for k, v in r.train_metrics.items() if np.isfinite(v)})
    m.update(
        participants=len(r.participants),
        dropped=r.dropped_total,
        stragglers=r.stragglers,
        aggregated=float(r.aggregated),
        round_seconds=r.seconds,
    )
    m.update({f"dropped_{k.replace(' ', '_')}": float(n) for k, n in r.dropped.items()})
    if privacy.get("epsilon") is not None:
        m["privacy_epsilon"] = float(privacy["epsilon"])
    return m


def parent_anchored(cfg: RoundsConfig) -> bool:
    """Whether the vehicles anchor to the federation's starting model (and so need its weights): a parent anchor
    weight and no FedProx term, which anchors to the global model instead."""
    return cfg.local.parent_anchor_weight > 0 and cfg.strategy != "fedprox" and cfg.local.proximal_weight == 0


def server_loop(
    job: RoundsJob, tracking: Tracking, on_round: Callable[[RoundReport], None] | None = None
) -> Callable[[Grid, Context], None]:
    """The ServerApp main of ``job``: ``job.cfg.rounds`` rounds from ``job.state`` (see the module doc)."""
    cfg = job.cfg
    policy = PolicyConfig.from_dict(job.state.hyperparameters)
    heldout = heldout_data(job.heldout)
    strategy = build_strategy(cfg, job.sample_size)
    restore_strategy_state(strategy, job.state.strategy_state)
    ids = [v.vehicle_id for v in job.clients]
    paths = [str(v.path.resolve()) for v in job.clients]

    def evaluate(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        return evaluate_heldout(model_from_arrays(arrays, policy), heldout)

    plan = RoundPlan(
        expected_nodes=job.expected_nodes,
        sample_size=job.sample_size,
        min_replies=cfg.min_replies,
        round_timeout_s=cfg.round_timeout_s,
        node_wait_s=cfg.node_wait_s,
        seed=cfg.seed,
        train_config=lambda: train_config_record(ids, paths, policy, cfg.local, cfg.seed, job.sample_size),
        parent=job.state.parent_arrays if parent_anchored(cfg) else None,
    )
    path = state_path(job.settings.state_dir, job.model_name)

    def main(grid: Grid, context: Context) -> None:
        state = job.state
        first = state.server_round
        for r in range(first + 1, first + cfg.rounds + 1):
            arrays, report = federated_round(grid, strategy, plan, r, state.arrays, evaluate)
            releases = state.privacy_releases + int(report.aggregated and cfg.dp.enabled)
            state = replace(
                state,
                server_round=r,
                arrays=arrays,
                participants=sorted(set(state.participants) | set(report.participants)),
                privacy_releases=releases,
                strategy_state=capture_strategy_state(strategy),
            )
            save_state(path, state)
            tracking.log(job.run_id, metrics=_round_metrics(report, privacy_report(cfg, releases)), step=r)
            if on_round is not None:
                on_round(report)

    return main
