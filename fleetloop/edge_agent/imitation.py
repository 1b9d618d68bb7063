"""Training by imitation: fit a ``FusionPolicy`` to target commands and hazard labels.

One plain function, ``train_imitation(model, data, config, seed, anchor=None) -> ImitationMetrics``, shared by
the bootstrap (targets from the privileged expert), the pipeline's train stage and the federated client (targets
from hindsight labels). ``data`` is a dict of tensors: the ``PolicyInputs`` fields plus ``accel_mps2`` [N] and
``hazard`` [N] (0/1), optionally ``weight`` [N] (per-frame loss weight).

Loss per head m (M heads): ``w * [(a_m - a*)² + nll_weight * GaussNLL(a*; sg(a_m), exp(logvar_m))
+ hazard_weight * BCE(hazard_logit_m, h*)]``, where each head sees a fixed bootstrap resample of the frames
(Poisson(1) counts, drawn from the seed) so the heads disagree where data is thin; sg() stops the gradient so the
variance head never drags the mean (a known failure of plain Gaussian NLL). Deterministic for a given seed on one
device and thread count.

Fine-tuning options (both off by default, so the bootstrap is unchanged):
- ``balance_hazard``: per-frame weights ``W * s_c / W_c`` (``W`` the total existing weight, ``W_c`` that of the
  frame's class, hazard > 0.5 or not, ``s_c`` the class's share: ``hazard_share`` for hazards, the rest for the
  others; 0.5: equal total weight); trigger clips are mostly hazards, and unbalanced they teach the model to brake
  everywhere.
- ``anchor`` (a frozen parent model) with ``anchor_weight``: self-distillation, ``anchor_weight * mean over
  frames and heads of [(a_m - a_parent,m)² + hazard_weight * KL(Bernoulli(parent_m) || Bernoulli(model_m))]`` on
  every batch, unweighted by labels, keeps the candidate close to its parent except where the hindsight labels pull
  it away. Heads are matched one to one when the parent has as many, else all heads are pulled to the parent's
  mean. The parent's outputs are the only targets it adds; no privileged expert or ground truth is used.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from fleetloop.edge_agent.features import PolicyInputs
from fleetloop.edge_agent.policy import FusionPolicy

__all__ = [
    "ImitationConfig",
    "ImitationMetrics",
    "balance_weights",
    "evaluate_fit",
    "split_holdout",
    "train_imitation",
]

TARGET_KEYS = ("accel_mps2", "hazard")


@dataclass(frozen=True)
class ImitationConfig:
    """Hyperparameters of ``train_imitation``."""

    epochs: int = 8
    """Passes over the training frames (training may stop earlier at ``max_seconds``)."""
    batch_size: int = 512
    """Frames per optimiser step."""
    lr: float = 3e-3
    """Adam learning rate (cosine-decayed to 5 % over the run)."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    hazard_weight: float = 0.5
    """Weight of the hazard BCE beside the accel MSE [(m/s²)² per nat]."""
    nll_weight: float = 0.1
    """Weight of the variance head's Gaussian NLL (mean detached)."""
    val_fraction: float = 0.1
    """Share of frames held out for validation (0: no validation metrics)."""
    max_seconds: float = math.inf
    """Wall-clock budget [s]; training stops after the step that crosses it."""
    grad_clip: float = 5.0
    """Global gradient-norm clip."""
    anchor_weight: float = 0.0
    """Weight of the self-distillation term toward a frozen parent (``anchor``; 0 or no anchor: none)."""
    balance_hazard: bool = False
    """Reweight frames so hazard frames carry ``hazard_share`` of the label loss (the rest: non-hazard frames)."""
    hazard_share: float = 0.5
    """With ``balance_hazard``: the share of the label loss's weight the hazard frames carry (0.5: equal)."""
    replay_share: float = 0.0
    """The share of the label loss's weight the replayed frames carry (``data["replay"]`` true: frames the parent
    learnt from, mixed in so a fine-tune does not unlearn them); the hazard balance applies to the others."""


