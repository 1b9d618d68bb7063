"""Does federating pay? The fog gap closed by the central loop, by federated rounds and by central training on
everything the vehicles saw, from the same clear-weather model after the same fog drive.

One private stack (real Kafka and MLflow through the launcher, as ``loop_efficacy.py`` starts it):

1. the initial model (``model bootstrap``, clear weather, production) and the all-conditions reference
   (``BootstrapConfig(weather="all")``, never registered), trained as ``loop_efficacy.py`` trains them;
2. per seed, ``loop_efficacy.run_arm`` with the vehicles' triggers: the fleet on the initial model drives ``mixed``
   scenes into a fog bank, uploads within the budget through the broker, and the loop turns once (collect ->
   ground truth -> label -> train -> validate). The same run keeps each vehicle's on-board ring
   (``--buffer-seconds``, as ``fleetloop sim run --buffer-seconds`` keeps and saves it; by default the whole
   drive). From that one drive:

   - (a) ``central-2%``: the loop turn's candidate (the uploads only);
   - (b) ``federated``: ``run_rounds`` (Flower's simulation engine on Ray, as ``fleetloop fl round``) from the
     initial model on the vehicles' saved buffers, each labelled on board by the hindsight labeller; the last
     ``--holdout`` vehicles are the server's held-out set;
   - (c) ``central-all``: every vehicle's buffer labelled by the same labeller and pooled centrally, fine-tuned
     from the initial model as the train stage fine-tunes (``fine_tune``, the same ``TrainConfig`` as (a)):
     the upper bound that no privacy allows;

   each candidate goes through the same validate stage and gates (``validate_candidate``, the initial model as
   production baseline, the same suite);
3. ``loop_efficacy.evaluate``: every model with the fallback, on the same held-out scenes, in steady fog and in
   clear weather.

Rates are per 1,000 km, pooled over seeds, with exact Poisson 95 % intervals; the share of the gap closed is
``(initial - arm) / (initial - reference)`` of (collisions + near misses) per 1,000 km in fog, per seed (mean
with a Student-t 95 % interval) and of the pooled rates. Target (issue 18): (b) closes >= 0.8 of the gap and more
than (a), with candidates that pass the gates.

    python benchmarks/federation_gap.py --quick           # a smoke version (1 seed, tiny sizes)
    python benchmarks/federation_gap.py --seeds 2         # everything on the CPU (small evaluation)
    # the BENCHMARKS.md row: train on the CPU, evaluate on a GPU (torch, numpy and pydantic suffice there)
    python benchmarks/federation_gap.py --seeds 2 --rounds 10 --prox-mu 30 --save-models M --no-eval
    python benchmarks/federation_gap.py --evaluate-saved M --device cuda --eval-vehicles 2048 --eval-ticks 250 \
        --parent-threshold
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from loop_efficacy import (
    _ci,
    _per_km,
    _safety,
    arm_settings,
    bootstrap_models,
    evaluate,
    run_arm,
    stack_settings,
    train_config,
    validate_suite,
)

from fleetloop.edge_agent.buffer_store import fleet_buffer_dir
from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION
from fleetloop.edge_agent.model_artifact import ArtifactMetadata, LoadedPolicy, load_artifact, save_artifact
from fleetloop.edge_agent.policy import ARCHITECTURE
from fleetloop.federation.buffers import scan_buffers, vehicle_frames
from fleetloop.federation.config import STRATEGIES, ClientTrainConfig, RoundsConfig
from fleetloop.federation.task import labelled_data
from fleetloop.pipelines.gates import mean_ci
from fleetloop.pipelines.label import data_conditions
from fleetloop.pipelines.train import TrainConfig, TrainingSet, fine_tune, target_conditions, uncertainty_calibration
from fleetloop.pipelines.validate import ValidateConfig, validate_candidate
from fleetloop.platform import launcher
from fleetloop.platform.bus.events import ModelTrained
from fleetloop.platform.services.kafka import SPEC as KAFKA
from fleetloop.platform.services.mlflow_server import SPEC as MLFLOW
from fleetloop.platform.settings import Settings

ARMS = ("central-2%", "federated", "fedprox", "central-all")  # fedprox: only with --prox-mu
# Diagnostics (--parent-threshold): a federated candidate with its parent's hand-over calibration (see
# with_parent_threshold); not a candidate of any stage, so no gate verdict.
PARENT_THRESHOLD = {"federated": "federated@parent-thr", "fedprox": "fedprox@parent-thr"}
GAP_ROWS = (*ARMS, *PARENT_THRESHOLD.values())
MODELS = ("initial", *GAP_ROWS, "reference")
TARGET_GAP_SHARE = 0.8  # (b) must close at least this share of the fog gap


def buffer_seconds(a: argparse.Namespace) -> float:
    """The on-board ring: ``--buffer-seconds``, or the whole drive."""
    return a.buffer_seconds if a.buffer_seconds is not None else a.minutes * 60.0


def validate(s: Settings, event: ModelTrained, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """The validate stage on the loop benchmark's suite of this seed (the initial model is production)."""
    val = validate_candidate(
        s, event, ValidateConfig(suite=validate_suite(seed, a.validate_vehicles, a.validate_ticks, a.validate_seeds))
    )
    return {"version": val.version, "stage": val.stage, "passed": val.passed, "gate_reasons": val.reasons}


