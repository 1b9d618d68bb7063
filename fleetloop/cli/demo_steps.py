"""The demo's steps: each composes the step functions the commands themselves call, and returns a JSON-ready
summary with a ``line`` for people (numbers with units, verdicts in words).

    stack      `fleetloop up`                               launcher.up over the stack's services
    genesis    `fleetloop model bootstrap`, `ota publish`,   bootstrap, publish_release, api.assign_wave
               `ota assign --share 1`
    drive      `fleetloop sim run`                          simulate (clear weather, then a fog bank rolls in)
    data loop  `fleetloop pipeline run`                     the pipeline's stage table, train and validate
    federated  `fleetloop fl round`                         cli.fl.federate, then validate (cli/demo_federated.py)

The rollouts (the better candidate in canary waves, the degraded model rolled back) are in cli/demo_rollouts.py.
A step this build cannot run says plainly that it is skipped and why (:func:`skipped`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetloop.cli.model_bootstrap import bootstrap
from fleetloop.cli.ota import cohort_rule, publish_release
from fleetloop.cli.pipeline import STAGES
from fleetloop.cli.pipeline_stages import train_stage, validate_stage
from fleetloop.cli.services import services_to_start
from fleetloop.cli.sim import DEFAULT_HEARTBEAT_S, simulate
from fleetloop.platform import launcher
from fleetloop.platform.releases import api
from fleetloop.platform.settings import Settings

__all__ = [
    "BETTER_CANDIDATE_RULE",
    "MIN_DEMO_VEHICLES",
    "DemoPlan",
    "better_candidate",
    "candidate_summary",
    "plan_for",
    "skipped",
    "step_data_loop",
    "step_drive",
    "step_genesis",
    "step_stack",
    "verdict_text",
]

Say = Callable[[str], None]  # a step's progress line (spinner text)

ACTOR = "demo"
GENESIS_TRAIN_CAP_S = 900.0  # [s] wall-clock cap of the genesis model's training
TIMELINE_BIN_S = 10.0  # simulated seconds per point of the safety-rate timeline
BETTER_CANDIDATE_RULE = (
    "of the candidates validate passed, the one with the fewest collisions + near misses per 1,000 km summed over "
    "the fog slices of the held-out suite"
)


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is: the full story or ``--quick`` (small fleet, short drives, the tiny held-out suite)."""

    quick: bool
    vehicles: int
    """Vehicles of each fleet drive."""
    minutes: float
    """Simulated minutes of each fleet drive."""
    fog_onset_s: float
    """Simulated time at which the fog bank rolls in [s]."""
    bootstrap_vehicles: int
    """Vehicles the expert drives to collect the genesis model's imitation data."""
    bootstrap_ticks: int
    """Ticks (0.1 s) of expert driving for the genesis model."""
    bootstrap_train_s: float
    """Wall-clock budget of the genesis model's training [s]."""


MIN_DEMO_VEHICLES = 16  # the quick demo's fleet: its rollouts catch the degraded model (a 4-vehicle fleet's did not)


def plan_for(quick: bool, vehicles: int | None, minutes: float | None, fog_onset_s: float | None) -> DemoPlan:
    """The full or quick plan, with the sizes the user gave in place of the defaults (fog: early enough that
    the bank is thick for the drive's second half)."""
    v = vehicles or (16 if quick else 64)
    m = minutes or (1.0 if quick else 2.0)
    return DemoPlan(
        quick=quick,
        vehicles=v,
        minutes=m,
        # The bank thickens over 60 s (weather_preset's ramp) and counts as fog below 1 km visibility after ~26 s.
        fog_onset_s=min(30.0, m * 10.0) if fog_onset_s is None else fog_onset_s,
        bootstrap_vehicles=64 if quick else 512,
        bootstrap_ticks=200 if quick else 300,
        # A cap only a stalled machine reaches: the recipe's epochs always finish, so the genesis model (and every
        # number after it) does not depend on the machine's load (a 20 s budget cut it at 12 of 15 epochs at load 13).
        bootstrap_train_s=GENESIS_TRAIN_CAP_S,
    )


def skipped(what: str, why: str) -> dict[str, Any]:
    """A step this build cannot run yet: says so, and why, instead of pretending."""
    return {"skipped": True, "why": why, "line": f"skipped: {what} — {why}"}


def step_stack(settings: Settings, say: Say) -> dict[str, Any]:
    """Start (or find) the stack's services, as `fleetloop up` does."""
    t0 = time.monotonic()
    results = launcher.up(settings, services_to_start(settings=settings), on_event=lambda n, s: say(f"{n}: {s}"))
    services = {r.name: {"state": r.state, "address": r.address} for r in results}
    up = ", ".join(f"{n} at {s['address']}" for n, s in services.items())
    return {"services": services, "seconds": round(time.monotonic() - t0, 1), "line": f"running: {up}"}


