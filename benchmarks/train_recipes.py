"""Fine-tune recipes on the same uploads: how much of the fog gap each closes, and what it costs in phantom braking.

Reads the lakes a loop-efficacy run kept (``loop_efficacy.py --keep``: one state directory per seed and upload
policy, ``seed<N>-<arm>``, with the initial model the fleet drove and the all-conditions reference beside them),
fine-tunes the initial model on each lake's labelled frames with every ``--recipe`` (``fine_tune`` and the
candidate's carried uncertainty calibration, as the train stage does), and drives initial, reference and every
candidate on the loop benchmark's held-out evaluation scenes of that seed (``loop_efficacy.evaluate``'s seeds), in
steady fog 0.8 and in clear weather. Pooled over the lakes: (collisions + near misses) and phantom braking per
1,000 km with exact Poisson 95 % intervals, the share of the fog gap closed, progress against the expert. The train
stage's default recipe reproduces the loop benchmark's candidate to the digit (same frames, seed, order).
``replay=R`` replays the lake's replay set at that share of the label loss (ADR 0199; a lake kept before there was
one gets the loop bootstrap's, made again), ``replay=0`` trains on the uploads alone.

    python benchmarks/loop_efficacy.py --seeds 5 --seed-base 21 --arms value,random --keep   # prints its state dir
    python benchmarks/train_recipes.py --root /tmp/fleetloop-loop-XXXX --arm value \\
        --recipe anchor=30,share=0.5,epochs=4 --recipe share=0.5,replay=0.4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fleetloop.pipelines.gates import rate_per_1000km
from fleetloop.pipelines.train import TrainConfig

DT_S = 0.1
RECIPE_KEYS = {
    "anchor": "anchor_weight",
    "share": "hazard_share",
    "epochs": "epochs",
    "balance": "balance_hazard",
    "replay": "replay_share",
}


def parse_recipe(text: str) -> dict[str, Any]:
    """``anchor=10,share=0.25,epochs=8`` -> ``TrainConfig`` fields (``balance=0`` turns balancing off)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in RECIPE_KEYS or not value:
            raise ValueError(f"recipe part {part!r}: use {', '.join(k + '=VALUE' for k in RECIPE_KEYS)}")
        field = RECIPE_KEYS[key]
        out[field] = (
            int(value) if field == "epochs" else bool(int(value)) if field == "balance_hazard" else float(value)
        )
    return out


def lakes(root: Path, arm: str) -> list[tuple[int, Path]]:
    found = sorted(
        (int(p.name[4:].split("-")[0]), p) for p in root.glob(f"seed*-{arm}") if (p / "datasets" / "labelled").is_dir()
    )
    if not found:
        raise SystemExit(f"no lake seed<N>-{arm} with labelled datasets under {root} (run loop_efficacy.py --keep)")
    return found