def run_federated(
    s: Settings, initial: Path, seed: int, a: argparse.Namespace, log: Any, strategy: str, mu: float
) -> dict[str, Any]:
    """(b): federated rounds on the vehicles' saved buffers of the loop turn's drive, then validate."""
    # Flower, Ray and gRPC load only here: --evaluate-saved runs on a GPU box with torch, numpy and pydantic alone.
    from fleetloop.federation.runner import run_rounds

    local = ClientTrainConfig(
        epochs=a.local_epochs,
        lr=a.local_lr,
        max_seconds=a.local_max_s,
        proximal_weight=mu,
        parent_anchor_weight=a.parent_anchor,
        balance_hazard=not a.no_local_balance,
    )
    cfg = RoundsConfig(
        rounds=a.rounds,
        clients=a.vehicles,
        strategy=strategy,
        fraction=a.fraction,
        min_replies=2,
        holdout_vehicles=a.holdout,
        buffer_dir=fleet_buffer_dir(s.state_dir),
        initial_model=initial,
        local=local,
        round_timeout_s=600.0,
        seed=seed,
        restart=True,
    )
    t0 = time.monotonic()
    res = run_rounds(s, cfg, on_round=lambda r: log(f"seed {seed} {strategy} round {r.server_round}: {r.heldout}"))
    t_rounds = time.monotonic() - t0
    # run_rounds writes round-<n>/ of the model's federation: a second arm of as many rounds would overwrite it.
    kept = s.state_dir / f"cand-{seed}-{strategy}-{mu:g}.safetensors"
    out: dict[str, Any] = {
        "rounds": len(res.rounds),
        "participants": len(res.participants),
        "aggregated_per_round": [len(r.participants) for r in res.rounds],
        "dropped": sum(r.dropped_total for r in res.rounds),
        "skipped_vehicles": res.skipped_vehicles,
        "examples": sum(r.train_metrics.get("num-examples", 0.0) for r in res.rounds),
        "heldout_before": res.heldout_before,
        "heldout_after": res.heldout_after,
        "rounds_wall_s": t_rounds,
        "candidate_path": str(shutil.copy(res.artifact_path, kept)),
    }
    assert res.event is not None  # run_rounds always announces its candidate
    out.update(validate(s, res.event, seed, a))
    log(f"seed {seed} {strategy}: v{out['version']} {out['stage']} ({'; '.join(out['gate_reasons'])[:200]})")
    return out