def _release_to_fleet(settings: Settings, version: str) -> dict[str, Any]:
    """Sign ``version`` as a release and assign it to the whole fleet in one wave (`ota publish` + `ota assign`)."""
    pub = publish_release(settings, settings.model_name, version)
    number = int(pub["release"]["release"])
    signed = api.list_releases(settings.state_dir)
    waves = next((s.waves for s in signed if s.fields.release == number), ())
    if not waves:  # a release signed by an earlier demo keeps its wave
        api.assign_wave(settings.state_dir, number, 1, cohort_rule(None, 1.0))
    return {"release": number, "newly_signed": pub["changed"], "sha256": pub["release"]["sha256"]}


def step_genesis(settings: Settings, plan: DemoPlan, seed: int, say: Say) -> dict[str, Any]:
    """The genesis model (imitation of the expert in clear weather), released to the whole fleet through OTA."""
    say("training the genesis model by imitation of the expert in clear weather")
    out = bootstrap(
        settings,
        seed=seed,
        vehicles=plan.bootstrap_vehicles,
        ticks=plan.bootstrap_ticks,
        max_train_s=plan.bootstrap_train_s,
        actor=ACTOR,
    )
    version = str(out["production"])
    say(f"signing v{version} as a release for the whole fleet")
    rel = _release_to_fleet(settings, version)
    m = out.get("metrics") or {}
    # Imported here: edge_agent loads torch (~6 s measured); bootstrap has loaded it by now.
    from fleetloop.edge_agent.bootstrap import BootstrapConfig

    how = "trained now" if out["changed"] else "already in production from an earlier run"
    epochs, recipe_epochs = m.get("epochs_done"), BootstrapConfig().imitation.epochs
    if out["changed"] and isinstance(epochs, int | float) and epochs < recipe_epochs:
        # A wall-clock budget makes the model depend on the machine's speed: say so where it cut training short.
        how += f", training cut at its {plan.bootstrap_train_s:g} s budget after {epochs:.1f} of {recipe_epochs} epochs"
    quality = (
        f" (held-out accel correlation {m['val_accel_corr']:.2f}, hazard accuracy {m['val_hazard_acc']:.0%})"
        if "val_accel_corr" in m and "val_hazard_acc" in m
        else ""
    )
    return {
        "production": version,
        "trained_now": out["changed"],
        "metrics": {k: float(v) for k, v in m.items() if isinstance(v, int | float)},
        **rel,
        "line": f"{settings.model_name} v{version} is production, {how}{quality}; signed as release "
        f"{rel['release']} and assigned to 100 % of the fleet (wave 1)",
    }


