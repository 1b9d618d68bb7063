"""Clustered counts (events in bursts, as a flickering fallback makes them) are not taken for independent evidence:
the policy's dispersion keeps a canary equal to production from being rolled back, and a true regression is still
caught."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sim_batches import POISSON, batch, null_rollbacks, within_alpha

from fleetloop.platform.canary.decide import Verdict, decide
from fleetloop.platform.canary.policy import CanaryPolicy, load_policy
from fleetloop.platform.canary.stats import CohortStats, ratio_lower_bound, update_stats
from fleetloop.platform.errors import ConfigError

BURST = 8  # fallback activations come 8 at a time: variance over mean 8
BURSTS = {"fallback_activations": BURST}
# A short wave that rolls back a canary equal to production with a Poisson reading (see the first test).
SIZES = {"rollouts": 40, "batches": 30, "canary_km": 20.0, "baseline_km": 80.0}


def _policy(fallback_dispersion: float) -> CanaryPolicy:
    return CanaryPolicy(
        min_exposure_km=0.0,
        dispersion=tuple((m, fallback_dispersion if m == "fallback_activations" else f) for m, f in POISSON),
    )


@pytest.mark.slow
def test_bursts_read_as_poisson_roll_back_a_canary_equal_to_production_far_beyond_alpha() -> None:
    policy = _policy(1.0)
    rolled_back = null_rollbacks(policy, bursts=BURSTS, **SIZES)
    assert not within_alpha(policy, rolled_back, SIZES["rollouts"]), rolled_back


@pytest.mark.slow
def test_with_the_bursts_dispersion_a_canary_equal_to_production_stays_within_alpha() -> None:
    policy = _policy(float(BURST))
    assert within_alpha(policy, null_rollbacks(policy, bursts=BURSTS, **SIZES), SIZES["rollouts"])


def test_a_tripled_bursty_metric_is_still_rolled_back_with_its_dispersion() -> None:
    policy = _policy(float(BURST))
    rng = np.random.default_rng(5)
    stats = CohortStats()
    verdict = None
    for i in range(60):
        b = batch(
            rng,
            20.0,
            80.0,
            {(s, "fallback_activations"): 3.0 for s in ("fog/urban_open", "fog/urban_traffic")},
            bursts=BURSTS,
        )
        stats = update_stats(policy, stats, b)
        d = decide(policy, stats, 0, 20.0 * 16 * (i + 1), float(i))
        if d.verdict is Verdict.ROLLBACK:
            verdict = d
            break
    assert verdict is not None
    assert any(
        e.decisive and e.metric == "fallback_activations" and e.slice.startswith("fog") for e in verdict.evidence
    )


def test_the_holds_lower_bound_widens_with_the_dispersion() -> None:
    pairs = [(30, 10.0, 40, 40.0)]  # 3 per km against 1: a ratio of 3
    poisson = ratio_lower_bound(pairs, 0.01)
    wide = ratio_lower_bound(pairs, 0.01, dispersion=4.0)
    assert poisson is not None and wide is not None
    assert wide < poisson < 3.0 and poisson > 1.5


def test_the_dispersion_table_overrides_only_what_it_names_and_says_what_is_wrong() -> None:
    p = load_policy("[dispersion]\nfallback_activations = 3\n")
    assert p.dispersion_of("fallback_activations") == 3.0
    assert p.dispersion_of("harsh_jerks") == CanaryPolicy().dispersion_of("harsh_jerks") > 1.0
    assert p == dataclasses.replace(p)  # round trip through to_dict is checked by the controller tests' persistence
    for text, says in (
        ("dispersion = 3", "must be a table"),
        ("[dispersion]\nfoo = 2", "foo"),
        ("[dispersion]\nnear_misses = 0.5", ">= 1"),
        ('[dispersion]\nnear_misses = "x"', "must be a number"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_policy(text)
