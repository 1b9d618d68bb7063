"""Scrape cost: what watching the fleet with Prometheus costs the fleet, how many series the stack exports, and what
a real Prometheus holding them takes in memory. Prints one table.

1. Throughput with and without the exporter scraped every second, in the same process and before the stack of part 2
   starts (so nothing else scrapes the unscraped blocks): a fleet (``--vehicles``,
   a freshly initialised policy, no telemetry) updates its metrics after every chunk of ticks exactly as
   ``fleetloop sim run`` does, in blocks of ``--block-chunks`` chunks, alternately unscraped and scraped (ABBA
   order, ``--reps`` pairs). The scraper is a separate process doing ``GET /metrics`` every ``--interval-s``, so
   what lands on the fleet is its exporter's own work (collecting and rendering the page in a thread under the
   GIL). Each block gives vehicle-steps/s and the fleet process's CPU seconds per million vehicle-steps; the table
   gives their medians and ranges.
2. Series: a fleet of ``--series-vehicles`` (10,000) runs ``--series-ticks`` ticks, updating the same metrics, with
   the stack up (``fleetloop up``'s services and every ``pipeline serve`` stage, in a throw-away state directory
   on free ports), and every registered target is scraped once: series per process, all series (``process_*`` and
   ``python_*`` included) and the ``fleetloop_*`` ones.
3. Prometheus: the stack's Prometheus scrapes them all for ``--prom-minutes``; then its process's resident memory
   (``/proc``) and what it reports itself (``process_resident_memory_bytes``, ``prometheus_tsdb_head_series``).

    python benchmarks/scrape.py                 # about 10 min of CPU on a 2-core machine
    python benchmarks/scrape.py --quick         # seconds: tiny fleet, no Kafka / MLflow / stages, 20 s of Prometheus
    python benchmarks/scrape.py --throughput-only --vehicles 1000   # part 1 alone
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fleetloop.cli import sim as sim_cli
from fleetloop.cli.services import services_to_start
from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
from fleetloop.edge_agent.model_artifact import save_artifact
from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig
from fleetloop.edge_agent.shards import ShardSpec, build_runner
from fleetloop.pipelines.serve import stage_specs
from fleetloop.platform import launcher
from fleetloop.platform.metrics import list_targets
from fleetloop.platform.services import prometheus
from fleetloop.platform.settings import Settings, load_settings

# The scraper: a process of its own, so that only the exporter's work falls on the fleet's process.
SCRAPER = """
import sys, time, urllib.request
url, interval_s = sys.argv[1], float(sys.argv[2])
while True:
    t0 = time.perf_counter()
    body = urllib.request.urlopen(url, timeout=30).read()
    took = time.perf_counter() - t0
    print(len(body), took, flush=True)
    time.sleep(max(0.0, interval_s - took))