@dataclass(frozen=True)
class ImitationMetrics:
    """What a training run did and how well it fits."""

    train_frames: int
    val_frames: int
    steps: int
    epochs_done: float
    seconds: float
    loss_first: float
    """Mean training loss over the first 10 % of steps."""
    loss_last: float
    """Mean training loss over the last 10 % of steps."""
    val_accel_mse: float
    """Validation MSE of the command [(m/s²)²] (NaN without validation frames)."""
    val_accel_corr: float
    """Pearson correlation of predicted and target command on validation frames."""
    val_hazard_acc: float
    """Validation accuracy of the hazard probability at 0.5."""
    loss_curve: list[float] = field(default_factory=list)
    """Mean training loss per epoch."""

    def as_dict(self) -> dict[str, float]:
        """Scalar metrics (for artifact metadata and MLflow)."""
        return {k: float(v) for k, v in asdict(self).items() if k != "loss_curve"}


def _check_data(data: dict[str, torch.Tensor]) -> int:
    missing = [k for k in TARGET_KEYS if k not in data]
    if missing:
        raise ValueError(f"training data lacks target(s) {', '.join(missing)}; give accel_mps2 [N] and hazard [N]")
    inputs = PolicyInputs.from_dict(data)
    n = inputs.batch
    for k in (*TARGET_KEYS, *(k for k in ("weight", "replay") if k in data)):
        if tuple(data[k].shape) != (n,):
            raise ValueError(f"training data {k!r} has shape {tuple(data[k].shape)}, want ({n},) like the inputs")
    if n < 2:
        raise ValueError(f"need at least 2 training frames, got {n}")
    if not bool(torch.isfinite(data["accel_mps2"]).all()):
        raise ValueError("training targets accel_mps2 contain NaN/Inf; drop those frames before training")
    return n


def balance_weights(hazard: torch.Tensor, weight: torch.Tensor | None = None, share: float = 0.5) -> torch.Tensor:
    """``weight`` (default ones) rescaled per class (hazard > 0.5 or not) so the hazard frames carry ``share`` of
    the total weight (0.5: both classes equal) and the total is unchanged; returned as is when one class has no
    weight."""
    w = torch.ones(hazard.shape[0]) if weight is None else weight.to(torch.float32)
    return share_weights(hazard > 0.5, w, share)


def share_weights(mask: torch.Tensor, weight: torch.Tensor, share: float) -> torch.Tensor:
    """``weight`` rescaled so the frames of ``mask`` carry ``share`` of the total and the total is unchanged;
    returned as is when either side has no weight."""
    total, w_in = weight.sum(), weight[mask].sum()
    w_out = total - w_in
    if float(w_in) <= 0 or float(w_out) <= 0:
        return weight.clone()
    return torch.where(mask, weight * (total * share / w_in), weight * (total * (1.0 - share) / w_out))


