"""The validation gates: statistics with 95 % confidence intervals and the pass / fail decision, pure.

Statistics (docs/adr/0091-validation-statistics-and-gates.md says why these):

- event rates per 1,000 km: the count is Poisson with the driven distance as exposure; the interval is the
  *exact* (Garwood) interval, found by bisection on the Poisson CDF (no SciPy);
- candidate vs baseline rate ratio: the exact *conditional* interval: given n = n_c + n_b events,
  n_c ~ Binomial(n, p) with p = km_c r_c / (km_c r_c + km_b r_b); Clopper-Pearson on p, mapped to the ratio;
- progress against the expert and other per-run means: mean over runs (slices x seeds) with a Student-t
  interval (normal past 30 runs).

The decision (:func:`decide`) is a pure function of the candidate's and the baseline's ``SuiteMetrics``:

1. **no slice worse**: in every slice, the candidate's collisions + near misses must not exceed what the
   baseline's rate predicts for the candidate's distance by more than ``safety_rel_margin`` (relative) plus
   ``safety_abs_margin_events`` (absolute, so one event against zero fails at the default 0.5);
2. **improvement where the data came from**: over the slices whose condition is among ``target_conditions``,
   the candidate's collision + near-miss rate must be below the baseline's by at least ``min_improvement``
   (relative); met without evidence only when neither has any event there (the reasons say so);
3. **counter-metrics not worse**, over the whole suite: phantom braking, harsh jerk and fallback activations by
   the same rule as 1 (their own margins); progress against the expert at least the baseline's minus
   ``progress_margin``;
4. **latency**: the candidate's simulated inference latency p99 within ``latency_budget_s`` (the per-tick budget);
5. **Euro NCAP points not lost** (when the matrix was driven, :func:`ncap_checks`): in every condition and every
   group of the whole Euro NCAP AEB matrix, the candidate's points at least the baseline's minus
   ``ncap_points_margin`` (the mean over the suite's seeds: ADR 0192); fog is among the conditions the validate
   stage drives it in (docs/adr/0117).

Every check reports its numbers and intervals; a failed check adds a reason that says what was worse and by
how much. Check names (``GateCheck.name``, ``GateDecision.failed_checks``) are stable, the reasons' wording is
not: ``suite_size``, ``slice <slice>``, ``improvement``, ``counter <phantom_brakes|harsh_jerks|
fallback_activations|progress_vs_expert>``, ``latency``, ``ncap <condition> <group>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "EVENT_KEYS",
    "GateCheck",
    "GateConfig",
    "GateDecision",
    "MeanEstimate",
    "NcapScores",
    "RateEstimate",
    "RunMetrics",
    "SliceMetrics",
    "SuiteMetrics",
    "decide",
    "mean_ci",
    "ncap_checks",
    "poisson_ci",
    "rate_per_1000km",
    "rate_ratio_ci",
]

EVENT_KEYS = ("collisions", "near_misses", "phantom_brakes", "harsh_jerks", "hard_brakes", "fallback_activations")
Z95 = 1.959963984540054  # two-sided 95 % normal quantile
# Two-sided 95 % Student-t quantiles for 1..30 degrees of freedom.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


# -- exact intervals ------------------------------------------------------------------------------------------


def _poisson_cdf(k: int, lam: float) -> float:
    """P(X <= k) for X ~ Poisson(lam), summed in log space (exact for the counts a suite produces)."""
    if k < 0:
        return 0.0
    if lam <= 0:
        return 1.0
    log_terms = [-lam + i * math.log(lam) - math.lgamma(i + 1) for i in range(k + 1)]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k + 1)
    ]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


def _bisect(f: Any, lo: float, hi: float, iters: int = 200) -> float:
    """Root of a monotone ``f`` between ``lo`` (where f >= 0) and ``hi`` (where f <= 0); either may be larger."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
        if abs(hi - lo) <= 1e-12 * max(1.0, abs(hi)):
            break
    return 0.5 * (lo + hi)


