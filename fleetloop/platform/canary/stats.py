"""Cohort statistics: canary vs matched baseline, per slice (condition x scenario class) and metric, with an
always-valid sequential test on the Poisson rate ratio. Pure numpy, no I/O, no clock.

The test (docs/canary.md, docs/adr/0160-canary-sequential-rate-ratio-test.md). In one batch (the heartbeats
between two evaluations) and one slice, the canary's events of a metric are Poisson(lambda_c E_c) and the
baseline's Poisson(lambda_b E_b) over their exposures E [km]; given their total n, the canary's count is
Binomial(n, p(r)) with ``p(r) = r E_c / (r E_c + E_b)`` and ``r = lambda_c / lambda_b``. The baseline rate may
drift from batch to batch (fog rolls in): only r matters.

- harm, H0: r <= rho0 = 1 + margin (the canary is within the margin). For any alternative r1 > rho0 the
  likelihood ratio of a batch, ``L(r1) / L(rho0)``, has expectation <= 1 under every r <= rho0 (it is 1 at rho0
  and grows with r), so the product over batches is a nonnegative supermartingale under H0, and so is any mixture
  of such products over r1 with a fixed prior. Ville's inequality: the chance that the mixture ever reaches 1/a
  is at most a, however often it is looked at. Rejecting H0 (the mixture over the threshold) rolls back.
- non-inferiority, H0: r >= rho0, mirrored (alternatives r1 < rho0): rejecting it shows the canary within the
  margin.

The prior is half-normal on ``u = |log(r1 / rho0)|`` with scale ``mixture_scale``, put on ``N_NODES``
Gauss-Legendre nodes over [0, 6 scale] with weights normalised to 1: a discrete mixture, so the test is exactly
valid; it agrees with the continuous prior's integral to quadrature accuracy. The state per slice and metric is the
log likelihood ratio at each node (a sum over batches). Pooling over slices with a common ratio adds the slices'
vectors.

A batch and slice where one arm drove nothing carries no information on r; its events are kept apart as
``unmatched`` (counted, reported, not tested).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fleetloop.platform.canary.policy import COUNT_METRICS, CanaryPolicy
from fleetloop.platform.errors import DataError

__all__ = [
    "N_NODES",
    "ArmTally",
    "CohortStats",
    "MixtureGrid",
    "ProgressEstimate",
    "SliceStats",
    "SliceTally",
    "batch_log_lr",
    "log_mixture",
    "mantel_haenszel_ratio",
    "mixture_half_width",
    "progress_estimate",
    "progress_ratio",
    "ratio_lower_bound",
    "update_stats",
]

N_NODES = 64
_SPAN = 6.0  # the grid reaches this many prior scales (the half-normal's mass beyond: 2e-9)


@dataclass(frozen=True)
class MixtureGrid:
    """The mixing prior's nodes ``u`` (>= 0) and weights (summing to 1) for one scale."""

    u: np.ndarray
    weights: np.ndarray

    @staticmethod
    @functools.cache
    def for_scale(scale: float, n: int = N_NODES) -> MixtureGrid:
        """The grid of a half-normal prior of ``scale`` on ``n`` nodes (cached: a Gauss-Legendre rule costs ms)."""
        x, w = np.polynomial.legendre.leggauss(n)
        hi = _SPAN * scale
        u = (x + 1.0) * hi / 2.0
        dens = np.exp(-0.5 * (u / scale) ** 2)  # half-normal, unnormalised
        weights = w * dens
        return MixtureGrid(u, weights / weights.sum())

    def harm_ratios(self, boundary: float) -> np.ndarray:
        """The alternatives r1 > boundary of the harm test."""
        return boundary * np.exp(self.u)

    def non_inferiority_ratios(self, boundary: float) -> np.ndarray:
        """The alternatives r1 < boundary of the non-inferiority test."""
        return boundary * np.exp(-self.u)


def batch_log_lr(
    canary_count: int, baseline_count: int, canary_km: float, baseline_km: float, ratios: np.ndarray, boundary: float
) -> np.ndarray:
    """log L(r1) / L(boundary) of one batch at each alternative ``ratios`` (conditional binomial; exposures > 0)."""
    share = canary_km / (canary_km + baseline_km)  # p(r) = r s / (r s + 1 - s)
    p1 = ratios * share / (ratios * share + 1.0 - share)
    p0 = boundary * share / (boundary * share + 1.0 - share)
    return canary_count * np.log(p1 / p0) + baseline_count * np.log((1.0 - p1) / (1.0 - p0))


def log_mixture(log_lr: np.ndarray, weights: np.ndarray) -> float:
    """log of the mixture e-value sum_j w_j exp(log_lr_j) (stable for large values)."""
    top = float(np.max(log_lr))
    return top + math.log(float(np.sum(weights * np.exp(log_lr - top))))


