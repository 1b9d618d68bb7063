"""Signed OTA updates of a fleet: what verification costs next to swapping models in memory.

Usage::

    python benchmarks/ota.py                         # 10,000 vehicles, a 20-tick health window
    python benchmarks/ota.py --vehicles 200 --window 5
    python benchmarks/ota.py --shadow                # the tick with and without a shadow group, 10,000 vehicles

One process: a fresh signed repository (python-tuf) in a temporary folder, the release server on 127.0.0.1 (a
thread, bytes counted), one fleet shard (``FleetRunner``) with the OTA client as its tick hook; commands and
statuses in memory (the Kafka path is tested in tests/integration/test_ota_sim.py, not timed here). Measured:
publish time (sign one release); vehicles verified per second (command to the last "installed" status: the
shard's metadata refresh, every vehicle's own verdict, one verified download, the load); bytes served per vehicle
(metadata and artifact, the whole fleet shares one shard cache); time from command to the last vehicle committed
(wall and ticks: activation at a safe tick plus the health window); CPU seconds of verification per vehicle (the
worker thread's own CPU time). Baseline in the same run: the same fleet, the new model loaded from memory and
switched in with no verification, driven through the same ticks.

``--shadow``: two shards of the same vehicles and seed, each with the OTA client; one gets a shadow command for
every vehicle (the candidate verified, loaded and run beside the active model: one more batched ``infer`` group),
the other none. Once every vehicle shadows, the two are stepped in turn (so load on the machine hits both alike)
and the median tick time of each is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import torch

from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.model_artifact import ArtifactMetadata, save_artifact
from fleetloop.edge_agent.ota_agent import OtaAgent, OtaSpec
from fleetloop.edge_agent.ota_bus import MemoryTransport
from fleetloop.edge_agent.ota_client import HealthConfig
from fleetloop.edge_agent.policy import ARCHITECTURE, FusionPolicy
from fleetloop.platform.bus.events import OtaCommand
from fleetloop.platform.releases.api import utc_now
from fleetloop.platform.releases.cohorts import DEFAULT_BUCKETS, HashRange
from fleetloop.platform.releases.repository import ReleaseRepository
from fleetloop.platform.releases.server import RangeRequestHandler, start_in_thread

MODEL = "fleet-policy"


class CountingHandler(RangeRequestHandler):
    """The release server's handler, adding up the body bytes it sends."""

    served_bytes = 0

    def send_body(self, f: BinaryIO, length_bytes: int) -> None:
        super().send_body(f, length_bytes)
        CountingHandler.served_bytes += length_bytes


def policy(seed: int) -> FusionPolicy:
    torch.manual_seed(seed)
    return FusionPolicy()


def fleet(vehicles: int, hooks: list[OtaAgent]) -> FleetRunner:
    config = FleetConfig(seed=0, progress_reference=False, max_uncertainty_mps2=100.0)
    return FleetRunner(config, range(vehicles), {"1": policy(1)}, "1", hooks=hooks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=20, help="health window [ticks]")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--max-ticks", type=int, default=400)
    parser.add_argument("--shadow", action="store_true", help="time the tick with and without a shadow group")
    parser.add_argument("--ticks", type=int, default=7, help="--shadow: timed ticks of each shard")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shadow:
        shadow_cost(args.vehicles, args.ticks)
        return
    n = args.vehicles
    with tempfile.TemporaryDirectory(prefix="fleetloop-bench-ota-") as tmp:
        root = Path(tmp)
        repo, release, publish_s = release_to_everyone(root)
        server, url = start_in_thread(repo.root_dir, handler=CountingHandler)
        try:
            health = HealthConfig(window_ticks=args.window)
            spec = OtaSpec(MODEL, url, repo.trusted_root(), str(root / "vehicles"), health)
            bus = MemoryTransport()
            agent = OtaAgent(spec, range(n), bus)
            runner = fleet(n, [agent])
            runner.step()
            bus.inbox = [
                OtaCommand(rollout_id="bench", vehicle_id=str(v), model_name=MODEL, version=2, release=release)
                for v in range(n)
            ]
            t_cmd = time.perf_counter()
            tick0, t_installed, ticks = runner.ticks, None, 0
            while ticks < args.max_ticks:
                runner.step()
                ticks += 1
                states = [s.state for s in bus.sent]
                if t_installed is None and states.count("installed") == n:
                    t_installed = time.perf_counter()
                if states.count("committed") + states.count("rolled_back") + states.count("rejected") >= n:
                    break
            t_done = time.perf_counter()
            counts = runner.counts()["ota"]
            ota_ticks = runner.ticks - tick0
        finally:
            server.shutdown()
            server.server_close()
    committed = counts["status"].get("committed", 0)
    # the baseline: the same fleet, the same model from memory, switched with no verification, the same ticks
    base = fleet(n, [])
    base.step()
    t1 = time.perf_counter()
    base.load_model("2", policy(2))
    base.set_model(list(range(n)), "2")
    swap_s = time.perf_counter() - t1
    for _ in range(ota_ticks):
        base.step()
    base_s = time.perf_counter() - t1
    verify_wall_s = (t_installed or t_done) - t_cmd
    ota_s = t_done - t_cmd
    print(
        f"\n{n:,} vehicles, {args.window}-tick health window, CPU, {torch.get_num_threads()} torch threads, "
        f"load {os.getloadavg()[0]:.1f}\n"
    )
    print("| figure | signed OTA (loopback release server) | in-memory swap, no verification |")
    print("|---|---|---|")
    print(f"| publish one release | {publish_s * 1000:,.0f} ms | - |")
    print(f"| vehicles committed | {committed:,} of {n:,} | {n:,} of {n:,} |")
    f = counts["fetch"]
    rate = f["vehicles_verified"] / f["verify_wall_s"]
    print(f"| vehicles verified per second (fetch job wall time) | {rate:,.0f} | - |")
    served = CountingHandler.served_bytes
    print(f"| bytes served per vehicle | {served / n:,.1f} B (total {served:,}) | 0 |")
    print(f"| CPU of verification per vehicle | {counts['fetch']['verify_cpu_s'] / n * 1e6:,.1f} µs | - |")
    print(f"| command to last vehicle installed | {verify_wall_s:,.2f} s | {swap_s:,.2f} s (load + set_model) |")
    print(f"| command to last vehicle committed | {ota_s:,.2f} s, {ota_ticks} ticks | {base_s:,.2f} s, same ticks |")
    print(f"| cost of security | {ota_s - base_s:+,.2f} s ({(ota_s / base_s - 1) * 100:+.0f} %) | baseline |")


