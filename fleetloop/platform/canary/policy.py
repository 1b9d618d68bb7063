"""The rollout policy: waves, the margin a canary may be worse by, how much driving before a verdict, the error rate.

A TOML file (every key optional; the defaults run the simulator's fleet)::

    waves = [0.01, 0.10, 0.50, 1.0]
    margin = 0.2
    min_exposure_km = 50.0
    alpha = 0.05
    metrics = ["collisions", "near_misses", "fallback_activations"]
    counter_metrics = ["phantom_brakes", "harsh_jerks"]

    [dispersion]  # variance / mean of a metric's counts; the metrics not named keep their defaults
    fallback_activations = 5.0

``load_policy(text)`` validates once and says what to fix; docs/canary.md explains each field.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fleetloop.platform.errors import ConfigError

__all__ = [
    "CONDITION_CLASSES",
    "COUNT_METRICS",
    "DEFAULT_DISPERSION",
    "POISSON_DISPERSION",
    "SCENARIO_CLASSES",
    "CanaryPolicy",
    "load_policy",
]

# The strata a heartbeat names (fleetloop.edge_agent.heartbeat makes them; the platform does not import it).
CONDITION_CLASSES = ("clear", "fog", "night", "wet")
SCENARIO_CLASSES = ("urban_open", "urban_traffic", "highway_open", "highway_traffic")
# Counts a heartbeat carries that the controller can judge (per km driven; higher is worse).
# ``fallback_activations`` sums the reasons a model can cause (not ``no_model`` / ``model_switch``: the rollout
# itself causes those on every vehicle it touches).
COUNT_METRICS = (
    "collisions",
    "near_misses",
    "hard_brakes",
    "phantom_brakes",
    "harsh_jerks",
    "deadline_misses",
    "fallback_activations",
)

# Variance over mean of each metric's counts on production, per vehicle and slice (ADR 0191): events of one
# vehicle in one place come in bursts (a fallback that flickers, a jerky stop-and-go), which a Poisson test reads
# as many independent events. Measured on the simulator's fleet (benchmarks/canary.py prints it; the larger of two
# measurements) and rounded up.
DEFAULT_DISPERSION: tuple[tuple[str, float], ...] = (
    ("collisions", 1.0),
    ("deadline_misses", 1.0),
    ("fallback_activations", 5.0),
    ("hard_brakes", 5.0),
    ("harsh_jerks", 8.0),
    ("near_misses", 9.0),
    ("phantom_brakes", 2.0),
)

POISSON_DISPERSION: tuple[tuple[str, float], ...] = tuple((m, 1.0) for m in COUNT_METRICS)
"""Every count read as Poisson (each event independent evidence): the test before ADR 0191."""


@dataclass(frozen=True)
class CanaryPolicy:
    """How a rollout is judged (docs/canary.md).

    Attributes:
        waves: the share of the fleet on the canary in each wave, increasing, ending at 1.0 (the whole fleet: moving
            to it is the promotion; nothing is judged there, no baseline is left).
        margin: non-inferiority margin [-]: a canary whose event rate is at most ``1 + margin`` times the baseline's
            is acceptable; the controller rolls back only on evidence that the ratio exceeds it.
        min_exposure_km: canary driving [km] each wave needs before any verdict (continue until then).
        alpha: the chance of rolling back a canary that is within the margin, over the whole rollout, watched
            continuously (split over every slice and metric tested: Bonferroni).
        metrics: safety metrics (``COUNT_METRICS``): rolled back on harm in any slice, or pooled over slices.
        counter_metrics: what a timid model would do worse (``COUNT_METRICS``): never rolled back on (they are
            not safety; progress rolls a crawling model back), but a next wave is held while their pooled rate
            ratio is shown over ``1 + margin`` (ADR 0163).
        progress_min_ratio: a next wave needs the canary's progress (distance over planned distance) at least this
            share of the baseline's [-]: a model that crawls cannot pass by having fewer events per km. Held only on
            evidence: while the progress ratio's upper confidence bound (level ``hold_alpha``) lies under it.
        progress_rollback_ratio: the canary is rolled back once its progress ratio's anytime-valid upper bound
            (level ``progress_alpha``, a share of ``alpha``) lies under this share [-] (ADR 0185).
        slice_test_weight: each condition x scenario slice's share of alpha beside a condition's (weighted
            Bonferroni; 0: slices are tested only within their condition) [-]. A regression lives in a condition
            more often than in one scenario class of it; its events spread over four slices (ADR 0186).
        progress_min_beats: canary heartbeats (in slices where both arms drove) before progress decides anything
            [beats]: the standard error comes from the heartbeats' spread, which a few beats do not show.
        prove_non_inferiority: metrics whose non-inferiority must be shown (pooled e-value over the threshold)
            before a next wave; empty by default: rare events (collisions) would need thousands of km per wave.
        hold_min_events: a canary rate over ``1 + margin`` times the baseline's holds the wave only once the canary
            has this many events of the metric [events] (0: always); a few vehicles' first one or two events say
            nothing about the rate, and would hold a small fleet's wave until chance evened them out.
        mixture_scale: scale of the half-normal mixing prior on log(rate ratio / boundary) [-] (1.0: weight on
            ratios up to about 10 times the boundary as well as 1.3 to 3; 0.5 left a 10x regression almost no
            prior mass, ADR 0186).
        baseline_ratio: matched baseline vehicles per canary vehicle in each stratum (as many as are left). The
            baseline drives production anyway; the more of it, the more each canary event weighs in the harm
            test (at most 1 + baseline_ratio / (1 + margin) per event against no baseline event, ADR 0186).
        dispersion: per metric, the variance of its counts over their mean (>= 1; 1 is Poisson) as pairs
            ``(metric, factor)``; the TOML gives a ``[dispersion]`` table. Each batch's log likelihood ratio is
            divided by it and the hold's bound widened by it (quasi-Poisson, ADR 0191): clustered events are not
            taken for independent evidence.
        seed: keys the cohort draw.
    """

    waves: tuple[float, ...] = (0.01, 0.10, 0.50, 1.0)
    margin: float = 0.2
    min_exposure_km: float = 50.0
    alpha: float = 0.05
    metrics: tuple[str, ...] = ("collisions", "near_misses", "fallback_activations")
    counter_metrics: tuple[str, ...] = ("phantom_brakes", "harsh_jerks")
    progress_min_ratio: float = 0.95
    progress_rollback_ratio: float = 0.90
    progress_min_beats: int = 30
    slice_test_weight: float = 0.25
    prove_non_inferiority: tuple[str, ...] = ()
    hold_min_events: int = 0
    mixture_scale: float = 1.0
    baseline_ratio: float = 4.0
    dispersion: tuple[tuple[str, float], ...] = DEFAULT_DISPERSION
    seed: int = 0

    def __post_init__(self) -> None:
        w = self.waves
        if not w or not all(0 < x <= 1 for x in w) or any(a >= b for a, b in itertools.pairwise(w)) or w[-1] != 1.0:
            raise ConfigError(f"canary waves must increase within (0, 1] and end at 1.0, got {list(w)}")
        if len(w) < 2:
            raise ConfigError("canary waves need at least one judged wave before 1.0, e.g. [0.1, 1.0]")
        for name in ("margin", "min_exposure_km", "mixture_scale", "baseline_ratio", "slice_test_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"canary {name} must be a finite number >= 0, got {v!r}")
        if self.hold_min_events < 0:
            raise ConfigError(f"canary hold_min_events must be >= 0, got {self.hold_min_events}")
        if self.progress_min_beats < 2:
            raise ConfigError(
                f"canary progress_min_beats must be >= 2 (a spread needs two), got {self.progress_min_beats}"
            )
        if self.mixture_scale <= 0 or self.baseline_ratio <= 0:
            raise ConfigError("canary mixture_scale and baseline_ratio must be > 0")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"canary alpha must lie in (0, 1), got {self.alpha}")
        if not 0 < self.progress_rollback_ratio <= self.progress_min_ratio <= 1:
            raise ConfigError(
                "canary progress ratios must satisfy 0 < progress_rollback_ratio <= progress_min_ratio <= 1, got "
                f"{self.progress_rollback_ratio} and {self.progress_min_ratio}"
            )
        judged = (*self.metrics, *self.counter_metrics)
        unknown = sorted(set(judged) - set(COUNT_METRICS))
        if unknown or not self.metrics or len(set(judged)) != len(judged):
            raise ConfigError(
                f"canary metrics {list(self.metrics)} and counter_metrics {list(self.counter_metrics)}: give at least "
                f"one metric, each once, from {', '.join(COUNT_METRICS)} (unknown: {unknown})"
            )
        bad = [(m, f) for m, f in self.dispersion if m not in COUNT_METRICS or not (math.isfinite(f) and f >= 1.0)]
        if bad or len({m for m, _ in self.dispersion}) != len(self.dispersion):
            raise ConfigError(
                f"canary dispersion {dict(self.dispersion)}: give each metric of {', '.join(COUNT_METRICS)} at most "
                f"once, with a finite factor >= 1 (1: Poisson counts); wrong: {bad}"
            )
        if not set(self.prove_non_inferiority) <= set(judged):
            raise ConfigError("canary prove_non_inferiority may name only metrics or counter_metrics of the policy")

    @property
    def judged_metrics(self) -> tuple[str, ...]:
        """Metrics and counter-metrics, in that order."""
        return (*self.metrics, *self.counter_metrics)

    def dispersion_of(self, metric: str) -> float:
        """The metric's dispersion factor (1 when not named)."""
        return dict(self.dispersion).get(metric, 1.0)

    @property
    def ratio_boundary(self) -> float:
        """``1 + margin``: the rate ratio the tests are anchored at."""
        return 1.0 + self.margin

    @property
    def n_harm_tests(self) -> int:
        """Harm hypotheses of full weight in the rollback family: every (condition, safety metric), the
        condition's scenario slices pooled with a common ratio, plus each safety metric pooled over every slice
        (counter-metrics only hold: ADR 0163). The condition x scenario slices are tested too, each with weight
        ``slice_test_weight`` (ADR 0186)."""
        return (len(CONDITION_CLASSES) + 1) * len(self.metrics)

    @property
    def rollback_weight(self) -> float:
        """The rollback family's total weight (weighted Bonferroni): the harm tests of full weight, the slice
        tests at ``slice_test_weight`` each, and the progress test at 1."""
        n_slices = len(CONDITION_CLASSES) * len(SCENARIO_CLASSES)
        return self.n_harm_tests + self.slice_test_weight * n_slices * len(self.metrics) + 1.0

    @property
    def harm_threshold(self) -> float:
        """The e-value that rolls back on a condition or on all slices pooled (``rollback_weight / alpha``)."""
        return self.rollback_weight / self.alpha

    @property
    def slice_harm_threshold(self) -> float:
        """The e-value that rolls back on one condition x scenario slice (``harm_threshold / slice_test_weight``;
        inf when slices are not tested alone)."""
        return self.harm_threshold / self.slice_test_weight if self.slice_test_weight > 0 else math.inf

    @property
    def progress_alpha(self) -> float:
        """The progress rollback's share of ``alpha`` (``alpha / rollback_weight``)."""
        return self.alpha / self.rollback_weight

    @property
    def hold_alpha(self) -> float:
        """The level of each metric's hold (``alpha / len(judged_metrics)``): a wave is held while the one-sided
        lower confidence bound of a metric's common rate ratio exceeds ``1 + margin``, not on a point ratio."""
        return self.alpha / len(self.judged_metrics)

    @property
    def non_inferiority_threshold(self) -> float:
        """The pooled e-value that shows non-inferiority of one metric (``1 / alpha``: a next wave needs every
        named metric to pass, an intersection-union test, which needs no split of alpha)."""
        return 1.0 / self.alpha

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the controller records the policy it ran with)."""
        out = {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}
        out["dispersion"] = dict(self.dispersion)
        return out


def policy_from_mapping(doc: Mapping[str, Any], where: str = "canary policy") -> CanaryPolicy:
    """A policy from a parsed document (``to_dict``'s form); unknown keys and wrong types say what to fix."""
    known = {f.name: f for f in fields(CanaryPolicy)}
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in doc.items():
        default = getattr(CanaryPolicy(), key)
        if key == "dispersion":
            kwargs[key] = _dispersion(value, where)
        elif isinstance(default, tuple):
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
            want = float if key == "waves" else str
            if not all(isinstance(v, want) or (want is float and isinstance(v, int)) for v in value):
                raise ConfigError(f"{where}: {key} must be a list of {want.__name__}, got {value!r}")
            kwargs[key] = tuple(float(v) if want is float else v for v in value)
        elif isinstance(default, int) and not isinstance(default, float):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
            kwargs[key] = value
        else:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
            kwargs[key] = float(value)
    return CanaryPolicy(**kwargs)


def _dispersion(value: Any, where: str) -> tuple[tuple[str, float], ...]:
    """A ``[dispersion]`` table over the defaults (the metrics it does not name keep theirs)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: dispersion must be a table of metric = factor, got {value!r}")
    out = dict(DEFAULT_DISPERSION)
    for metric, factor in value.items():
        if not isinstance(factor, int | float) or isinstance(factor, bool):
            raise ConfigError(f"{where}: dispersion.{metric} must be a number, got {factor!r}")
        out[str(metric)] = float(factor)
    return tuple(sorted(out.items()))


def load_policy(text: str, where: str = "canary policy") -> CanaryPolicy:
    """Parse a policy TOML document (``where`` names it in errors)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML: {e}") from e
    return policy_from_mapping(doc, where)
