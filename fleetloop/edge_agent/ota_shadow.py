"""Shadow mode, pure core: how far a candidate model, run beside the active one without acting, disagrees with it.

Per vehicle and per condition class of the vehicle's own estimate (``heartbeat.CONDITION_CLASSES``: fog, else
night, else wet, else clear; never the true weather), over the ticks where both models gave a valid output:

- ``compared_ticks``; ``differ_ticks``: the two commanded accelerations differ by more than
  ``ShadowConfig.differ_mps2``;
- ``accel_abs_diff_sum_mps2``: the sum of |a_active - a_shadow| (its mean: the mean absolute difference);
- ``hazard_abs_diff_sum``: the sum of |p_active - p_shadow| of the hazard probability.

``invalid_ticks`` counts the ticks where the candidate's output was invalid (NaN / Inf, it raised) while the
active one was valid: a candidate that would have handed the car to the fallback.

Arrays [B, C] (float64), list in, list out: ``accumulate`` adds one tick of some rows, ``rates`` turns sums into
shares and means (0 where nothing was compared, never NaN: the numbers travel as JSON). Imports numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetloop.platform.errors import FleetConfigError

__all__ = ["SHADOW_SUMS", "ShadowConfig", "ShadowTally", "ShadowTick", "accumulate", "rates", "shadow_rates"]

SHADOW_SUMS = ("compared_ticks", "differ_ticks", "accel_abs_diff_sum_mps2", "hazard_abs_diff_sum", "invalid_ticks")


@dataclass(frozen=True)
class ShadowConfig:
    """What counts as disagreement and how often it is reported.

    Attributes:
        differ_mps2: the two models' commanded accelerations differ when they are more than this apart [m/s²].
        report_every_ticks: a vehicle in shadow mode reports its numbers this often [ticks] (600 = 1 min), and
            once more when the shadow ends (promoted, superseded, the run's end).
    """

    differ_mps2: float = 0.5
    report_every_ticks: int = 600

    def __post_init__(self) -> None:
        if not self.differ_mps2 > 0 or self.report_every_ticks < 1:
            raise FleetConfigError("ShadowConfig: differ_mps2 must be > 0 m/s² and report_every_ticks >= 1 tick")


@dataclass(frozen=True)
class ShadowTick:
    """One tick of the vehicles in shadow mode (arrays [N], one per shadowing row)."""

    rows: np.ndarray  # int, the shard rows
    condition: np.ndarray  # int, index into the condition classes
    active_accel_mps2: np.ndarray
    shadow_accel_mps2: np.ndarray
    active_hazard: np.ndarray
    shadow_hazard: np.ndarray
    active_valid: np.ndarray  # bool
    shadow_valid: np.ndarray  # bool


@dataclass(frozen=True)
class ShadowTally:
    """Sums per vehicle and condition class, arrays [B, C] (``SHADOW_SUMS``)."""

    compared_ticks: np.ndarray
    differ_ticks: np.ndarray
    accel_abs_diff_sum_mps2: np.ndarray
    hazard_abs_diff_sum: np.ndarray
    invalid_ticks: np.ndarray

    @staticmethod
    def init(vehicles: int, conditions: int) -> ShadowTally:
        """All zero."""
        return ShadowTally(*(np.zeros((vehicles, conditions)) for _ in SHADOW_SUMS))

    def reset(self, rows: Sequence[int] | np.ndarray) -> ShadowTally:
        """The same sums with ``rows`` back to zero (a new shadow episode)."""
        out = {}
        for name in SHADOW_SUMS:
            a = getattr(self, name).copy()
            a[np.asarray(rows, dtype=np.int64)] = 0.0
            out[name] = a
        return ShadowTally(**out)

    def row(self, r: int) -> dict[str, np.ndarray]:
        """One vehicle's sums, each [C]."""
        return {name: getattr(self, name)[r] for name in SHADOW_SUMS}

    def total(self) -> dict[str, np.ndarray]:
        """The shard's sums over its vehicles, each [C]."""
        return {name: getattr(self, name).sum(axis=0) for name in SHADOW_SUMS}


def accumulate(cfg: ShadowConfig, tally: ShadowTally, t: ShadowTick) -> ShadowTally:
    """Add one tick of the rows in ``t`` (a row appears at most once per tick)."""
    both = t.active_valid & t.shadow_valid
    diff = np.where(both, np.abs(t.active_accel_mps2 - t.shadow_accel_mps2), 0.0)
    hazard = np.where(both, np.abs(t.active_hazard - t.shadow_hazard), 0.0)
    adds = {
        "compared_ticks": both.astype(np.float64),
        "differ_ticks": (both & (diff > cfg.differ_mps2)).astype(np.float64),
        "accel_abs_diff_sum_mps2": diff,
        "hazard_abs_diff_sum": hazard,
        "invalid_ticks": (t.active_valid & ~t.shadow_valid).astype(np.float64),
    }
    out = {}
    for name in SHADOW_SUMS:
        a = getattr(tally, name).copy()
        a[t.rows, t.condition] += adds[name]  # unique rows: plain fancy-index add is exact
        out[name] = a
    return dataclasses.replace(tally, **out)


def rates(sums: Mapping[str, Any], conditions: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per condition class (and ``all``): compared ticks, the share that differed, the mean absolute differences
    and the candidate's invalid ticks, from sums [C] (arrays or lists) keyed by ``SHADOW_SUMS``."""
    s = {name: np.asarray(sums.get(name, np.zeros(len(conditions))), dtype=np.float64) for name in SHADOW_SUMS}
    out: dict[str, dict[str, float]] = {}
    for i, cond in enumerate([*conditions, "all"]):
        pick = slice(None) if cond == "all" else i
        n = float(np.sum(s["compared_ticks"][pick]))
        per = 1.0 / n if n > 0 else 0.0
        out[cond] = {
            "compared_ticks": n,
            "differ_share": float(np.sum(s["differ_ticks"][pick])) * per,
            "accel_mae_mps2": float(np.sum(s["accel_abs_diff_sum_mps2"][pick])) * per,
            "hazard_mae": float(np.sum(s["hazard_abs_diff_sum"][pick])) * per,
            "invalid_ticks": float(np.sum(s["invalid_ticks"][pick])),
        }
    return out


def shadow_rates(shadow_counts: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``rates`` from a shard's (or the merged fleet's) ``counts()["ota"]["shadow"]``: sums keyed by ``SHADOW_SUMS``,
    each a dict condition class -> sum."""
    conditions = list(shadow_counts.get("compared_ticks", {}))
    sums = {name: [float(shadow_counts.get(name, {}).get(c, 0.0)) for c in conditions] for name in SHADOW_SUMS}
    return rates(sums, conditions)
