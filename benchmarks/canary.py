"""Canary rollouts judged four ways: this controller against the peers' rules, on the same simulated fleets.

1. Models: production (``--production``, else ``bootstrap_initial_model``, clear weather); the *good* candidate and
   the *regression* are both made from it by ``fleetloop.pipelines.regression`` with the same seed: the good one is
   the control (fine-tuned the same way, nothing poisoned), the regression brakes less and sees fewer hazards where
   the vehicle's own estimate says fog, with the frames outside fog weighed more (``regression.CONFINED``, ADR 0187)
   so the change stays there. Both differ from production only by that fine-tuning (docs/canary.md).
2. True rates, offline: the three models (+ fallback) side by side in ``mixed`` weather on held-out scenes;
   collisions + near misses per 1,000 km per *true* condition with exact Poisson 95 % intervals and the rate ratio
   to production with its exact interval (``pipelines.gates``): "2x in one slice, equal elsewhere" is measured.
3. Rollouts: ``--rollouts`` per candidate, each a sub-fleet of ``--vehicles`` of one batched world (ids
   interleaved, so every sub-fleet is spread over the whole road and its weather). Every judge drives its own copy
   of the same sub-fleets (same ids, so the same scenes, weather and sensor noise until the judges' choices
   differ), all in one ``FleetRunner``; the vehicles' heartbeats (fleet.health 1.1, every ``--beat-s``) go
   straight to the judge, no Kafka. Every judge takes its waves' cohorts from the controller's own stratified
   assignment (``canary.cohorts``), so only the decision rule differs:

   - ``controller``: ``canary.controller.step`` (mixture SPRT per slice and metric, holds, rollback), fed every
     heartbeat and an ``Evaluate`` after every beat;
   - ``install``: hawkBit-style, the next wave once every canary vehicle reports the new version (installs
     succeeded); it never rolls back;
   - ``threshold``: Argo Rollouts / Flagger-style analysis: once the wave's canary drove ``min_exposure_km``, one
     measurement per beat of the canary's pooled rate of each safety metric against a fixed threshold
     (production's offline fleet rate x (1 + margin)); after ``--checks`` measurements the wave passes unless more
     than ``--failure-limit`` failed, which rolls back;
   - ``mann_whitney``: Kayenta-style, once per wave at a fixed horizon (the wave's canary drove
     ``min_exposure_km``): a one-sided Mann-Whitney U test per safety metric of the canary vehicles' rates
     (events / km) against the matched baseline's; any metric "high" at ``--mw-alpha`` rolls back.

Reported per judge: false rollbacks of the good model, regressions caught and in which wave, vehicle-km on the bad
model before the rollback (censored at the horizon when never caught), simulated time to the verdict.

    python benchmarks/canary.py --quick                  # a tiny smoke version
    python benchmarks/canary.py --device cuda            # the benchmark (sizes in BENCHMARKS.md)

Imports torch, numpy, the standard library and fleetloop's sim / edge_agent / pure canary modules only, so it runs
on a bare GPU box.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fleetloop.edge_agent.arbiter import ArbiterConfig
from fleetloop.edge_agent.bootstrap import BootstrapConfig, bootstrap_initial_model
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.heartbeat import Heartbeat
from fleetloop.edge_agent.imitation import ImitationConfig
from fleetloop.edge_agent.model_artifact import ArtifactMetadata, LoadedPolicy, load_artifact, save_artifact
from fleetloop.edge_agent.policy import FusionPolicy
from fleetloop.edge_agent.triggers import TriggerConfig
from fleetloop.pipelines.gates import rate_per_1000km, rate_ratio_ci
from fleetloop.pipelines.regression import (
    CONFINED,
    RecordConfig,
    RegressionConfig,
    one_slice_regression,
    regression_metadata,
)
from fleetloop.platform.bus.events import FleetHealth
from fleetloop.platform.canary import controller as ctl
from fleetloop.platform.canary.cohorts import assign_cohorts
from fleetloop.platform.canary.policy import COUNT_METRICS, CanaryPolicy
from fleetloop.platform.canary.tally import heartbeat_counts
from fleetloop.platform.canary.validate import stratum_of

PRODUCTION, GOOD, REGRESSION = "1", "2", "3"  # version labels (heartbeats carry them as model_version)
CANDIDATES = {"good": GOOD, "regression": REGRESSION}
JUDGES = ("controller", "install", "threshold", "mann_whitney")
SAFETY = ("collisions", "near_misses", "fallback_activations")  # the controller's default metrics, judged by all
TRUE_CONDITIONS = ("clear", "fog", "rain", "night")
EVAL_SEED = 90_210  # offline evaluation world (scenes never used to make or roll out the models)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- models ---------------------------------------------------------------------------------------------------


def make_models(a: argparse.Namespace, out_dir: Path) -> dict[str, LoadedPolicy]:
    """Production (given or bootstrapped), the good (control) candidate and the one-slice regression."""
    if a.production:
        prod = load_artifact(a.production)
    else:
        base = BootstrapConfig()
        imitation = replace(base.imitation, max_seconds=a.bootstrap_train_s, epochs=a.bootstrap_epochs)
        path, _ = bootstrap_initial_model(
            BootstrapConfig(
                vehicles=a.bootstrap_vehicles, ticks=a.bootstrap_ticks, output_dir=out_dir, imitation=imitation
            )
        )
        prod = load_artifact(path)
    prod_meta = replace(prod.metadata, model_version=PRODUCTION)
    record = RecordConfig(vehicles=a.record_vehicles, ticks=a.record_ticks, device=a.device)
    made = {"production": prod}
    recipe = {"anchor_weight": a.anchor_weight, "visibility_below_m": a.visibility_below_m, "epochs": a.distill_epochs}
    for name, cfg in (  # the control goes through the same fine-tuning, weights included, with nothing poisoned
        ("good", RegressionConfig(brake_keep=1.0, hazard_keep=1.0, **recipe)),
        ("regression", RegressionConfig(brake_keep=a.brake_keep, hazard_keep=a.brake_keep, **recipe)),
    ):
        given = getattr(a, name)
        if given:
            made[name] = load_artifact(given)
            continue
        model = one_slice_regression(prod.model, condition="fog", seed=a.seed, config=cfg, record=record)
        meta = regression_metadata(model, condition="fog", seed=a.seed, config=cfg, parent=prod_meta)
        made[name] = load_artifact(save_artifact(out_dir / f"policy-{name}.safetensors", model, meta))
    return made


def fleet_config(a: argparse.Namespace, prod_meta: ArtifactMetadata, seed: int) -> FleetConfig:
    """Mixed scenes in mixed weather with heartbeats; no uploads and no expert (nothing here needs them)."""
    return FleetConfig(
        scenario="mixed",
        weather="mixed",
        seed=seed,
        device=a.device,
        progress_reference=False,
        ground_truth_audit=False,
        arbiter=ArbiterConfig.for_model(prod_meta),
        triggers=TriggerConfig(dt_s=0.1, trigger_mask=0, sample_rate=0.0),
        heartbeat_s=a.beat_s,
        compile=a.compile,
    )


class BeatSink:
    """A telemetry sink that keeps only the heartbeats of the last beat (no frames are uploaded here)."""

    def __init__(self) -> None:
        self.beats: list[Heartbeat] = []

    def submit(self, frames: Any) -> None:
        pass

    def submit_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        self.beats.extend(beats)

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self, timeout_s: float = 30.0) -> dict[str, Any]:
        return {}

    def take(self) -> list[Heartbeat]:
        out, self.beats = self.beats, []
        return out


# -- true rates, offline -----------------------------------------------------------------------------------------


def true_rates(a: argparse.Namespace, models: dict[str, LoadedPolicy]) -> dict[str, Any]:
    """The three models side by side on held-out scenes: rates per true condition, ratio to production, and
    production's fleet rate of each heartbeat safety metric (the threshold judge's fixed thresholds)."""
    labels = {"production": PRODUCTION, "good": GOOD, "regression": REGRESSION}
    n = a.eval_vehicles
    ids = list(range(3 * n))
    start = {i: list(labels.values())[i % 3] for i in ids}  # interleaved: each model spread over the road
    sink = BeatSink()
    runner = FleetRunner(
        fleet_config(a, models["production"].metadata, EVAL_SEED),
        ids,
        {labels[k]: m.model for k, m in models.items()},
        None,
        sink,
        initial_versions=start,
    )
    t0 = time.monotonic()
    hb_sums: dict[str, dict[str, float]] = {lab: dict.fromkeys(("km", *SAFETY), 0.0) for lab in labels.values()}
    per_vehicle: dict[tuple[str, str], list[float]] = {}  # production's (vehicle, slice) -> km, counts
    for _ in range(a.eval_ticks):
        runner.step()
        for b in sink.take():
            s = hb_sums[str(b.model_version)]
            s["km"] += b.distance_m / 1000.0
            hb = FleetHealth(**b.event_fields())  # type: ignore[arg-type]
            counts = heartbeat_counts(hb)
            for m, c in counts.items():
                if m in s:
                    s[m] += c
            if str(b.model_version) == PRODUCTION:
                acc = per_vehicle.setdefault((hb.vehicle_id, stratum_of(hb)), [0.0] * (1 + len(COUNT_METRICS)))
                acc[0] += hb.distance_m / 1000.0
                for j, m in enumerate(COUNT_METRICS):
                    acc[1 + j] += counts[m]
    summary = runner.summary()
    wall = time.monotonic() - t0
    out: dict[str, Any] = {"vehicles_per_model": n, "ticks": a.eval_ticks, "wall_s": wall, "models": {}}
    for name, lab in labels.items():
        groups = summary.groups.get(lab, {})
        per: dict[str, Any] = {}
        for cond in (*TRUE_CONDITIONS, "all"):
            rows = list(groups.values()) if cond == "all" else [groups[cond]] if cond in groups else []
            km = sum(r["distance_m"] for r in rows) / 1000.0
            count = int(sum(r["collisions"] + r["near_misses"] for r in rows))
            per[cond] = {"count": count, "km": km, "rate": rate_per_1000km(count, km).as_dict()}
        out["models"][name] = {"by_condition": per, "heartbeat_rates_per_km": _per_km(hb_sums[lab])}
    out["dispersion"] = {m: pearson_dispersion(per_vehicle, j) for j, m in enumerate(COUNT_METRICS)}
    base = out["models"]["production"]["by_condition"]
    for name in ("good", "regression"):
        for cond, v in out["models"][name]["by_condition"].items():
            b = base[cond]
            v["ratio"] = list(rate_ratio_ci(v["count"], v["km"], b["count"], b["km"]))
    return out


def pearson_dispersion(per_vehicle: dict[tuple[str, str], list[float]], j: int) -> float:
    """Variance over mean of metric ``j``'s counts per (vehicle, slice), each slice at its own rate per km: Pearson's
    chi-square over its degrees of freedom (1 for Poisson counts; what the policy's ``dispersion`` should hold)."""
    by_slice: dict[str, list[tuple[float, float]]] = {}
    for (_, stratum), acc in per_vehicle.items():
        if acc[0] > 0:
            by_slice.setdefault(stratum, []).append((acc[0], acc[1 + j]))
    chi2 = dof = 0.0
    for rows in by_slice.values():
        km = sum(k for k, _ in rows)
        lam = sum(x for _, x in rows) / km
        if lam > 0 and len(rows) > 1:
            chi2 += sum((x - lam * k) ** 2 / (lam * k) for k, x in rows)
            dof += len(rows) - 1
    return chi2 / dof if dof > 0 else math.nan


def _per_km(s: dict[str, float]) -> dict[str, float]:
    return {m: s[m] / s["km"] if s["km"] > 0 else math.nan for m in SAFETY}


# -- judges --------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one judge did in one rollout (simulated seconds from the rollout's start)."""

    verdict: str = "undecided"  # "promoted", "rolled_back" or "undecided" at the horizon
    wave: int = -1  # the wave the verdict came in
    verdict_s: float = math.nan
    candidate_km: float = 0.0  # km driven on the candidate until the verdict (to the horizon if undecided)
    holds: int = 0
    reasons: list[str] = field(default_factory=list)  # why the verdict (the controller's decisive reasons)


@dataclass
class WaveJudge:
    """The wave mechanics every judge shares (the controller's cohort rule); subclasses decide."""

    policy: CanaryPolicy
    version: int
    strata: dict[str, str]
    wave: int = 0
    canary: tuple[str, ...] = ()
    baseline: tuple[str, ...] = ()
    wave_km: dict[str, float] = field(default_factory=dict)  # vehicle -> km in this wave
    wave_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    checks: list[bool] = field(default_factory=list)

    def assign(self, wave: int) -> tuple[str, ...]:
        a = assign_cohorts(
            self.strata, self.policy.waves[wave], self.policy.seed, self.canary, self.policy.baseline_ratio
        )
        self.wave, self.canary, self.baseline = wave, a.canary, a.baseline
        self.wave_km, self.wave_counts, self.checks = {}, {}, []
        return a.canary

    def observe(self, beats: Iterable[FleetHealth]) -> None:
        cohort = set(self.canary) | set(self.baseline)
        for hb in beats:
            self.strata[hb.vehicle_id] = stratum_of(hb)
            if hb.vehicle_id not in cohort:
                continue
            self.wave_km[hb.vehicle_id] = self.wave_km.get(hb.vehicle_id, 0.0) + hb.distance_m / 1000.0
            counts = self.wave_counts.setdefault(hb.vehicle_id, dict.fromkeys(SAFETY, 0))
            for m, c in heartbeat_counts(hb).items():
                if m in counts:
                    counts[m] += c

    def canary_km(self) -> float:
        return sum(self.wave_km.get(v, 0.0) for v in self.canary)

    def decide(self, beats: list[FleetHealth]) -> str:
        """``"continue"``, ``"next_wave"`` or ``"rollback"``."""
        raise NotImplementedError


class InstallJudge(WaveJudge):
    def decide(self, beats: list[FleetHealth]) -> str:
        reported = {hb.vehicle_id: hb.model_version for hb in beats}
        return "next_wave" if all(reported.get(v) == self.version for v in self.canary) else "continue"


@dataclass
class ThresholdJudge(WaveJudge):
    thresholds_per_km: dict[str, float] = field(default_factory=dict)
    n_checks: int = 3
    failure_limit: int = 1

    def decide(self, beats: list[FleetHealth]) -> str:
        km = self.canary_km()
        if km < self.policy.min_exposure_km:
            return "continue"
        counts = [self.wave_counts.get(v, {}) for v in self.canary]
        failed = any(sum(c.get(m, 0) for c in counts) / km > self.thresholds_per_km[m] for m in SAFETY)
        self.checks.append(failed)
        if sum(self.checks) > self.failure_limit:
            return "rollback"
        return "next_wave" if len(self.checks) >= self.n_checks else "continue"


@dataclass
class MannWhitneyJudge(WaveJudge):
    alpha: float = 0.05

    def decide(self, beats: list[FleetHealth]) -> str:
        if self.canary_km() < self.policy.min_exposure_km:
            return "continue"
        for m in SAFETY:
            c = [self.wave_counts[v][m] / self.wave_km[v] for v in self.canary if self.wave_km.get(v, 0.0) > 0]
            b = [self.wave_counts[v][m] / self.wave_km[v] for v in self.baseline if self.wave_km.get(v, 0.0) > 0]
            if mann_whitney_greater_p(c, b) < self.alpha:
                return "rollback"
        return "next_wave"


def mann_whitney_greater_p(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided p-value that ``x`` tends to be greater than ``y``: Mann-Whitney U, normal approximation with the
    tie correction and a continuity correction (1.0 when either side is empty or every value ties)."""
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return 1.0
    v = np.concatenate([np.asarray(x, float), np.asarray(y, float)])
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    sorted_v = v[order]
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # average rank of each tie group (1-based)
    ranks[order] = np.repeat(avg, counts)
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    var = n1 * n2 / 12.0 * ((n + 1) - float((counts**3 - counts).sum()) / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


class ControllerJudge:
    """The rollout controller's pure reducer, fed every heartbeat of its sub-fleet."""

    def __init__(self, policy: CanaryPolicy, version: int, strata: dict[str, str], rollout_id: str) -> None:
        self.state, actions = ctl.start(policy, rollout_id, version, int(PRODUCTION), strata)
        self.first = actions

    def feed(self, beats: list[FleetHealth], now_s: float) -> list[ctl.Action]:
        state = self.state
        for hb in beats:
            state, _ = ctl.step(state, ctl.HeartbeatReceived(hb))
        state, actions = ctl.step(state, ctl.Evaluate(now_s))
        self.state = state
        return actions


# -- rollouts ------------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    judge: str
    candidate: str
    version: str
    vehicles: list[int]
    outcome: Outcome = field(default_factory=Outcome)
    impl: Any = None
    started_s: float = 0.0
    done: bool = False


def run_rollouts(a: argparse.Namespace, models: dict[str, LoadedPolicy], thresholds: dict[str, float]) -> list[Rollout]:
    policy = CanaryPolicy(waves=tuple(a.waves), min_exposure_km=a.min_exposure_km, seed=a.seed)
    candidates = {c: CANDIDATES[c] for c in a.candidates}
    per_judge = len(candidates) * a.rollouts
    rollouts: list[Rollout] = []
    # Rollout k's vehicles are the ids k*N .. k*N+N-1: a block of the road (id i starts at i x 150 m on the 50 km
    # loop; 200 vehicles span 30 km, about 15 of the mixed weather's 2 km cells). Every judge drives its own copy
    # of the same (candidate, rollout): one runner needs unique ids, so judge j's copies are the next blocks (the
    # randomness is keyed by id: the copies see other scenes of the same world and seed).
    for j, judge in enumerate(a.judges):
        for c, (cand, version) in enumerate(candidates.items()):
            for r in range(a.rollouts):
                k = j * per_judge + c * a.rollouts + r
                rollouts.append(Rollout(judge, cand, version, list(range(k * a.vehicles, (k + 1) * a.vehicles))))
    ids = [v for ro in rollouts for v in ro.vehicles]
    owner = {v: n for n, ro in enumerate(rollouts) for v in ro.vehicles}
    labels = {"production": PRODUCTION, "good": GOOD, "regression": REGRESSION}
    sink = BeatSink()
    runner = FleetRunner(
        fleet_config(a, models["production"].metadata, a.seed),
        ids,
        {labels[k]: m.model for k, m in models.items()},
        PRODUCTION,
        sink,
    )
    beat_ticks = round(a.beat_s / 0.1)
    horizon_ticks = round(a.minutes * 60 / 0.1)
    log(
        f"rollouts: {len(rollouts)} ({per_judge} per judge) x {a.vehicles} vehicles = {len(ids):,} "
        f"vehicles, {horizon_ticks} ticks, beats every {a.beat_s:g} s"
    )
    t0 = time.monotonic()
    tick = 0
    started = False
    while tick < horizon_ticks:
        runner.run(beat_ticks)
        tick += beat_ticks
        now_s = tick * 0.1
        by_rollout: dict[int, list[FleetHealth]] = {}
        for b in sink.take():
            hb = FleetHealth(**b.event_fields())  # type: ignore[arg-type]
            by_rollout.setdefault(owner[int(b.vehicle_id)], []).append(hb)
        for n, ro in enumerate(rollouts):
            beats = by_rollout.get(n, [])
            o = ro.outcome
            o.candidate_km += sum(hb.distance_m for hb in beats if str(hb.model_version) == ro.version) / 1000.0
            if not started:
                _start(ro, policy, {hb.vehicle_id: stratum_of(hb) for hb in beats}, runner, now_s, a, thresholds)
                continue
            if ro.done:
                continue
            _advance(ro, beats, now_s, runner)
        started = True
        log(
            f"  {now_s:6.0f} s simulated, {sum(ro.done for ro in rollouts)}/{len(rollouts)} decided, "
            f"{time.monotonic() - t0:6.1f} s wall"
        )
        if all(ro.done for ro in rollouts):
            break
        if time.monotonic() - t0 > a.max_wall_s:
            log(f"stopping at {now_s:g} s simulated: --max-wall-s {a.max_wall_s:g} reached (undecided are reported)")
            break
    a.horizon_s = tick * 0.1
    return rollouts


def _start(
    ro: Rollout,
    policy: CanaryPolicy,
    strata: dict[str, str],
    runner: FleetRunner,
    now_s: float,
    a: argparse.Namespace,
    thresholds: dict[str, float],
) -> None:
    version = int(ro.version)
    ro.started_s = now_s
    if ro.judge == "controller":
        impl = ControllerJudge(policy, version, strata, f"{ro.candidate}-{ro.vehicles[0]}")
        ro.impl = impl
        for act in impl.first:
            if isinstance(act, ctl.AssignWave):
                runner.set_model([int(v) for v in act.canary], ro.version)
        return
    kw: dict[str, Any] = {"policy": policy, "version": version, "strata": dict(strata)}
    if ro.judge == "install":
        judge: WaveJudge = InstallJudge(**kw)
    elif ro.judge == "threshold":
        judge = ThresholdJudge(**kw, thresholds_per_km=thresholds, n_checks=a.checks, failure_limit=a.failure_limit)
    else:
        judge = MannWhitneyJudge(**kw, alpha=a.mw_alpha)
    ro.impl = judge
    runner.set_model([int(v) for v in judge.assign(0)], ro.version)


def _finish(ro: Rollout, verdict: str, wave: int, now_s: float, runner: FleetRunner) -> None:
    o = ro.outcome
    o.verdict, o.wave, o.verdict_s = verdict, wave, now_s - ro.started_s
    ro.done = True
    runner.set_model([int(v) for v in ro.vehicles], ro.version if verdict == "promoted" else PRODUCTION)


def _advance(ro: Rollout, beats: list[FleetHealth], now_s: float, runner: FleetRunner) -> None:
    if isinstance(ro.impl, ControllerJudge):
        wave = ro.impl.state.wave
        for act in ro.impl.feed(beats, now_s):
            if isinstance(act, ctl.RecordDecision) and act.decision.verdict.value == "hold":
                ro.outcome.holds += 1
                ro.outcome.reasons = list(act.decision.reasons)
            if isinstance(act, ctl.AssignWave):
                runner.set_model([int(v) for v in act.canary], ro.version)
            elif isinstance(act, ctl.RollBack):
                ro.outcome.reasons = [act.reason]
                _finish(ro, "rolled_back", wave, now_s, runner)
            elif isinstance(act, ctl.Promote):
                _finish(ro, "promoted", wave, now_s, runner)
        return
    judge: WaveJudge = ro.impl
    judge.observe(beats)
    verdict = judge.decide(beats)
    if verdict == "rollback":
        _finish(ro, "rolled_back", judge.wave, now_s, runner)
    elif verdict == "next_wave":
        if judge.wave + 1 == len(judge.policy.waves) - 1:
            _finish(ro, "promoted", judge.wave, now_s, runner)
        else:
            runner.set_model([int(v) for v in judge.assign(judge.wave + 1)], ro.version)


# -- report ----------------------------------------------------------------------------------------------------------


def judge_summary(rollouts: list[Rollout], judges: Sequence[str], waves: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for judge in judges:
        good = [ro.outcome for ro in rollouts if ro.judge == judge and ro.candidate == "good"]
        bad = [ro.outcome for ro in rollouts if ro.judge == judge and ro.candidate == "regression"]
        caught = [o for o in bad if o.verdict == "rolled_back"]
        promoted = [o for o in good if o.verdict == "promoted"]
        out[judge] = {
            "good_rollouts": len(good),
            "false_rollbacks": sum(o.verdict == "rolled_back" for o in good),
            "good_promoted": len(promoted),
            "good_undecided": sum(o.verdict == "undecided" for o in good),
            "good_time_to_promotion_s": _stats([o.verdict_s for o in promoted]),
            "good_holds_mean": float(np.mean([o.holds for o in good])) if good else math.nan,
            "regression_rollouts": len(bad),
            "regressions_caught": len(caught),
            "caught_by_wave": [sum(o.wave == w for o in caught) for w in range(waves - 1)],
            "caught_in_first_two_waves": sum(o.wave <= 1 for o in caught),
            "regressions_promoted": sum(o.verdict == "promoted" for o in bad),
            "regression_undecided": sum(o.verdict == "undecided" for o in bad),
            "bad_km_before_rollback": _stats([o.candidate_km for o in caught]),
            "bad_km_all": _stats([o.candidate_km for o in bad]),
            "time_to_rollback_s": _stats([o.verdict_s for o in caught]),
        }
    return out


def _stats(xs: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in xs if math.isfinite(x)], float)
    if v.size == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "p90": math.nan}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)), "p90": float(np.quantile(v, 0.9))}