"""
MODEL_VERSION = "bench"


@dataclass
class Block:
    scraped: bool
    steps_per_s: float
    cpu_s_per_m_steps: float  # the fleet process's CPU per million vehicle-steps
    scrapes: int = 0
    scrape_s: list[float] = field(default_factory=list)
    page_bytes: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_runner(vehicles: int, model: Path, seed: int) -> FleetRunner:
    config = FleetConfig(scenario=sim_cli.load_scenario("mixed"), weather="mixed", seed=seed)
    spec = ShardSpec(
        config=config,
        vehicle_ids=tuple(range(vehicles)),
        model_paths={MODEL_VERSION: str(model)},
        initial_version=MODEL_VERSION,
    )
    return build_runner(spec)


def run_chunks(runner: FleetRunner, update: Any, chunks: int) -> int:
    """Advance ``chunks`` chunks, updating the metrics after each as ``sim run`` does; the vehicle-steps run."""
    steps = 0
    for _ in range(chunks):
        reports = [runner.step() for _ in range(sim_cli.CHUNK_TICKS)]
        part = {**sim_cli._sum_reports(reports), "groups": runner.group_sums(), "hooks": runner.hook_counts()}
        update(part)
        steps += part["vehicle_steps"]
    return steps


def measure_block(runner: FleetRunner, update: Any, chunks: int, url: str | None, interval_s: float) -> Block:
    scraper = None
    if url is not None:
        scraper = subprocess.Popen(
            [sys.executable, "-c", SCRAPER, url, str(interval_s)], stdout=subprocess.PIPE, text=True
        )
    t0, c0 = time.perf_counter(), time.process_time()
    steps = run_chunks(runner, update, chunks)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    block = Block(url is not None, steps / wall, cpu / steps * 1e6)
    if scraper is not None:
        scraper.terminate()
        out, _ = scraper.communicate(timeout=30)
        rows = [line.split() for line in out.splitlines() if line.strip()]
        block.scrapes = len(rows)
        block.scrape_s = [float(r[1]) for r in rows]
        block.page_bytes = int(rows[-1][0]) if rows else 0
    return block


def scrape_targets(state_dir: Path) -> list[tuple[str, int, int]]:
    """(process, all series, fleetloop_* series) of every registered target, from one real scrape each."""
    out = []
    for t in list_targets(state_dir).targets:
        try:
            text = urllib.request.urlopen(f"http://{t.address}/metrics", timeout=30).read().decode()
        except OSError as e:
            print(f"target {t.name} at {t.address} did not answer: {e}", file=sys.stderr)
            continue
        samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
        ours = sum(s.name.startswith("fleetloop_") for s in samples)
        out.append((t.name, len(samples), ours))
    return sorted(out)


def prom_query(settings: Settings, promql: str) -> float | None:
    url = f"{settings.prometheus_uri}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    result = json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def stack_settings(state_dir: Path, scrape_interval_s: float) -> Settings:
    base = load_settings()
    ports = ("kafka_port", "kafka_controller_port", "mlflow_port", "ota_repo_port", "prometheus_port")
    return Settings(
        state_dir=state_dir,
        kafka_libs_dir=base.kafka_libs_dir,
        java=base.java,
        prometheus_scrape_interval_s=scrape_interval_s,
        **{p: _free_port() for p in (*ports, "alertmanager_port")},
    )


def _spread(xs: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vehicles", type=int, default=2000, help="fleet of the throughput blocks")
    ap.add_argument("--block-chunks", type=int, default=3, help="chunks of 10 ticks per block")
    ap.add_argument("--reps", type=int, default=3, help="pairs of blocks (unscraped + scraped), ABBA order")
    ap.add_argument("--interval-s", type=float, default=1.0, help="scrape interval of the throughput blocks")
    ap.add_argument("--series-vehicles", type=int, default=10_000)
    ap.add_argument("--series-ticks", type=int, default=10)
    ap.add_argument("--prom-minutes", type=float, default=3.0, help="how long Prometheus scrapes before measuring")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="tiny sizes; Prometheus only (if installed), no stack")
    ap.add_argument("--throughput-only", action="store_true", help="part 1 only: no stack, no series, no Prometheus")
    args = ap.parse_args(argv)
    if args.quick:
        args.vehicles, args.block_chunks, args.reps = 50, 1, 1
        args.series_vehicles, args.series_ticks, args.prom_minutes = 100, 10, 1 / 3

    import torch

    torch.set_num_threads(args.threads)
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory(prefix="fleetloop-scrape-") as tmp:
        settings = stack_settings(Path(tmp) / "state", scrape_interval_s=1.0)
        model = save_artifact(Path(tmp) / "policy.safetensors", FusionPolicy(PolicyConfig()))
        have_prometheus = shutil.which(settings.prometheus_executable) is not None
        specs = (
            [prometheus.SPEC]
            if args.quick
            else [s for s in services_to_start(None, settings) if s.missing(settings) is None] + stage_specs()
        )
        if (args.quick and not have_prometheus) or args.throughput_only:
            specs = []
        try:
            # Part 1 before the stack starts: no Prometheus may scrape the unscraped blocks.
            update = sim_cli._metrics(settings)  # the "sim" exporter, registered like `sim run`'s
            (sim,) = [t for t in list_targets(settings.state_dir).targets if t.name == "sim"]
            url = f"http://{sim.address}/metrics"

            runner = make_runner(args.vehicles, model, seed=1)
            run_chunks(runner, update, 1)  # warm-up
            blocks = []
            for rep in range(args.reps):
                order = (False, True) if rep % 2 == 0 else (True, False)
                for scraped in order:
                    b = measure_block(runner, update, args.block_chunks, url if scraped else None, args.interval_s)
                    blocks.append(b)
                    print(f"block {len(blocks)}: {'scraped' if scraped else 'unscraped'}, {b.steps_per_s:,.0f} "
                          f"vehicle-steps/s", file=sys.stderr, flush=True)  # fmt: skip
            runner.close()
            launcher.up(settings, specs)

            per_target: list[tuple[str, int, int]] = []
            series_tick_s = float("nan")
            if not args.throughput_only:
                big = make_runner(args.series_vehicles, model, seed=2)
                t0 = time.perf_counter()
                run_chunks(big, update, max(1, args.series_ticks // sim_cli.CHUNK_TICKS))
                series_tick_s = (time.perf_counter() - t0) / max(1, args.series_ticks)
                per_target = scrape_targets(settings.state_dir)
                print(f"{args.series_vehicles:,} vehicles: {series_tick_s:.2f} s per tick", file=sys.stderr)

            prom: dict[str, Any] = {}
            if prometheus.SPEC in specs:
                time.sleep(args.prom_minutes * 60)
                pid = json.loads((launcher.service_dir(settings, "prometheus") / "process.json").read_text())["pid"]
                prom = {
                    "rss": rss_bytes(int(pid)),
                    "own_rss": prom_query(settings, 'process_resident_memory_bytes{job="prometheus"}'),
                    "head_series": prom_query(settings, "prometheus_tsdb_head_series"),
                    "fleetloop_job_series": prom_query(settings, 'count({job="fleetloop"})'),
                    "targets_up": prom_query(settings, 'sum(up{job="fleetloop"})'),
                }
        finally:
            launcher.down(settings, specs)

    off = [b for b in blocks if not b.scraped]
    on = [b for b in blocks if b.scraped]
    scrape_ms = [1000 * s for b in on for s in b.scrape_s]
    print(
        f"\nscrape cost: {args.vehicles:,} vehicles, {len(off)} + {len(on)} blocks of {args.block_chunks * 10} ticks "
        f"(ABBA), scraped every {args.interval_s:g} s by a separate process; load average "
        f"{os.getloadavg()[0]:.1f}; this process used {time.process_time() - cpu0:,.0f} CPU-s\n"
    )
    print("| what | value |")
    print("|---|---|")
    print(f"| unscraped: vehicle-steps/s, median (range) | {_spread([b.steps_per_s for b in off])} |")
    print(f"| scraped every {args.interval_s:g} s: vehicle-steps/s | {_spread([b.steps_per_s for b in on])} |")
    ratio = statistics.median(b.steps_per_s for b in on) / statistics.median(b.steps_per_s for b in off)
    print(f"| throughput scraped / unscraped (medians) | {ratio:.3f} |")
    print(f"| unscraped: fleet CPU-s per 1 M vehicle-steps | {_spread([b.cpu_s_per_m_steps for b in off], ',.2f')} |")
    print(f"| scraped: fleet CPU-s per 1 M vehicle-steps | {_spread([b.cpu_s_per_m_steps for b in on], ',.2f')} |")
    if scrape_ms:
        pages = max(b.page_bytes for b in on)
        print(f"| scrapes: count, time per scrape ms, page bytes | {len(scrape_ms)}, {_spread(scrape_ms, '.1f')}, "
              f"{pages:,} |")  # fmt: skip
    if args.throughput_only:
        return 0
    print(f"| series fleet: {args.series_vehicles:,} vehicles, s per tick | {series_tick_s:.2f} |")
    for name, n_all, n_ours in per_target:
        print(f"| series of {name}: all / fleetloop_* | {n_all:,} / {n_ours:,} |")
    total_all, total_ours = sum(t[1] for t in per_target), sum(t[2] for t in per_target)
    print(f"| series of the stack, {len(per_target)} targets: all / fleetloop_* | {total_all:,} / {total_ours:,} |")
    if prom:
        mib = 1024 * 1024
        print(f"| Prometheus after {args.prom_minutes:g} min: RSS (/proc) MiB | {(prom['rss'] or 0) / mib:,.1f} |")
        print(f"| Prometheus: its own process_resident_memory_bytes MiB | {(prom['own_rss'] or 0) / mib:,.1f} |")
        print(f"| Prometheus: head series (all jobs) / job fleetloop | {prom['head_series']:,.0f} / "
              f"{prom['fleetloop_job_series']:,.0f} (targets up {prom['targets_up']:,.0f}) |")  # fmt: skip
    else:
        print("| Prometheus | not installed here (`make prometheus`): memory not measured |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