def _timeline(chunks: list[tuple[int, dict[str, int]]], dt_s: float) -> list[dict[str, float]]:
    """Per-chunk tick reports binned by simulated time: events per simulated vehicle-hour in each bin."""
    bins: dict[int, dict[str, float]] = {}
    for ticks, part in chunks:
        b = bins.setdefault(
            int((ticks - part["ticks"]) * dt_s // TIMELINE_BIN_S), {"vehicle_h": 0.0, "cnm": 0.0, "fallback": 0.0}
        )
        b["vehicle_h"] += part["vehicle_steps"] * dt_s / 3600.0
        b["cnm"] += part["collisions"] + part["near_misses"]
        b["fallback"] += part["fallback_activations"]
    return [
        {
            "t_s": (k + 0.5) * TIMELINE_BIN_S,  # the bin's middle
            "collisions_plus_near_misses_per_vehicle_h": b["cnm"] / b["vehicle_h"],
            "fallback_activations_per_vehicle_h": b["fallback"] / b["vehicle_h"],
        }
        for k, b in sorted(bins.items())
        if b["vehicle_h"] > 0
    ]


CONDITION_COLUMNS = ("collisions", "near_misses", "phantom_brakes")
MIN_RATE_KM = 1.0  # [km] under this a condition's rates are not given: one event over 50 m reads as 20,000 per 1,000 km


def _conditions(d: dict[str, Any], version: str | None = None) -> dict[str, dict[str, float | None]]:
    """Per condition (of the vehicle-ticks on ``version`` only, when given): the safety rates per 1,000 km,
    fallback activations per 1,000 km, progress vs the expert and the km; the rates are None under
    ``MIN_RATE_KM`` (a model that met a condition for a few seconds has no rate there)."""
    out: dict[str, dict[str, float | None]] = {}
    groups = d["by_condition"]
    if version is not None:
        prefix = f"{version}/"
        groups = {k.removeprefix(prefix): g for k, g in d["by_version_condition"].items() if k.startswith(prefix)}
    for cond, g in groups.items():
        km = float(g["km"])
        row: dict[str, float | None] = {f"{k}_per_1000_km": float(g["per_1000_km"][k]) for k in CONDITION_COLUMNS}
        row["fallback_activations_per_1000_km"] = float(g["fallback_activations_per_1000_km"])
        if km < MIN_RATE_KM:
            row = dict.fromkeys(row)
        row["progress_vs_expert"] = float(g["progress_vs_expert"])
        row["km"] = km
        out[cond] = row
    return out


def _condition_text(row: dict[str, float | None], template: str) -> str:
    """``template`` filled with the row's collisions + near misses and fallback activations per 1,000 km (``cnm``,
    ``fb``), or the km it drove when too few for rates."""
    c, n, fb = row["collisions_per_1000_km"], row["near_misses_per_1000_km"], row["fallback_activations_per_1000_km"]
    if c is None or n is None or fb is None:
        return f"only {row['km'] or 0.0:.1f} km (too little for a rate)"
    return template.format(cnm=f"{c + n:,.0f}", fb=f"{fb:,.0f}")


def step_drive(
    settings: Settings,
    plan: DemoPlan,
    seed: int,
    fleet_tag: str,
    on_tick: Callable[[int, int], None],
    *,
    start_version: str | None = None,
    installs: str | None = None,
    buffer_seconds: float | None = None,
    minutes: float | None = None,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    stop_when: Callable[[], bool] | None = None,
    in_fog: bool = False,
) -> dict[str, Any]:
    """The fleet (`sim run`): clear weather, then the fog bank at ``plan.fog_onset_s``.

    The vehicles start on production, or on ``start_version``; with ``installs`` (a version sent to them as an
    OTA install command) they follow OTA commands (`sim run --ota`) and the per-condition rates are those of the
    vehicle-ticks on ``installs``. ``on_tick(done, total)`` follows the ticks; the summary keeps the safety rates
    per condition and over time. With ``buffer_seconds`` the vehicles save their on-board buffers
    (`sim run --buffer-seconds`) for a federated round. ``minutes`` (default ``plan.minutes``), ``heartbeat_s``
    and ``stop_when`` are `sim run`'s (a rollout judged while the fleet drives: cli/demo_rollouts.py); ``in_fog``:
    the fog bank is thick from the start (`sim run --weather fog`)."""
    chunks: list[tuple[int, dict[str, int]]] = []  # (ticks done, the chunk's summed tick reports)
    state = {"ticks": 0, "total": 1}

    def on_start(ticks: int) -> None:
        state["total"] = ticks
        on_tick(0, ticks)

    def on_progress(part: dict[str, int]) -> None:
        state["ticks"] += part["ticks"]
        chunks.append((state["ticks"], part))
        on_tick(state["ticks"], state["total"])

    out = simulate(
        settings,
        vehicles=plan.vehicles,
        minutes=minutes or plan.minutes,
        weather="fog" if in_fog else "clear",
        fog_onset_s=None if in_fog else plan.fog_onset_s,
        seed=seed,
        model=start_version,
        ota=installs is not None,
        fleet_tag=fleet_tag,
        on_start=on_start,
        on_progress=on_progress,
        buffer_seconds=buffer_seconds,
        heartbeat_s=heartbeat_s,
        stop_when=stop_when,
    )
    dt_s = float(out["simulated_s"]) / max(state["ticks"], 1)  # the world's tick
    conditions = _conditions(out, installs)
    fog = conditions.get("fog")
    fog_text = (
        "in fog " + _condition_text(fog, "{cnm} collisions + near misses and {fb} fallback activations per 1,000 km")
        if fog
        else "no fog reached the fleet"
    )
    clear = conditions.get("clear")
    clear_text = f"in clear weather {_condition_text(clear, '{cnm} and {fb}')}, " if clear else ""
    up = out["counts"].get("uploads", {}).get("frames_uploaded", 0)
    ota = out["counts"].get("ota", {}).get("status", {})
    ota_text = (
        f"{ota.get('activated', 0)} of {plan.vehicles} vehicles installed and activated v{installs} over the air "
        f"(signed and verified), {ota.get('committed', 0)} committed it after its health window; on v{installs}: "
        if installs is not None
        else ""
    )
    return {
        "model": out["run"]["model"] if installs is None else installs,
        "ota_statuses": ota,
        "km": round(float(out["km"]), 1),
        "vehicles": plan.vehicles,
        "simulated_s": float(out["simulated_s"]),
        "fog_onset_s": 0.0 if in_fog else plan.fog_onset_s,
        "by_condition": conditions,
        "timeline": _timeline(chunks, dt_s),
        "uploaded_frames": int(up),
        "line": f"{plan.vehicles} vehicles on model {out['run']['model']} drove {out['km']:,.1f} km: {ota_text}"
        f"{clear_text}{fog_text}; {up:,} frames uploaded through Kafka",
    }


def _fog_rate(row_side: dict[str, Any]) -> float | None:
    return row_side["collisions_plus_near_misses"]["per_1000_km"]


def _fog_summary(table: list[dict[str, Any]]) -> dict[str, float | None]:
    """Collisions + near misses per 1,000 km summed over the fog slices, candidate and baseline."""
    rows = [r for r in table if "fog" in r["slice"]]
    sums: dict[str, float | None] = {}
    for side in ("candidate", "baseline"):
        rates = [_fog_rate(r[side]) for r in rows]
        sums[side] = None if not rows or any(x is None for x in rates) else sum(x for x in rates if x is not None)
    return sums


def step_data_loop(settings: Settings, plan: DemoPlan, seed: int, say: Say) -> dict[str, Any]:
    """Every pipeline stage once over what arrived (`pipeline run`): collect, ground truth, label, train, validate.

    Validate judges on the tiny held-out suite (CCR in clear weather and fog 0.8, two seeds: seconds, where the
    full suite takes the better part of an hour on a small CPU); the quick plan also trains one short epoch."""
    # Imported when the loop runs: pipelines.train / validate load torch (~6 s measured) for every `fleetloop` start.
    from fleetloop.pipelines.suite import tiny_suite
    from fleetloop.pipelines.train import TrainConfig
    from fleetloop.pipelines.validate import ValidateConfig

    # The quick plan's one pass over a few hundred uploads is one optimiser step; beside the ~10,000 replayed frames
    # it is twenty, mostly replay: that candidate passed the tiny suite by chance, and its copy made worse in fog
    # leaned on the fallback too little for the quick rollout to catch. The full plan trains the recipe (ADR 0199).
    quick_train = TrainConfig(seed=seed, epochs=1, max_seconds=60.0, min_frames=64, torch_threads=1, replay_share=0.0)
    train_cfg = quick_train if plan.quick else TrainConfig(seed=seed)
    validate_cfg = ValidateConfig(suite=tiny_suite(), min_train_frames=train_cfg.min_frames)
    stages: dict[str, dict[str, Any]] = {}
    for name in ("collect", "groundtruth", "label"):
        say(f"{name}: starting")
        stages[name] = STAGES[name].run(settings, say)
    stages["train"] = train_stage(settings, say, train_cfg)
    stages["validate"] = validate_stage(settings, say, validate_cfg)
    candidates = [candidate_summary(v, "data loop") for v in stages["validate"]["validated"]]
    t = stages["train"]
    rows = stages["collect"].get("rows_collected", 0)
    labelled = stages["label"].get("labelled_valid", 0)
    if not candidates:
        why = t.get("reason") or "no candidate to validate"
        verdict = f"no candidate this turn: {why}"
    else:
        verdict = "; ".join(verdict_text(c) for c in candidates)
    return {
        "stages": {k: {kk: vv for kk, vv in v.items() if kk != "table"} for k, v in stages.items()},
        "candidates": candidates,
        "line": f"{rows:,} frames collected into the lake, {labelled:,} valid labels; {verdict}",
    }


def candidate_summary(v: dict[str, Any], origin: str) -> dict[str, Any]:
    """A validated candidate (one of ``validate_stage``'s ``validated``) as the release step compares it."""
    return {
        "origin": origin,
        "version": v["version"],
        "status": v["status"],
        "passed": bool(v["passed"]),
        "stage": v["stage"],
        "suite": v["suite_name"],
        "reasons": v["reasons"] or ([v["reason"]] if v["reason"] else []),
        "fog_cnm_per_1000_km": _fog_summary(v["table"]),
        "table": v["table"],
    }


def verdict_text(c: dict[str, Any]) -> str:
    if c["status"] != "validated":
        return f"candidate not validated ({'; '.join(c['reasons']) or c['status']})"
    fog = c["fog_cnm_per_1000_km"]
    rates = (
        f" (fog slices of {c['suite']}: {fog['candidate']:,.0f} vs production's {fog['baseline']:,.0f} collisions "
        "+ near misses per 1,000 km)"
        if fog["candidate"] is not None and fog["baseline"] is not None
        else ""
    )
    if c["passed"]:
        return f"candidate v{c['version']} PASSED every gate{rates} and is staged"
    return f"candidate v{c['version']} was REJECTED{rates}: {'; '.join(c['reasons'])}"


def better_candidate(candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The candidate :data:`BETTER_CANDIDATE_RULE` picks (None: no candidate passed)."""
    passed = [c for c in candidates if c["passed"] and c["fog_cnm_per_1000_km"]["candidate"] is not None]
    return min(passed, key=lambda c: c["fog_cnm_per_1000_km"]["candidate"], default=None)
