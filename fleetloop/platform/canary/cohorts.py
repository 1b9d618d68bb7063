"""Who drives the canary in a wave, and who is its matched baseline. Pure and deterministic given a seed.

Each vehicle has a stratum: the condition and scenario class of its latest heartbeat (``"<condition>/<scenario>"``;
the caller names one for vehicles that have not reported yet). A wave covering ``fraction`` of the fleet takes
``ceil(fraction x N)`` vehicles, shared out over the strata in proportion to their size (largest remainders), so
the canary meets the fleet's mix of conditions and scenarios. Within a stratum vehicles are taken in the order of
``sha256(seed:vehicle id)``: a vehicle already on the canary stays on it (waves only grow), and the rest are
filled in from the production vehicles in that order. The matched baseline comes from the production vehicles left
in the same stratum, in the same order, ``baseline_ratio`` per canary vehicle (as many as there are).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from fleetloop.platform.errors import UserInputError

__all__ = ["CohortAssignment", "assign_cohorts"]


@dataclass(frozen=True)
class CohortAssignment:
    """The wave's canary vehicles and matched baseline vehicles (sorted ids), and the canary count per stratum."""

    canary: tuple[str, ...]
    baseline: tuple[str, ...]
    canary_per_stratum: Mapping[str, int]
    baseline_per_stratum: Mapping[str, int]


def _order(seed: int, vehicle_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{vehicle_id}".encode()).digest()


def _quotas(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """``total`` shared over the strata in proportion to ``sizes`` (largest remainders; ties by stratum name)."""
    n = sum(sizes.values())
    exact = {k: total * v / n for k, v in sizes.items()}
    out = {k: math.floor(x) for k, x in exact.items()}
    left = total - sum(out.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


def assign_cohorts(
    strata: Mapping[str, str],
    fraction: float,
    seed: int,
    current_canary: Collection[str] = (),
    baseline_ratio: float = 1.0,
) -> CohortAssignment:
    """The canary and baseline of a wave of ``fraction`` of the vehicles in ``strata`` (vehicle id -> stratum);
    ``current_canary``: vehicles already on the canary (they stay)."""
    if not 0 < fraction <= 1:
        raise UserInputError(f"a wave's fraction must lie in (0, 1], got {fraction}")
    if not baseline_ratio > 0:
        raise UserInputError(f"baseline_ratio must be > 0, got {baseline_ratio}")
    strays = sorted(set(current_canary) - set(strata))
    if strays:
        raise UserInputError(f"canary vehicles without a stratum: {strays[:5]}; give every vehicle's latest stratum")
    by_stratum: dict[str, list[str]] = {}
    for vid, stratum in strata.items():
        by_stratum.setdefault(stratum, []).append(vid)
    for ids in by_stratum.values():
        ids.sort(key=lambda v: _order(seed, v))
    total = min(len(strata), math.ceil(fraction * len(strata) - 1e-9))
    quotas = _quotas({k: len(v) for k, v in by_stratum.items()}, total) if strata else {}
    keep = set(current_canary)
    canary: list[str] = []
    baseline: list[str] = []
    per_c: dict[str, int] = {}
    per_b: dict[str, int] = {}
    for stratum, ids in sorted(by_stratum.items()):
        chosen = [v for v in ids if v in keep]
        rest = [v for v in ids if v not in keep]
        fill = max(0, quotas[stratum] - len(chosen))
        chosen += rest[:fill]
        rest = rest[fill:]
        base = rest[: min(len(rest), round(baseline_ratio * len(chosen)))]
        canary += chosen
        baseline += base
        per_c[stratum], per_b[stratum] = len(chosen), len(base)
    return CohortAssignment(tuple(sorted(canary)), tuple(sorted(baseline)), per_c, per_b)
