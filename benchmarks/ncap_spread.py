"""Euro NCAP points from run to run: how far one model's points move on sensor noise alone, and how often the validate
stage's points gate would reject a model compared with itself.

The validate stage drives the whole matrix for the candidate and the baseline on the suite's first seed and fails
a candidate that earns fewer points than the baseline minus ``GateConfig.ncap_points_margin`` in any condition and
group (ADR 0117: "0 until a measured run-to-run spread says otherwise"). Here every model drives the matrix on
``--seeds`` seeds of the held-out range; every ordered pair of seeds (a as the baseline, b as the candidate) is one
validation of a model against itself, and the table says at which margin how many of them would fail.

    python benchmarks/ncap_spread.py --model production.safetensors --seeds 8
    python benchmarks/ncap_spread.py --quick          # the fallback alone, 2 seeds, 2 conditions
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fleetloop.edge_agent.model_artifact import LoadedPolicy, load_artifact
from fleetloop.edge_agent.ncap_run import drive_ncap_matrix, score_conditions
from fleetloop.pipelines.suite import HELD_OUT_SEED_BASE, default_suite
from fleetloop.sim.ncap import GROUPS

MARGINS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
Points = dict[str, dict[str, float]]  # condition -> group -> points


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def points_on_seed(policy: LoadedPolicy | None, catalogue: Mapping[str, Any], seed: int, device: str) -> Points:
    rows = drive_ncap_matrix(policy, tuple(catalogue), catalogue=catalogue, seed=seed, device=device)
    scores = score_conditions(rows, totals=())
    return {cond: {g: float(groups[g].points) for g in GROUPS} for cond, groups in scores.items()}


def worst_loss(baseline: Points, candidate: Points) -> float:
    """The largest loss of any condition x group (the gate fails when it exceeds the margin)."""
    return max(baseline[c][g] - candidate[c][g] for c in baseline for g in baseline[c])


def rejected_share(per_seed: Sequence[Points], margin: float) -> tuple[int, int]:
    """(pairs the gate rejects at ``margin``, ordered pairs of distinct seeds)."""
    pairs = list(itertools.permutations(range(len(per_seed)), 2))
    return sum(worst_loss(per_seed[a], per_seed[b]) > margin + 1e-9 for a, b in pairs), len(pairs)


def spread_rows(per_seed: Sequence[Points]) -> list[dict[str, Any]]:
    rows = []
    for cond in per_seed[0]:
        for g in per_seed[0][cond]:
            xs = [p[cond][g] for p in per_seed]
            rows.append({"condition": cond, "group": g, "min": min(xs), "max": max(xs), "spread": max(xs) - min(xs)})
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [f"Euro NCAP points from run to run ({result['sizes']})", ""]
    for name, m in result["models"].items():
        lines += [f"{name}: points per condition and group over {len(m['seeds'])} seeds (max - min)", ""]
        lines += ["| condition | " + " | ".join(GROUPS) + " |", "|---|" + "---:|" * len(GROUPS)]
        by_cond: dict[str, dict[str, dict[str, float]]] = {}
        for r in m["spread"]:
            by_cond.setdefault(r["condition"], {})[r["group"]] = r
        for cond, groups in by_cond.items():
            cells = [f"{groups[g]['min']:g}-{groups[g]['max']:g} ({groups[g]['spread']:g})" for g in GROUPS]
            lines.append(f"| {cond} | " + " | ".join(cells) + " |")
        lines += ["", "| margin [points] | " + " | ".join(f"{x:g}" for x in MARGINS) + " |"]
        lines.append("|---|" + "---:|" * len(MARGINS))
        cells = [f"{r['rejected']}/{r['pairs']}" for r in m["gate"]]
        lines += ["| the model rejected against itself | " + " | ".join(cells) + " |", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], help="model artifact (repeat; none: the fallback alone)")
    p.add_argument("--seeds", type=int, default=6, help="seeds of the held-out range each model drives")
    p.add_argument("--conditions", nargs="+", default=None, help="suite conditions (default: the default suite's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", metavar="FILE", help="write the result as one JSON document ('-': stdout)")
    p.add_argument("--quick", action="store_true", help="smoke size: 2 seeds, clear and fog 0.8")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(seeds=2, conditions=["clear", "fog_0.8"])
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    suite = default_suite()
    catalogue = {s.condition.name: s.condition.patches for s in suite.slices}
    if a.conditions:
        unknown = sorted(set(a.conditions) - set(catalogue))
        if unknown:
            p.error(f"unknown conditions {unknown}; the suite's are {sorted(catalogue)}")
        catalogue = {c: catalogue[c] for c in a.conditions}
    models: dict[str, LoadedPolicy | None] = {Path(m).stem: load_artifact(m) for m in a.model} or {"fallback": None}
    seeds = [HELD_OUT_SEED_BASE + i for i in range(a.seeds)]
    sizes = f"{len(models)} model(s) x {len(seeds)} seeds x {', '.join(catalogue)}, {a.device}"
    log(f"ncap spread: {sizes}")
    t0 = time.monotonic()
    out: dict[str, Any] = {"sizes": sizes, "margins": list(MARGINS), "models": {}}
    for name, policy in models.items():
        per_seed = []
        for s in seeds:
            per_seed.append(points_on_seed(policy, catalogue, s, a.device))
            log(f"{name}: seed {s} driven ({time.monotonic() - t0:.0f} s)")
        gate = []
        for margin in MARGINS:
            rejected, pairs = rejected_share(per_seed, margin)
            gate.append({"margin": margin, "rejected": rejected, "pairs": pairs})
        out["models"][name] = {"seeds": seeds, "points": per_seed, "spread": spread_rows(per_seed), "gate": gate}
    out["wall_s"] = time.monotonic() - t0
    if a.json == "-":
        print(json.dumps(out))
        return
    print(render(out))
    print(f"\n{out['wall_s']:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
