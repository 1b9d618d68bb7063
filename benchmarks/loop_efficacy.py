"""Loop efficacy: does one turn of the data loop make a fleet that drives into fog safer?

One private stack (real Kafka broker and MLflow, started through the launcher in a temporary state directory):

1. the initial model: ``model bootstrap`` (clear weather), registered and released as production (genesis);
   the all-conditions reference (``BootstrapConfig(weather="all")``): trained the same way, never registered;
2. per seed and per upload policy (``triggers``: the vehicles' triggers within the budget; ``value``: the safety
   triggers and a sample weighted by what a clip would teach, ADR 0122; ``random``: only the random sample, tuned to
   fill the same budget as the arm before it): a fleet on the production model drives ``mixed`` scenes in clear
   weather into a fog bank that rolls in at ``--fog-onset-s``; its uploads go through the broker (``sim.simulate``)
   -> collect -> ground truth -> label -> train (fine-tunes production, MLflow run) -> validate (gates on a small
   held-out suite, registered as ``staging`` or ``rejected``); each policy has its own lake (state directory) and
   the loop runs once after the fleet run;
3. closed-loop evaluation on held-out scenes (seeds >= ``suite.HELD_OUT_SEED_BASE``, never used for training or
   validation): the initial model, both candidates and the reference, each with the fallback, in steady fog 0.8
   and in clear weather.

Rates are per 1,000 km with exact Poisson 95 % intervals over all seeds pooled (``gates.rate_per_1000km``); the
share of the gap closed and times are means over seeds with Student-t 95 % intervals (``gates.mean_ci``). Every arm
is judged on every seed: a turn that produced no candidate leaves the fleet on the initial model, and counts so.

    python benchmarks/loop_efficacy.py --quick            # a small smoke version (1 seed)
    python benchmarks/loop_efficacy.py --seeds 5          # the benchmark (see BENCHMARKS.md for sizes)
    python benchmarks/loop_efficacy.py --seeds 5 --seed-base 11   # seeds 11-15: a block nobody tuned on
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fleetloop.pipelines.gates import mean_ci, rate_per_1000km
from fleetloop.pipelines.suite import CONDITIONS, HELD_OUT_SEED_BASE, HeldOutSuite, SuiteSlice
from fleetloop.pipelines.train import TrainConfig
from fleetloop.platform.settings import Settings

ARMS = ("triggers", "value", "random")
MODELS = ("initial", "candidate:triggers", "candidate:value", "candidate:random", "reference")
EVAL_CONDITIONS = {"fog": "fog_0.8", "clear": "clear"}
EVAL_SEED_OFFSET = 500  # held-out evaluation seeds: HELD_OUT_SEED_BASE + this + seed
VALIDATE_SEED_OFFSET = 200  # the validate stage's suite seeds: HELD_OUT_SEED_BASE + this + seed (+ 100 per extra seed)
VALIDATE_SEED_STRIDE = 100  # ... so a turn's validate seeds stay below the evaluation's while seeds < 100
DT_S = 0.1  # [s] tick


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_settings(root: Path) -> Settings:
    libs = os.environ.get("FLEETLOOP_KAFKA_LIBS_DIR") or str(Path.home() / ".cache" / "fleetloop" / "kafka-libs")
    return Settings.model_validate(
        {
            "state_dir": root / "stack",
            "kafka_port": free_port(),
            "kafka_controller_port": free_port(),
            "mlflow_port": free_port(),
            "kafka_libs_dir": Path(libs),
            "kafka_heap_mb": 512,
        }
    )


def arm_settings(stack: Settings, root: Path, seed: int, arm: str) -> Settings:
    """The stack's broker and MLflow, but a lake (state directory) of this seed and upload policy alone."""
    return stack.model_copy(
        update={
            "state_dir": root / f"seed{seed}-{arm}",
            "kafka_bootstrap": stack.bootstrap_servers,
            "mlflow_tracking_uri": stack.tracking_uri,
        }
    )


