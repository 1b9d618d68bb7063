"""The validate stage's Euro NCAP points are the mean over its suite's seeds (ADR 0192)."""

from __future__ import annotations

import torch

from fleetloop.edge_agent.ncap_run import drive_ncap_matrix, score_conditions
from fleetloop.pipelines.suite import tiny_suite
from fleetloop.pipelines.validate import ncap_on_suite
from fleetloop.sim.ncap import GROUPS


def test_points_are_the_mean_of_each_seeds_matrix() -> None:
    suite = tiny_suite()  # clear and fog 0.8, two seeds
    assert len(suite.seeds) == 2
    catalogue = {s.condition.name: s.condition.patches for s in suite.slices}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scores = ncap_on_suite(None, "fallback-only", suite)
        per_seed = [
            score_conditions(drive_ncap_matrix(None, tuple(catalogue), catalogue=catalogue, seed=s), totals=())
            for s in suite.seeds
        ]
    finally:
        torch.set_num_threads(threads)
    assert list(scores.points) == ["clear", "fog_0.8"]
    for cond, groups in scores.points.items():
        assert list(groups) == list(GROUPS)
        for g, mean in groups.items():
            assert mean == sum(p[cond][g].points for p in per_seed) / 2
    assert scores.max_points == {g: per_seed[0]["clear"][g].max_points for g in GROUPS}
