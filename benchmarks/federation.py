"""Federated round cost: wall time and peak memory of one round at 10, 50 and 100 vehicles, beside central training
on the same frames.

One fleet is driven on the mixed scenarios (fallback only) with a ring of ``--buffer-seconds`` per vehicle and its
buffer saved as ``fleetloop sim run --buffer-seconds`` saves it. Then, for each size N:

- ``federated``: ``run_rounds`` with N clients (every vehicle sampled), FedAvg, one round, one local epoch, on
  Flower's simulation engine (Ray, 2 CPUs, as ``fleetloop fl round`` runs it), logged to a private MLflow. Wall
  time of the whole call (Ray's start included) and of the round alone; peak RSS summed over this process and
  every process it started (Ray's GCS, raylet and workers; the MLflow server excluded), sampled every 0.2 s.
  RSS counts pages shared between processes (Ray's object store, torch's libraries) once per process.
- ``central``: the same N vehicles' buffers labelled by the same hindsight labeller, pooled, one epoch of the same
  ``train_imitation`` in this process; peak RSS of this process.

Both start from the same untrained policy and are scored on the same two held-out vehicles (command MSE).

    python benchmarks/federation.py                        # 10 vehicles (quick)
    python benchmarks/federation.py --sizes 10 50 100      # the BENCHMARKS.md row
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fleetloop.edge_agent.buffer_store import shard_buffer_name
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.imitation import ImitationConfig, train_imitation
from fleetloop.edge_agent.model_artifact import save_artifact
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig
from fleetloop.federation.buffers import scan_buffers, vehicle_frames
from fleetloop.federation.config import ClientTrainConfig, RoundsConfig
from fleetloop.federation.runner import run_rounds
from fleetloop.federation.task import evaluate_heldout, labelled_data
from fleetloop.platform import launcher
from fleetloop.platform.process_tree import marker_of
from fleetloop.platform.services.mlflow_server import SPEC as MLFLOW
from fleetloop.platform.settings import Settings

HELDOUT = 2  # the last two vehicles: the server's held-out set, never clients
SAMPLE_S = 0.2  # [s] memory sampling period
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree_rss_bytes(root: int) -> int:
    """RSS of ``root`` and its descendants, leaving out the services the launcher started (the MLflow server)."""
    kids = _children()
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid != root and marker_of(pid) is not None:
            continue
        try:
            total += int((Path("/proc") / str(pid) / "statm").read_text().split()[1]) * PAGE_BYTES
        except (OSError, ValueError, IndexError):
            continue
        todo.extend(kids.get(pid, []))
    return total


def peak_rss(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result of ``fn()``, its wall seconds, the peak RSS of this process tree while it ran)."""
    peak = [tree_rss_bytes(os.getpid())]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            peak[0] = max(peak[0], tree_rss_bytes(os.getpid()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        wall = time.perf_counter() - t0
        done.set()
        t.join()
    return out, wall, max(peak[0], tree_rss_bytes(os.getpid()))


def drive_fleet(vehicles: int, buffer_seconds: float, directory: Path, seed: int) -> Path:
    """Drive ``vehicles`` for one ring's length and save their buffer as a one-shard fleet run does."""
    frames = round(buffer_seconds / 0.1)
    cfg = FleetConfig(
        scenario="mixed",
        seed=seed,
        progress_reference=False,
        ground_truth_audit=False,
        buffer_frames=frames,
        buffer_save_dir=str(directory),
    )
    runner = FleetRunner(cfg, range(vehicles))
    runner.run(frames)
    runner.close()
    return directory / shard_buffer_name(range(vehicles))


def central(
    model: FusionPolicy, paths: list[tuple[Path, int]], heldout: dict[str, torch.Tensor], local: ClientTrainConfig
) -> dict[str, float]:
    """Label the clients' buffers, pool them, train one copy for the clients' epochs; held-out metrics."""
    parts = [labelled_data(vehicle_frames(p, vid)) for p, vid in paths]
    parts = [d for d in parts if d]
    pooled = {k: torch.cat([d[k] for d in parts]) for k in parts[0]}
    icfg = ImitationConfig(epochs=local.epochs, batch_size=local.batch_size, lr=local.lr, val_fraction=0.0)
    fresh = FusionPolicy(model.config)
    fresh.load_state_dict(model.state_dict())
    train_imitation(fresh.train(), pooled, icfg, seed=0)
    out = evaluate_heldout(fresh.eval(), heldout)
    out["frames"] = float(pooled["accel_mps2"].shape[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10], help="vehicles per round, one row each")
    ap.add_argument("--buffer-seconds", type=float, default=25.0, help="each vehicle's ring [s]")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="fleetloop-bench-fl-") as tmp:
        root = Path(tmp)
        buffers = root / "buffers"
        biggest = max(args.sizes)
        t0 = time.perf_counter()
        shard = drive_fleet(biggest + HELDOUT, args.buffer_seconds, buffers, args.seed)
        drive_s = time.perf_counter() - t0
        scan = scan_buffers(buffers, now_s=time.time())
        vehicles = [v.vehicle_id for v in scan.vehicles]
        heldout_ids = vehicles[-HELDOUT:]
        parts = [labelled_data(vehicle_frames(shard, v)) for v in heldout_ids]
        heldout = {k: torch.cat([p[k] for p in parts if p]) for k in next(p for p in parts if p)}
        initial = FusionPolicy(PolicyConfig())
        model_path = save_artifact(root / "initial.safetensors", initial)
        local = ClientTrainConfig(epochs=1)
        before = evaluate_heldout(initial.eval(), heldout)["heldout_accel_mse"]
        settings = Settings(state_dir=root / "state", mlflow_port=_free_port(), kafka_port=_free_port())
        launcher.up(settings, [MLFLOW])
        rows = []
        try:
            for n in args.sizes:
                # Central first: nothing of Ray is in the process tree yet.
                clients = [(shard, v) for v in vehicles[:n]]
                c, c_wall, c_rss = peak_rss(lambda clients=clients: central(initial, clients, heldout, local))
                # The round takes the first n vehicles as clients, the last two as its held-out set: the same ones.
                cfg = RoundsConfig(
                    rounds=1,
                    clients=n,
                    strategy="fedavg",
                    min_replies=min(2, n),
                    holdout_vehicles=HELDOUT,
                    buffer_dir=buffers,
                    initial_model=model_path,
                    local=local,
                    restart=True,
                    round_timeout_s=600.0,
                    model_name=f"bench-fl-{n}",
                )
                f, f_wall, f_rss = peak_rss(lambda cfg=cfg: run_rounds(settings, cfg))
                r = f.rounds[0]
                rows.append((n, f_wall, r.seconds, f_rss, f.heldout_after, len(r.participants), c_wall, c_rss, c))
        finally:
            launcher.down(settings, [MLFLOW], purge=True)
    print(
        f"fleet: {biggest + HELDOUT} vehicles x {args.buffer_seconds:g} s driven and saved in {drive_s:.1f} s; "
        f"held-out command MSE of the initial model {before:.4f} (m/s²)²; torch threads {torch.get_num_threads()}"
    )
    print()
    print(
        "| vehicles | federated call s (Ray start incl.) | round s | peak RSS MB (driver + Ray) | aggregated | "
        "held-out MSE | central s | central peak RSS MB | central held-out MSE | frames |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, f_wall, r_s, f_rss, f_out, agg, c_wall, c_rss, c in rows:
        print(
            f"| {n} | {f_wall:.1f} | {r_s:.1f} | {f_rss / 1e6:,.0f} | {agg} | {f_out['heldout_accel_mse']:.4f} | "
            f"{c_wall:.1f} | {c_rss / 1e6:,.0f} | {c['heldout_accel_mse']:.4f} | {int(c['frames']):,} |"
        )


if __name__ == "__main__":
    main()