def poisson_ci(count: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Garwood) two-sided ``1 - alpha`` interval for the mean of a Poisson count."""
    if count < 0:
        raise ValueError(f"a count must be >= 0, got {count}")
    upper_bracket = count + 20.0 * math.sqrt(count + 1.0) + 20.0
    hi = _bisect(lambda lam: _poisson_cdf(count, lam) - alpha / 2, 0.0, upper_bracket)
    lo = (
        0.0 if count == 0 else _bisect(lambda lam: (1.0 - _poisson_cdf(count - 1, lam)) - alpha / 2, upper_bracket, 0.0)
    )
    return lo, hi


def _clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion."""
    lo = 0.0 if k == 0 else _bisect(lambda p: (1.0 - _binom_cdf(k - 1, n, p)) - alpha / 2, 1.0, 0.0)
    hi = 1.0 if k == n else _bisect(lambda p: _binom_cdf(k, n, p) - alpha / 2, 0.0, 1.0)
    return lo, hi


@dataclass(frozen=True)
class RateEstimate:
    """Events per 1,000 km with its exact 95 % interval."""

    count: int
    km: float
    per_1000_km: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return {k: _num(v) for k, v in asdict(self).items()}


def rate_per_1000km(count: int, km: float, alpha: float = 0.05) -> RateEstimate:
    """The rate of ``count`` events over ``km`` [km] per 1,000 km, exact Poisson interval (NaN without km)."""
    if km <= 0:
        return RateEstimate(int(count), float(km), math.nan, math.nan, math.nan)
    lo, hi = poisson_ci(int(count), alpha)
    scale = 1000.0 / km
    return RateEstimate(int(count), float(km), count * scale, lo * scale, hi * scale)


