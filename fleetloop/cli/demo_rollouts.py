"""The demo's rollouts: a model goes out in canary waves while the fleet drives, judged by the ota-controller.

    canary     `fleetloop ota rollout NAME V --policy`      start_rollout, while `sim run --ota` drives (step_drive);
                                                           wait_rollout for the outcome
    degraded   pipelines.regression, `model promote`,       one_slice_regression of production, registered and
               then the same rollout                        staged, then the same rollout

Both are the command's own functions: ``start_rollout`` refuses, signs, asks the controller and starts it as
`ota rollout` does; the controller (a service process) judges the waves on the fleet's heartbeats and carries out
the promotion or the rollback. The drive lasts until the rollout's outcome, then until every vehicle is heard on
the outcome's version (the fleet installs what the outcome sends it, on a worker thread, while the simulation runs
faster than the wall clock), then ``SETTLE_S`` of simulated driving; at least the story's drive,
``ROLLOUT_DRIVE_MIN`` at most.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fleetloop.cli.demo_steps import ACTOR, BETTER_CANDIDATE_RULE, DemoPlan, Say, better_candidate, step_drive
from fleetloop.cli.ota import start_rollout, wait_rollout
from fleetloop.edge_agent.telemetry import vehicle_key
from fleetloop.platform.canary.operator import history_view
from fleetloop.platform.canary.policy import POISSON_DISPERSION, CanaryPolicy
from fleetloop.platform.canary.rollouts import RolloutRecord, RolloutStore
from fleetloop.platform.errors import NotFoundError
from fleetloop.platform.registry import Stage, open_registry
from fleetloop.platform.settings import Settings

__all__ = [
    "DEMO_POLICY",
    "decisive_evidence",
    "degraded_model",
    "demo_policy",
    "evidence_text",
    "rollout_drive",
    "step_canary",
    "step_degraded",
]

HEARTBEAT_S = 2.0  # [simulated s] between a vehicle's heartbeats: a small fleet gives the controller evidence sooner
SETTLE_S = 30.0  # [simulated s] driven after the outcome: the fleet installs what it was sent and drives on it
ROLLOUT_DRIVE_MIN = 6.0  # [simulated min] the longest a rollout drive lasts
DEMO_POLICY = CanaryPolicy(  # demo-sized: a few dozen vehicles and minutes, not a fleet and days
    waves=(0.25, 0.5, 1.0),
    min_exposure_km=0.5,
    margin=0.5,
    alpha=0.2,
    # A fog regression of the trained production collides (259 collisions per 1,000 km in fog against 0, a full
    # demo), one of the genesis model leans on the fallback (4.7x its activations, a quick one): judged on near
    # misses and fallback activations alone the first was promoted, on collisions and near misses the second.
    metrics=("collisions", "near_misses", "fallback_activations"),
    counter_metrics=(),
    progress_min_ratio=0.5,  # a few vehicles' progress depends on their traffic more than on their model
    progress_rollback_ratio=0.3,
    hold_min_events=3,  # a hold needs a few canary events, not one against none
    # Counts read as Poisson, as before ADR 0191: the quick demo's regression is 4.7x production's fallback
    # activations, which the defaults' dispersion (5) leaves undecided within a rollout drive. Like alpha 0.2, this
    # trades a demo candidate's chance of a false rollback for a short drive.
    dispersion=POISSON_DISPERSION,
)
# The full demo's fleet drives a wave's 0.5 km in seconds, before a fog regression's first collision: its waves
# passed on the absence of evidence and the degraded model was promoted (171 collisions per 1,000 km in fog
# against 0). At 25 matched km a wave has seen several of its events; the quick demo's short drive keeps 0.5 km.
FULL_DEMO_MIN_EXPOSURE_KM = 25.0


FULL_DEMO_VEHICLES = 64  # the full plan's fleet, which drives 25 km a wave within the rollout drive


def demo_policy(plan: DemoPlan) -> CanaryPolicy:
    """The demo's policy, sized to its fleet: the full fleet's waves need 25 km; the quick plan and smaller fleets
    (``--vehicles``) keep 0.5 km, as they could not drive 25 km a wave within the rollout drive."""
    if plan.quick or plan.vehicles < FULL_DEMO_VEHICLES:
        return DEMO_POLICY
    return replace(DEMO_POLICY, min_exposure_km=FULL_DEMO_MIN_EXPOSURE_KM)


REGRESSION_CONDITION = "fog"  # the regression procedure's defaults: no braking and no hazard kept in this slice
_DONE = ("promoted", "rolled_back", "aborted")


def _policy_text(p: CanaryPolicy) -> str:
    return (
        f"waves {', '.join(f'{w:.0%}' for w in p.waves)}; {p.min_exposure_km:g} matched km per wave; margin "
        f"{p.margin:.0%}; alpha {p.alpha:g} on {', '.join(p.metrics)}"
    )


def rollout_drive(
    settings: Settings,
    plan: DemoPlan,
    seed: int,
    fleet_tag: str,
    on_tick: Callable[[int, int], None],
    say: Say,
    version: str,
    policy: CanaryPolicy,
    in_fog: bool = False,
) -> dict[str, Any]:
    """Roll ``version`` out (`ota rollout`) while the fleet drives (`sim run --ota`, starting on production) until
    the outcome has settled; returns the drive's summary with the rollout's history, its waves on the drive's
    simulated clock and the version each vehicle's last heartbeat reported."""
    name = settings.model_name
    started = start_rollout(settings, name, int(version), policy)
    rollout_id = started["rollout_id"]
    store = RolloutStore(settings.state_dir)
    clock: list[tuple[float, int]] = []  # (wall s, ticks done): wall times of waves -> simulated time
    settle: dict[str, float] = {}  # ticks done ("outcome", "from") and wall times [s] ("..._wall")

    def ticks(done: int, total: int) -> None:
        clock.append((time.time(), done))
        on_tick(done, total)

    def outcome_settled() -> bool:
        if not clock:
            return False
        try:
            rec = store.load(rollout_id)
        except NotFoundError:  # the controller has not started it yet: no vehicle heard
            return False
        if rec.phase not in _DONE or rec.todo:
            st = rec.controller
            if st is not None:
                say(f"rollout {rollout_id}: {rec.phase}, wave {st.wave + 1}, {st.wave_km:.1f} matched km")
            return False
        settle.setdefault("outcome", clock[-1][1])
        settle.setdefault("outcome_wall", time.time())
        if "from" not in settle:
            # The fleet installs on a worker thread while the simulation runs faster than the wall clock: the
            # settle starts once every vehicle of the drive is heard on the outcome's version, not at the outcome.
            target = rec.canary_version if rec.phase == "promoted" else rec.production_version
            ends_on = _fleet_ends_on(store, fleet_tag, plan.vehicles)
            if ends_on.get(str(target), 0) < plan.vehicles:
                say(f"rollout {rollout_id}: {rec.phase}; the fleet installs v{target} ({_ends_on_text(ends_on)})")
                return False
            settle["from"] = clock[-1][1]
            settle["from_wall"] = time.time()
            say(f"rollout {rollout_id}: {rec.phase}; the whole fleet runs v{target}")
        # and at least the story's drive, so that the rates on the new model cover the fog as "before" does
        return clock[-1][1] - settle["from"] >= SETTLE_S / 0.1 and clock[-1][1] >= plan.minutes * 60.0 / 0.1

    drive = step_drive(
        settings,
        plan,
        seed,
        fleet_tag,
        ticks,
        installs=version,
        minutes=max(plan.minutes, ROLLOUT_DRIVE_MIN),
        heartbeat_s=HEARTBEAT_S,
        stop_when=outcome_settled,
        in_fog=in_fog,
    )
    rec = wait_rollout(store, rollout_id, 60.0, say)  # the drive ended at its longest: the controller may be acting
    dt_s = drive["simulated_s"] / max(clock[-1][1], 1) if clock else 0.1
    drive["rollout"] = {
        "rollout_id": rollout_id,
        "outcome": rec.phase,
        "policy": policy.to_dict(),
        "history": history_view([rec])[0],
        "waves": _waves_on_sim_clock(rec, clock, dt_s),
        "fleet_ends_on": _fleet_ends_on(store, fleet_tag, plan.vehicles),
        # From the outcome to the whole fleet heard on its version: simulated and wall seconds (None: never).
        "installed_after_s": round((settle["from"] - settle["outcome"]) * dt_s, 1) if "from" in settle else None,
        "installed_after_wall_s": (
            round(settle["from_wall"] - settle["outcome_wall"], 1) if "from" in settle else None
        ),
    }
    return drive


