"""`fleetloop demo`: the whole loop once, composed of the same step functions the commands use.

Each step returns a JSON-ready summary; the demo prints them as it goes and one summary at the end.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Table

from fleetloop.cli.model_bootstrap import bootstrap
from fleetloop.cli.output import console, emit
from fleetloop.cli.pipeline import STAGES
from fleetloop.cli.services import services_to_start
from fleetloop.cli.sim import simulate
from fleetloop.cli.validate_args import ANY_INT, POSITIVE_INT, at_least
from fleetloop.platform import launcher
from fleetloop.platform.errors import NotFoundError
from fleetloop.platform.registry import open_registry
from fleetloop.platform.runs import run_record
from fleetloop.platform.settings import Settings, load_settings

__all__ = [
    "app",
    "step_fleet",
    "step_genesis_model",
    "step_models",
    "step_pipeline",
    "step_stack_up",
]

app = typer.Typer()


def step_stack_up(settings: Settings) -> dict[str, Any]:
    """Start (or find) Kafka and MLflow; the catalogue's topics are created by Kafka's post-start step."""
    t0 = time.monotonic()
    with console.status("starting Kafka (KRaft) and MLflow..."):
        results = launcher.up(settings, services_to_start(settings=settings))
    return {
        "services": {r.name: {"state": r.state, "address": r.address} for r in results},
        "seconds": round(time.monotonic() - t0, 1),
    }


def step_genesis_model(settings: Settings) -> dict[str, Any]:
    """The fleet's initial model: bootstrapped by imitation on clear weather and released as genesis, once."""
    out = bootstrap(settings, vehicles=512, ticks=300, max_train_s=30.0, actor="demo")
    metrics = out.get("metrics") or {}
    return {
        "production": out.get("production"),
        "trained_now": out.get("changed"),
        "genesis": out.get("genesis", "earlier"),
        **{k: round(float(metrics[k]), 3) for k in ("val_accel_corr", "val_hazard_acc") if k in metrics},
    }


def step_fleet(settings: Settings, vehicles: int, minutes: float, weather: str, seed: int) -> dict[str, Any]:
    """A fleet on the production model, streaming its triggered uploads through Kafka."""
    out = simulate(
        settings, vehicles=vehicles, minutes=minutes, scenario="mixed", weather=weather, seed=seed, fleet_tag="demo"
    )
    events = out.get("events", {})
    return {
        "km": round(float(out.get("km", 0.0)), 1),
        **{k: events[k] for k in ("collisions", "near_misses") if k in events},
        "collisions_plus_near_misses_per_1000_km": round(
            float(out.get("collisions_plus_near_misses_per_1000_km", 0.0)), 1
        ),
        "counts": {k: v for k, v in out.get("counts", {}).items() if "upload" in k or "telemetry" in k},
    }


def step_pipeline(settings: Settings) -> dict[str, Any]:
    """Every pipeline stage once over what arrived: collect, ground truth, label, train, validate."""
    out: dict[str, Any] = {}
    for name, stage in STAGES.items():
        summary = stage.run(settings, lambda msg: None)
        flat = {k: v for k, v in summary.items() if isinstance(v, int | float | str)}
        out[name] = ", ".join(f"{k}={v}" for k, v in list(flat.items())[:4])
    return out


def step_models(settings: Settings) -> dict[str, Any]:
    """The fleet policy's versions and stages in the registry."""
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
    vehicles: int = typer.Option(100, click_type=POSITIVE_INT, help="Fleet vehicles driving into fog."),
    minutes: float = typer.Option(1.0, click_type=at_least(0.1, float), help="Simulated minutes of fleet driving."),
    weather: str = typer.Option("fog", help="Weather preset of the fleet run."),
    seed: int = typer.Option(0, click_type=ANY_INT, help="Seed of the fleet run."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """See the whole loop once on the embedded defaults: local Kafka, MLflow on SQLite."""
    settings = load_settings()
    params = {"vehicles": vehicles, "minutes": minutes, "weather": weather}
    with run_record(settings, command="demo", params=params, seed=seed) as rec:
        steps: dict[str, Any] = {}
        t0 = time.monotonic()
        steps["stack"] = step_stack_up(settings)
        with console.status("genesis model: imitation of the expert on clear weather..."):
            steps["genesis model"] = step_genesis_model(settings)
        steps["fleet"] = step_fleet(settings, vehicles, minutes, weather, seed)
        with console.status("data loop: collect, label, train, validate..."):
            steps.update({f"pipeline {k}": {"summary": v} for k, v in step_pipeline(settings).items()})
        steps["registry"] = step_models(settings)
        steps["registry"]["demo_seconds"] = round(time.monotonic() - t0, 1)
        rec.summary = {"steps": steps}
    emit({"run_id": rec.id, "steps": steps}, as_json, _render)