def rate_ratio_ci(
    count_c: int, km_c: float, count_b: int, km_b: float, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(ratio, low, high) of the candidate's rate over the baseline's, exact conditional interval.

    The ratio is ``inf`` when only the candidate has events, NaN when neither has any."""
    n = count_c + count_b
    if n == 0 or km_c <= 0 or km_b <= 0:
        return math.nan, math.nan, math.nan
    lo_p, hi_p = _clopper_pearson(count_c, n, alpha)
    exposure = km_b / km_c

    def ratio(p: float) -> float:
        return math.inf if p >= 1.0 else p / (1.0 - p) * exposure

    point = math.inf if count_b == 0 else (count_c / km_c) / (count_b / km_b)
    return point, ratio(lo_p), ratio(hi_p)


@dataclass(frozen=True)
class MeanEstimate:
    """A mean over runs with its 95 % Student-t interval (NaN without runs; a point for one run)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {k: _num(v) for k, v in asdict(self).items()}


def mean_ci(values: Iterable[float]) -> MeanEstimate:
    """Mean of finite ``values`` with a two-sided 95 % t interval."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return MeanEstimate(math.nan, math.nan, math.nan, 0)
    m = sum(xs) / n
    if n == 1:
        return MeanEstimate(m, m, m, 1)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    t = _T95[n - 2] if n - 1 <= len(_T95) else Z95
    half = t * sd / math.sqrt(n)
    return MeanEstimate(m, m - half, m + half, n)


def _num(v: Any) -> Any:
    """JSON-safe number: NaN -> None, inf stays a float the caller may stringify."""
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


# -- what the suite measured ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunMetrics:
    """One closed-loop run (one slice, one seed, one model): sums and the run's progress against the expert."""

    km: float
    expert_km: float
    counts: Mapping[str, int]
    """``EVENT_KEYS`` -> count."""
    impact_speed_sum_mps: float = 0.0
    sim_latency_p99_s: float | None = None
    deadline_misses: int = 0
    vehicle_ticks: int = 0

    @property
    def progress(self) -> float:
        """Distance over the expert's in the same scenes (NaN without expert distance)."""
        return self.km / self.expert_km if self.expert_km > 0 else math.nan


@dataclass(frozen=True)
class SliceMetrics:
    """One scenario x condition slice over all seeds."""

    slice: str
    condition: str
    """The data condition this slice stands for (``clear``, ``fog``, ``rain``, ``night``)."""
    runs: tuple[RunMetrics, ...]

    @property
    def km(self) -> float:
        return sum(r.km for r in self.runs)

    def count(self, key: str) -> int:
        return sum(int(r.counts.get(key, 0)) for r in self.runs)

    @property
    def safety_count(self) -> int:
        """Collisions + near misses."""
        return self.count("collisions") + self.count("near_misses")

    def summary(self) -> dict[str, Any]:
        """Rates with intervals, progress, impact speed: one row of the validation table."""
        coll = self.count("collisions")
        impact = sum(r.impact_speed_sum_mps for r in self.runs)
        out: dict[str, Any] = {
            "slice": self.slice,
            "condition": self.condition,
            "runs": len(self.runs),
            "km": self.km,
            "collisions_plus_near_misses": rate_per_1000km(self.safety_count, self.km).as_dict(),
            "progress_vs_expert": mean_ci(r.progress for r in self.runs).as_dict(),
            "mean_impact_speed_kmh": impact * 3.6 / coll if coll else None,
        }
        for key in EVENT_KEYS:
            out[key] = rate_per_1000km(self.count(key), self.km).as_dict()
        return out


@dataclass(frozen=True)
class SuiteMetrics:
    """A model's results on the whole suite."""

    label: str
    """Which model: a registry version, ``candidate`` or ``fallback-only``."""
    slices: tuple[SliceMetrics, ...]

    def slice(self, name: str) -> SliceMetrics:
        for s in self.slices:
            if s.slice == name:
                return s
        raise KeyError(f"no slice {name!r}; slices: {', '.join(s.slice for s in self.slices)}")

    @property
    def runs(self) -> list[RunMetrics]:
        return [r for s in self.slices for r in s.runs]

    @property
    def km(self) -> float:
        return sum(s.km for s in self.slices)

    def count(self, key: str) -> int:
        return sum(s.count(key) for s in self.slices)

    def latency_p99_s(self) -> float | None:
        lat = [r.sim_latency_p99_s for r in self.runs if r.sim_latency_p99_s is not None]
        return max(lat) if lat else None


@dataclass(frozen=True)
class NcapScores:
    """A model's Euro NCAP AEB points over the whole matrix, per condition and group.

    Attributes:
        label: which model (as in ``SuiteMetrics.label``).
        points: condition -> group -> points earned [points].
        max_points: group -> points available in each condition (one per test) [points].
    """

    label: str
    points: Mapping[str, Mapping[str, float]]
    max_points: Mapping[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "points": {c: dict(g) for c, g in self.points.items()},
            "max_points": dict(self.max_points),
        }


_POINTS_EPS = 1e-9  # points are means of sums of quarter points; this only absorbs a margin's rounding


def ncap_checks(candidate: NcapScores, baseline: NcapScores, margin_points: float = 0.0) -> list[GateCheck]:
    """One check per condition x group of the matrix: the candidate's points at least the baseline's minus
    ``margin_points``; a loss names the group, the condition and the points. Raises ``ValueError`` when the two
    were not scored on the same conditions and groups."""
    shape_c = {c: sorted(g) for c, g in candidate.points.items()}
    shape_b = {c: sorted(g) for c, g in baseline.points.items()}
    if shape_c != shape_b or not shape_b:
        raise ValueError(
            "candidate and baseline must be scored on the same Euro NCAP conditions and groups "
            f"(candidate {shape_c}, baseline {shape_b})"
        )
    checks = []
    for cond, groups in baseline.points.items():
        for group, base in groups.items():
            cand = candidate.points[cond][group]
            available = baseline.max_points.get(group, math.nan)
            ok = cand >= base - margin_points - _POINTS_EPS
            name = f"ncap {cond} {group}"
            detail = {
                "condition": cond,
                "group": group,
                "candidate_points": cand,
                "baseline_points": base,
                "max_points": available,
                "margin_points": margin_points,
            }
            reason = (
                ""
                if ok
                else f"{name}: Euro NCAP points lost in {cond}, {group}: {cand:g} of {available:g} vs {base:g} for "
                f"the baseline ({cand - base:+g} points; allowed loss {margin_points:g})"
            )
            checks.append(GateCheck(name, ok, detail, reason))
    return checks


# -- the decision -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateConfig:
    """The margins of the gates (see the module docstring for the rules).

    Attributes:
        safety_rel_margin: allowed relative excess of collisions + near misses per slice [-].
        safety_abs_margin_events: allowed absolute excess per slice [events].
        min_improvement: required relative reduction of collisions + near misses in the target slices [-].
        counter_rel_margin: allowed relative excess of phantom brakes and harsh jerks over the suite [-].
        counter_abs_margin_events: allowed absolute excess of each counter-metric over the suite [events].
        fallback_rel_margin: allowed relative excess of fallback activations over the suite [-].
        progress_margin: allowed drop of mean progress against the expert [-] (0.02 = 2 percentage points).
        latency_budget_s: the per-tick simulated inference latency budget (p99) [s].
        min_km: a suite with less candidate distance than this is too small to judge [km].
        ncap_points_margin: allowed loss of Euro NCAP points per group and condition, on the mean over the suite's
            seeds [points]: a model compared with itself on other seeds of the default suite loses up to 1 point
            of a 3-seed mean in 0-5 % of comparisons, 0.5 in half of them (ADR 0192; 0 fails on noise alone).
    """

    safety_rel_margin: float = 0.10
    safety_abs_margin_events: float = 0.5
    min_improvement: float = 0.0
    counter_rel_margin: float = 0.10
    counter_abs_margin_events: float = 2.0
    fallback_rel_margin: float = 0.25
    progress_margin: float = 0.02
    latency_budget_s: float = 0.1
    min_km: float = 0.5
    ncap_points_margin: float = 1.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"gate setting {name} must be a finite number >= 0, got {value!r}")
        if self.min_improvement >= 1:
            raise ValueError("min_improvement is a relative reduction and must be < 1")