def _waves_on_sim_clock(rec: RolloutRecord, clock: list[tuple[float, int]], dt_s: float) -> list[dict[str, Any]]:
    """Each wave's start (and the outcome) at the simulated time the fleet had driven when it happened."""

    def sim_s(wall_s: float) -> float:
        done = next((d for w, d in clock if w >= wall_s), clock[-1][1] if clock else 0)
        return round(done * dt_s, 1)

    fractions = rec.policy.waves
    out = [
        {"t_s": sim_s(w), "label": f"wave {i + 1} ({fractions[min(i, len(fractions) - 1)]:.0%})"}
        for i, w in enumerate(rec.wave_started_at_s)
    ]
    ended = [
        e["at_s"]
        for e in rec.log
        if e["text"].startswith("registry:") and ("production" in e["text"] or "rejected" in e["text"])
    ]
    if ended:
        out.append({"t_s": sim_s(ended[0]), "label": rec.phase.replace("_", " ")})
    return out


def _fleet_ends_on(store: RolloutStore, fleet_tag: str, vehicles: int) -> dict[str, int]:
    """Version -> vehicles of this drive whose last believed heartbeat reported it."""
    view = store.load_fleet().vehicles
    out: dict[str, int] = {}
    for i in range(vehicles):
        row = view.get(vehicle_key(i, fleet_tag))
        key = "not heard" if row is None else str(row[1])
        out[key] = out.get(key, 0) + 1
    return out