@dataclass(frozen=True)
class ArmTally:
    """One arm's driving in one slice: exposure [km], the distance its set speed planned [km], counts per metric,
    and the heartbeats summed with their second moments (what the progress ratio's standard error needs:
    ``beats``, sum of km², of km x planned km, of planned km², one term per heartbeat)."""

    km: float = 0.0
    planned_km: float = 0.0
    counts: Mapping[str, int] = field(default_factory=dict)
    beats: int = 0
    km_sq: float = 0.0
    km_planned_sq: float = 0.0
    planned_sq: float = 0.0

    @staticmethod
    def one_beat(km: float, planned_km: float, counts: Mapping[str, int]) -> ArmTally:
        """One heartbeat's tally (its moments included)."""
        return ArmTally(km, planned_km, counts, 1, km * km, km * planned_km, planned_km * planned_km)

    def count(self, metric: str) -> int:
        return int(self.counts.get(metric, 0))

    def plus(self, other: ArmTally) -> ArmTally:
        keys = set(self.counts) | set(other.counts)
        return ArmTally(
            self.km + other.km,
            self.planned_km + other.planned_km,
            {k: self.count(k) + other.count(k) for k in keys},
            self.beats + other.beats,
            self.km_sq + other.km_sq,
            self.km_planned_sq + other.km_planned_sq,
            self.planned_sq + other.planned_sq,
        )

    def progress(self) -> tuple[float, float] | None:
        """This arm's progress R = km / planned km and the variance of R over its heartbeats (a ratio estimator:
        sum (d_i - R p_i)² / P², with n / (n - 1)); None without planned km or with under two heartbeats."""
        if self.planned_km <= 0 or self.beats < 2:
            return None
        r = self.km / self.planned_km
        ss = max(self.km_sq - 2.0 * r * self.km_planned_sq + r * r * self.planned_sq, 0.0)
        return r, ss / self.planned_km**2 * self.beats / (self.beats - 1)

    def check(self, where: str) -> None:
        bad = [k for k, v in self.counts.items() if v < 0] + [k for k in self.counts if k not in COUNT_METRICS]
        if not (math.isfinite(self.km) and self.km >= 0 and math.isfinite(self.planned_km) and self.planned_km >= 0):
            raise DataError(f"{where}: exposure {self.km} km / planned {self.planned_km} km must be finite and >= 0")
        if bad:
            raise DataError(f"{where}: counts {sorted(bad)} are negative or not among {', '.join(COUNT_METRICS)}")
        moments = (self.km_sq, self.km_planned_sq, self.planned_sq)
        if self.beats < 0 or not all(math.isfinite(v) and v >= 0 for v in moments):
            raise DataError(f"{where}: {self.beats} beats / moments {moments} must be >= 0 and finite")

    def to_dict(self) -> dict[str, Any]:
        return {
            "km": self.km,
            "planned_km": self.planned_km,
            "counts": dict(sorted(self.counts.items())),
            "beats": self.beats,
            "km_sq": self.km_sq,
            "km_planned_sq": self.km_planned_sq,
            "planned_sq": self.planned_sq,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ArmTally:
        """Also reads states written before the moments were kept (no beats: no progress verdict from them)."""
        return ArmTally(
            float(d["km"]),
            float(d["planned_km"]),
            {str(k): int(v) for k, v in d["counts"].items()},
            int(d.get("beats", 0)),
            float(d.get("km_sq", 0.0)),
            float(d.get("km_planned_sq", 0.0)),
            float(d.get("planned_sq", 0.0)),
        )


@dataclass(frozen=True)
class SliceTally:
    """One batch of one slice: what the canary and the baseline drove."""

    canary: ArmTally = field(default_factory=ArmTally)
    baseline: ArmTally = field(default_factory=ArmTally)


@dataclass(frozen=True)
class SliceStats:
    """One slice so far: matched tallies (batches where both arms drove), unmatched ones, and per metric the log
    likelihood ratios at the grid's nodes of the harm and the non-inferiority test."""

    canary: ArmTally = field(default_factory=ArmTally)
    baseline: ArmTally = field(default_factory=ArmTally)
    unmatched_canary: ArmTally = field(default_factory=ArmTally)
    unmatched_baseline: ArmTally = field(default_factory=ArmTally)
    harm: Mapping[str, np.ndarray] = field(default_factory=dict)
    non_inferiority: Mapping[str, np.ndarray] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "canary": self.canary.to_dict(),
            "baseline": self.baseline.to_dict(),
            "unmatched_canary": self.unmatched_canary.to_dict(),
            "unmatched_baseline": self.unmatched_baseline.to_dict(),
            "harm": {m: v.tolist() for m, v in sorted(self.harm.items())},
            "non_inferiority": {m: v.tolist() for m, v in sorted(self.non_inferiority.items())},
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> SliceStats:
        return SliceStats(
            canary=ArmTally.from_dict(d["canary"]),
            baseline=ArmTally.from_dict(d["baseline"]),
            unmatched_canary=ArmTally.from_dict(d["unmatched_canary"]),
            unmatched_baseline=ArmTally.from_dict(d["unmatched_baseline"]),
            harm={m: np.asarray(v, dtype=np.float64) for m, v in d["harm"].items()},
            non_inferiority={m: np.asarray(v, dtype=np.float64) for m, v in d["non_inferiority"].items()},
        )


@dataclass(frozen=True)
class CohortStats:
    """Every slice's statistics (keyed ``"<condition>/<scenario>"``) and the number of batches added."""

    slices: Mapping[str, SliceStats] = field(default_factory=dict)
    batches: int = 0

    def matched_canary_km(self) -> float:
        return sum(s.canary.km for s in self.slices.values())

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "slices": {k: v.to_dict() for k, v in sorted(self.slices.items())}}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> CohortStats:
        return CohortStats({k: SliceStats.from_dict(v) for k, v in d["slices"].items()}, int(d["batches"]))


