"""What a round trains and measures: the policy as Flower arrays, a vehicle's labelled data, the local update,
the server's held-out evaluation.

A vehicle's data is its own on-board buffer, labelled on board by the same hindsight labeller the label stage
runs (``fleetloop.edge_agent.labeller``) and turned into policy inputs by the vehicle's own feature function
(``policy_inputs_from_frames``). The local update is ``train_imitation``, the function the bootstrap and the
central fine-tune use, on a fresh copy built from the received global weights: the model the vehicle drives
with is never touched.

A reply carries only ``REPLY_METRICS`` beside the weights: no frame, label or position leaves the vehicle.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fleetloop.edge_agent.buffer import policy_inputs_from_frames
from fleetloop.edge_agent.imitation import ImitationConfig, evaluate_fit, train_imitation
from fleetloop.edge_agent.labeller import LabelConfig, hindsight_labels
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig
from fleetloop.federation.config import ClientTrainConfig

__all__ = [
    "PARENT_RECORD",
    "REPLY_METRICS",
    "VEHICLE_ID_KEY",
    "WEIGHT_KEY",
    "LocalResult",
    "evaluate_heldout",
    "labelled_data",
    "local_update",
    "model_from_arrays",
    "model_to_arrays",
]

WEIGHT_KEY = "num-examples"
"""The reply metric the strategies weight by: valid labelled frames the vehicle trained on."""
VEHICLE_ID_KEY = "vehicle-id"
"""The reply metric naming the vehicle (for the round's lineage; never averaged)."""
PARENT_RECORD = "parent"
"""The training message's record of the weights the federation started from (sent for ``parent_anchor_weight``)."""
REPLY_METRICS = frozenset({WEIGHT_KEY, VEHICLE_ID_KEY, "train-loss-first", "train-loss-last", "train-seconds"})
"""Every metric a reply may carry; the server drops a reply with any other key."""


def model_to_arrays(model: FusionPolicy) -> dict[str, np.ndarray]:
    """The model's state as float32 numpy arrays, by parameter name."""
    return {k: v.detach().cpu().to(torch.float32).numpy().copy() for k, v in model.state_dict().items()}


def model_from_arrays(arrays: Mapping[str, np.ndarray], config: PolicyConfig) -> FusionPolicy:
    """A new policy of ``config`` holding ``arrays`` (strict: every parameter, nothing else)."""
    model = FusionPolicy(config)
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()})
    return model.eval()


def labelled_data(frames: Mapping[str, np.ndarray], label: LabelConfig | None = None) -> dict[str, torch.Tensor]:
    """Training tensors (policy inputs + ``accel_mps2``, ``hazard``, ``weight``) of a vehicle's buffer frames
    (``OnboardBuffer.frames``), hindsight-labelled on board; only frames whose label is valid."""
    labels = hindsight_labels(label or LabelConfig(), frames)
    keep = labels.valid.numpy().astype(bool)
    kept = {k: np.asarray(v)[keep] for k, v in frames.items()}
    if not keep.any():
        return {}
    data = policy_inputs_from_frames(kept).as_dict()
    data["accel_mps2"] = labels.target_accel_mps2[labels.valid].to(torch.float32)
    data["hazard"] = labels.hazard[labels.valid].to(torch.float32)
    data["weight"] = labels.confidence[labels.valid].to(torch.float32)
    return data


def frames_in(data: Mapping[str, torch.Tensor]) -> int:
    """Frames in a training dict (0 for an empty one)."""
    return int(data["accel_mps2"].shape[0]) if data else 0


@dataclass(frozen=True)
class LocalResult:
    """A vehicle's local update: the new weights and what may be said about it."""

    arrays: dict[str, np.ndarray]
    frames: int
    loss_first: float
    loss_last: float
    seconds: float


def local_update(
    global_model: FusionPolicy,
    data: dict[str, torch.Tensor],
    cfg: ClientTrainConfig,
    seed: int,
    proximal: float,
    parent: FusionPolicy | None = None,
) -> LocalResult:
    """Train a copy of ``global_model`` on ``data``. The anchor term pulls it towards the global model's outputs
    with ``proximal`` (FedProx's mu) when that is > 0, else towards ``parent``'s (the model the federation started
    from) with ``cfg.parent_anchor_weight`` when that is > 0 (ADR 0193)."""
    model = copy.deepcopy(global_model).train()
    model.requires_grad_(True)
    anchor, weight = None, 0.0
    if proximal > 0:
        anchor, weight = copy.deepcopy(global_model).eval(), proximal
    elif cfg.parent_anchor_weight > 0:
        if parent is None:
            raise ValueError("parent_anchor_weight > 0 needs the federation's starting weights (record 'parent')")
        anchor, weight = copy.deepcopy(parent).eval(), cfg.parent_anchor_weight
    if anchor is not None:
        anchor.requires_grad_(False)
    icfg = ImitationConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        val_fraction=0.0,
        max_seconds=cfg.max_seconds,
        anchor_weight=weight,
        balance_hazard=cfg.balance_hazard,
    )
    m = train_imitation(model, data, icfg, seed, anchor=anchor)
    return LocalResult(model_to_arrays(model), frames_in(data), m.loss_first, m.loss_last, m.seconds)


def evaluate_heldout(model: FusionPolicy, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """The server's held-out metrics of ``model``: command MSE [(m/s²)²], command correlation, hazard accuracy."""
    mse, corr, acc = evaluate_fit(model, data)
    return {"heldout_accel_mse": mse, "heldout_accel_corr": corr, "heldout_hazard_acc": acc}