def seed_replay(stack: Settings, lake: Settings) -> None:
    """The lake starts with the replay set the bootstrap wrote to the stack's (the first model's frames), as a
    fleet's one lake holds it; a copy, so no arm's lake changes another's."""
    import shutil

    from fleetloop.pipelines.replay import replay_path

    src, dst = replay_path(stack.state_dir), replay_path(lake.state_dir)
    if src.exists() and not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def trigger_config(arm: str, budget: float, match_share: float | None = None) -> Any:
    """``triggers`` and ``value``: the vehicles' ``triggers`` and ``valued`` upload policies (``sim run --uploads``);
    ``random``: only the random sample, under the same budget, drawn at a rate that uploads about ``match_share`` of
    the frames (what the arm before it uploaded in the same seed), so both send about as many frames; the shares
    actually uploaded are reported side by side."""
    from fleetloop.edge_agent.triggers import upload_policy

    if arm in ("triggers", "value"):
        return upload_policy("valued" if arm == "value" else "triggers", budget, DT_S)
    cfg = upload_policy("random", budget, DT_S)
    return dataclasses.replace(cfg, sample_rate=cfg.fill_rate(match_share))


def validate_suite(seed: int, vehicles: int, ticks: int, seeds: int = 1) -> HeldOutSuite:
    """The validate stage's suite of a loop turn: ``mixed`` scenes in clear, fog 0.8 and rain 0.7, driven on
    ``seeds`` held-out seeds (as many as the stage's ``default_suite``: with one, an improvement gate in fog rests
    on a handful of events, ADR 0196), all apart from the evaluation's."""
    most = (EVAL_SEED_OFFSET - VALIDATE_SEED_OFFSET) // VALIDATE_SEED_STRIDE
    if not 1 <= seeds <= most:
        raise ValueError(f"validate seeds must be 1..{most} to stay apart from the evaluation's, got {seeds}")
    slices = tuple(SuiteSlice("mixed", CONDITIONS[c], vehicles, ticks) for c in ("clear", "fog_0.8", "rain_0.7"))
    first = HELD_OUT_SEED_BASE + VALIDATE_SEED_OFFSET + seed
    return HeldOutSuite(f"loop-validate-{seed}", slices, tuple(first + k * VALIDATE_SEED_STRIDE for k in range(seeds)))


def run_arm(
    stack: Settings,
    root: Path,
    seed: int,
    arm: str,
    a: argparse.Namespace,
    log: Any,
    match_share: float | None = None,
    buffer_seconds: float | None = None,
) -> dict[str, Any]:
    """One loop turn: fleet into fog -> broker -> collect -> ground truth -> label -> train -> validate.

    ``buffer_seconds``: the vehicles' on-board rings are this long and saved for federated rounds, as
    ``sim run --buffer-seconds`` does (benchmarks/federation_gap.py); None: the default ring, nothing saved."""
    from fleetloop.cli.sim import simulate
    from fleetloop.pipelines.collect import run_collect
    from fleetloop.pipelines.ground_truth import run_ground_truth
    from fleetloop.pipelines.label import label_pending
    from fleetloop.pipelines.train import run_train
    from fleetloop.pipelines.validate import ValidateConfig, validate_candidate

    s = arm_settings(stack, root, seed, arm)
    seed_replay(stack, s)
    onset_ticks = round(a.fog_onset_s / DT_S)
    done = [0]
    onset_wall: list[float] = []

    def progress(part: dict[str, int]) -> None:
        done[0] += part["ticks"]
        if not onset_wall and done[0] >= onset_ticks:
            onset_wall.append(time.monotonic())

    t0 = time.monotonic()
    fleet = simulate(
        s,
        vehicles=a.vehicles,
        minutes=a.minutes,
        scenario="mixed",
        weather="clear",
        seed=seed,
        fleet_tag=f"s{seed}{arm[0]}",
        on_progress=progress,
        fog_onset_s=a.fog_onset_s,
        triggers=trigger_config(arm, a.budget, match_share),
        buffer_seconds=buffer_seconds,
    )
    t_fleet = time.monotonic()
    onset = onset_wall[0] if onset_wall else t0
    col = run_collect(s).as_dict()
    gt = run_ground_truth(s).as_dict()
    lab, _ = label_pending(s.state_dir)
    t_label = time.monotonic()
    tr = run_train(s, train_config(a, seed))
    t_train = time.monotonic()
    out: dict[str, Any] = {
        "seed": seed,
        "arm": arm,
        "fleet_km": fleet["km"],
        "fleet_by_condition_km": {c: g["km"] for c, g in fleet["by_condition"].items()},
        "frames_written": fleet["counts"]["buffer"]["frames_written"],
        "frames_uploaded": fleet["counts"]["uploads"]["frames_uploaded"],
        "telemetry": fleet["counts"].get("telemetry", {}),
        "rows_collected": col["rows_collected"],
        "dead_lettered": col["dead_lettered_total"],
        "ground_truth_rows": gt["rows_collected"],
        "labelled_frames": lab.frames,
        "labelled_valid": lab.labelled_valid,
        "label_conditions": lab.conditions,
        "label_quality": {k: v for k, v in lab.quality.items() if isinstance(v, int | float)},
        "train_status": tr.status,
        "train_reason": tr.reason,
        "train_frames": tr.frames,
        "train_conditions": tr.conditions,
        "train_replay_frames": tr.replay.get("frames", 0),
        "fleet_wall_s": t_fleet - t0,
        "collect_label_wall_s": t_label - t_fleet,
        "train_wall_s": t_train - t_label,
    }
    log(
        f"seed {seed} {arm}: {out['frames_uploaded']} of {out['frames_written']} frames uploaded, "
        f"{out['rows_collected']} collected, {lab.labelled_valid} valid labels, train {tr.status} {tr.reason}"
    )
    if tr.event is None:
        return out
    vcfg = ValidateConfig(suite=validate_suite(seed, a.validate_vehicles, a.validate_ticks, a.validate_seeds))
    val = validate_candidate(s, tr.event, vcfg)
    t_val = time.monotonic()
    out.update(
        {
            "version": val.version,
            "stage": val.stage,
            "passed": val.passed,
            "gate_reasons": val.reasons,
            "validate_wall_s": t_val - t_train,
            "onset_to_validated_s": t_val - onset,
            "candidate_path": str(download_version(s, val.version, root / f"cand-{seed}-{arm}")),
        }
    )
    log(
        f"seed {seed} {arm}: v{val.version} {val.stage} ({'; '.join(val.reasons)[:200]}), "
        f"fog onset -> validated {out['onset_to_validated_s']:.0f} s"
    )
    return out


