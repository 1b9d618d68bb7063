"""Drive the whole Euro NCAP AEB matrix in several conditions as one batched fleet run, and score it.

One vehicle per (test, condition) pair, placed by ``fleetloop.sim.ncap.ncap_layout`` so that each condition owns
a stretch of the shared road (ADR 0115); model + fallback + arbiter drive as deployed, the arbiter calibrated to
the model (``ArbiterConfig.for_model``), or the fallback alone. Per test the run records the first impact before
the test's end (the ego at standstill, slower than a target it was closing on, or contact), the ego's highest
speed before then (the speed tolerance), the time to collision at the first warning and the share of ticks the
model (not the fallback) drove; ``score_conditions``
turns the rows into points per condition and group (``fleetloop.edge_agent.ncap_scoring``).

Both ``fleetloop sim euroncap`` and the validate stage's Euro NCAP gate run the matrix through here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fleetloop.edge_agent.arbiter import DRIVER_MODEL, ArbiterConfig
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.ncap_scoring import GroupScore, TestResult, score_groups, score_test
from fleetloop.sim.ncap import (
    CAR_TO_CAR_GROUPS,
    CONDITIONS,
    GROUPS,
    PEDESTRIAN_GROUPS,
    euro_ncap_protocol,
    ncap_layout,
)

if TYPE_CHECKING:
    from fleetloop.edge_agent.model_artifact import LoadedPolicy

__all__ = ["NCAP_TOTALS", "drive_ncap_matrix", "score_conditions"]

NCAP_TOTALS = (("car-to-car", CAR_TO_CAR_GROUPS), ("pedestrian", PEDESTRIAN_GROUPS))
_MODEL = "model"  # the runner's label of the evaluated model


def drive_ncap_matrix(
    policy: LoadedPolicy | None,
    conditions: Sequence[str],
    *,
    catalogue: Mapping[str, tuple[tuple[str, float], ...]] = CONDITIONS,
    groups: Sequence[str] = GROUPS,
    seed: int = 0,
    device: str = "cpu",
    on_tick: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Every test of ``groups`` in every one of ``conditions`` (names in ``catalogue``: condition -> weather
    patches), driven by ``policy`` + fallback + arbiter, the arbiter's low-confidence threshold calibrated to the
    policy as on a vehicle (``ArbiterConfig.for_model``), or by the fallback alone (None). One row per
    (condition, test), conditions in order, tests in ``euro_ncap_protocol`` order, each with its impact speed,
    validity, points and band. ``on_tick(done, total)`` follows the run."""
    tests = euro_ncap_protocol(groups)
    world = FleetConfig().world()
    layout = ncap_layout(len(tests), conditions, world.scene_spacing_m, world.road_length_m, catalogue=catalogue)
    ids = [i for per_cond in layout.vehicle_ids for i in per_cond]
    # fixed scenes are cycled by vehicle id: this table gives every id its test
    by_id = {vid: t.spec for per_cond in layout.vehicle_ids for vid, t in zip(per_cond, tests, strict=True)}
    scenes = tuple(by_id.get(i, tests[0].spec) for i in range(max(ids) + 1))
    config = FleetConfig(
        scenario=scenes,
        weather=layout.weather,
        respawn=False,
        progress_reference=False,
        seed=seed,
        device=device,
        max_uncertainty_mps2=None if policy is None else ArbiterConfig.for_model(policy.metadata).max_uncertainty,
    )
    models = None if policy is None else {_MODEL: policy.model}
    runner = FleetRunner(config, ids, models, None if policy is None else _MODEL)
    n = len(ids)
    test_kmh = torch.tensor([t.test_kmh for t in tests] * len(conditions))
    impact = torch.zeros(n)
    hit = torch.zeros(n, dtype=torch.bool)
    ended = torch.zeros(n, dtype=torch.bool)
    closing_seen = torch.zeros(n, dtype=torch.bool)
    max_kmh = test_kmh.clone()
    warn_ttc = torch.full((n,), math.nan)
    live_ticks = torch.zeros(n)
    model_ticks = torch.zeros(n)  # ticks before the test's end in which the model, not the fallback, drove
    ticks = round(max(t.spec.duration_s for t in tests) / runner.world.dt_s)
    for tick in range(ticks):
        runner.step()
        vt, ev, ttc = runner.last_tick, runner.last_events, runner.last_true_ttc_s
        assert vt is not None and ev is not None and ttc is not None
        first_warn = (vt.fallback.stage >= 1) & torch.isnan(warn_ttc) & ~hit & ~ended
        warn_ttc = torch.where(first_warn, ttc.float().cpu(), warn_ttc)
        live = ~hit & ~ended
        live_ticks += live.float()
        model_ticks += (live & (vt.decision.driver.cpu() == DRIVER_MODEL)).float()
        new_hit = ev.collision.cpu() & ~hit & ~ended
        impact = torch.where(new_hit, ev.impact_speed_mps.cpu() * 3.6, impact)
        hit |= new_hit
        ego, target = runner.state.ego_v_mps.cpu(), runner.state.actor_v_mps[:, 0].cpu()
        max_kmh = torch.where(hit | ended, max_kmh, torch.maximum(max_kmh, ego * 3.6))
        # the protocol's end: the ego stands, or is slower than a target it was closing on; or contact
        closing_seen |= ego > target + 1.0 / 3.6
        ended |= hit | (ego < 0.01) | (closing_seen & (ego < target))
        if on_tick is not None:
            on_tick(tick + 1, ticks)
    rows: list[dict[str, Any]] = []
    for c, cond in enumerate(conditions):
        for i, t in enumerate(tests):
            k = c * len(tests) + i
            res = TestResult(t.group, t.test_kmh, round(float(impact[k]), 1), round(float(max_kmh[k]), 2))
            sc = score_test(res)
            rows.append(
                {
                    "test": t.name,
                    "group": t.group,
                    "condition": cond,
                    "test_kmh": t.test_kmh,
                    "target_kmh": t.target_kmh,
                    "overlap_pct": t.overlap_pct,
                    "unbraked_impact_kmh": round(t.unbraked_impact_kmh, 1),
                    "collided": bool(hit[k]),
                    "impact_kmh": res.impact_kmh,
                    "max_speed_kmh": res.max_speed_kmh,
                    "valid": sc.valid,
                    "points": sc.points,
                    "band": sc.band,
                    "band_source": sc.source,
                    "model_drove_share": round(float(model_ticks[k] / live_ticks[k].clamp(min=1.0)), 3),
                    "ttc_at_warning_s": None if math.isnan(float(warn_ttc[k])) else round(float(warn_ttc[k]), 2),
                    "vehicle_id": ids[k],
                }
            )
    return rows


def score_conditions(
    rows: Iterable[Mapping[str, Any]], totals: Iterable[tuple[str, Sequence[str]]] = NCAP_TOTALS
) -> dict[str, dict[str, GroupScore]]:
    """condition -> group (then each of ``totals``) -> score, over the rows of :func:`drive_ncap_matrix`."""
    by_cond: dict[str, list[TestResult]] = {}
    for r in rows:
        res = TestResult(r["group"], r["test_kmh"], r["impact_kmh"], r["max_speed_kmh"])
        by_cond.setdefault(r["condition"], []).append(res)
    totals = tuple(totals)
    return {cond: score_groups(results, totals) for cond, results in by_cond.items()}
