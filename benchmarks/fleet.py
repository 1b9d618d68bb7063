"""The full fleet loop: vehicle-steps/s at 10,000 vehicles, where the time goes, and the learning-problem claims.

Usage::

    python benchmarks/fleet.py                              # throughput at 10,000 vehicles (CPU), with a profile
    python benchmarks/fleet.py --vehicles 2000 --ticks 20
    python benchmarks/fleet.py --compile --threads 1 2      # eager and compiled tick side by side (ADR 0101)
    python benchmarks/fleet.py --device cuda
    python benchmarks/fleet.py --claims --initial M.safetensors --reference R.safetensors

Throughput: one ``FleetRunner`` shard (world + sensors + faults + conditions + batched policy + fallback + arbiter
+ triggers + on-board buffer; no telemetry sink, no expert progress reference) driving mixed scenes in mixed
weather; vehicle-steps/s = vehicles x ticks / wall seconds after ``--warmup`` ticks. Baseline in the same run:
the world alone (observe + step + detect_events, the expert driving). The profile (cProfile, a few ticks) gives
the share of each stage.

With ``--compile`` the eager runner and the compiled one (``FleetConfig(compile=True)``, ADR 0101) are built in the
same process and timed interleaved, ``--rounds`` times ``--ticks`` ticks each, best round kept, for every thread
count of ``--threads``; the table gives both side by side, the time of the first compiled tick (compile, or load
from inductor's cache) and the load average before and after (the machine may be shared: compare rows of one run).

Claims (``--claims``): the clear-weather initial model vs the all-conditions reference in fog; model + fallback vs
fallback alone on pedestrian scenes and on phantom braking (with progress against the expert); the fallback alone
on the Euro NCAP CCRs tests up to 40 km/h.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shlex
import sys
import time
from typing import Any

import torch

from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.model_artifact import load_artifact
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig
from fleetloop.sim import (
    World,
    detect_events,
    draw_scenarios,
    expert_control,
    init_state,
    observe,
    step,
    weather_preset,
)

STAGES = ("observe", "vehicle_step", "step", "detect_events", "_record_frame", "_accumulate", "_respawn")


def world_only(vehicles: int, ticks: int, device: str) -> float:
    """vehicle-steps/s of the world alone with the expert driving (the baseline)."""
    world = World(weather=weather_preset("mixed", seed=0))
    ids = list(range(vehicles))
    state = init_state(world, draw_scenarios("mixed", ids, 0), ids, 0, device=device)
    state = step(world, state, expert_control(world, state), world.dt_s)
    t0 = time.perf_counter()
    for _ in range(ticks):
        observe(world, state)
        nxt = step(world, state, expert_control(world, state), world.dt_s)
        detect_events(world, state, nxt)
        state = nxt
    return vehicles * ticks / (time.perf_counter() - t0)


def _runner(vehicles: int, device: str, compile_: bool) -> FleetRunner:
    torch.manual_seed(0)
    config = FleetConfig(
        scenario="mixed", weather="mixed", seed=0, device=device, progress_reference=False, compile=compile_
    )
    return FleetRunner(config, list(range(vehicles)), {"1": FusionPolicy(PolicyConfig())}, "1")


def _profile(runner: FleetRunner, profile_ticks: int) -> dict[str, float]:
    """Cumulative seconds per tick of each stage (cProfile over ``profile_ticks`` ticks)."""
    shares: dict[str, float] = {}
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(profile_ticks):
        runner.step()
    prof.disable()
    stats = pstats.Stats(prof)
    for (file, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        if name in STAGES and ("fleetloop" in file):
            key = f"{name} ({file.split('fleetloop/')[-1]})"
            shares[key] = shares.get(key, 0.0) + row[3] / profile_ticks
    return shares


def full_loop(vehicles: int, ticks: int, warmup: int, device: str, profile_ticks: int) -> dict[str, Any]:
    runner = _runner(vehicles, device, False)
    for _ in range(warmup):
        runner.step()
    t0 = time.perf_counter()
    for _ in range(ticks):
        runner.step()
    wall = time.perf_counter() - t0
    shares = _profile(runner, profile_ticks) if profile_ticks else {}
    return {"steps_per_s": vehicles * ticks / wall, "s_per_tick": wall / ticks, "stage_s_per_tick": shares}


def _timed(runner: FleetRunner, ticks: int) -> float:
    t0 = time.perf_counter()
    for _ in range(ticks):
        runner.step()
    return (time.perf_counter() - t0) / ticks


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def compiled_vs_eager(args: argparse.Namespace) -> None:
    """Eager and compiled tick in one process, interleaved, best of ``--rounds`` per thread count."""
    load_before = _load()
    torch.set_num_threads(args.threads[0])
    eager = _runner(args.vehicles, args.device, False)
    comp = _runner(args.vehicles, args.device, True)
    t0 = time.perf_counter()
    comp.step()  # compiles, or loads the compiled graphs from inductor's on-disk cache
    first = time.perf_counter() - t0
    eager.step()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for _ in range(args.warmup):
            eager.step()
            comp.step()
        best = {"eager": float("inf"), "compiled": float("inf")}
        for _ in range(args.rounds):
            best["eager"] = min(best["eager"], _timed(eager, args.ticks))
            best["compiled"] = min(best["compiled"], _timed(comp, args.ticks))
        rows.append((threads, best["eager"], best["compiled"]))
    ev_e, ev_c = eager.summary().to_dict()["events"], comp.summary().to_dict()["events"]
    pos = float((eager.state.ego_s_m - comp.state.ego_s_m).abs().max())
    n = args.vehicles
    print(
        f"# fleet loop, eager vs compiled tick, {n} vehicles, device {args.device}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, best of {args.rounds} x {args.ticks} ticks per path (interleaved) after "
        f"{args.warmup} warm-up"
    )
    print()
    print("    " + " ".join(shlex.quote(a) for a in ["python", *sys.argv]))
    print()
    print(f"{_load()} at the end ({load_before} at the start)")
    print()
    print("| threads | eager vehicle-steps/s | eager s/tick | compiled vehicle-steps/s | compiled s/tick | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for threads, te, tc in rows:
        print(f"| {threads} | {n / te:,.0f} | {te:.4f} | {n / tc:,.0f} | {tc:.4f} | {te / tc:.2f}x |")
    print(f"| target | 200,000 | {n / 200_000:.4f} | 200,000 | {n / 200_000:.4f} | |")
    print()
    print(f"first compiled tick ({args.threads[0]} thread(s); compile or cache load): {first:.1f} s")
    print(f"events after the same ticks: eager {ev_e}; compiled {ev_c}; identical: {ev_e == ev_c}")
    print(f"largest difference in ego road position: {pos:.2e} m")
    if args.profile_ticks:
        print()
        print(f"profile of the compiled tick (cProfile, {args.profile_ticks} ticks; cumulative s per tick):")
        print()
        print("| stage | s per tick |")
        print("|---|---:|")
        for k, v in sorted(_profile(comp, args.profile_ticks).items(), key=lambda kv: -kv[1]):
            print(f"| {k} | {v:.4f} |")


def throughput(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads[0])
    base = world_only(args.vehicles, max(2, args.ticks // 2), args.device)
    res = full_loop(args.vehicles, args.ticks, args.warmup, args.device, args.profile_ticks)
    print(
        f"# fleet loop, {args.vehicles} vehicles, device {args.device}, torch {torch.__version__}, "
        f"threads {args.threads[0]}, {args.ticks} ticks after {args.warmup} warm-up"
    )
    print()
    print("| path | vehicle-steps/s | s per tick |")
    print("|---|---:|---:|")
    print(f"| world only (observe + step + events, expert drives) | {base:,.0f} | {args.vehicles / base:.3f} |")
    print(
        f"| full loop (FleetRunner.step, policy + fallback + arbiter + triggers + buffer) | "
        f"{res['steps_per_s']:,.0f} | {res['s_per_tick']:.3f} |"
    )
    print(f"| target | 200,000 | {args.vehicles / 200_000:.3f} |")
    if res["stage_s_per_tick"]:
        print()
        print(f"profile (cProfile, {args.profile_ticks} ticks; cumulative s per tick, profiler overhead included):")
        print()
        print("| stage | s per tick |")
        print("|---|---:|")
        for k, v in sorted(res["stage_s_per_tick"].items(), key=lambda kv: -kv[1]):
            print(f"| {k} | {v:.4f} |")


def _run(scenario: str, weather: str, model_path: str | None, vehicles: int, ticks: int, seed: int) -> dict[str, Any]:
    models = {} if model_path is None else {"m": load_artifact(model_path).model}
    config = FleetConfig(scenario=scenario, weather=weather, seed=seed)
    runner = FleetRunner(config, list(range(vehicles)), models, None if model_path is None else "m")
    d = runner.run(ticks).to_dict()
    return {
        "km": d["km"],
        "collisions": d["events"]["collisions"],
        "near_misses": d["events"]["near_misses"],
        "phantom_brakes": d["events"]["phantom_brakes"],
        "coll_nm_per_1000_km": d["collisions_plus_near_misses_per_1000_km"],
        "collisions_per_1000_km": d["per_1000_km"]["collisions"],
        "phantom_per_1000_km": d["per_1000_km"]["phantom_brakes"],
        "progress_vs_expert": d["progress_vs_expert"],
        "fallback_share": d["fallback_share"],
    }


def claims(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads[0])
    n, t = args.vehicles, args.ticks
    rows: list[tuple[str, dict[str, Any]]] = []
    for seed in args.seeds:
        rows.append(
            (f"fog, initial (clear) model + fallback, seed {seed}", _run("mixed", "fog", args.initial, n, t, seed))
        )
        rows.append(
            (f"fog, all-conditions reference + fallback, seed {seed}", _run("mixed", "fog", args.reference, n, t, seed))
        )
        rows.append(
            (
                f"pedestrian, initial model + fallback, seed {seed}",
                _run("pedestrian", "clear", args.initial, n, t, seed),
            )
        )
        rows.append((f"pedestrian, fallback alone, seed {seed}", _run("pedestrian", "clear", None, n, t, seed)))
        rows.append(
            (f"mixed/mixed, initial model + fallback, seed {seed}", _run("mixed", "mixed", args.initial, n, t, seed))
        )
        rows.append((f"mixed/mixed, fallback alone, seed {seed}", _run("mixed", "mixed", None, n, t, seed)))
    print(f"# learning-problem claims, {n} vehicles x {t} ticks per row")
    print()
    print(
        "| run | km | collisions | near misses | (coll+nm)/1000 km | phantom/1000 km | progress vs expert "
        "| fallback share |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['km']:.1f} | {r['collisions']} | {r['near_misses']} | {r['coll_nm_per_1000_km']:.1f} | "
            f"{r['phantom_per_1000_km']:.1f} | {r['progress_vs_expert']:.3f} | {r['fallback_share']:.3f} |"
        )
    from fleetloop.sim import euro_ncap_matrix

    tests = [s for s in euro_ncap_matrix() if s.name.startswith("ccrs")]
    config = FleetConfig(scenario=tuple(tests), weather="clear", respawn=False, progress_reference=False)
    runner = FleetRunner(config, list(range(len(tests))))
    collided = torch.zeros(len(tests), dtype=torch.bool)
    for _ in range(120):
        runner.step()
        collided |= runner.state.collided
    print()
    print(
        "fallback alone, CCRs: "
        + ", ".join(f"{s.name} {'HIT' if c else 'avoided'}" for s, c in zip(tests, collided.tolist(), strict=True))
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vehicles", type=int, default=10_000)
    p.add_argument("--ticks", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile-ticks", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="torch threads (--compile: one row each)")
    p.add_argument("--compile", action="store_true", help="eager and compiled tick side by side (ADR 0101)")
    p.add_argument("--rounds", type=int, default=3, help="--compile: timed rounds per path, the best is kept")
    p.add_argument("--claims", action="store_true")
    p.add_argument("--initial", help="artifact of the clear-weather initial model (--claims)")
    p.add_argument("--reference", help="artifact of the all-conditions reference (--claims)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    if args.claims:
        if not (args.initial and args.reference):
            p.error("--claims needs --initial and --reference artifacts (edge_agent.bootstrap, weather clear / all)")
        claims(args)
    elif args.compile:
        compiled_vs_eager(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