def train_config(a: argparse.Namespace, seed: int) -> TrainConfig:
    """How a loop turn fine-tunes its candidate (the --train-* options, --anchor-weight, --no-balance,
    --hazard-share, --replay-share)."""
    return TrainConfig(
        seed=seed,
        epochs=a.train_epochs,
        max_seconds=a.train_max_s,
        torch_threads=1,
        anchor_weight=a.anchor_weight,
        balance_hazard=not a.no_balance,
        hazard_share=a.hazard_share,
        replay_share=a.replay_share,
    )


def bootstrap_models(
    stack: Settings, root: Path, a: argparse.Namespace, actor: str, log: Any
) -> tuple[dict[str, Any], Path]:
    """The initial (clear) model bootstrapped into production on ``stack`` (its ``bootstrap`` record: ``artifact``,
    ``production``), and the path of the all-conditions reference, trained the same way under ``root/reference``
    and never registered; both sized by ``a.bootstrap_*``."""
    from fleetloop.cli.model_bootstrap import bootstrap  # Typer and rich load only here, with the stack
    from fleetloop.edge_agent.bootstrap import BootstrapConfig, bootstrap_initial_model

    init = bootstrap(
        stack,
        seed=0,
        vehicles=a.bootstrap_vehicles,
        ticks=a.bootstrap_ticks,
        max_train_s=a.bootstrap_train_s,
        epochs=a.bootstrap_epochs,
        actor=actor,
    )
    log(f"initial model v{init['production']} in production; training the all-conditions reference")
    imitation = BootstrapConfig().imitation
    ref_path, _ = bootstrap_initial_model(
        BootstrapConfig(
            weather="all",
            seed=0,
            vehicles=a.bootstrap_vehicles,
            ticks=a.bootstrap_ticks,
            output_dir=root / "reference",
            imitation=dataclasses.replace(
                imitation, max_seconds=a.bootstrap_train_s, epochs=a.bootstrap_epochs or imitation.epochs
            ),
        )
    )
    return init, ref_path


def download_version(s: Settings, version: str | None, dst: Path) -> Path:
    from fleetloop.platform.registry import open_registry

    return open_registry(s).download_model(s.model_name, str(version), dst)