def pooled_buffers(directory: Path) -> tuple[TrainingSet, int]:
    """Every vehicle's saved buffer, labelled on board by the hindsight labeller, pooled; and the frames seen."""
    scan = scan_buffers(directory, now_s=time.time())
    parts, conditions, seen = [], {"fog": 0, "rain": 0, "clear": 0}, 0
    for v in scan.vehicles:
        frames = vehicle_frames(v.path, v.vehicle_id)
        seen += len(frames["vehicle_id"])
        for k, n in data_conditions(frames).items():
            conditions[k] += n
        part = labelled_data(frames)
        if part:
            parts.append(part)
    data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return TrainingSet(data, (), (), conditions), seen


def run_central_all(
    stack: Settings, root: Path, init: LoadedPolicy, buffers: Path, seed: int, tcfg: TrainConfig, a: argparse.Namespace
) -> dict[str, Any]:
    """(c): central fine-tune on everything the vehicles saw (their pooled buffers), then validate."""
    s = arm_settings(stack, root, seed, "central-all")
    ts, seen = pooled_buffers(buffers)
    t0 = time.monotonic()
    model, metrics = fine_tune(init.model, ts, tcfg)
    train_s = time.monotonic() - t0
    meta = ArtifactMetadata(
        architecture=ARCHITECTURE,
        hyperparameters=model.config.to_dict(),
        input_schema_version=INPUT_SCHEMA_VERSION,
        parent_version=init.metadata.model_version,
        metrics={
            **metrics.as_dict(),
            **uncertainty_calibration(model, init, ts.data, tcfg),
            "frames": float(ts.frames),
            "train_wall_s": train_s,
        },
        notes={
            "role": "candidate",
            "origin": "central",
            "target_conditions": ",".join(target_conditions(ts.conditions)),
        },
    )
    path = save_artifact(root / f"cand-{seed}-central-all" / "model.safetensors", model, meta)
    # No training run (run_id ""): validate registers the version without marking a run.
    event = ModelTrained(model_name=s.model_name, run_id="", artifact_uri=str(path), origin="central", source="bench")
    out: dict[str, Any] = {
        "frames_seen": seen,
        "train_frames": ts.frames,
        "train_conditions": ts.conditions,
        "train_wall_s": train_s,
        "candidate_path": str(path),
    }
    out.update(validate(s, event, seed, a))
    return out


# -- the table ------------------------------------------------------------------------------------------------