def _bernoulli_kl(p_logit: torch.Tensor, q_logit: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(p_logit)) || Bernoulli(sigmoid(q_logit))), elementwise."""
    p = torch.sigmoid(p_logit)
    return p * (nn.functional.logsigmoid(p_logit) - nn.functional.logsigmoid(q_logit)) + (1 - p) * (
        nn.functional.logsigmoid(-p_logit) - nn.functional.logsigmoid(-q_logit)
    )


def split_holdout(
    data: dict[str, torch.Tensor], fraction: float, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(train, holdout) split of the frames, random but fixed by ``seed``."""
    n = int(next(iter(data.values())).shape[0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = round(n * fraction)
    hold, train = perm[:k], perm[k:]
    return {key: v[train] for key, v in data.items()}, {key: v[hold] for key, v in data.items()}


def _batch_inputs(data: dict[str, torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(data[k][idx] for k in ("camera", "lidar", "radar", "radar_mask", "ego"))


@torch.no_grad()
def evaluate_fit(model: FusionPolicy, data: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """(command MSE [(m/s²)²], command correlation, hazard accuracy at 0.5) of ``model`` on labelled ``data``."""
    n = int(data["accel_mps2"].shape[0])
    if n == 0:
        return math.nan, math.nan, math.nan
    model.eval()
    outs = []
    for i in range(0, n, 8192):
        idx = torch.arange(i, min(n, i + 8192))
        outs.append(model(*_batch_inputs(data, idx)))
    out = torch.cat(outs)
    pred, target = out[:, 0], data["accel_mps2"].to(torch.float32)
    mse = float(((pred - target) ** 2).mean())
    corr = float(torch.corrcoef(torch.stack([pred, target]))[0, 1]) if n > 1 else math.nan
    acc = float(((out[:, 1] > 0.5) == (data["hazard"] > 0.5)).to(torch.float32).mean())
    return mse, corr, acc


def train_imitation(
    model: FusionPolicy,
    data: dict[str, torch.Tensor],
    config: ImitationConfig,
    seed: int,
    anchor: FusionPolicy | None = None,
) -> ImitationMetrics:
    """Train ``model`` in place on ``data`` (see the module docstring); returns metrics. CPU tensors expected.

    ``anchor``: frozen parent for the self-distillation term (used when ``config.anchor_weight`` > 0; it is put
    in eval mode and never updated)."""
    n = _check_data(data)
    if config.epochs < 1 or config.batch_size < 1 or not 0 <= config.val_fraction < 1:
        raise ValueError(f"epochs and batch_size must be >= 1 and val_fraction in [0, 1), got {config}")
    if not config.anchor_weight >= 0:
        raise ValueError(f"anchor_weight must be >= 0, got {config.anchor_weight}")
    if anchor is model:
        raise ValueError("anchor must be a frozen copy of the parent, not the model being trained")
    if anchor is not None:
        anchor.eval()
    parent = anchor if config.anchor_weight > 0 else None
    train, val = split_holdout(data, config.val_fraction, seed) if config.val_fraction > 0 else (data, {})
    n_train = int(train["accel_mps2"].shape[0])
    gen = torch.Generator().manual_seed(seed + 1)
    heads = model.config.heads
    # Fixed bootstrap resample per head: Poisson(1) counts per frame.
    boot = torch.poisson(torch.ones(n_train, heads), generator=gen)
    # A copy: the balance below writes into it, and without validation frames ``train`` is the caller's data.
    weight = train.get("weight", torch.ones(n_train)).to(torch.float32).clone()
    replay = train.get("replay", torch.zeros(n_train, dtype=torch.bool)).bool()
    if config.balance_hazard:
        own = ~replay
        weight[own] = balance_weights(train["hazard"][own], weight[own], config.hazard_share)
    if config.replay_share > 0:
        weight = share_weights(replay, weight, config.replay_share)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(n_train / config.batch_size))
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    bce = nn.BCEWithLogitsLoss(reduction="none")
    losses: list[float] = []
    curve: list[float] = []
    t0 = time.perf_counter()
    step = 0
    out_of_time = False
    model.train()
    for _epoch in range(config.epochs):
        perm = torch.randperm(n_train, generator=gen)
        epoch_losses = []
        for i in range(0, n_train, config.batch_size):
            idx = perm[i : i + config.batch_size]
            heads_out = model.forward_heads(*_batch_inputs(train, idx))  # [b, M, 3]
            a_star = train["accel_mps2"][idx].to(torch.float32).unsqueeze(-1)
            h_star = train["hazard"][idx].to(torch.float32).unsqueeze(-1).expand(-1, heads)
            mean, logvar, logit = heads_out.unbind(-1)
            mse = (mean - a_star) ** 2
            nll = 0.5 * (logvar + (a_star - mean.detach()) ** 2 * torch.exp(-logvar))
            per = mse + config.nll_weight * nll + config.hazard_weight * bce(logit, h_star)
            w = boot[idx] * weight[idx].unsqueeze(-1)
            loss = (per * w).sum() / w.sum().clamp_min(1.0)
            if parent is not None:
                with torch.no_grad():
                    ref = parent.forward_heads(*_batch_inputs(train, idx))  # [b, M', 3]
                if ref.shape[1] != heads:
                    ref = ref.mean(1, keepdim=True).expand(-1, heads, -1)
                drift = (mean - ref[..., 0]) ** 2 + config.hazard_weight * _bernoulli_kl(ref[..., 2], logit)
                loss = loss + config.anchor_weight * drift.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            epoch_losses.append(losses[-1])
            if time.perf_counter() - t0 > config.max_seconds:
                out_of_time = True
                break
        curve.append(sum(epoch_losses) / len(epoch_losses))
        if out_of_time:
            break
    model.eval()
    k = max(1, len(losses) // 10)
    val_mse, val_corr, val_acc = evaluate_fit(model, val) if val else (math.nan, math.nan, math.nan)
    return ImitationMetrics(
        train_frames=n_train,
        val_frames=n - n_train,
        steps=step,
        epochs_done=step / steps_per_epoch,
        seconds=time.perf_counter() - t0,
        loss_first=sum(losses[:k]) / k,
        loss_last=sum(losses[-k:]) / k,
        val_accel_mse=val_mse,
        val_accel_corr=val_corr,
        val_hazard_acc=val_acc,
        loss_curve=curve,
    )