def evaluate(models: dict[str, Any], seed: int, a: argparse.Namespace, log: Any) -> dict[str, dict[str, Any]]:
    """Closed loop on held-out scenes: every model (``LoadedPolicy``, with the fallback and its arbiter calibrated
    to the model as deployed) in steady fog and in clear weather."""
    from fleetloop.edge_agent.arbiter import ArbiterConfig
    from fleetloop.pipelines.validate import run_slice

    out: dict[str, dict[str, Any]] = {}
    for cond, cname in EVAL_CONDITIONS.items():
        sl = SuiteSlice("mixed", CONDITIONS[cname], a.eval_vehicles, a.eval_ticks)
        for label, model in models.items():
            threshold = ArbiterConfig.for_model(model.metadata).max_uncertainty
            seed_ = HELD_OUT_SEED_BASE + EVAL_SEED_OFFSET + seed
            r = run_slice(model.model, sl, seed_, getattr(a, "device", "cpu"), max_uncertainty_mps2=threshold)
            out[f"{label}|{cond}"] = {"km": r.km, "expert_km": r.expert_km, "counts": dict(r.counts)}
        log(f"seed {seed} evaluated in {cond}")
    return out


# -- the table ------------------------------------------------------------------------------------------------


def _safety(run: dict[str, Any]) -> int:
    return int(run["counts"]["collisions"]) + int(run["counts"]["near_misses"])


def _per_km(runs: list[dict[str, Any]], count: Any) -> dict[str, float]:
    r = rate_per_1000km(sum(count(x) for x in runs), sum(x["km"] for x in runs))
    return {"rate": r.per_1000_km, "lo": r.ci_low, "hi": r.ci_high, "count": r.count, "km": r.km}


def _as_deployed(ev: dict[str, Any], arm: str, cond: str) -> dict[str, Any]:
    """The fleet after an arm's turn: its candidate, or the initial model when the turn produced none."""
    return ev.get(f"candidate:{arm}|{cond}", ev[f"initial|{cond}"])


def _as_promoted(seed: dict[str, Any], arm: str, cond: str) -> dict[str, Any]:
    """The fleet after an arm's turn if only a candidate that passed the gates replaces production."""
    ev = seed["eval"]
    if seed["arms"][arm].get("passed") and f"candidate:{arm}|{cond}" in ev:
        return ev[f"candidate:{arm}|{cond}"]
    return ev[f"initial|{cond}"]


def _gap_closed(seed: dict[str, Any], arm: str, promoted: bool = False) -> float:
    """The share of this seed's fog gap (initial - reference, collisions + near misses per km) the arm's turn closed:
    with its candidate, or (``promoted``) with what production is after the gates; NaN without a gap."""
    ev = seed["eval"]
    rate = {m: 1000.0 * _safety(ev[f"{m}|fog"]) / ev[f"{m}|fog"]["km"] for m in ("initial", "reference")}
    dep = _as_promoted(seed, arm, "fog") if promoted else _as_deployed(ev, arm, "fog")
    gap = rate["initial"] - rate["reference"]
    return (rate["initial"] - 1000.0 * _safety(dep) / dep["km"]) / gap if gap > 0 else math.nan