def _fog_rate(ev: dict[str, Any], model: str) -> float:
    run = ev[f"{model}|fog"]
    return 1000.0 * _safety(run) / run["km"] if run["km"] > 0 else math.nan


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: pooled fog / clear rates (exact intervals), phantom brakes, progress; per arm: gap closed per seed
    (t interval) and of the pooled rates, gates passed."""
    rows: dict[str, Any] = {}
    for m in MODELS:
        row: dict[str, Any] = {}
        for cond in ("fog", "clear"):
            runs = [s["eval"][f"{m}|{cond}"] for s in seeds if f"{m}|{cond}" in s["eval"]]
            if not runs:
                continue
            row[cond] = {
                "seeds": len(runs),
                "coll_nm": _per_km(runs, _safety),
                "phantom": _per_km(runs, lambda x: x["counts"]["phantom_brakes"]),
                "progress": mean_ci(x["km"] / x["expert_km"] for x in runs if x["expert_km"] > 0).__dict__,
            }
        if "fog" not in row:
            turns = [s["arms"][m] for s in seeds if m in s["arms"]]
            if turns:  # the arm trained no candidate in any seed (too few uploads): say so in the table
                rows[m] = {"no_candidate": [t.get("train_reason", "") for t in turns]}
            continue
        if m in GAP_ROWS:
            gaps = []
            for s in seeds:
                ev = s["eval"]
                if f"{m}|fog" not in ev:
                    continue
                gap = _fog_rate(ev, "initial") - _fog_rate(ev, "reference")
                gaps.append((_fog_rate(ev, "initial") - _fog_rate(ev, m)) / gap if gap > 0 else math.nan)
            turns = [s["arms"][m] for s in seeds if m in s["arms"]]
            row["gap_closed_per_seed"] = gaps
            row["gap_closed"] = mean_ci(gaps).__dict__
            row["passed_gates"] = sum(bool(t.get("passed")) for t in turns)
            row["candidates"] = len(turns)
        rows[m] = row
    out: dict[str, Any] = {"models": rows}
    if "initial" in rows and "reference" in rows:
        pooled_gap = rows["initial"]["fog"]["coll_nm"]["rate"] - rows["reference"]["fog"]["coll_nm"]["rate"]
        for m in GAP_ROWS:
            if "fog" in rows.get(m, {}):
                closed = rows["initial"]["fog"]["coll_nm"]["rate"] - rows[m]["fog"]["coll_nm"]["rate"]
                rows[m]["gap_closed_pooled"] = closed / pooled_gap if pooled_gap > 0 else math.nan
    fed, cen = rows.get("federated", {}), rows.get("central-2%", {})
    if "gap_closed_pooled" in fed:
        out["target"] = {
            "federated_gap_closed_pooled": fed["gap_closed_pooled"],
            "reaches_0.8": fed["gap_closed_pooled"] >= TARGET_GAP_SHARE,
            # No central candidate (too few uploads) counts as closing nothing.
            "beats_central_2%": fed["gap_closed_pooled"] > cen.get("gap_closed_pooled", 0.0),
            "federated_candidates_pass": fed["passed_gates"] == fed["candidates"],
        }
        out["target"]["met"] = all(bool(v) for k, v in out["target"].items() if k != "federated_gap_closed_pooled")
    return out


def render(summary: dict[str, Any], sizes: str) -> str:
    lines = [
        f"does federating pay? ({sizes})",
        "",
        "| arm (+ fallback) | fog (coll+nm)/1000 km [95 % CI] | gap closed (pooled) | gap closed per seed [95 % CI] "
        "| clear (coll+nm)/1000 km [95 % CI] | phantom brakes/1000 km fog / clear | progress vs expert fog / clear "
        "| gates |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in summary["models"].items():
        if "no_candidate" in r:
            lines.append(f"| {m} | no candidate: {r['no_candidate'][0][:90]} | - | - | - | - | - | - |")
            continue
        fog, clear = r["fog"], r.get("clear", {})
        pooled = r.get("gap_closed_pooled")
        gap = "-" if pooled is None or not math.isfinite(pooled) else f"{pooled:.2f}"
        per_seed = _ci(r["gap_closed"], 2) if "gap_closed" in r else "-"
        gates = f"{r['passed_gates']}/{r['candidates']} pass" if r.get("candidates") else "-"
        phantom = f"{_ci(fog['phantom'])} / {_ci(clear['phantom']) if clear else '-'}"
        progress = f"{_ci(fog['progress'], 3)} / {_ci(clear['progress'], 3) if clear else '-'}"
        lines.append(
            f"| {m} | {_ci(fog['coll_nm'])} | {gap} | {per_seed} | {_ci(clear['coll_nm']) if clear else '-'} "
            f"| {phantom} | {progress} | {gates} |"
        )
    t = summary.get("target")
    if t:
        lines += [
            "",
            f"target: federated closes {t['federated_gap_closed_pooled']:.2f} of the gap (>= {TARGET_GAP_SHARE}: "
            f"{'yes' if t['reaches_0.8'] else 'no'}), more than the central turn: "
            f"{'yes' if t['beats_central_2%'] else 'no'}, every federated candidate passes: "
            f"{'yes' if t['federated_candidates_pass'] else 'no'} -> {'MET' if t['met'] else 'NOT MET'}",
        ]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2, help="fog drives (fleet seeds 1..N) and evaluation seeds")
    p.add_argument("--vehicles", type=int, default=32, help="fleet vehicles driving into fog")
    p.add_argument("--minutes", type=float, default=3.0, help="simulated minutes of the fleet run")
    p.add_argument("--fog-onset-s", type=float, default=5.0, help="simulated time the fog bank starts forming [s]")
    p.add_argument("--budget", type=float, default=0.02, help="upload budget: share of frames")
    p.add_argument(
        "--buffer-seconds", type=float, default=None, help="each vehicle's on-board ring [s] (default: the whole drive)"
    )
    p.add_argument("--train-epochs", type=int, default=4, help="(a) and (c): fine-tune epochs")
    p.add_argument("--train-max-s", type=float, default=60.0, help="(a) and (c): wall-clock training budget [s]")
    p.add_argument("--anchor-weight", type=float, default=TrainConfig().anchor_weight, help="(a), (c): pull to parent")
    p.add_argument("--no-balance", action="store_true", help="(a), (c): do not balance hazard and normal frames")
    p.add_argument(
        "--hazard-share",
        type=float,
        default=TrainConfig().hazard_share,
        help="(a), (c): the hazard frames' loss weight",
    )
    p.add_argument(
        "--replay-share",
        type=float,
        default=TrainConfig().replay_share,
        help="(a), (c): the replayed frames' loss weight (the first model's frames; 0: uploads only)",
    )
    p.add_argument("--rounds", type=int, default=20, help="(b): federated rounds")
    p.add_argument("--strategy", choices=STRATEGIES, default="fedavg", help="(b): aggregation")
    p.add_argument("--fraction", type=float, default=0.5, help="(b): share of the vehicles sampled per round")
    p.add_argument("--local-epochs", type=int, default=2, help="(b): local passes over a vehicle's buffer")
    p.add_argument("--local-lr", type=float, default=1e-3, help="(b): local AdamW learning rate")
    p.add_argument("--local-max-s", type=float, default=60.0, help="(b): wall-clock budget of one local update [s]")
    p.add_argument("--proximal-weight", type=float, default=0.0, help="(b): the vehicles' anchor to the global model")
    p.add_argument("--prox-mu", type=float, default=None, help="also (b'): FedProx with this mu, same rounds")
    p.add_argument(
        "--parent-anchor",
        type=float,
        default=ClientTrainConfig().parent_anchor_weight,
        help="(b): the vehicles' anchor to the model the federation started from (0: none; ADR 0193)",
    )
    p.add_argument(
        "--no-local-balance", action="store_true", help="(b): do not balance hazard and normal frames locally"
    )
    p.add_argument("--holdout", type=int, default=2, help="(b): vehicles kept as the server's held-out set")
    p.add_argument("--validate-vehicles", type=int, default=48)
    p.add_argument("--validate-ticks", type=int, default=200)
    p.add_argument("--validate-seeds", type=int, default=1, help="held-out seeds of the validate suite (both arms)")
    p.add_argument("--eval-vehicles", type=int, default=64)
    p.add_argument("--eval-ticks", type=int, default=200)
    p.add_argument("--device", default="cpu", help="evaluation device (cpu, cuda)")
    p.add_argument("--bootstrap-vehicles", type=int, default=768)
    p.add_argument("--bootstrap-ticks", type=int, default=300)
    p.add_argument("--bootstrap-train-s", type=float, default=120.0, help="bootstrap training cap [s]")
    p.add_argument("--bootstrap-epochs", type=int, default=0, help="bootstrap epochs (0: the cap decides)")
    p.add_argument("--save-models", type=Path, default=None, help="keep every model and the drive's record here")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation (with --save-models: evaluate later)")
    p.add_argument(
        "--evaluate-saved", type=Path, default=None, help="only evaluate the models a --save-models run kept there"
    )
    p.add_argument(
        "--parent-threshold",
        action="store_true",
        help="with --evaluate-saved: also each federated candidate with the initial model's hand-over threshold",
    )
    p.add_argument("--quick", action="store_true", help="smoke version: 1 seed, tiny fleet, suites and rounds")
    p.add_argument("--json", type=Path, default=None, help="write every number here (rewritten after each seed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.vehicles, a.minutes, a.fog_onset_s, a.rounds, a.fraction = 1, 8, 0.4, 2.0, 1, 1.0
        a.validate_vehicles, a.validate_ticks, a.eval_vehicles, a.eval_ticks = 4, 20, 4, 20
        a.bootstrap_vehicles, a.bootstrap_ticks, a.bootstrap_train_s, a.bootstrap_epochs = 16, 30, 3.0, 1
        a.train_epochs, a.train_max_s, a.local_epochs, a.local_max_s = 1, 3.0, 1, 5.0
    return a


def describe(a: argparse.Namespace) -> str:
    prox = f" and fedprox mu {a.prox_mu:g}" if a.prox_mu is not None else ""
    return (
        f"{a.seeds} seed(s); fleet {a.vehicles} vehicles x {a.minutes:g} min, fog from {a.fog_onset_s:g} s, budget "
        f"{a.budget:g}, on-board ring {buffer_seconds(a):g} s; (b) {a.strategy}{prox}, {a.rounds} rounds x "
        f"{a.fraction:g} of the vehicles, {a.local_epochs} local epoch(s), lr {a.local_lr:g}"
        + (f", anchored to the parent ({a.parent_anchor:g})" if a.parent_anchor else "")
        + ("" if a.no_local_balance else ", hazard-balanced")
        + f"; (a), (c) "
        f"{a.train_epochs} epochs <= {a.train_max_s:g} s; validate {a.validate_vehicles} x {a.validate_ticks / 10:g} s "
        f"x 3 slices; bootstrap {a.bootstrap_vehicles} x {a.bootstrap_ticks} ticks, "
        + (f"{a.bootstrap_epochs} epochs" if a.bootstrap_epochs else f"{a.bootstrap_train_s:g} s training")
    )


def keep_models(directory: Path, entry: dict[str, Any], paths: dict[str, str]) -> None:
    """Copy the seed's model files under ``directory`` (initial and reference once) and point the entry at them."""
    directory.mkdir(parents=True, exist_ok=True)
    entry["model_files"] = {}
    for label, src in paths.items():
        shared = label in ("initial", "reference")
        stem = label.replace("%", "pct")  # file names in letters, digits, '.', '_' and '-' only
        name = f"{stem}.safetensors" if shared else f"seed{entry['seed']}-{stem}.safetensors"
        if not (directory / name).exists():
            shutil.copyfile(src, directory / name)
        entry["model_files"][label] = name