def replay_set(lake: Path) -> dict[str, torch.Tensor]:
    """The lake's replay set, or for a lake kept before there was one, the same set made again: the loop's bootstrap
    frames (clear, seed 0, 3,072 vehicles x 300 ticks) sampled as ``model bootstrap`` samples them."""
    from fleetloop.edge_agent.bootstrap import BootstrapConfig, collect_expert_frames
    from fleetloop.pipelines.replay import REPLAY_FRAMES, read_replay_set, sample_frames

    found = read_replay_set(lake)
    if found is not None:
        return found[0]
    return sample_frames(collect_expert_frames(BootstrapConfig(weather="clear", seed=0)), REPLAY_FRAMES, 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="a loop_efficacy.py --keep state directory")
    p.add_argument("--arm", default="value", help="whose uploads: the lakes seed<N>-<arm>")
    p.add_argument("--recipe", action="append", default=[], help="anchor=W,share=S,epochs=N (repeatable)")
    p.add_argument("--eval-vehicles", type=int, default=512)
    p.add_argument("--eval-ticks", type=int, default=400)
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.loop_efficacy import EVAL_CONDITIONS, evaluate
    from fleetloop.edge_agent.model_artifact import LoadedPolicy, load_artifact
    from fleetloop.pipelines.datasets import list_labelled
    from fleetloop.pipelines.train import build_training_set, fine_tune, uncertainty_calibration

    recipes = {r: parse_recipe(r) for r in a.recipe} or {"train stage default": {}}
    torch.set_num_threads(1)
    found = lakes(a.root, a.arm)
    initial_path = next((found[0][1] / "sim" / "models").rglob("*.safetensors"))
    initial = load_artifact(initial_path)
    reference = load_artifact(next((a.root / "reference").rglob("*.safetensors")))
    runs: dict[str, list[dict[str, Any]]] = {}
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    replay: dict[str, torch.Tensor] | None = None
    for seed, lake in found:
        ts = build_training_set(list_labelled(lake))
        if replay is None:
            replay = replay_set(lake)
        models: dict[str, Any] = {"initial": initial, "reference": reference}
        for name, fields in recipes.items():
            cfg = dataclasses.replace(TrainConfig(seed=seed, max_seconds=600.0, torch_threads=1), **fields)
            model, _ = fine_tune(initial.model, ts.with_replay(replay) if cfg.replay_share else ts, cfg)
            metrics = {**initial.metadata.metrics, **uncertainty_calibration(model, initial, ts.data, cfg)}
            meta = dataclasses.replace(initial.metadata, metrics=metrics)
            models[name] = LoadedPolicy(model=model, metadata=meta, sha256="")
        ev = evaluate(models, seed, a, lambda m, name=lake.name: log(f"{name}: {m}"))
        for key, run in ev.items():
            runs.setdefault(key, []).append(run)
    print(render(runs, len(found), a, EVAL_CONDITIONS))
    return 0


def render(runs: dict[str, list[dict[str, Any]]], n: int, a: argparse.Namespace, conds: Any) -> str:
    def rate(model: str, cond: str, count: Any) -> Any:
        rs = runs[f"{model}|{cond}"]
        return rate_per_1000km(sum(count(r) for r in rs), sum(r["km"] for r in rs))

    def safety(r: dict[str, Any]) -> int:
        return int(r["counts"]["collisions"]) + int(r["counts"]["near_misses"])

    def phantom(r: dict[str, Any]) -> int:
        return int(r["counts"]["phantom_brakes"])

    def jerks(r: dict[str, Any]) -> int:
        return int(r["counts"]["harsh_jerks"])

    models = list(dict.fromkeys(k.split("|")[0] for k in runs))
    init, ref = rate("initial", "fog", safety).per_1000_km, rate("reference", "fog", safety).per_1000_km
    lines = [
        f"fine-tune recipes on the {a.arm} uploads of {n} loop turn(s) under {a.root}; eval {a.eval_vehicles} "
        f"vehicles x {a.eval_ticks * DT_S:g} s per model x condition x seed",
        "",
        "| model | fog (coll+nm)/1000 km | gap closed | phantom fog /1000 km | phantom clear /1000 km | "
        "clear (coll+nm)/1000 km | harsh jerks fog / clear /1000 km | progress fog | progress clear |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        fog = rate(m, "fog", safety)
        gap = (init - fog.per_1000_km) / (init - ref) if init != ref else float("nan")
        prog = {c: sum(r["km"] / r["expert_km"] for r in runs[f"{m}|{c}"] if r["expert_km"] > 0) / n for c in conds}

        def ci(r: Any) -> str:
            return f"{r.per_1000_km:.0f} [{r.ci_low:.0f}, {r.ci_high:.0f}]"

        lines.append(
            f"| {m} | {ci(fog)} | {gap:.2f} | {ci(rate(m, 'fog', phantom))} | {ci(rate(m, 'clear', phantom))} | "
            f"{ci(rate(m, 'clear', safety))} | {rate(m, 'fog', jerks).per_1000_km:.0f} / "
            f"{rate(m, 'clear', jerks).per_1000_km:.0f} | {prog['fog']:.3f} | {prog['clear']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
