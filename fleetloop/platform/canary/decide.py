"""The canary verdict: a pure function of the policy, the cohort statistics and where the rollout stands.

Rules, in order (docs/canary.md):

1. ``continue``: the current wave's canary has driven less than ``min_exposure_km`` (matched km): no verdict yet.
   Also (after rules 2 and 3) while fewer than ``progress_min_beats`` canary heartbeats can judge progress.
2. ``rollback``: some condition x safety metric (the condition's scenario slices pooled), or some safety metric
   pooled over every slice, shows harm (its mixture e-value at or over ``policy.harm_threshold``), or the
   canary's progress is shown under ``progress_rollback_ratio`` of the baseline's (a model that crawls): the
   progress ratio's anytime-valid upper bound (level ``policy.progress_alpha``) lies under it, after
   ``progress_min_beats`` canary heartbeats (ADR 0185). Counter-metrics never roll back (ADR 0163).
3. ``hold`` (stay in this wave, keep collecting): the one-sided lower confidence bound (level
   ``policy.hold_alpha``) of a metric's or counter-metric's common rate ratio over the slices exceeds
   ``1 + margin`` (evidence of harm, short of a rollback; a point ratio over ``1 + margin`` from a few events is
   not evidence), the progress ratio's upper bound (same level) lies under ``progress_min_ratio``, or a metric of
   ``prove_non_inferiority`` is not yet shown non-inferior.
4. ``next_wave``: none of the above; from the last judged wave, the next wave is the whole fleet (promotion).

Every verdict carries its evidence (``Evidence``: slice, metric, counts, exposures, ratio, e-value, threshold)
and serialises to JSON for ``ota history``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np

from fleetloop.platform.canary.policy import CanaryPolicy
from fleetloop.platform.canary.stats import (
    CohortStats,
    MixtureGrid,
    SliceStats,
    log_mixture,
    mantel_haenszel_ratio,
    mixture_half_width,
    progress_estimate,
    ratio_lower_bound,
)
from fleetloop.platform.errors import DataError, UserInputError

__all__ = ["POOLED", "Decision", "Evidence", "Verdict", "decide"]

POOLED = "all"  # the slice name of evidence pooled over every slice
# The progress bound's confidence sequence is narrowest at this many canary heartbeats (10 vehicles x 20 km of a
# wave at about 1.5 km per beat is ~130; a wider fleet gets there sooner and keeps a nearly as narrow bound).
PROGRESS_TUNED_BEATS = 200


class Verdict(StrEnum):
    """What the controller does next."""

    CONTINUE = "continue"
    HOLD = "hold"
    NEXT_WAVE = "next_wave"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Evidence:
    """One number a verdict rests on.

    Attributes:
        test: ``exposure``, ``harm``, ``non_inferiority``, ``rate_ratio`` or ``progress``.
        slice: ``"<condition>/<scenario>"`` or ``"all"`` (pooled over the slices).
        metric: the metric (``km`` for exposure, ``progress`` for progress).
        canary_count, baseline_count: events in the matched batches.
        canary_km, baseline_km: matched exposure [km].
        ratio: the rate ratio canary / baseline (stratified when pooled; None: no events; inf is written as None
            with ``canary_count`` > 0), or the progress ratio.
        e_value: the mixture e-value (harm, non-inferiority), else None.
        threshold: what ``e_value`` (or ``ratio``, or ``canary_km``) is compared with.
        decisive: this evidence decided the verdict.
        lower_bound: the one-sided lower confidence bound of the rate ratio (``rate_ratio``, at level
            ``policy.hold_alpha``), else None.
        upper_bound: ``progress``: the progress ratio's upper bound the verdict compared (the anytime-valid one
            for a rollback, else the hold's), else None.
    """

    test: str
    slice: str
    metric: str
    canary_count: int
    canary_km: float
    baseline_count: int
    baseline_km: float
    ratio: float | None
    e_value: float | None
    threshold: float
    decisive: bool = False
    lower_bound: float | None = None
    upper_bound: float | None = None

    def describe(self) -> str:
        """One readable line."""
        ratio = "-" if self.ratio is None else f"{self.ratio:.3g}"
        e = "" if self.e_value is None else f", e-value {self.e_value:.3g} vs {self.threshold:.3g}"
        if self.lower_bound is not None:
            e += f", lower bound {self.lower_bound:.3g} vs {self.threshold:.3g}"
        if self.upper_bound is not None:
            e += f", upper bound {self.upper_bound:.3g} vs {self.threshold:.3g}"
        return (
            f"{self.test} {self.metric} in {self.slice}: canary {self.canary_count} in {self.canary_km:.1f} km, "
            f"baseline {self.baseline_count} in {self.baseline_km:.1f} km, ratio {ratio}{e}"
        )


@dataclass(frozen=True)
class Decision:
    """A verdict with its reasons and evidence, at ``decided_at_s`` (the caller's clock), for wave ``wave_index``."""

    verdict: Verdict
    wave_index: int
    wave_fraction: float
    decided_at_s: float
    reasons: tuple[str, ...]
    evidence: tuple[Evidence, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        d["reasons"] = list(self.reasons)
        d["evidence"] = [_finite(asdict(e)) for e in self.evidence]
        return d

    def to_json(self) -> str:
        """Strict JSON (no NaN / Infinity)."""
        return json.dumps(self.to_dict(), allow_nan=False, sort_keys=True)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Decision:
        try:
            return Decision(
                verdict=Verdict(d["verdict"]),
                wave_index=int(d["wave_index"]),
                wave_fraction=float(d["wave_fraction"]),
                decided_at_s=float(d["decided_at_s"]),
                reasons=tuple(str(r) for r in d["reasons"]),
                evidence=tuple(Evidence(**e) for e in d["evidence"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"not a canary decision record: {e}") from e

    @staticmethod
    def from_json(text: str) -> Decision:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"canary decision is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise DataError("canary decision is not a JSON object")
        return Decision.from_dict(doc)


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _e(log_e: float) -> float:
    return math.exp(min(log_e, 700.0))


def _by_condition(slices: Mapping[str, SliceStats]) -> dict[str, dict[str, SliceStats]]:
    """The slices (``"<condition>/<scenario>"``) grouped by their condition, in name order."""
    out: dict[str, dict[str, SliceStats]] = {}
    for key, s in sorted(slices.items()):
        out.setdefault(key.split("/", 1)[0], {})[key] = s
    return out


def _group_evidence(
    test: str, name: str, metric: str, group: Mapping[str, SliceStats], e: float | None, thr: float
) -> Evidence:
    xc, ec, xb, eb = _pooled_counts(group, metric)
    pairs = [(s.canary.count(metric), s.canary.km, s.baseline.count(metric), s.baseline.km) for s in group.values()]
    return Evidence(test, name, metric, xc, ec, xb, eb, mantel_haenszel_ratio(pairs), e, thr)


def _pooled_counts(slices: Mapping[str, SliceStats], metric: str) -> tuple[int, float, int, float]:
    return (
        sum(s.canary.count(metric) for s in slices.values()),
        sum(s.canary.km for s in slices.values()),
        sum(s.baseline.count(metric) for s in slices.values()),
        sum(s.baseline.km for s in slices.values()),
    )


def decide(policy: CanaryPolicy, stats: CohortStats, wave_index: int, wave_canary_km: float, now_s: float) -> Decision:
    """The verdict for wave ``wave_index`` (a judged wave: not the last) whose canary drove ``wave_canary_km``
    matched km so far; ``now_s`` stamps the decision (no clock is read here)."""
    if not 0 <= wave_index < len(policy.waves) - 1:
        raise UserInputError(
            f"wave {wave_index} is not judged: judged waves are 0..{len(policy.waves) - 2} (the last is the whole "
            "fleet, with no baseline left)"
        )
    fraction = policy.waves[wave_index]
    slices = {k: s for k, s in stats.slices.items() if s.canary.km > 0 and s.baseline.km > 0}
    total_c = sum(s.canary.km for s in slices.values())
    total_b = sum(s.baseline.km for s in slices.values())

    def made(verdict: Verdict, reasons: list[str], evidence: list[Evidence]) -> Decision:
        return Decision(verdict, wave_index, fraction, now_s, tuple(reasons), tuple(evidence))

    exposure = Evidence("exposure", POOLED, "km", 0, wave_canary_km, 0, total_b, None, None, policy.min_exposure_km)
    if wave_canary_km < policy.min_exposure_km:
        reason = f"the wave's canary drove {wave_canary_km:.1f} km of the {policy.min_exposure_km:g} km needed"
        return made(Verdict.CONTINUE, [reason], [_decisive(exposure)])

    grid = MixtureGrid.for_scale(policy.mixture_scale)
    harm_thr, ni_thr = policy.harm_threshold, policy.non_inferiority_threshold
    slice_thr = policy.slice_harm_threshold
    evidence: list[Evidence] = [exposure]
    rollback: list[str] = []
    hold: list[str] = []
    for metric in policy.judged_metrics:
        safety = metric in policy.metrics
        # Harm in any slice, and pooled (a common ratio over the slices).
        worst: Evidence | None = None
        pooled_harm = None
        for condition, group in _by_condition(slices).items():
            llrs = [s.harm[metric] for s in group.values() if metric in s.harm]
            if not llrs:
                continue
            llr = np.sum(llrs, axis=0)  # a common ratio over the condition's scenario slices
            pooled_harm = llr if pooled_harm is None else pooled_harm + llr
            if not safety:  # a counter-metric has no harm test per condition
                continue
            if policy.slice_test_weight > 0:
                for key, s in group.items():
                    if metric not in s.harm:
                        continue
                    e_slice = _e(log_mixture(s.harm[metric], grid.weights))
                    if e_slice >= policy.slice_harm_threshold:
                        rollback.append(f"{metric} is worse than {policy.ratio_boundary:g}x the baseline in {key}")
                        evidence.append(_decisive(_group_evidence("harm", key, metric, {key: s}, e_slice, slice_thr)))
            ev = _group_evidence("harm", condition, metric, group, _e(log_mixture(llr, grid.weights)), harm_thr)
            if ev.e_value is not None and ev.e_value >= harm_thr:
                rollback.append(f"{metric} is worse than {policy.ratio_boundary:g}x the baseline in {condition}")
                evidence.append(_decisive(ev))
            elif worst is None or (ev.e_value or 0.0) > (worst.e_value or 0.0):
                worst = ev
        xc, ec, xb, eb = _pooled_counts(slices, metric)
        pairs = [
            (s.canary.count(metric), s.canary.km, s.baseline.count(metric), s.baseline.km) for s in slices.values()
        ]
        ratio = mantel_haenszel_ratio(pairs)
        if pooled_harm is not None and safety:
            e_pool = _e(log_mixture(pooled_harm, grid.weights))
            ev = Evidence("harm", POOLED, metric, xc, ec, xb, eb, ratio, e_pool, harm_thr)
            if e_pool >= harm_thr:
                rollback.append(f"{metric} is worse than {policy.ratio_boundary:g}x the baseline over all slices")
                ev = _decisive(ev)
            evidence.append(ev)
        if worst is not None:
            evidence.append(worst)
        # A hold asks for evidence too: the ratio's lower confidence bound over 1 + margin, not a point ratio.
        bound = ratio_lower_bound(pairs, policy.hold_alpha, policy.dispersion_of(metric))
        rr = Evidence("rate_ratio", POOLED, metric, xc, ec, xb, eb, ratio, None, policy.ratio_boundary, False, bound)
        if bound is not None and bound > policy.ratio_boundary and xc >= policy.hold_min_events:
            hold.append(
                f"{metric}: the canary's rate is {ratio:.3g} x the baseline's, at least {bound:.3g} x "
                f"(lower {1 - policy.hold_alpha:.0%} bound), over {policy.ratio_boundary:g} x"
            )
            rr = _decisive(rr)
        evidence.append(rr)
        if metric in policy.prove_non_inferiority:
            ni = [s.non_inferiority[metric] for s in slices.values() if metric in s.non_inferiority]
            e_ni = _e(log_mixture(np.sum(ni, axis=0), grid.weights)) if ni else 1.0
            ev = Evidence("non_inferiority", POOLED, metric, xc, ec, xb, eb, ratio, e_ni, ni_thr)
            if e_ni < ni_thr:
                hold.append(f"{metric}: non-inferiority not shown yet (e-value {e_ni:.3g} of {ni_thr:g})")
                ev = _decisive(ev)
            evidence.append(ev)

    prog = progress_estimate(slices.values())
    waiting: list[str] = []
    if prog is None or prog.canary_beats < policy.progress_min_beats:
        seen = 0 if prog is None else prog.canary_beats
        waiting.append(f"progress: {seen} canary heartbeats matched, {policy.progress_min_beats} needed to judge it")
    if prog is not None:
        beats = prog.canary_beats
        # Rolling back is final and looked at after every batch: an anytime-valid bound. A hold is recomputed at
        # every evaluation: a fixed-level bound, as the counts' hold (ADR 0163).
        upper_any = prog.upper_bound(mixture_half_width(beats, policy.progress_alpha, PROGRESS_TUNED_BEATS))
        upper_hold = prog.upper_bound(statistics.NormalDist().inv_cdf(1.0 - policy.hold_alpha))
        enough = beats >= policy.progress_min_beats
        ev = Evidence(
            "progress",
            POOLED,
            "progress",
            beats,
            total_c,
            0,
            total_b,
            prog.ratio,
            None,
            policy.progress_min_ratio,
            upper_bound=upper_hold,
        )
        if enough and upper_any < policy.progress_rollback_ratio:
            rollback.append(
                f"the canary drives {prog.ratio:.1%} of the baseline's progress, at most {upper_any:.1%} (anytime "
                f"{1 - policy.progress_alpha:.2%} bound), under {policy.progress_rollback_ratio:.0%}"
            )
            ev = _decisive(replace(ev, threshold=policy.progress_rollback_ratio, upper_bound=upper_any))
        elif enough and upper_hold < policy.progress_min_ratio:
            hold.append(
                f"the canary drives {prog.ratio:.1%} of the baseline's progress, at most {upper_hold:.1%} (upper "
                f"{1 - policy.hold_alpha:.0%} bound), under {policy.progress_min_ratio:.0%}"
            )
            ev = _decisive(ev)
        evidence.append(ev)

    if rollback:
        return made(Verdict.ROLLBACK, rollback, evidence)
    if hold:
        return made(Verdict.HOLD, hold, evidence)
    if waiting:  # a next wave needs progress judged: a crawler must not pass on too few heartbeats
        return made(Verdict.CONTINUE, waiting, evidence)
    nxt = policy.waves[wave_index + 1]
    what = "promote to the whole fleet" if wave_index + 1 == len(policy.waves) - 1 else f"grow to {nxt:.0%}"
    return made(Verdict.NEXT_WAVE, [f"no harm, progress kept after {wave_canary_km:.1f} km: {what}"], evidence)


def _decisive(ev: Evidence) -> Evidence:
    return Evidence(**{**asdict(ev), "decisive": True})
