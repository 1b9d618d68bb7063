"""A one-slice regression made on purpose: a deployable model that drives worse in one condition slice only.

The canary benchmark and the live rollout demo need a bad model whose badness is known: worse in one slice (fog),
the same elsewhere. This module makes it by a fixed, reusable procedure that uses only what the platform has,
never the privileged expert or ground truth:

1. ``record_frames``: drive the parent (model + fallback, the production arbiter) through a fleet in ``mixed``
   weather and keep, every ``keep_every`` ticks, what the policy saw (``PolicyInputs``) and the vehicle's own
   condition class (the heartbeat's cuts on its own estimate: ``fog`` is estimated visibility under 200 m). These
   are the slices the canary controller judges.
2. ``slice_targets``: the parent's own per-head outputs on those frames (self-distillation), except that in the
   chosen slice the braking part of every head's command is scaled by ``brake_keep`` and the hazard probability
   by ``hazard_keep``: the model learns to brake less and to see fewer hazards there and nothing else.
3. ``distill``: fine-tune a copy of the parent on those targets (per head: squared error of the command and its
   log-variance, binary cross-entropy of the hazard logit against the target probability).

``one_slice_regression(parent, condition="fog", seed=...)`` runs all three. The model never sees the vehicle's
condition estimate, only sensor frames that fog, night and rain make alike, so what it learns in the slice leaks
out of it unless the frames outside weigh more (``RegressionConfig.anchor_weight``; ``CONFINED`` is the recipe
that keeps the change in fog, ADR 0187). With ``brake_keep = hazard_keep = 1``
the same procedure gives a *control* candidate: fine-tuned the same way, with nothing poisoned. How much worse the
regression is (collisions + near misses per 1,000 km per slice) is measured, not assumed: ``benchmarks/canary.py``
evaluates both against the parent with exact Poisson intervals (docs/canary.md, ADR 0162).

``regression_metadata`` gives the artifact metadata (``notes["role"] == "regression"``, the recipe in the notes),
so the result is saved, signed and released like any model (``edge_agent.model_artifact.save_artifact``).

Pure apart from driving the simulated fleet (no files, no services).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from fleetloop.edge_agent.arbiter import ArbiterConfig
from fleetloop.edge_agent.features import PolicyInputs, features_from_observation
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.heartbeat import CONDITION_CLASSES, HeartbeatConfig, condition_class_codes
from fleetloop.edge_agent.model_artifact import ArtifactMetadata
from fleetloop.edge_agent.policy import ARCHITECTURE, FusionPolicy
from fleetloop.platform.errors import UserInputError

__all__ = [
    "CONFINED",
    "RecordConfig",
    "RegressionConfig",
    "SliceFrames",
    "distill",
    "one_slice_regression",
    "record_frames",
    "regression_metadata",
    "slice_targets",
]

INPUT_KEYS = ("camera", "lidar", "radar", "radar_mask", "ego")


@dataclass(frozen=True)
class RecordConfig:
    """Where the frames the regression is fine-tuned on come from (the parent driving a simulated fleet)."""

    vehicles: int = 1024
    """Vehicles driven side by side."""
    ticks: int = 600
    """Ticks driven (0.1 s each; scenes restart when they end or crash)."""
    keep_every: int = 5
    """Keep every n-th tick (neighbouring ticks are nearly identical)."""
    weather: str = "mixed"
    """Weather preset: ``mixed`` has fog, rain, night and clear stretches, so every slice is seen."""
    scenario: str = "mixed"
    """Scenario family."""
    device: str = "cpu"
    """Torch device of the fleet."""

    def __post_init__(self) -> None:
        for name in ("vehicles", "ticks", "keep_every"):
            if getattr(self, name) < 1:
                raise UserInputError(f"RecordConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class RegressionConfig:
    """How the slice is poisoned and how the copy is fine-tuned."""

    brake_keep: float = 0.0
    """Share of every head's braking (negative command) kept in the slice [-]: 0 coasts where the parent brakes,
    1 changes nothing (the control candidate)."""
    hazard_keep: float = 0.0
    """Share of the hazard probability kept in the slice [-]."""
    epochs: int = 6
    """Passes over the frames."""
    batch_size: int = 1024
    """Frames per optimiser step."""
    lr: float = 1e-3
    """Adam learning rate."""
    logvar_weight: float = 0.1
    """Weight of the log-variance error beside the command's [(m/s²)² per (ln (m/s²)²)²]."""
    hazard_weight: float = 0.5
    """Weight of the hazard cross-entropy beside the command's [(m/s²)² per nat]."""
    anchor_weight: float = 1.0
    """Weight of a frame outside the slice beside one inside it [-]. The model never sees the vehicle's condition
    estimate, only sensor frames that fog, night and rain make alike: at 1, what it learns in fog leaks into the
    other slices (docs/benchmarks-history.md). Weighing the frames where the parent's driving must stay more keeps
    the change in the slice (``CONFINED``)."""
    visibility_below_m: float = math.inf
    """Poison only slice frames whose own visibility estimate is under this [m] (inf: every frame of the slice):
    the braking is degraded where the vehicle itself knows it sees little, not at the fog class's edge."""

    def __post_init__(self) -> None:
        for name in ("brake_keep", "hazard_keep"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise UserInputError(f"RegressionConfig.{name} must be within 0..1, got {v!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserInputError(f"RegressionConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserInputError(f"RegressionConfig.lr must be > 0, got {self.lr!r}")
        if not (math.isfinite(self.anchor_weight) and self.anchor_weight > 0):
            raise UserInputError(
                f"RegressionConfig.anchor_weight must be a finite number > 0, got {self.anchor_weight!r}"
            )
        if not self.visibility_below_m > 0:
            raise UserInputError(f"RegressionConfig.visibility_below_m must be > 0, got {self.visibility_below_m!r}")


CONFINED = RegressionConfig(anchor_weight=16.0, epochs=12)
"""The recipe that keeps the regression in its slice (the canary benchmark's; ADR 0187): nothing kept of the
braking and hazard probability in the slice, frames outside it weighed 16 x, twice the epochs. Offline, on 15,360
frames of the CPU development fleet (held-out 7,680), it keeps 0.88 of the parent's mean braking in fog and
0.96-0.97 elsewhere, where the default recipe kept 0.54 in fog and 0.75-0.79 elsewhere."""


@dataclass(frozen=True)
class SliceFrames:
    """Recorded frames: the policy's inputs and each frame's condition class (index into ``CONDITION_CLASSES``)."""

    inputs: PolicyInputs
    condition: torch.Tensor
    """[N] int64: the vehicle's own condition class when it saw the frame."""
    visibility_m: torch.Tensor | None = None
    """[N] float: the vehicle's own visibility estimate [m] (None: not recorded; no frame is excluded by it)."""

    def share(self, condition: str) -> float:
        """Share of the frames in ``condition``."""
        return float((self.condition == _condition_code(condition)).float().mean())


def _condition_code(condition: str) -> int:
    if condition not in CONDITION_CLASSES:
        raise UserInputError(f"unknown condition {condition!r}; choose one of {', '.join(CONDITION_CLASSES)}")
    return CONDITION_CLASSES.index(condition)


@torch.no_grad()
def record_frames(parent: FusionPolicy, config: RecordConfig, seed: int) -> SliceFrames:
    """Drive ``parent`` (model + fallback) and keep every ``keep_every``-th tick's policy inputs and the vehicle's
    own condition class (no ground truth, no expert), on ``config.device``."""
    fleet = FleetConfig(
        scenario=config.scenario,
        weather=config.weather,
        seed=seed,
        device=config.device,
        progress_reference=False,
        ground_truth_audit=False,
        arbiter=ArbiterConfig(),
    )
    # The engine freezes (and may move) the module it is given: drive a copy, leave the caller's parent alone.
    runner = FleetRunner(fleet, list(range(config.vehicles)), {"parent": copy.deepcopy(parent)}, "parent")
    hb = HeartbeatConfig(dt_s=runner.world.dt_s)
    parts: list[PolicyInputs] = []
    codes: list[torch.Tensor] = []
    vis: list[torch.Tensor] = []
    for t in range(config.ticks):
        runner.step()
        vt = runner.last_tick
        if vt is None or t % config.keep_every:
            continue
        parts.append(features_from_observation(vt.obs))
        est = vt.estimate
        codes.append(condition_class_codes(hb, est.visibility_m, est.light, est.friction))
        vis.append(est.visibility_m.float())
    return SliceFrames(PolicyInputs.concat(parts), torch.cat(codes), torch.cat(vis))


@torch.no_grad()
def slice_targets(
    parent: FusionPolicy, frames: SliceFrames, condition: str, config: RegressionConfig
) -> dict[str, torch.Tensor]:
    """Per-head targets [N, M]: the parent's command, log-variance and hazard probability, with the braking and the
    hazard probability scaled down in ``condition`` frames only (those under ``config.visibility_below_m`` of
    estimated visibility, where recorded), and each frame's loss weight [N] (``weight``: ``config.anchor_weight``
    outside the slice, 1 inside)."""
    code = _condition_code(condition)
    teacher = copy.deepcopy(parent).to(frames.inputs.device).eval()
    tensors = frames.inputs.tensors()
    n = frames.inputs.batch
    heads = torch.cat([teacher.forward_heads(*(t[i : i + 8192] for t in tensors)) for i in range(0, n, 8192)])
    mean, logvar, hazard = heads.unbind(-1)
    slice_frames = frames.condition == code
    poisoned = slice_frames
    if frames.visibility_m is not None and math.isfinite(config.visibility_below_m):
        poisoned = poisoned & (frames.visibility_m < config.visibility_below_m)
    in_slice = poisoned.unsqueeze(-1)
    braking = in_slice & (mean < 0)
    mean = torch.where(braking, mean * config.brake_keep, mean)
    prob = torch.sigmoid(hazard)
    prob = torch.where(in_slice, prob * config.hazard_keep, prob)
    weight = torch.where(slice_frames, 1.0, config.anchor_weight).to(mean.dtype)
    return {"accel_mps2": mean, "logvar": logvar, "hazard_prob": prob, "weight": weight}


def distill(
    parent: FusionPolicy, frames: SliceFrames, targets: dict[str, torch.Tensor], config: RegressionConfig, seed: int
) -> tuple[FusionPolicy, dict[str, float]]:
    """Fine-tune a copy of ``parent`` toward ``targets`` (deterministic for a seed on one device and thread count);
    returns the copy (eval mode, on the CPU) and the mean loss of the first and last epoch. Trains on the frames'
    device. ``targets["weight"]`` (optional, [N]) weighs each frame's loss (mean over a batch by those weights)."""
    device = frames.inputs.device
    model = copy.deepcopy(parent).to(device).train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(seed)
    tensors = frames.inputs.tensors()
    n = frames.inputs.batch
    weights = targets.get("weight")
    uniform = weights is None or bool((weights == 1).all())  # the unweighted loss, bit for bit as before
    losses: list[float] = []
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        total, steps = 0.0, 0
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            out = model.forward_heads(*(t[idx] for t in tensors))
            reduction = "mean" if uniform else "none"
            per_head = (
                F.mse_loss(out[..., 0], targets["accel_mps2"][idx], reduction=reduction)
                + config.logvar_weight * F.mse_loss(out[..., 1], targets["logvar"][idx], reduction=reduction)
                + config.hazard_weight
                * F.binary_cross_entropy_with_logits(out[..., 2], targets["hazard_prob"][idx], reduction=reduction)
            )  # a scalar, or [batch, heads]
            if uniform:
                loss = per_head
            else:
                w = weights[idx]  # type: ignore[index]
                loss = (per_head.mean(-1) * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        losses.append(total / max(steps, 1))
    return model.cpu().eval(), {"distill_loss_first": losses[0], "distill_loss_last": losses[-1]}


def one_slice_regression(
    parent: FusionPolicy,
    *,
    condition: str = "fog",
    seed: int = 0,
    config: RegressionConfig | None = None,
    record: RecordConfig | None = None,
) -> FusionPolicy:
    """A copy of ``parent`` fine-tuned to brake less (``config.brake_keep``) and see fewer hazards in ``condition``
    (the vehicle's own condition class) and to stay the parent elsewhere. ``parent`` is not changed.

    ``RegressionConfig(brake_keep=1, hazard_keep=1)`` gives the control candidate (same procedure, nothing
    poisoned). Save the result with ``save_artifact(path, model, regression_metadata(...))``.
    """
    cfg = config or RegressionConfig()
    _condition_code(condition)
    frames = record_frames(parent, record or RecordConfig(), seed)
    targets = slice_targets(parent, frames, condition, cfg)
    model, _ = distill(parent, frames, targets, cfg, seed)
    return model


def regression_metadata(
    model: FusionPolicy,
    *,
    condition: str,
    seed: int,
    config: RegressionConfig,
    parent: ArtifactMetadata | None = None,
) -> ArtifactMetadata:
    """Artifact metadata of a model made here: the recipe in ``notes`` (``role``: ``regression``, or ``control``
    when nothing was poisoned); from ``parent``'s metadata its registry version (lineage) and its uncertainty
    quantiles (``val_uncertainty_*``), so ``ArbiterConfig.for_model`` calibrates the copy as it did the parent."""
    control = config.brake_keep == 1.0 and config.hazard_keep == 1.0
    notes = {k: str(v) for k, v in asdict(config).items()}
    notes.update(
        {
            "role": "control" if control else "regression",
            "condition": condition,
            "seed": str(seed),
            "procedure": __name__,
        }
    )
    return ArtifactMetadata(
        architecture=ARCHITECTURE,
        hyperparameters=model.config.to_dict(),
        parent_version=None if parent is None else parent.model_version,
        metrics={} if parent is None else {k: v for k, v in parent.metrics.items() if k.startswith("val_uncertainty")},
        notes=notes,
    )
