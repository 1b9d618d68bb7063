"""The initial model (and the all-conditions reference) by imitation of the privileged expert.

``collect_expert_frames`` drives a fleet through ``fleetloop.sim`` with the expert's command plus a slowly varying
perturbation (so the data also covers the states a slightly imperfect driver gets into, not only the expert's own
path; the *label* is always the expert's clean command) and records what the vehicle's sensors saw
(``features_from_observation``), the expert command and a hazard label from ground truth: the in-path obstacle
demands more than ``HAZARD_REQUIRED_DECEL_MPS2`` or is closer than ``HAZARD_TTC_S``.

``bootstrap_initial_model(config)`` trains on clear weather (``weather="clear"``): the model the fleet starts with.
``weather="all"`` trains the *all-conditions reference* on the ``mixed`` preset (clear, fog, rain, night, night
fog): the headroom the data loop can close; its artifact carries ``notes["role"] == "reference"`` and must never
be deployed. The expert never reaches a vehicle: only this module and evaluation use it.

Pure apart from writing the artifact file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION, features_from_observation
from fleetloop.edge_agent.imitation import ImitationConfig, split_holdout, train_imitation
from fleetloop.edge_agent.model_artifact import ArtifactMetadata, hash_tensors, save_artifact
from fleetloop.edge_agent.policy import ARCHITECTURE, FusionPolicy, PolicyConfig
from fleetloop.sim import World, draw_scenarios, ground_truth, init_state, observe, respawn, step, weather_preset

__all__ = [
    "HAZARD_REQUIRED_DECEL_MPS2",
    "HAZARD_TTC_S",
    "UNCERTAINTY_QUANTILES",
    "WEATHER_OPTIONS",
    "BootstrapConfig",
    "bootstrap_initial_model",
    "collect_expert_frames",
    "hazard_label",
    "uncertainty_quantiles",
]

HAZARD_REQUIRED_DECEL_MPS2 = 2.0  # [m/s²] the expert's own emergency onset (sim.expert.EMERGENCY_ONSET_MPS2)
HAZARD_TTC_S = 3.0  # [s] in-path time to collision counted as a hazard
WEATHER_OPTIONS = {"clear": "clear", "all": "mixed"}  # option -> sim weather preset
# Quantiles of the model's uncertainty on its own validation frames recorded in the artifact's metrics as
# ``val_uncertainty_p<q>_mps2``: the arbiter's low-confidence threshold is set from them
# (``ArbiterConfig.for_model``), so it is in the model's units, not a guess.
UNCERTAINTY_QUANTILES = (50.0, 90.0, 99.0, 99.9)  # [%]


@dataclass(frozen=True)
class BootstrapConfig:
    """How the initial / reference model is made."""

    weather: str = "clear"
    """"clear" for the deployed initial model, "all" for the all-conditions reference (never deployed)."""
    scenario: str = "mixed"
    """Scenario family the fleet drives (``fleetloop.sim.FAMILIES``)."""
    vehicles: int = 3072
    """Vehicles driven side by side while collecting (3,072 x 300 ticks: ~460k frames, ~10 s to collect; against
    1,024 it lowered the clear model's collisions + near misses in fog from 217 to 171 per 1,000 km)."""
    ticks: int = 300
    """Ticks driven (0.1 s each); scenes restart when they end or crash."""
    keep_every: int = 2
    """Record every n-th tick (neighbouring ticks are nearly identical)."""
    action_noise_mps2: float = 0.6
    """Std of the perturbation added to the executed (not the recorded) command [m/s²]."""
    noise_corr_s: float = 1.5
    """Correlation time of the perturbation [s]."""
    seed: int = 0
    """Seeds scenes, sensor noise, perturbation, initialisation and training."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Architecture hyperparameters."""
    imitation: ImitationConfig = field(
        default_factory=lambda: ImitationConfig(epochs=15, batch_size=1024, max_seconds=60.0)
    )
    """Training hyperparameters."""
    output_dir: Path = Path(".")
    """Where the artifact is written."""

    def __post_init__(self) -> None:
        if self.weather not in WEATHER_OPTIONS:
            raise ValueError(f"unknown weather option {self.weather!r}; valid: {', '.join(WEATHER_OPTIONS)}")
        for name in ("vehicles", "ticks", "keep_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.action_noise_mps2 < 0 or self.noise_corr_s <= 0:
            raise ValueError("action_noise_mps2 must be >= 0 and noise_corr_s > 0")


def hazard_label(required_decel_mps2: torch.Tensor, ttc_s: torch.Tensor) -> torch.Tensor:
    """[B] float 0/1: the in-path obstacle is a hazard (ground truth; bootstrap and label audit only)."""
    return ((required_decel_mps2 > HAZARD_REQUIRED_DECEL_MPS2) | (ttc_s < HAZARD_TTC_S)).to(torch.float32)


def collect_expert_frames(config: BootstrapConfig, world: World | None = None) -> dict[str, torch.Tensor]:
    """Drive the expert (perturbed) and return training data: PolicyInputs fields + accel_mps2, hazard [N]."""
    world = world or World(weather=weather_preset(WEATHER_OPTIONS[config.weather], seed=config.seed))
    ids = list(range(config.vehicles))
    state = init_state(world, draw_scenarios(config.scenario, ids, config.seed), ids, config.seed)
    durations = torch.tensor([s.duration_s for s in draw_scenarios(config.scenario, ids, config.seed)])
    gen = torch.Generator().manual_seed(config.seed + 17)
    rho = math.exp(-world.dt_s / config.noise_corr_s)
    noise = torch.zeros(config.vehicles)
    frames: list[dict[str, torch.Tensor]] = []
    for t in range(config.ticks):
        gt = ground_truth(world, state)
        alive = ~state.collided
        if t % config.keep_every == 0 and bool(alive.any()):
            feats = features_from_observation(observe(world, state)).index(alive)
            frame = feats.as_dict()
            frame["accel_mps2"] = gt.expert_accel_mps2[alive]
            frame["hazard"] = hazard_label(gt.required_decel_mps2, gt.ttc_s)[alive]
            frames.append(frame)
        noise = rho * noise + math.sqrt(1 - rho * rho) * config.action_noise_mps2 * torch.randn(
            config.vehicles, generator=gen
        )
        # No perturbation while the expert brakes for a hazard: the data should show it avoiding, not crashing.
        quiet = gt.expert_accel_mps2 < -HAZARD_REQUIRED_DECEL_MPS2
        cmd = gt.expert_accel_mps2 + torch.where(quiet, torch.zeros_like(noise), noise)
        state = step(world, state, cmd.clamp(-world.max_brake_mps2, world.max_accel_mps2), world.dt_s)
        done = state.collided | (state.scene_t_s >= durations)
        if bool(done.any()):
            idx = torch.nonzero(done).squeeze(-1).tolist()
            fresh = draw_scenarios(config.scenario, idx, config.seed * 1_000_003 + t + 1)
            state = respawn(world, state, done, fresh)
            durations[done] = torch.tensor([s.duration_s for s in fresh])
    return {k: torch.cat([f[k] for f in frames]) for k in frames[0]}


@torch.no_grad()
def uncertainty_quantiles(model: FusionPolicy, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """The model's uncertainty on ``data`` at ``UNCERTAINTY_QUANTILES``: ``{"val_uncertainty_p99_mps2": ...}``."""
    model.eval()
    n = int(data["accel_mps2"].shape[0])
    keys = ("camera", "lidar", "radar", "radar_mask", "ego")
    unc = torch.cat([model(*(data[k][i : i + 8192] for k in keys))[:, 2] for i in range(0, n, 8192)])
    q = torch.quantile(unc.double(), torch.tensor(UNCERTAINTY_QUANTILES, dtype=torch.float64) / 100.0)
    names = [f"val_uncertainty_p{f'{p:g}'.replace('.', '_')}_mps2" for p in UNCERTAINTY_QUANTILES]
    return {name: float(v) for name, v in zip(names, q.tolist(), strict=True)}


def bootstrap_initial_model(
    config: BootstrapConfig, data: dict[str, torch.Tensor] | None = None
) -> tuple[Path, dict[str, Any]]:
    """Collect expert driving in ``config.weather`` (or take ``data``, ``collect_expert_frames(config)``'s, when the
    caller keeps the frames), train by imitation, write the artifact.

    Returns (artifact path, metrics). The artifact has ``model_version`` None (the registry assigns it) and
    ``notes["role"]`` "initial" (clear) or "reference" (all conditions, never deployed).
    """
    t0 = time.perf_counter()
    data = collect_expert_frames(config) if data is None else data
    collect_s = time.perf_counter() - t0
    with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = FusionPolicy(config.policy)
    metrics = train_imitation(model, data, config.imitation, config.seed)
    # The same validation frames train_imitation held out (same split, same seed); all frames without validation.
    val = split_holdout(data, config.imitation.val_fraction, config.seed)[1] if config.imitation.val_fraction else data
    role = "initial" if config.weather == "clear" else "reference"
    out: dict[str, Any] = {
        **metrics.as_dict(),
        **uncertainty_quantiles(model, val),
        "frames": float(data["accel_mps2"].shape[0]),
        "hazard_rate": float(data["hazard"].mean()),
        "collect_seconds": collect_s,
    }
    meta = ArtifactMetadata(
        architecture=ARCHITECTURE,
        hyperparameters=model.config.to_dict(),
        input_schema_version=INPUT_SCHEMA_VERSION,
        training_data_hashes=(hash_tensors(data),),
        metrics={k: float(v) for k, v in out.items()},
        notes={"role": role, "weather": config.weather, "scenario": config.scenario, "seed": str(config.seed)},
    )
    path = save_artifact(Path(config.output_dir) / f"policy-{role}.safetensors", model, meta)
    out["loss_curve"] = metrics.loss_curve
    return path, out