def _update_slice(policy: CanaryPolicy, grid: MixtureGrid, old: SliceStats, batch: SliceTally) -> SliceStats:
    c, b = batch.canary, batch.baseline
    if c.km <= 0 or b.km <= 0:
        return replace(
            old, unmatched_canary=old.unmatched_canary.plus(c), unmatched_baseline=old.unmatched_baseline.plus(b)
        )
    rho0 = policy.ratio_boundary
    up, down = grid.harm_ratios(rho0), grid.non_inferiority_ratios(rho0)
    harm, ni = dict(old.harm), dict(old.non_inferiority)
    zero = np.zeros(len(grid.u))
    for m in policy.judged_metrics:
        xc, xb = c.count(m), b.count(m)
        if xc + xb == 0:
            harm.setdefault(m, zero)
            ni.setdefault(m, zero)
            continue
        phi = policy.dispersion_of(m)  # quasi-Poisson: clustered counts carry 1/phi of the evidence (ADR 0191)
        harm[m] = harm.get(m, zero) + batch_log_lr(xc, xb, c.km, b.km, up, rho0) / phi
        ni[m] = ni.get(m, zero) + batch_log_lr(xc, xb, c.km, b.km, down, rho0) / phi
    return replace(old, canary=old.canary.plus(c), baseline=old.baseline.plus(b), harm=harm, non_inferiority=ni)


def update_stats(policy: CanaryPolicy, stats: CohortStats, batch: Mapping[str, SliceTally]) -> CohortStats:
    """Add one batch (slice key -> what each arm drove since the last batch). Exposures within a batch should come
    from a short span (the rates are taken as constant inside it); their split may change from batch to batch."""
    grid = MixtureGrid.for_scale(policy.mixture_scale)
    slices = dict(stats.slices)
    for key, tally in batch.items():
        tally.canary.check(f"batch slice {key!r} canary")
        tally.baseline.check(f"batch slice {key!r} baseline")
        slices[key] = _update_slice(policy, grid, slices.get(key, SliceStats()), tally)
    return CohortStats(slices, stats.batches + 1)


def mantel_haenszel_ratio(pairs: Iterable[tuple[int, float, int, float]]) -> float | None:
    """The stratified (Mantel-Haenszel) rate ratio of ``(canary count, canary km, baseline count, baseline km)``
    per stratum; inf when only the canary had events, None when no stratum had any."""
    num = den = 0.0
    for xc, ec, xb, eb in pairs:
        e = ec + eb
        if e > 0:
            num += xc * eb / e
            den += xb * ec / e
    if den > 0:
        return num / den
    return math.inf if num > 0 else None


