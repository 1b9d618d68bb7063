"""`fleetloop demo`: the whole loop once, composed of the same step functions the commands use.

Each step returns a JSON-ready summary; the demo prints them as it goes and one summary at the end.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import typer
from rich.table import Table

from fleetloop.cli.output import console, emit
from fleetloop.platform import launcher
from fleetloop.platform.errors import DataError, NotFoundError
from fleetloop.platform.runs import run_record
from fleetloop.platform.settings import Settings, load_settings

__all__ = ["app", "step_bus_round_trip", "step_stack_up"]

app = typer.Typer()


def step_stack_up(settings: Settings) -> dict[str, Any]:
    """Start (or find) Kafka and MLflow; the catalogue's topics are created by Kafka's post-start step."""
    t0 = time.monotonic()
    with console.status("starting Kafka (KRaft) and MLflow..."):
        results = launcher.up(settings)
    return {
        "services": {r.name: {"state": r.state, "address": r.address} for r in results},
        "seconds": round(time.monotonic() - t0, 1),
    }


def step_bus_round_trip(settings: Settings, vehicles: int = 50, frames_per_vehicle: int = 2000) -> dict[str, Any]:
    """Send columnar telemetry for ``vehicles`` through the broker and read every frame back exactly once."""
    from fleetloop.platform.bus import TELEMETRY, TELEMETRY_FRAMES, BusConsumer, BusProducer, FrameBatch

    run = uuid.uuid4().hex[:8]
    ids = [f"demo-{run}-{i:04d}" for i in range(vehicles)]
    rng = np.random.default_rng(0)
    t0 = time.monotonic()
    with BusProducer(settings, client_id="fleetloop-demo") as producer:
        for vid in ids:
            cols: dict[str, Any] = {}
            for c in TELEMETRY_FRAMES.columns:
                shape = (frames_per_vehicle, *c.shape)
                cols[c.name] = rng.integers(0, 200, size=shape) if c.np_dtype.kind in "ui" else rng.random(shape)
            cols["seq"] = np.arange(frames_per_vehicle)
            cols["tick"] = np.arange(frames_per_vehicle)
            producer.send(TELEMETRY, FrameBatch.build(TELEMETRY_FRAMES, vid, cols))
        producer.flush()
    sent_s = time.monotonic() - t0
    seen: dict[str, list[np.ndarray]] = {vid: [] for vid in ids}
    others = 0
    with BusConsumer(settings, [TELEMETRY], group_id=f"demo-{run}", client_id="fleetloop-demo") as consumer:
        total = vehicles * frames_per_vehicle
        got = 0
        for polled in consumer.poll_batches(idle_timeout_s=15.0):
            for d in polled.deliveries:
                if isinstance(d.value, FrameBatch) and d.value.vehicle_id in seen:
                    seen[d.value.vehicle_id].append(d.value.seq)
                    got += d.value.n_frames
                else:
                    others += 1  # telemetry of earlier runs on the same topic
            consumer.commit(polled)
            if got >= total:
                break
    elapsed = time.monotonic() - t0
    missing = duplicates = 0
    for seqs in seen.values():
        allseq = np.concatenate(seqs) if seqs else np.empty(0, dtype=np.uint32)
        uniq = np.unique(allseq)
        duplicates += len(allseq) - len(uniq)
        missing += frames_per_vehicle - len(uniq)
    if missing or duplicates:
        raise DataError(f"bus round trip lost {missing} and duplicated {duplicates} frames")
    return {
        "vehicles": vehicles,
        "frames": total,
        "missing": missing,
        "duplicates": duplicates,
        "other_records_skipped": others,
        "send_seconds": round(sent_s, 2),
        "frames_per_second_end_to_end": round(total / elapsed),
    }


def step_models(settings: Settings) -> dict[str, Any]:
    """The fleet policy's versions and stages in the registry."""
    from fleetloop.platform.registry import open_registry

    reg = open_registry(settings)
    try:
        versions = reg.list_versions(settings.model_name)
    except NotFoundError:
        versions = []
    return {
        "model": settings.model_name,
        "versions": {v.version: v.stage.value if v.stage else None for v in versions},
    }


def _render(d: dict[str, Any]) -> None:
    table = Table(title="fleetloop demo")
    table.add_column("step")
    table.add_column("result")
    for step, result in d["steps"].items():
        table.add_row(step, ", ".join(f"{k}={v}" for k, v in result.items()))
    console.print(table)
    console.print("The stack stays up: `fleetloop status`, `fleetloop model list`, `fleetloop down` to stop.")


@app.callback(invoke_without_command=True)
def demo(
    vehicles: int = typer.Option(50, min=1, help="Vehicles whose telemetry crosses the bus."),
    frames: int = typer.Option(2000, min=1, help="Frames per vehicle."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """See the whole loop once on the embedded defaults: local Kafka, MLflow on SQLite."""
    settings = load_settings()
    with run_record(settings, command="demo", params={"vehicles": vehicles, "frames": frames}, seed=0) as rec:
        steps: dict[str, Any] = {}
        steps["stack"] = step_stack_up(settings)
        with console.status("telemetry through the bus..."):
            steps["bus"] = step_bus_round_trip(settings, vehicles, frames)
        steps["registry"] = step_models(settings)
        rec.summary = {"steps": steps}
    emit({"run_id": rec.id, "steps": steps}, as_json, _render)