def _verdicts(drive: dict[str, Any]) -> str:
    waves = drive["rollout"]["history"]["waves"]
    return "; ".join(f"wave {w['wave']} ({w['fraction']:.0%}) {w['verdict'].replace('_', ' ')}" for w in waves)


def _ends_on(drive: dict[str, Any]) -> str:
    r = drive["rollout"]
    after = r.get("installed_after_s")
    when = f", all heard on it {after:g} simulated s after the outcome" if after is not None else ""
    return _ends_on_text(r["fleet_ends_on"]) + when


def _ends_on_text(ends_on: dict[str, int]) -> str:
    return ", ".join(f"{n} on v{v}" if v != "not heard" else f"{n} not heard" for v, n in ends_on.items())


def step_canary(
    settings: Settings,
    plan: DemoPlan,
    seed: int,
    candidates: list[dict[str, Any]],
    fleet_tag: str,
    on_tick: Callable[[int, int], None],
    say: Say,
) -> dict[str, Any]:
    """The better candidate (:data:`BETTER_CANDIDATE_RULE`) rolled out in canary waves while the fleet drives."""
    best = better_candidate(candidates)
    if best is None:
        return {
            "promoted": None,
            "rule": BETTER_CANDIDATE_RULE,
            "line": "no candidate passed validation: nothing to roll out",
        }
    version = str(best["version"])
    previous = open_registry(settings).production(settings.model_name).version
    policy = demo_policy(plan)
    say(f"v{version}: `ota rollout` ({_policy_text(policy)})")
    drive = rollout_drive(settings, plan, seed, fleet_tag, on_tick, say, version, policy)
    r = drive["rollout"]
    promoted = version if r["outcome"] == "promoted" else None
    drive.update(
        promoted=promoted,
        previous=previous,
        origin=best["origin"],
        rule=BETTER_CANDIDATE_RULE,
        line=f"v{version} ({best['origin']}, the better candidate by the rule) over v{previous}: {_verdicts(drive)}: "
        f"{r['outcome'].replace('_', ' ')}; the fleet ends {_ends_on(drive)}; {drive['line']}",
    )
    return drive