def ratio_lower_bound(
    pairs: Iterable[tuple[int, float, int, float]], alpha: float, dispersion: float = 1.0
) -> float | None:
    """One-sided lower confidence bound (level 1 - ``alpha``) of the rate ratio common to the strata ``(canary
    count, canary km, baseline count, baseline km)``: the profile-likelihood bound of the conditional binomial
    model of the module docstring, the r under the maximum-likelihood ratio where the log likelihood has fallen by
    ``dispersion`` x z²/2 (z the normal quantile of 1 - alpha; the quasi-likelihood's widening for counts whose
    variance is ``dispersion`` times their mean). 0 when the canary had no event; None when no stratum had any."""
    data = [(xc, xb, ec / (ec + eb)) for xc, ec, xb, eb in pairs if ec > 0 and eb > 0 and xc + xb > 0]
    if not data:
        return None
    if not any(xc for xc, _, _ in data):
        return 0.0

    def loglik(log_r: float) -> float:
        out = 0.0
        for xc, xb, s in data:
            p = 1.0 / (1.0 + (1.0 - s) / (s * math.exp(log_r)))
            out += (xc * math.log(p) if xc else 0.0) + (xb * math.log1p(-p) if xb else 0.0)
        return out

    def score(log_r: float) -> float:  # d loglik / d log r
        return sum(xc - (xc + xb) / (1.0 + (1.0 - s) / (s * math.exp(log_r))) for xc, xb, s in data)

    lo, hi = -_LOG_R_SPAN, _LOG_R_SPAN
    if any(xb for _, xb, _ in data):  # else the likelihood rises to its supremum 0 as r grows
        a, b = lo, hi
        for _ in range(_BISECTIONS):
            mid = 0.5 * (a + b)
            a, b = (mid, b) if score(mid) > 0 else (a, mid)
        hi = 0.5 * (a + b)
    z = statistics.NormalDist().inv_cdf(1.0 - alpha)
    target = (loglik(hi) if hi < _LOG_R_SPAN else 0.0) - 0.5 * dispersion * z**2
    for _ in range(_BISECTIONS):  # the log likelihood increases up to the maximum
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if loglik(mid) < target else (lo, mid)
    return math.exp(0.5 * (lo + hi))


_LOG_R_SPAN = 30.0  # the ratios searched: e^-30 .. e^30
_BISECTIONS = 80


def progress_ratio(slices: Iterable[SliceStats]) -> float | None:
    """The canary's progress (km driven / km planned) over the baseline's, per slice, averaged with the canary's
    planned km as weights; None before both arms have planned driving in a common slice."""
    num = den = 0.0
    for s in slices:
        c, b = s.canary, s.baseline
        if c.planned_km > 0 and b.planned_km > 0 and b.km > 0:
            num += c.planned_km * (c.km / c.planned_km) / (b.km / b.planned_km)
            den += c.planned_km
    return num / den if den > 0 else None


@dataclass(frozen=True)
class ProgressEstimate:
    """The canary's progress over the baseline's (``progress_ratio``'s weighting) over the slices where both arms
    sent at least two heartbeats, its standard error (delta method over heartbeats) and the canary's heartbeats."""

    ratio: float
    std_error: float
    canary_beats: int

    def upper_bound(self, half_width_se: float) -> float:
        return self.ratio + half_width_se * self.std_error

    def lower_bound(self, half_width_se: float) -> float:
        return self.ratio - half_width_se * self.std_error


def progress_estimate(slices: Iterable[SliceStats]) -> ProgressEstimate | None:
    """Per slice q = R_canary / R_baseline (R: km over planned km), averaged with the canary's planned km as
    weights w; var(q) = (V_c + q² V_b) / R_b² from each arm's ratio-estimator variance (``ArmTally.progress``),
    var = sum w² var(q) / (sum w)². None while no slice has two heartbeats of each arm."""
    num = den = var = 0.0
    beats = 0
    for s in slices:
        c, b = s.canary.progress(), s.baseline.progress()
        if c is None or b is None or b[0] <= 0:
            continue
        w, q = s.canary.planned_km, c[0] / b[0]
        num += w * q
        den += w
        var += w * w * (c[1] + q * q * b[1]) / (b[0] * b[0])
        beats += s.canary.beats
    if den <= 0:
        return None
    return ProgressEstimate(num / den, math.sqrt(var) / den, beats)


def mixture_half_width(n: int, alpha: float, tuned_n: float) -> float:
    """Half-width, in standard errors, of a time-uniform (anytime-valid) confidence sequence for a mean of ``n``
    observations at level ``alpha``: Robbins' normal mixture, the asymptotic confidence sequence of Waudby-Smith et
    al. (2024), sqrt(2 (n rho² + 1) / (n rho²) log(sqrt(n rho² + 1) / alpha)), with rho² tuned to be narrowest at
    ``tuned_n`` observations. Its chance of ever excluding the true mean, however often it is looked at, is at
    most ``alpha`` (asymptotically: the estimate's normal approximation), where a fixed z bound looked at after
    every batch is not."""
    if n < 1:
        return math.inf
    la = -2.0 * math.log(alpha)
    rho2 = (la + math.log(la + 1.0)) / tuned_n
    v = n * rho2
    return math.sqrt(2.0 * (v + 1.0) / v * math.log(math.sqrt(v + 1.0) / alpha))