@dataclass(frozen=True)
class GateCheck:
    """One check: its name, whether it passed, what it compared, and (if it failed) why."""

    name: str
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class GateDecision:
    """The verdict: passed only when every check passed; ``reasons`` lists each failure in words."""

    passed: bool
    checks: tuple[GateCheck, ...]
    notes: tuple[str, ...] = ()

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(c.reason for c in self.checks if not c.passed)

    @property
    def failed_checks(self) -> tuple[str, ...]:
        """The names of the failed checks, one per reason and in the same order; stable, unlike the wording."""
        return tuple(c.name for c in self.checks if not c.passed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "checks": [asdict(c) for c in self.checks],
        }


def _not_worse(
    name: str, what: str, cand: int, cand_km: float, base: int, base_km: float, rel: float, abs_events: float
) -> GateCheck:
    expected = base * cand_km / base_km if base_km > 0 else 0.0
    allowed = expected * (1.0 + rel) + abs_events
    ratio, lo, hi = rate_ratio_ci(cand, cand_km, base, base_km)
    detail = {
        "candidate": rate_per_1000km(cand, cand_km).as_dict(),
        "baseline": rate_per_1000km(base, base_km).as_dict(),
        "allowed_events": allowed,
        "rate_ratio": _num(ratio),
        "rate_ratio_ci": [_num(lo), _num(hi)],
    }
    ok = cand <= allowed
    reason = ""
    if not ok:
        reason = (
            f"{name}: {what} worse: {cand} events over {cand_km:.2f} km vs {base} over {base_km:.2f} km for the "
            f"baseline (allowed {allowed:.1f}; rate ratio {ratio:.2f}, 95% CI {lo:.2f}-{hi:.2f})"
        )
    return GateCheck(name, ok, detail, reason)