def degraded_model(settings: Settings, quick: bool, seed: int, say: Say) -> str:
    """A copy of production made worse in fog only by the documented procedure (``pipelines.regression``),
    registered and staged by the operator (it never went through validate: the canary is what must catch it)."""
    # Imported here: the procedure and the artifact load torch (~6 s measured) that no other `fleetloop` command
    # of this module's importers needs at start.
    from fleetloop.edge_agent.model_artifact import load_artifact, save_artifact
    from fleetloop.pipelines.regression import RecordConfig, RegressionConfig, one_slice_regression, regression_metadata

    registry = open_registry(settings)
    name = settings.model_name
    parent_version = registry.production(name).version
    record = RecordConfig(vehicles=16 if quick else 64, ticks=100 if quick else 200, keep_every=2)
    config = RegressionConfig()
    with tempfile.TemporaryDirectory(prefix="fleetloop-degraded-") as tmp:
        loaded = load_artifact(registry.download_model(name, parent_version, Path(tmp) / "parent"))
        say(f"making a copy of v{parent_version} that brakes less and sees fewer hazards in fog only")
        model = one_slice_regression(
            loaded.model, condition=REGRESSION_CONDITION, seed=seed, config=config, record=record
        )
        meta = regression_metadata(
            model, condition=REGRESSION_CONDITION, seed=seed, config=config, parent=loaded.metadata
        )
        path = save_artifact(Path(tmp) / "degraded.safetensors", model, meta)
        info = registry.register(
            name, path, {"format": "safetensors", "input_schema_version": meta.input_schema_version}
        )
    reason = (
        f"demo: v{info.version} is v{parent_version} made worse in {REGRESSION_CONDITION} only "
        "(fleetloop.pipelines.regression), staged without validation so that the canary has to catch it"
    )
    registry.promote(name, info.version, Stage.STAGING, reason=reason, actor=ACTOR)
    return str(info.version)


def decisive_evidence(drive: dict[str, Any]) -> dict[str, Any] | None:
    """The evidence that decided the rollout's last verdict (slice, metric, counts, exposures, ratio): a rollback's
    harm or progress test before a hold's rate ratio, which the same verdict may also mark decisive."""
    for w in reversed(drive["rollout"]["history"]["waves"]):
        decisive = [e for e in w["evidence"] if e["decisive"]]
        if decisive:
            best = min(decisive, key=lambda e: e["test"] not in ("harm", "progress"))
            return dict(best, wave=w["wave"])
    return None


def evidence_text(e: dict[str, Any]) -> str:
    """One readable sentence of a decisive evidence: which slice and metric, the rates, the ratio, the exposure."""
    metric = e["metric"].replace("_", " ")
    if e["test"] == "progress":
        return f"the canary drove {e['ratio']:.0%} of its baseline's progress (rollback under {e['threshold']:.0%})"
    ratio = "canary events against none" if e["ratio"] is None else f"a rate ratio of {e['ratio']:.1f}x"
    where = "over all slices" if e["slice"] == "all" else f"in {e['slice']}"
    return (
        f"{metric} {where}: {e['canary_count']} in {e['canary_km']:.2f} canary km against {e['baseline_count']} in "
        f"{e['baseline_km']:.2f} baseline km, {ratio}"
        + ("" if e["e_value"] is None else f" (e-value {e['e_value']:.3g}, rollback at {e['threshold']:.3g})")
    )


def step_degraded(
    settings: Settings, plan: DemoPlan, seed: int, fleet_tag: str, on_tick: Callable[[int, int], None], say: Say
) -> dict[str, Any]:
    """The degraded model rolled out like any other; the controller must roll it back with the evidence."""
    version = degraded_model(settings, plan.quick, seed, say)
    production = open_registry(settings).production(settings.model_name).version
    policy = demo_policy(plan)
    say(f"v{version}: `ota rollout` ({_policy_text(policy)})")
    # In the fog bank from the start: judged in clear weather, where the copy is its parent, its waves passed.
    drive = rollout_drive(settings, plan, seed, fleet_tag, on_tick, say, version, policy, in_fog=True)
    r = drive["rollout"]
    evidence = decisive_evidence(drive)
    stage = open_registry(settings).get(settings.model_name, version).stage
    tagged = f"tagged {stage.value}" if stage is not None else "no stage"
    drive.update(
        degraded=version,
        production=production,
        stage=None if stage is None else stage.value,
        evidence=evidence,
        line=f"v{version} (v{production} made worse in {REGRESSION_CONDITION}) went out in waves: {_verdicts(drive)}: "
        f"{r['outcome'].replace('_', ' ')}, {tagged}"
        + ("" if evidence is None else f"; the evidence: {evidence_text(evidence)}")
        + f"; the fleet ends {_ends_on(drive)}",
    )
    return drive