def with_parent_threshold(candidate: LoadedPolicy, parent: LoadedPolicy) -> LoadedPolicy:
    """``candidate`` with ``parent``'s uncertainty calibration (``val_uncertainty_p*``), so the arbiter hands over
    to the fallback where it would for the parent. Federated candidates made before their calibration was carried
    (``edge_agent.calibration``, as the train stage does) had none and got the arbiter's default threshold."""
    cal = {k: v for k, v in parent.metadata.metrics.items() if k.startswith("val_uncertainty_p")}
    meta = dataclasses.replace(candidate.metadata, metrics={**candidate.metadata.metrics, **cal})
    return dataclasses.replace(candidate, metadata=meta)


def evaluate_saved(a: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Only step 3, on the models and drive record a ``--save-models`` run kept (e.g. on a GPU: ``--device cuda``)."""
    record = json.loads((a.evaluate_saved / "drive.json").read_text())
    sizes = (
        f"{record['sizes']}; eval {a.eval_vehicles} vehicles x {a.eval_ticks / 10:g} s per model x condition x seed "
        f"on {a.device}"
    )
    out: dict[str, Any] = {"sizes": sizes, "drive_wall_s": record.get("wall_s"), "seeds": []}
    t0 = time.monotonic()
    for entry in record["seeds"]:
        models = {k: load_artifact(a.evaluate_saved / f) for k, f in entry["model_files"].items()}
        if a.parent_threshold:
            for arm, label in PARENT_THRESHOLD.items():
                if arm in models:
                    models[label] = with_parent_threshold(models[arm], models["initial"])
        entry["eval"] = evaluate(models, entry["seed"], a, log)
        out["seeds"].append(entry)
        out["summary"] = summarize(out["seeds"])
        out["eval_wall_s"] = time.monotonic() - t0
        if a.json:
            a.json.write_text(json.dumps(out, indent=1, default=str))
        print(render(out["summary"], f"{sizes}; {entry['seed']} seed(s) done"), flush=True)
    return out


def drive_and_train(a: argparse.Namespace, log: Any) -> dict[str, Any]:
    """Steps 1-2 on a private stack, and step 3 unless ``--no-eval``."""
    sizes = describe(a)
    if not a.no_eval:
        sizes += f"; eval {a.eval_vehicles} vehicles x {a.eval_ticks / 10:g} s per model x condition x seed"
    t_start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="fleetloop-fl-gap-"))
    stack = stack_settings(root)
    log(f"{sizes}; state in {root}")
    launcher.up(stack, [KAFKA, MLFLOW])
    results: dict[str, Any] = {"sizes": sizes, "args": {k: str(v) for k, v in vars(a).items()}, "seeds": []}
    try:
        init, ref_path = bootstrap_models(stack, root, a, "federation-gap", log)
        initial = load_artifact(init["artifact"])
        results["bootstrap_wall_s"] = time.monotonic() - t_start
        variants = [("federated", a.strategy, a.proximal_weight)]
        if a.prox_mu is not None:
            variants.append(("fedprox", "fedprox", a.prox_mu))
        for seed in range(1, a.seeds + 1):
            entry: dict[str, Any] = {"seed": seed, "arms": {}, "eval": {}}
            paths = {"initial": str(init["artifact"]), "reference": str(ref_path)}
            turn = run_arm(stack, root, seed, "triggers", a, log, buffer_seconds=buffer_seconds(a))
            entry["arms"]["central-2%"] = turn
            if "candidate_path" in turn:
                paths["central-2%"] = turn["candidate_path"]
            s = arm_settings(stack, root, seed, "triggers")  # the loop turn's lake, with the saved buffers
            for label, strategy, mu in variants:
                fed = run_federated(s, Path(init["artifact"]), seed, a, log, strategy, mu)
                entry["arms"][label] = fed
                paths[label] = fed["candidate_path"]
            tcfg = train_config(a, seed)  # as run_arm trains (a)
            everything = run_central_all(stack, root, initial, fleet_buffer_dir(s.state_dir), seed, tcfg, a)
            entry["arms"]["central-all"] = everything
            paths["central-all"] = everything["candidate_path"]
            log(
                f"seed {seed}: (a) {turn['train_status']} on {turn['train_frames']} uploaded frames, "
                f"(b) {fed['examples']:.0f} examples over {fed['rounds']} rounds, (c) {everything['train_frames']} "
                f"of {everything['frames_seen']} frames seen"
            )
            if a.save_models:
                keep_models(a.save_models, entry, paths)
            if not a.no_eval:
                models = {k: load_artifact(p) for k, p in paths.items()}
                entry["eval"] = evaluate(models, seed, a, log)
            results["seeds"].append(entry)
            results["wall_s"] = time.monotonic() - t_start
            if a.save_models:
                (a.save_models / "drive.json").write_text(json.dumps(results, indent=1, default=str))
            if not a.no_eval:
                results["summary"] = summarize(results["seeds"])
                print(render(results["summary"], f"{sizes}; {seed} seed(s) done"), flush=True)
            if a.json:
                a.json.write_text(json.dumps(results, indent=1, default=str))
    finally:
        launcher.down(stack, [KAFKA, MLFLOW])
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    torch.set_num_threads(1)
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    if a.evaluate_saved is not None:
        evaluate_saved(a, log)
    else:
        drive_and_train(a, log)
    log(f"done in {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
