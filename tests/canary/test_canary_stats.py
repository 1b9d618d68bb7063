"""The sequential rate-ratio test against numeric oracles: the mixture's integral, the null's expectation, and its
error rate under continuous monitoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_batches import poisson_policy

from fleetloop.platform.canary.stats import (
    ArmTally,
    CohortStats,
    MixtureGrid,
    SliceTally,
    batch_log_lr,
    log_mixture,
    mantel_haenszel_ratio,
    progress_ratio,
    update_stats,
)
from fleetloop.platform.errors import DataError

SCALE = 0.5


def _integral_e_value(batches: list[tuple[int, int, float, float]], boundary: float, harm: bool) -> float:
    """The continuous half-normal mixture over u = |log(r / boundary)|, by the trapezoid rule on a fine grid."""
    u = np.linspace(0.0, 12 * SCALE, 400_001)
    dens = 2.0 / (SCALE * math.sqrt(2 * math.pi)) * np.exp(-0.5 * (u / SCALE) ** 2)
    ratios = boundary * np.exp(u if harm else -u)
    llr = sum(batch_log_lr(xc, xb, ec, eb, ratios, boundary) for xc, xb, ec, eb in batches)
    return float(np.trapezoid(dens * np.exp(llr), u))


@pytest.mark.parametrize(
    ("batches", "harm"),
    [
        ([(12, 5, 3.0, 4.0)], True),
        ([(3, 9, 2.0, 2.0)], False),
        ([(0, 0, 1.0, 1.0)], True),
        ([(7, 2, 1.0, 4.0), (10, 12, 5.0, 5.0), (4, 1, 0.5, 2.0)], True),  # the exposure split changes
        ([(20, 40, 3.0, 3.0), (15, 10, 1.0, 3.0)], False),
    ],
)
def test_the_grid_mixture_equals_the_integral_over_the_prior(
    batches: list[tuple[int, int, float, float]], harm: bool
) -> None:
    boundary = 1.2
    grid = MixtureGrid.for_scale(SCALE)
    ratios = grid.harm_ratios(boundary) if harm else grid.non_inferiority_ratios(boundary)
    llr = sum(batch_log_lr(xc, xb, ec, eb, ratios, boundary) for xc, xb, ec, eb in batches)
    assert math.exp(log_mixture(np.asarray(llr) + np.zeros(len(ratios)), grid.weights)) == pytest.approx(
        _integral_e_value(batches, boundary, harm), rel=1e-6
    )


def test_a_batch_likelihood_ratio_has_expectation_at_most_one_anywhere_under_the_null() -> None:
    grid = MixtureGrid.for_scale(SCALE)
    boundary, ec, eb, n = 1.2, 2.0, 3.0, 25
    ratios = grid.harm_ratios(boundary)
    for r_true in (0.5, 1.0, 1.2):  # H0: r <= 1.2, the boundary included
        p = r_true * ec / (r_true * ec + eb)
        mean = sum(
            math.comb(n, x) * p**x * (1 - p) ** (n - x) * np.exp(batch_log_lr(x, n - x, ec, eb, ratios, boundary))
            for x in range(n + 1)
        )
        assert np.all(mean <= 1.0 + 1e-9)
        if r_true == boundary:
            np.testing.assert_allclose(mean, 1.0, rtol=1e-9)
    p = 2.0 * ec / (2.0 * ec + eb)  # under an alternative the evidence grows
    mean = sum(
        math.comb(n, x)
        * p**x
        * (1 - p) ** (n - x)
        * math.exp(log_mixture(batch_log_lr(x, n - x, ec, eb, ratios, boundary), grid.weights))
        for x in range(n + 1)
    )
    assert mean > 1.5


def test_watched_after_every_batch_the_test_rejects_a_true_null_at_most_alpha_of_the_time() -> None:
    """2,000 Poisson paths with equal rates (the least favourable null: margin 0), 300 batches each, the e-process
    looked at after every batch: the share that ever crosses 1 / alpha stays within alpha (plus Monte-Carlo error),
    while a fixed-sample z-test looked at as often rejects far more."""
    rng = np.random.default_rng(7)
    paths, steps, alpha = 2000, 300, 0.05
    grid = MixtureGrid.for_scale(SCALE)
    ratios = grid.harm_ratios(1.0)
    ec = rng.uniform(0.5, 3.0, steps)  # the canary's share of exposure changes batch by batch (waves grow)
    eb = np.full(steps, 2.0)
    llr = np.zeros((paths, len(ratios)))
    crossed = np.zeros(paths, dtype=bool)
    naive = np.zeros(paths, dtype=bool)
    xc_sum = np.zeros(paths)
    xb_sum = np.zeros(paths)
    for t in range(steps):
        xc = rng.poisson(0.5 * ec[t], paths)[:, None]
        xb = rng.poisson(0.5 * eb[t], paths)[:, None]
        llr += batch_log_lr(xc, xb, ec[t], eb[t], ratios, 1.0)  # type: ignore[arg-type]
        top = llr.max(axis=1, keepdims=True)
        log_e = top[:, 0] + np.log(np.sum(grid.weights * np.exp(llr - top), axis=1))
        crossed |= log_e >= math.log(1 / alpha)
        xc_sum += xc[:, 0]
        xb_sum += xb[:, 0]
        share = ec[: t + 1].sum() / (ec[: t + 1].sum() + eb[: t + 1].sum())
        n = xc_sum + xb_sum
        z = (xc_sum - n * share) / np.sqrt(np.maximum(n * share * (1 - share), 1e-9))
        naive |= (z > 1.645) & (n >= 10)
    mc = 3 * math.sqrt(alpha * (1 - alpha) / paths)
    assert crossed.mean() <= alpha + mc
    assert naive.mean() > 2 * alpha  # peeking at a fixed-sample test: why the e-process


def test_a_doubled_rate_is_found_and_an_equal_one_is_not() -> None:
    policy = poisson_policy(margin=0.2)
    grid = MixtureGrid.for_scale(policy.mixture_scale)
    rng = np.random.default_rng(1)
    found = {2.0: 0, 1.0: 0}
    for ratio in found:
        for _ in range(50):  # 800 km a side at 0.3 events per km: about 240 baseline events
            xc, xb = rng.poisson(ratio * 0.3 * 800), rng.poisson(0.3 * 800)
            llr = batch_log_lr(xc, xb, 800.0, 800.0, grid.harm_ratios(1.2), 1.2)
            found[ratio] += math.exp(log_mixture(llr, grid.weights)) >= policy.harm_threshold
    assert found[2.0] >= 45 and found[1.0] == 0


def test_update_keeps_unmatched_driving_apart_and_refuses_bad_tallies() -> None:
    policy = poisson_policy()
    s = update_stats(
        policy,
        CohortStats(),
        {
            "fog/urban_open": SliceTally(ArmTally(2.0, 2.0, {"collisions": 1}), ArmTally()),
            "clear/highway_open": SliceTally(
                ArmTally(1.0, 1.1, {"near_misses": 2}), ArmTally(3.0, 3.0, {"near_misses": 1})
            ),
        },
    )
    fog, clear = s.slices["fog/urban_open"], s.slices["clear/highway_open"]
    assert fog.unmatched_canary.count("collisions") == 1 and fog.canary.km == 0 and not fog.harm
    assert clear.canary.count("near_misses") == 2 and clear.harm["near_misses"].shape == (64,)
    assert s.batches == 1 and s.matched_canary_km() == 1.0
    back = CohortStats.from_dict(s.to_dict())
    np.testing.assert_array_equal(back.slices["clear/highway_open"].harm["near_misses"], clear.harm["near_misses"])
    with pytest.raises(DataError, match="negative"):
        update_stats(
            policy, s, {"clear/highway_open": SliceTally(ArmTally(1.0, 1.0, {"collisions": -1}), ArmTally(1.0, 1.0))}
        )
    with pytest.raises(DataError, match="finite"):
        update_stats(policy, s, {"clear/highway_open": SliceTally(ArmTally(math.nan, 1.0), ArmTally(1.0, 1.0))})


def test_stratified_ratios_weigh_each_stratum_by_its_own_exposures() -> None:
    # Canary twice the baseline's rate in both strata, with very different exposure splits.
    assert mantel_haenszel_ratio([(20, 10.0, 10, 10.0), (4, 1.0, 20, 10.0)]) == pytest.approx(2.0)
    assert mantel_haenszel_ratio([(3, 1.0, 0, 1.0)]) == math.inf
    assert mantel_haenszel_ratio([(0, 1.0, 0, 1.0)]) is None
    policy = poisson_policy()
    s = update_stats(
        policy,
        CohortStats(),
        {"clear/urban_open": SliceTally(ArmTally(8.0, 10.0), ArmTally(9.0, 10.0))},
    )
    assert progress_ratio(s.slices.values()) == pytest.approx(0.8 / 0.9)