def release_to_everyone(root: Path) -> tuple[ReleaseRepository, int, float]:
    """A fresh repository under ``root`` with version 2 signed for every vehicle; (repository, release number,
    publish time [s])."""
    repo = ReleaseRepository.initialise(root / "state", utc_now())
    model = policy(2)
    meta = ArtifactMetadata(architecture=ARCHITECTURE, hyperparameters=model.config.to_dict())
    artifact = save_artifact(root / "policy-2.safetensors", model, meta)
    signed = {"run_id": "", "input_schema_version": 1, "parent_version": "1", "validation_report_sha256": ""}
    t0 = time.perf_counter()
    fields = repo.publish(MODEL, "2", artifact, signed, utc_now())
    publish_s = time.perf_counter() - t0
    repo.assign_wave(fields.release, 1, HashRange(0, DEFAULT_BUCKETS), utc_now())
    return repo, fields.release, publish_s


def shadow_cost(n: int, ticks: int) -> None:
    """Median tick time of a shard whose every vehicle runs a candidate in shadow mode, and of one without."""
    with tempfile.TemporaryDirectory(prefix="fleetloop-bench-shadow-") as tmp:
        root = Path(tmp)
        repo, _, _ = release_to_everyone(root)
        server, url = start_in_thread(repo.root_dir)
        try:
            runners, buses = [], []
            for name in ("plain", "shadow"):
                spec = OtaSpec(MODEL, url, repo.trusted_root(), str(root / name))
                buses.append(MemoryTransport())
                runners.append(fleet(n, [OtaAgent(spec, range(n), buses[-1])]))
            plain, shadowed = runners
            buses[1].inbox = [
                OtaCommand(rollout_id="bench", vehicle_id=str(v), model_name=MODEL, version=2, action="shadow")
                for v in range(n)
            ]
            while [s.state for s in buses[1].sent].count("shadow_started") < n:
                shadowed.step()
                plain.step()
            times: dict[str, list[float]] = {"plain": [], "shadow": []}
            for _ in range(ticks):
                for name, runner in (("plain", plain), ("shadow", shadowed)):
                    t0 = time.perf_counter()
                    runner.step()
                    times[name].append(time.perf_counter() - t0)
            same = torch.equal(plain.last_tick.command_mps2, shadowed.last_tick.command_mps2)  # type: ignore[union-attr]
        finally:
            server.shutdown()
            server.server_close()
    base, shadow = (statistics.median(times[k]) * 1000 for k in ("plain", "shadow"))
    print(
        f"\n{n:,} vehicles, CPU, {torch.get_num_threads()} torch threads, load {os.getloadavg()[0]:.1f}, "
        f"median of {ticks} ticks each, stepped in turn\n"
    )
    print("| tick | without shadow | every vehicle shadowing a candidate |")
    print("|---|---|---|")
    print(f"| wall time per tick | {base:,.0f} ms | {shadow:,.0f} ms ({(shadow / base - 1) * 100:+.0f} %) |")
    print(f"| actuated commands of the last tick identical | - | {same} |")


if __name__ == "__main__":
    main()