def decide(
    candidate: SuiteMetrics,
    baseline: SuiteMetrics,
    target_conditions: Sequence[str],
    cfg: GateConfig | None = None,
    ncap: tuple[NcapScores, NcapScores] | None = None,
) -> GateDecision:
    """Pass / fail of ``candidate`` against ``baseline`` (production, or the fallback alone) on the same suite;
    ``ncap``: (candidate, baseline) points on the Euro NCAP matrix, gated by :func:`ncap_checks` (None: not
    driven, said in the notes)."""
    cfg = cfg or GateConfig()
    names_c = [s.slice for s in candidate.slices]
    if names_c != [s.slice for s in baseline.slices]:
        raise ValueError("candidate and baseline must be evaluated on the same suite slices, in the same order")
    checks: list[GateCheck] = []
    notes: list[str] = []
    if candidate.km < cfg.min_km:
        reason = f"suite too small: the candidate drove {candidate.km:.3f} km, the gates need >= {cfg.min_km} km"
        return GateDecision(False, (GateCheck("suite_size", False, {"km": candidate.km}, reason),))
    # 1. no slice worse
    for sc in candidate.slices:
        sb = baseline.slice(sc.slice)
        checks.append(
            _not_worse(
                f"slice {sc.slice}",
                "collisions + near misses",
                sc.safety_count,
                sc.km,
                sb.safety_count,
                sb.km,
                cfg.safety_rel_margin,
                cfg.safety_abs_margin_events,
            )
        )
    # 2. improvement where the data came from
    targets = set(target_conditions)
    tc = [s for s in candidate.slices if s.condition in targets]
    tb = [baseline.slice(s.slice) for s in tc]
    if not tc:
        checks.append(
            GateCheck(
                "improvement",
                False,
                {"target_conditions": sorted(targets)},
                f"improvement: the suite has no slice of the training data's conditions {sorted(targets)}",
            )
        )
    else:
        nc, kc = sum(s.safety_count for s in tc), sum(s.km for s in tc)
        nb, kb = sum(s.safety_count for s in tb), sum(s.km for s in tb)
        rc, rb = rate_per_1000km(nc, kc), rate_per_1000km(nb, kb)
        ratio, lo, hi = rate_ratio_ci(nc, kc, nb, kb)
        detail = {
            "target_conditions": sorted(targets),
            "slices": [s.slice for s in tc],
            "candidate": rc.as_dict(),
            "baseline": rb.as_dict(),
            "rate_ratio": _num(ratio),
            "rate_ratio_ci": [_num(lo), _num(hi)],
        }
        if nb == 0 and nc == 0:
            notes.append(f"improvement in {sorted(targets)} not measurable: neither model had an event there")
            checks.append(GateCheck("improvement", True, detail))
        else:
            ok = nb > 0 and rc.per_1000_km < rb.per_1000_km * (1.0 - cfg.min_improvement)
            reason = (
                ""
                if ok
                else f"improvement: no improvement in {sorted(targets)}: {rc.per_1000_km:.1f} vs "
                f"{rb.per_1000_km:.1f} collisions + near misses per 1,000 km (needs a reduction of at least "
                f"{cfg.min_improvement:.0%})"
            )
            checks.append(GateCheck("improvement", ok, detail, reason))
    # 3. counter-metrics over the whole suite
    for key, rel in (
        ("phantom_brakes", cfg.counter_rel_margin),
        ("harsh_jerks", cfg.counter_rel_margin),
        ("fallback_activations", cfg.fallback_rel_margin),
    ):
        checks.append(
            _not_worse(
                f"counter {key}",
                key.replace("_", " "),
                candidate.count(key),
                candidate.km,
                baseline.count(key),
                baseline.km,
                rel,
                cfg.counter_abs_margin_events,
            )
        )
    pc, pb = mean_ci(r.progress for r in candidate.runs), mean_ci(r.progress for r in baseline.runs)
    ok = not (pc.mean < pb.mean - cfg.progress_margin) if math.isfinite(pb.mean) else math.isfinite(pc.mean)
    checks.append(
        GateCheck(
            "counter progress_vs_expert",
            ok,
            {"candidate": pc.as_dict(), "baseline": pb.as_dict(), "margin": cfg.progress_margin},
            ""
            if ok
            else f"counter progress_vs_expert: progress {pc.mean:.3f} (95% CI {pc.ci_low:.3f}-{pc.ci_high:.3f}) "
            f"below the baseline's {pb.mean:.3f} minus {cfg.progress_margin}",
        )
    )
    # 4. latency
    p99 = candidate.latency_p99_s()
    if p99 is None:
        notes.append("no simulated latency recorded for the candidate (no model inference ran)")
        checks.append(GateCheck("latency", True, {"simulated_p99_s": None, "budget_s": cfg.latency_budget_s}))
    else:
        ok = p99 <= cfg.latency_budget_s
        reason = "" if ok else f"latency: simulated inference p99 {p99 * 1000:.1f} ms over the "
        reason += "" if ok else f"{cfg.latency_budget_s * 1000:.0f} ms per-tick budget"
        checks.append(GateCheck("latency", ok, {"simulated_p99_s": p99, "budget_s": cfg.latency_budget_s}, reason))
    # 5. Euro NCAP points, every condition x group
    if ncap is None:
        notes.append("Euro NCAP matrix not driven: no points gate")
    else:
        checks.extend(ncap_checks(ncap[0], ncap[1], cfg.ncap_points_margin))
    return GateDecision(all(c.passed for c in checks), tuple(checks), tuple(notes))
