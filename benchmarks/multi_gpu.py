"""Fleet shards over several GPUs of one host: vehicle-steps/s with 1, 2, 4 and 8 GPUs, strong and weak scaling.

Usage::

    python benchmarks/multi_gpu.py --device cuda --max-gpus 8                  # 1, 2, 4, 8 GPUs
    python benchmarks/multi_gpu.py --device cuda --counts 1 2 4 --total 200000 --per-gpu 100000 --json
    python benchmarks/multi_gpu.py --device cpu --counts 1 2 --total 2000 --per-gpu 1000 --ticks 10

Each row is one ``ShardedFleet`` with the ``processes`` backend (spawned processes; CUDA initialised only inside
them): K shards of contiguous vehicle ids, shard i on ``cuda:(i % G)`` with G = min(K, visible GPUs), each with
the full loop (world + sensors + faults + conditions + batched policy on its own device + fallback + arbiter +
triggers + on-board buffer; an untrained ``FusionPolicy`` loaded from an artifact; no telemetry, no expert
reference) on mixed scenes in mixed weather. vehicle-steps/s = vehicles x ticks / wall seconds of
``advance(ticks)`` after ``advance(warmup)`` (process start-up excluded; every tick ends in a device sync).

- strong scaling: a fixed total fleet (``--total``) split over K shards;
- weak scaling: a fixed fleet per shard (``--per-gpu``), K x that in all.

Each row also gives every shard's own seconds per tick (timed inside the shard, ``ShardedFleet.last_busy_s``):
fastest and slowest shard, and the driver's overhead = wall per tick - slowest shard's. Shards run in lockstep,
so a K-shard row runs at its slowest shard. A shard's tick is bound by its one CPU thread (kernel launches and
host work), and on the multi-GPU machines lent here that thread's speed differs from process to process by up to
~1.6x, for a whole run (measured, issue 6 in docs/benchmarks-history.md): one sample of a K-shard row against
one sample of the 1-shard row is then mostly luck. ``--repeats R`` runs every row R times, each in fresh shard
processes, and reports the repeat with the median rate (all R rates are in the JSON); efficiencies use those medians.

Efficiency = rate_K / (G x rate_1), rate_1 the 1-GPU (1-shard) row of the same kind in the same call. When fewer
GPUs exist than K, the K shards share the available GPU(s): the row is labelled so and its efficiency is left
out, since it measures the code path (and how much sharing one GPU gives), not scaling. On the CPU each shard is a
process with ``--threads`` torch threads (efficiency given while K x threads <= CPUs). Strong-scaling rows also
say whether the merged event counts equal the 1-shard row's (same seed, same fleet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fleetloop.edge_agent.fleet import FleetConfig
from fleetloop.edge_agent.model_artifact import save_artifact
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig
from fleetloop.edge_agent.shards import ShardedFleet, ShardSpec

EVENT_KEYS = ("collisions", "near_misses", "hard_brakes", "phantom_brakes")


def run_one(args: argparse.Namespace, model_path: str | None, vehicles: int, shards: int, gpus: int) -> dict[str, Any]:
    """One sharded fleet: start it, warm up, time ``args.ticks`` ticks, close; returns the row."""
    config = FleetConfig(
        scenario="mixed", weather="mixed", seed=args.seed, device=args.device, progress_reference=False
    )
    spec = ShardSpec(
        config,
        tuple(range(vehicles)),
        model_paths={} if model_path is None else {"1": model_path},
        initial_version=None if model_path is None else "1",
        torch_threads=args.threads,
    )
    t_start = time.perf_counter()
    fleet = ShardedFleet(spec, shards, "processes", devices=gpus if args.device == "cuda" else None)
    try:
        startup = time.perf_counter() - t_start
        if args.warmup:
            fleet.advance(args.warmup)
        t0 = time.perf_counter()
        fleet.advance(args.ticks)
        wall = time.perf_counter() - t0
        busy = list(fleet.last_busy_s)
        summary = fleet.close().to_dict()
    finally:
        if not fleet.closed:
            fleet.kill()
    events = summary["events"]
    return {
        "shards": shards,
        "gpus": gpus,
        "vehicles": vehicles,
        "per_shard": vehicles // shards,
        "devices": [s.config.device for s in fleet.specs],
        "steps_per_s": vehicles * args.ticks / wall,
        "s_per_tick": wall / args.ticks,
        "shard_s_per_tick": [b / args.ticks for b in busy],
        "driver_overhead_s_per_tick": (wall - max(busy)) / args.ticks,
        "startup_s": startup,
        "events": {k: events.get(k) for k in EVENT_KEYS if k in events},
        "all_events": events,
        "fallback_activations": summary["fallback_activations"],
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (the lower middle one of an even count), with every run's rate beside it."""
    ranked = sorted(runs, key=lambda r: r["steps_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "repeats_steps_per_s": [r["steps_per_s"] for r in runs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8], help="GPU (shard) counts to run")
    p.add_argument("--max-gpus", type=int, default=8, help="leave out counts above this")
    p.add_argument("--total", type=int, default=200_000, help="strong scaling: the fixed total fleet")
    p.add_argument("--per-gpu", type=int, default=100_000, help="weak scaling: the fixed fleet per GPU (shard)")
    p.add_argument("--modes", nargs="+", choices=("strong", "weak"), default=["strong", "weak"])
    p.add_argument("--ticks", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads per shard (0: 2 on cuda, 1 on cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeats", type=int, default=1, help="runs of every row, each in fresh shard processes; the median is kept"
    )
    p.add_argument("--fallback-only", action="store_true", help="no policy model (no batched inference)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--json-out", help="also write that JSON object to this file")
    args = p.parse_args()
    if args.threads == 0:
        args.threads = 2 if args.device == "cuda" else 1
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    counts = sorted({k for k in args.counts if 1 <= k <= args.max_gpus} | {1})
    # Counting GPUs does not initialise CUDA here; only the shard processes do.
    visible = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and visible == 0:
        p.error("--device cuda, but torch sees no CUDA device")

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_path = None
        if not args.fallback_only:
            torch.manual_seed(args.seed)
            model_path = str(save_artifact(Path(tmp) / "policy.safetensors", FusionPolicy(PolicyConfig())))
        for mode in args.modes:
            base: dict[str, Any] | None = None
            for k in counts:
                gpus = min(k, visible) if args.device == "cuda" else 0
                vehicles = args.total if mode == "strong" else args.per_gpu * k
                runs = [run_one(args, model_path, vehicles, k, gpus) for _ in range(args.repeats)]
                row = {"mode": mode, **median_run(runs)}
                if base is None:
                    base = row
                cpus = os.cpu_count() or 1
                true_scaling = gpus == k if args.device == "cuda" else k * args.threads <= cpus
                row["vs_1"] = row["steps_per_s"] / base["steps_per_s"]
                row["efficiency"] = row["steps_per_s"] / (k * base["steps_per_s"]) if true_scaling else None
                if args.device == "cuda":
                    row["label"] = f"{k} GPU(s)" if true_scaling else f"{k} shards sharing {gpus} GPU(s) (code path)"
                else:
                    row["label"] = f"{k} CPU process(es) x {args.threads} thread(s)"
                same = row["all_events"] == base["all_events"]
                row["events_equal_1_shard"] = same if mode == "strong" else None
                rows.append(row)
                print(
                    f"[{mode}] {row['label']}: {row['vehicles']} vehicles, {row['steps_per_s']:,.0f} vehicle-steps/s, "
                    f"start-up {row['startup_s']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    meta: dict[str, Any] = {
        "device": args.device,
        "visible_gpus": visible,
        "driver_cuda_initialised": torch.cuda.is_initialized(),  # False: CUDA lived only in the shards
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads_per_shard": args.threads,
        "ticks": args.ticks,
        "warmup": args.warmup,
        "seed": args.seed,
        "repeats": args.repeats,
        "model": None if args.fallback_only else "untrained FusionPolicy (artifact)",
    }
    if visible:
        meta["gpu_name"] = torch.cuda.get_device_name(0)  # after the runs: this initialises CUDA here
    for r in rows:
        r.pop("all_events")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return
    print(
        f"# fleet shards, {meta.get('gpu_name', 'CPU')} x {visible or '-'} visible, device {args.device}, "
        f"torch {meta['torch']}, {meta['cpus']} CPUs, {args.threads} thread(s)/shard, {args.ticks} ticks after "
        f"{args.warmup} warm-up, seed {args.seed}, median of {args.repeats} run(s) per row; driver CUDA initialised "
        f"during runs: {meta['driver_cuda_initialised']}"
    )
    print()
    runs_col = args.repeats > 1
    print(
        "| scaling | run | vehicles | per shard | vehicle-steps/s | s per tick | shard s per tick, fastest-slowest "
        "| driver overhead s per tick | x 1-shard row | efficiency | events = 1 shard | start-up s |"
        + (" vehicle-steps/s of each run |" if runs_col else "")
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|" + ("---|" if runs_col else ""))
    for r in rows:
        eff = "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.0f} %"
        eq = "-" if r["events_equal_1_shard"] is None else ("yes" if r["events_equal_1_shard"] else "NO")
        sh = r["shard_s_per_tick"]
        print(
            f"| {r['mode']} | {r['label']} | {r['vehicles']:,} | {r['per_shard']:,} | {r['steps_per_s']:,.0f} | "
            f"{r['s_per_tick']:.4f} | {min(sh):.4f}-{max(sh):.4f} | {r['driver_overhead_s_per_tick']:.4f} | "
            f"{r['vs_1']:.2f} | {eff} | {eq} | {r['startup_s']:.1f} |"
            + (f" {', '.join(f'{x:,.0f}' for x in r['repeats_steps_per_s'])} |" if runs_col else "")
        )


if __name__ == "__main__":
    main()
