"""Policy inference: the batched engine against a per-vehicle loop, and dynamic batching by batch size and wait.

Part 1 runs, in the same process on the same inputs (a mixed-scenario fleet observed by ``fleetloop.sim``), the
engine's one batched call over all vehicles and the naive loop of one forward call per vehicle (timed over a
sample of vehicles and scaled to the fleet). Part 2 replays a Poisson stream of single-vehicle requests (fleet
size x 10 Hz) through ``DynamicBatcher`` in a discrete-event simulation with one inference worker whose batch
compute time is *measured* (engine.infer at each batch size), and reports request latency p50 / p99 and
throughput per (max_batch, max_wait). Prints one table.

    python benchmarks/inference.py                    # 10,000 vehicles, CPU (or CUDA when available)
    python benchmarks/inference.py --vehicles 2000 --device cpu --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fleetloop.edge_agent.features import PolicyInputs, features_from_observation
from fleetloop.edge_agent.inference import DynamicBatcher, EngineConfig, InferenceEngine
from fleetloop.edge_agent.policy import FusionPolicy
from fleetloop.sim import World, draw_scenarios, init_state, observe


def fleet_inputs(n: int, seed: int) -> PolicyInputs:
    world = World()
    ids = list(range(n))
    state = init_state(world, draw_scenarios("mixed", ids, seed), ids, seed)
    return features_from_observation(observe(world, state))


def median_time(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def simulate(
    arrivals_s: np.ndarray, max_batch: int, max_wait_s: float, compute_s: object
) -> tuple[float, float, float]:
    """(p50 latency s, p99 latency s, served requests/s) of one worker behind a DynamicBatcher."""
    batcher = DynamicBatcher(max_batch, max_wait_s)
    n = len(arrivals_s)
    done = np.zeros(n)
    free_at = 0.0
    i = 0
    ready: list[list[int]] = []
    while i < n or ready or batcher.next_deadline_s() is not None:
        # Next event: an arrival, or the oldest queued request timing out.
        deadline = batcher.next_deadline_s()
        if i < n and (deadline is None or arrivals_s[i] <= deadline):
            now = float(arrivals_s[i])
            ready += batcher.submit(i, 1, now)
            i += 1
        else:
            now = float(deadline) if deadline is not None else free_at
            ready += batcher.poll(now) if deadline is not None else []
        while ready:
            batch = ready.pop(0)
            start = max(free_at, now)
            free_at = start + compute_s(len(batch))  # type: ignore[operator]
            done[batch] = free_at
    lat = done - arrivals_s
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), n / float(done.max() - arrivals_s[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=10_000)
    ap.add_argument("--loop-sample", type=int, default=500, help="vehicles timed in the per-vehicle loop")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = FusionPolicy()
    x = fleet_inputs(args.vehicles, args.seed)
    eng = InferenceEngine(EngineConfig(device=args.device, max_batch=args.vehicles))
    slots = torch.full((x.batch,), eng.add_model("1", model), dtype=torch.int64)
    eng.infer(x, slots)  # warm-up
    batched_s = median_time(lambda: eng.infer(x, slots), 7)
    m = eng.model("1")
    k = min(args.loop_sample, x.batch)
    singles = [x.index(slice(i, i + 1)).to(eng.device) for i in range(k)]

    def loop() -> None:
        with torch.inference_mode():
            for s in singles:
                m(*s.tensors())

    loop_s = median_time(loop, 3) * (x.batch / k)
    dev = str(eng.device)
    print(
        f"# policy inference, {x.batch} vehicles, device {dev}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"# params {sum(p.numel() for p in model.parameters())}")
    print()
    print("| path | s per fleet tick | vehicles/s | speedup |")
    print("|---|---:|---:|---:|")
    print(f"| per-vehicle loop ({k} timed, scaled) | {loop_s:.4f} | {x.batch / loop_s:,.0f} | 1.0x |")
    print(f"| batched engine (one call) | {batched_s:.4f} | {x.batch / batched_s:,.0f} | {loop_s / batched_s:.1f}x |")

    # Part 2: measured compute time per batch size, then the batching simulation.
    sizes = [1, 16, 64, 256, 1024, 4096, 16384]
    sizes = [s for s in sizes if s <= x.batch]
    cost = []
    for s in sizes:
        sub = x.index(slice(0, s))
        sl = slots[:s]
        eng.infer(sub, sl)
        cost.append(median_time(lambda sub=sub, sl=sl: eng.infer(sub, sl), 5))

    def compute_s(n: int) -> float:
        return float(np.interp(n, sizes, cost))

    rate = args.vehicles * 10.0  # [requests/s]: every vehicle once per 0.1 s tick
    rng = np.random.default_rng(args.seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * 0.5)))
    print()
    print(f"dynamic batching: Poisson arrivals {rate:,.0f} requests/s (fleet x 10 Hz), one worker, measured compute")
    print()
    print("| max_batch | max_wait ms | compute ms at max_batch | p50 latency ms | p99 latency ms | served req/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for mb in [s for s in (64, 256, 1024, 4096) if s <= x.batch]:
        for wait in (0.0, 0.001, 0.005):
            p50, p99, thr = simulate(arrivals, mb, wait, compute_s)
            print(
                f"| {mb} | {wait * 1e3:g} | {compute_s(mb) * 1e3:.2f} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} "
                f"| {thr:,.0f} |"
            )
    wall = eng.wall_latency_stats()
    print()
    print(
        f"engine wall-clock per forward call over the run: p50 {wall['p50_s'] * 1e3:.2f} ms, "
        f"p99 {wall['p99_s'] * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