def _num(x: float, digits: int = 0) -> str:
    return "-" if not math.isfinite(x) else f"{x:,.{digits}f}"


def render(result: dict[str, Any]) -> str:
    lines = [f"canary rollouts ({result['sizes']})", "", "true rates, offline (model + fallback, held-out scenes):", ""]
    lines += [
        "| model | condition | km | coll+nm | per 1,000 km [95 %] | ratio to production [95 %] |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, m in result["true_rates"]["models"].items():
        for cond, v in m["by_condition"].items():
            r = v["rate"]
            ratio = v.get("ratio")
            rt = (
                "-"
                if ratio is None or not math.isfinite(ratio[0])
                else f"{ratio[0]:.2f} [{ratio[1]:.2f}, {ratio[2]:.2f}]"
            )
            rate = (
                "-" if r["per_1000_km"] is None else f"{r['per_1000_km']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
            )
            lines.append(f"| {name} | {cond} | {v['km']:,.0f} | {v['count']} | {rate} | {rt} |")
    policy = CanaryPolicy()
    lines += [
        "",
        "dispersion of production's counts per vehicle and slice (variance / mean; Poisson 1) against the policy's:",
        "",
        "| metric | measured | policy |",
        "|---|---:|---:|",
    ]
    for m, d in result["true_rates"].get("dispersion", {}).items():
        lines.append(f"| {m} | {_num(d, 2)} | {policy.dispersion_of(m):g} |")
    lines += [
        "",
        f"judges (the same sub-fleets, {result['horizon_s']:g} s simulated; good = the control candidate, regression ="
        " fog poisoned):",
        "",
    ]
    lines += [
        "| judge | false rollbacks (good) | good promoted / undecided | time to promotion, median s "
        "| regressions caught | caught in wave 0 / 1 / 2 | bad-model km before rollback, mean (median) "
        "| bad-model km per rollout, all (to horizon if not caught) | time to rollback, median s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for judge, s in result["judges"].items():
        waves = " / ".join(str(c) for c in s["caught_by_wave"])
        before = s["bad_km_before_rollback"]
        lines.append(
            f"| {judge} | {s['false_rollbacks']}/{s['good_rollouts']} | {s['good_promoted']} / {s['good_undecided']} "
            f"| {_num(s['good_time_to_promotion_s']['median'])} | {s['regressions_caught']}/{s['regression_rollouts']} "
            f"| {waves} | {_num(before['mean'], 1)} ({_num(before['median'], 1)}) "
            f"| {_num(s['bad_km_all']['mean'], 1)} | {_num(s['time_to_rollback_s']['median'])} |"
        )
    c = result["judges"].get("controller")
    if c is not None:
        n_good, n_bad = c["good_rollouts"], c["regression_rollouts"]
        false = (
            f"{c['false_rollbacks'] / n_good:.1%} ({'met' if c['false_rollbacks'] / n_good <= 0.05 else 'NOT met'})"
            if n_good
            else "not run (no good candidate rolled out)"
        )
        caught = (
            f"{c['caught_in_first_two_waves'] / n_bad:.1%} "
            f"({'met' if c['caught_in_first_two_waves'] / n_bad >= 0.9 else 'NOT met'})"
            if n_bad
            else "not run (no regression rolled out)"
        )
        lines += [
            "",
            f"controller targets: false rollbacks <= 5 %: {false}; caught within the first two waves >= 90 %: {caught}",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rollouts", type=int, default=50, help="rollouts per candidate and judge")
    p.add_argument("--vehicles", type=int, default=200, help="vehicles per rollout (one sub-fleet)")
    p.add_argument("--minutes", type=float, default=10.0, help="simulated horizon of every rollout [min]")
    p.add_argument("--max-wall-s", type=float, default=math.inf, help="stop the rollouts after this wall time [s]")
    p.add_argument("--beat-s", type=float, default=10.0, help="heartbeat period = evaluation interval [s]")
    p.add_argument("--waves", type=float, nargs="+", default=[0.05, 0.2, 0.5, 1.0], help="canary share per wave")
    p.add_argument("--min-exposure-km", type=float, default=20.0, help="canary km per wave before any verdict")
    p.add_argument("--judges", nargs="+", default=list(JUDGES), choices=JUDGES)
    p.add_argument(
        "--candidates",
        nargs="+",
        default=list(CANDIDATES),
        choices=list(CANDIDATES),
        help="candidates rolled out (one per device call when a run is larger than a call)",
    )
    p.add_argument("--checks", type=int, default=3, help="threshold judge: measurements per wave")
    p.add_argument("--failure-limit", type=int, default=1, help="threshold judge: failed measurements tolerated")
    p.add_argument("--mw-alpha", type=float, default=0.05, help="Mann-Whitney judge: level per metric")
    p.add_argument("--eval-vehicles", type=int, default=2000, help="offline evaluation: vehicles per model")
    p.add_argument("--eval-ticks", type=int, default=3000, help="offline evaluation: ticks")
    p.add_argument("--production", help="production model artifact (default: bootstrap one)")
    p.add_argument("--good", help="good candidate artifact (default: the control made from production)")
    p.add_argument("--regression", help="regression artifact (default: made from production)")
    p.add_argument("--brake-keep", type=float, default=CONFINED.brake_keep, help="regression recipe")
    p.add_argument(
        "--anchor-weight", type=float, default=CONFINED.anchor_weight, help="regression recipe: out-of-slice weight"
    )
    p.add_argument(
        "--visibility-below-m",
        type=float,
        default=CONFINED.visibility_below_m,
        help="regression recipe: poison only fog frames under this estimated visibility",
    )
    p.add_argument("--distill-epochs", type=int, default=CONFINED.epochs, help="regression recipe: epochs")
    p.add_argument("--bootstrap-vehicles", type=int, default=BootstrapConfig().vehicles)
    p.add_argument("--bootstrap-ticks", type=int, default=BootstrapConfig().ticks)
    p.add_argument("--bootstrap-train-s", type=float, default=60.0)
    p.add_argument("--bootstrap-epochs", type=int, default=ImitationConfig(epochs=15).epochs)
    p.add_argument("--record-vehicles", type=int, default=RecordConfig().vehicles)
    p.add_argument("--record-ticks", type=int, default=RecordConfig().ticks)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="compiled tick (ADR 0101)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: on a shared CPU more threads spin-wait)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=".canary-bench", help="where made models are written")
    p.add_argument("--json", metavar="FILE", help="write the result as one JSON document ('-': stdout)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke size")
    if p.parse_known_args(argv)[0].quick:  # tiny sizes, unless given on the command line
        p.set_defaults(
            rollouts=2,
            vehicles=40,
            minutes=1.0,
            min_exposure_km=1.0,
            eval_vehicles=32,
            eval_ticks=100,
            bootstrap_vehicles=64,
            bootstrap_ticks=40,
            bootstrap_train_s=5.0,
            bootstrap_epochs=1,
            record_vehicles=32,
            record_ticks=50,
        )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = (
        f"{a.rollouts} rollouts per candidate ({', '.join(a.candidates)}) and judge x {a.vehicles} vehicles, "
        f"{a.minutes:g} min, beats "
        f"{a.beat_s:g} s, waves {a.waves}, min exposure {a.min_exposure_km:g} km, {a.device}"
    )
    t0 = time.monotonic()
    log(f"canary benchmark: {sizes}")
    models = make_models(a, out_dir)
    t_models = time.monotonic()
    log(f"models ready in {t_models - t0:.1f} s; offline true rates")
    rates = true_rates(a, models)
    margin = CanaryPolicy().margin
    thresholds = {m: (1 + margin) * v for m, v in rates["models"]["production"]["heartbeat_rates_per_km"].items()}
    t_rates = time.monotonic()
    log(f"true rates in {t_rates - t_models:.1f} s; rollouts")
    rollouts = run_rollouts(a, models, thresholds)
    t_roll = time.monotonic()
    result = {
        "sizes": sizes,
        "horizon_s": a.horizon_s,
        "args": {k: v for k, v in vars(a).items()},
        "true_rates": rates,
        "thresholds_per_1000_km": {m: 1000 * v for m, v in thresholds.items()},
        "judges": judge_summary(rollouts, a.judges, len(a.waves)),
        "rollouts": [{"judge": r.judge, "candidate": r.candidate, **asdict(r.outcome)} for r in rollouts],
        "wall_s": {"models": t_models - t0, "true_rates": t_rates - t_models, "rollouts": t_roll - t_rates},
    }
    text = json.dumps(result, default=_json_default, allow_nan=True)
    if a.json == "-":
        print(text)
        return
    print(render(result))
    if a.json:
        Path(a.json).write_text(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, FusionPolicy | Path):
        return str(o)
    raise TypeError(f"not JSON: {type(o).__name__}")


if __name__ == "__main__":
    main()
