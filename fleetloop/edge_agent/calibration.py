"""A candidate's hand-over calibration: the ``val_uncertainty_p*`` metrics that ``ArbiterConfig.for_model`` turns
into its low-confidence threshold.

A parent's were measured on its own validation driving; a candidate's training frames may be on another scale
(the loop's uploads are hazard-heavy clips, a vehicle's buffer is whatever it drove). So the parent's calibration
is carried over, scaled by how the candidate's uncertainty compares with the parent's on the same frames; without
a parent (or one without calibration) the candidate's own quantiles on those frames are used. Without any, a
candidate falls back to the default threshold and hands far more (or far fewer) ticks to the fallback than its
parent did. Used by the train stage and by federated rounds alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fleetloop.edge_agent.bootstrap import uncertainty_quantiles
from fleetloop.edge_agent.policy import FusionPolicy

__all__ = ["CALIBRATION_PREFIX", "CALIBRATION_RATIO_RANGE", "calibration_of", "carried_calibration"]

CALIBRATION_PREFIX = "val_uncertainty_"
CALIBRATION_RATIO_RANGE = (0.5, 2.0)
"""Bounds of the candidate / parent uncertainty ratio: a candidate far more uncertain on the frames must not
switch its hand-over off (nor one far less certain hand everything over)."""


def calibration_of(metrics: Mapping[str, float]) -> dict[str, float]:
    """The calibration entries of an artifact's metrics."""
    return {k: float(v) for k, v in metrics.items() if k.startswith(CALIBRATION_PREFIX)}


def carried_calibration(
    candidate: FusionPolicy,
    frames: dict[str, torch.Tensor],
    parent: FusionPolicy | None = None,
    parent_calibration: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The candidate's calibration measured on ``frames`` (see the module docstring)."""
    mine = uncertainty_quantiles(candidate, frames)
    theirs = {} if parent is None else uncertainty_quantiles(parent, frames)
    recorded = dict(parent_calibration or {})
    out: dict[str, float] = {}
    lo, hi = CALIBRATION_RATIO_RANGE
    for key, value in mine.items():
        p_rec, p_here = recorded.get(key), theirs.get(key)
        if p_rec is not None and p_here is not None and p_here > 0 and math.isfinite(float(p_rec)):
            out[key] = float(p_rec) * min(max(value / p_here, lo), hi)
        else:
            out[key] = value
    return out