def paired_with_random(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each selection against random uploads on the same seeds (same fleet, same evaluation scenes): the per-seed
    difference of the gap closed, with its t interval, for the candidates and for production after the gates."""
    out: dict[str, Any] = {}
    for arm in ARMS:
        both = [
            s for s in seeds if arm != "random" and {arm, "random"} <= set(s["arms"]) and "initial|fog" in s["eval"]
        ]
        if both:
            out[arm] = {
                key: dataclasses.asdict(
                    mean_ci(_gap_closed(s, arm, promoted) - _gap_closed(s, "random", promoted) for s in both)
                )
                for key, promoted in (("candidates", False), ("promoted", True))
            }
    return out


def summarize(seeds: list[dict[str, Any]], budget: float | None = None) -> dict[str, Any]:
    """Pooled rates with exact intervals, and per-seed shares with t intervals. Each arm's gap and counter-metrics
    are over every seed (a seed without a candidate keeps the initial model); ``budget``: the upload share the
    arms were given, reported beside what they uploaded."""
    models: dict[str, Any] = {}
    for m in MODELS:
        for cond in EVAL_CONDITIONS:
            runs = [s["eval"][f"{m}|{cond}"] for s in seeds if f"{m}|{cond}" in s["eval"]]
            if not runs:
                continue
            models[f"{m}|{cond}"] = {
                "seeds": len(runs),
                "coll_nm": _per_km(runs, _safety),
                "collisions": _per_km(runs, lambda x: x["counts"]["collisions"]),
                "phantom": _per_km(runs, lambda x: x["counts"]["phantom_brakes"]),
                "progress": dataclasses.asdict(mean_ci(x["km"] / x["expert_km"] for x in runs if x["expert_km"] > 0)),
            }
    arms: dict[str, Any] = {}
    for arm in ARMS:
        turns = [s["arms"][arm] for s in seeds if arm in s["arms"]]
        if not turns:
            continue
        judged = [s for s in seeds if arm in s["arms"] and "initial|fog" in s["eval"]]
        gaps = [_gap_closed(s, arm) for s in judged]
        pooled = {}
        for m in ("initial", "reference"):
            pooled[m] = _per_km([s["eval"][f"{m}|fog"] for s in judged], _safety)["rate"] if judged else math.nan
        deployed = {c: [_as_deployed(s["eval"], arm, c) for s in judged] for c in EVAL_CONDITIONS}
        pooled[f"candidate:{arm}"] = _per_km(deployed["fog"], _safety)["rate"] if judged else math.nan
        pooled_gap = pooled["initial"] - pooled["reference"]
        promoted = _per_km([_as_promoted(s, arm, "fog") for s in judged], _safety)["rate"] if judged else math.nan
        counter: dict[str, Any] = {}
        for c in EVAL_CONDITIONS:
            init_runs = [s["eval"][f"initial|{c}"] for s in judged]
            if not init_runs:
                continue
            phantom = lambda x: x["counts"]["phantom_brakes"]  # noqa: E731
            counter[c] = {
                "coll_nm": _per_km(deployed[c], _safety)["rate"],
                "initial_coll_nm": _per_km(init_runs, _safety)["rate"],
                "phantom": _per_km(deployed[c], phantom)["rate"],
                "initial_phantom": _per_km(init_runs, phantom)["rate"],
            }
        share = mean_ci(t["frames_uploaded"] / t["frames_written"] for t in turns)
        arms[arm] = {
            "turns": len(turns),
            "upload_share": dataclasses.asdict(share),
            "budget": budget,
            "upload_share_of_budget": share.mean / budget if budget else math.nan,
            "no_candidate": sum("candidate_path" not in t for t in turns),
            "deployed_vs_initial": counter,
            "valid_labels": dataclasses.asdict(mean_ci(t["labelled_valid"] for t in turns)),
            "fog_share_of_labels": dataclasses.asdict(
                mean_ci(
                    t["label_conditions"].get("fog", 0) / max(1, sum(t["label_conditions"].values())) for t in turns
                )
            ),
            "gap_closed_per_seed": gaps,
            "gap_closed": dataclasses.asdict(mean_ci(gaps)),
            "gap_closed_pooled": (pooled["initial"] - pooled[f"candidate:{arm}"]) / pooled_gap
            if pooled_gap > 0
            else math.nan,
            "gap_closed_promoted": (pooled["initial"] - promoted) / pooled_gap if pooled_gap > 0 else math.nan,
            "passed_gates": sum(bool(t.get("passed")) for t in turns),
            "onset_to_validated_s": dataclasses.asdict(
                mean_ci(t["onset_to_validated_s"] for t in turns if "onset_to_validated_s" in t)
            ),
        }
    return {"models": models, "arms": arms, "paired_with_random": paired_with_random(seeds)}


def _ci(d: dict[str, float], digits: int = 0) -> str:
    if d.get("rate", d.get("mean")) is None or not math.isfinite(d.get("rate", d.get("mean", math.nan))):
        return "-"
    v = d.get("rate", d.get("mean"))
    lo, hi = d.get("lo", d.get("ci_low")), d.get("hi", d.get("ci_high"))
    return f"{v:,.{digits}f} [{lo:,.{digits}f}, {hi:,.{digits}f}]"


def render(summary: dict[str, Any], sizes: str) -> str:
    lines = [
        f"loop efficacy ({sizes})",
        "",
        "| model (+ fallback) | condition | seeds | km | (coll+nm)/1000 km | collisions/1000 km | phantom/1000 km "
        "| progress vs expert |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, m in summary["models"].items():
        model, cond = key.split("|")
        lines.append(
            f"| {model} | {cond} | {m['seeds']} | {m['coll_nm']['km']:,.0f} | {_ci(m['coll_nm'])} "
            f"| {_ci(m['collisions'])} | {_ci(m['phantom'])} | {_ci(m['progress'], 3)} |"
        )
    lines += [
        "",
        "| uploads | turns | share of frames uploaded | of the budget | valid labels | fog share of labels "
        "| gap closed in fog (mean over seeds) | gap closed (pooled rates) | passed gates "
        "| gap closed, only passed candidates deployed (pooled) | no candidate | fog onset -> validated [s] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, d in summary["arms"].items():
        of_budget = d.get("upload_share_of_budget", math.nan)
        budget_cell = f"{of_budget:.2f} of {d['budget']:g}" if math.isfinite(of_budget) else "-"
        lines.append(
            f"| {arm} | {d['turns']} | {_ci(d['upload_share'], 4)} "
            f"| {budget_cell} "
            f"| {_ci(d['valid_labels'])} | {_ci(d['fog_share_of_labels'], 2)} | {_ci(d['gap_closed'], 2)} "
            f"| {d['gap_closed_pooled']:.2f} | {d['passed_gates']}/{d['turns']} "
            f"| {d.get('gap_closed_promoted', math.nan):.2f} | {d.get('no_candidate', 0)} "
            f"| {_ci(d['onset_to_validated_s'])} |"
        )
    for arm, d in summary.get("paired_with_random", {}).items():
        lines.append(
            f"\n{arm} minus random on the same seeds, gap closed in fog (mean [95 % CI]): candidates "
            f"{_ci(d['candidates'], 2)}; production after the gates {_ci(d['promoted'], 2)}"
        )
    counter = [(arm, c, v) for arm, d in summary["arms"].items() for c, v in d.get("deployed_vs_initial", {}).items()]
    if counter:
        lines += [
            "",
            "| after the turn (every seed; no candidate = initial) | condition | (coll+nm)/1000 km vs initial "
            "| phantom/1000 km vs initial |",
            "|---|---|---:|---:|",
        ]
        lines += [
            f"| {arm} | {c} | {v['coll_nm']:,.0f} vs {v['initial_coll_nm']:,.0f} "
            f"| {v['phantom']:,.0f} vs {v['initial_phantom']:,.0f} |"
            for arm, c, v in counter
        ]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="loop turns (fleet seeds base..base+N-1) and evaluation seeds")
    p.add_argument("--seed-base", type=int, default=1, help="the first seed of the block (e.g. 11: seeds 11..15)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"upload policies to run, of {', '.join(ARMS)}")
    p.add_argument("--vehicles", type=int, default=256, help="fleet vehicles driving into fog")
    p.add_argument("--minutes", type=float, default=10.0, help="simulated minutes of the fleet run")
    p.add_argument("--fog-onset-s", type=float, default=5.0, help="simulated time the fog bank starts forming [s]")
    p.add_argument("--budget", type=float, default=0.02, help="upload budget: share of frames (both policies)")
    p.add_argument("--no-random", action="store_true", help="skip the random-upload baseline")
    p.add_argument("--train-epochs", type=int, default=TrainConfig().epochs, help="train: passes over the uploads")
    p.add_argument("--train-max-s", type=float, default=60.0, help="wall-clock training budget per turn [s]")
    p.add_argument("--anchor-weight", type=float, default=TrainConfig().anchor_weight, help="train: pull to the parent")
    p.add_argument("--no-balance", action="store_true", help="train: do not balance hazard and normal frames")
    p.add_argument(
        "--hazard-share", type=float, default=TrainConfig().hazard_share, help="train: the hazard frames' loss weight"
    )
    p.add_argument(
        "--replay-share",
        type=float,
        default=TrainConfig().replay_share,
        help="train: the replayed frames' loss weight (the first model's frames; 0: uploads only)",
    )
    p.add_argument("--validate-vehicles", type=int, default=128)
    p.add_argument("--validate-ticks", type=int, default=300)
    p.add_argument(
        "--validate-seeds", type=int, default=3, help="held-out seeds of the validate suite (the stage's default: 3)"
    )
    p.add_argument("--eval-vehicles", type=int, default=128)
    p.add_argument("--eval-ticks", type=int, default=200)
    p.add_argument("--bootstrap-vehicles", type=int, default=3072)
    p.add_argument("--bootstrap-ticks", type=int, default=300)
    p.add_argument("--bootstrap-train-s", type=float, default=1200.0, help="bootstrap training cap [s]")
    p.add_argument(
        "--bootstrap-epochs",
        type=int,
        default=8,
        help="bootstrap epochs (with a generous --bootstrap-train-s, models then do not depend on the machine's load)",
    )
    p.add_argument("--quick", action="store_true", help="smoke version: 1 seed, small fleet and suites")
    p.add_argument("--json", type=Path, default=None, help="write every number here (rewritten after each seed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    a = p.parse_args(argv)
    arms = tuple(x.strip() for x in a.arms.split(",") if x.strip())
    if not arms or any(x not in ARMS for x in arms):
        p.error(f"--arms: name upload policies of {', '.join(ARMS)} separated by commas, got {a.arms!r}")
    if a.no_random:
        arms = tuple(x for x in arms if x != "random")
    if a.quick:
        a.seeds, a.vehicles, a.minutes, a.fog_onset_s = 1, 32, 1.0, 5.0
        a.validate_vehicles, a.validate_ticks, a.eval_vehicles, a.eval_ticks = 32, 100, 32, 100
        a.validate_seeds = 1
        a.bootstrap_vehicles, a.bootstrap_ticks, a.bootstrap_train_s, a.train_max_s = 256, 150, 10.0, 15.0
        a.bootstrap_epochs = 0  # the 10 s cap decides
    torch.set_num_threads(1)
    sizes = (
        f"{a.seeds} seed(s) from {a.seed_base}; arms {', '.join(arms)}; fleet {a.vehicles} vehicles x "
        f"{a.minutes:g} min, fog from {a.fog_onset_s:g} s, budget "
        f"{a.budget:g}; eval {a.eval_vehicles} vehicles x {a.eval_ticks * DT_S:g} s per model x condition x seed; "
        f"validate {a.validate_vehicles} x {a.validate_ticks * DT_S:g} s x 3 slices (clear, fog, rain) x "
        f"{a.validate_seeds} seed(s); bootstrap "
        f"{a.bootstrap_vehicles} x {a.bootstrap_ticks} ticks, "
        + (f"{a.bootstrap_epochs} epochs" if a.bootstrap_epochs else f"{a.bootstrap_train_s:g} s training")
    )
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    from fleetloop.edge_agent.model_artifact import load_artifact
    from fleetloop.platform import launcher
    from fleetloop.platform.services.kafka import SPEC as KAFKA
    from fleetloop.platform.services.mlflow_server import SPEC as MLFLOW

    root = Path(tempfile.mkdtemp(prefix="fleetloop-loop-"))
    stack = stack_settings(root)
    log(f"{sizes}; state in {root}")
    launcher.up(stack, [KAFKA, MLFLOW])
    results: dict[str, Any] = {"sizes": sizes, "args": {k: str(v) for k, v in vars(a).items()}, "seeds": []}
    try:
        log("stack up; bootstrapping the initial (clear) model")
        init, ref_path = bootstrap_models(stack, root, a, "loop-efficacy", log)
        initial = load_artifact(init["artifact"])
        reference = load_artifact(ref_path)
        results["bootstrap_wall_s"] = time.monotonic() - t_start
        for seed in range(a.seed_base, a.seed_base + a.seeds):
            entry: dict[str, Any] = {"seed": seed, "arms": {}, "eval": {}}
            models: dict[str, Any] = {"initial": initial, "reference": reference}
            share = None
            for arm in arms:
                turn = run_arm(stack, root, seed, arm, a, log, share)
                share = turn["frames_uploaded"] / max(1, turn["frames_written"])
                entry["arms"][arm] = turn
                if "candidate_path" in turn:
                    models[f"candidate:{arm}"] = load_artifact(turn["candidate_path"])
            entry["eval"] = evaluate(models, seed, a, log)
            results["seeds"].append(entry)
            results["summary"] = summarize(results["seeds"], a.budget)
            results["wall_s"] = time.monotonic() - t_start
            if a.json:
                a.json.write_text(json.dumps(results, indent=1, default=str))
            print(render(results["summary"], f"{sizes}; {len(results['seeds'])} seed(s) done"), flush=True)
    finally:
        launcher.down(stack, [KAFKA, MLFLOW])
        if not a.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    log(f"done in {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
