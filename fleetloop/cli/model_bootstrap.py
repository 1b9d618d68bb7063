"""`fleetloop model bootstrap`: train the initial fleet policy and release it as the genesis production version.

``bootstrap(settings, ...)`` is the step function (the demo composes it); ``bootstrap_cmd`` is the typer command
the ``model`` group registers (``app.command("bootstrap")(bootstrap_cmd)``). Idempotent: when a production
version exists it says so and changes nothing, unless ``--force`` (then the new version replaces it, recorded as
forced with the reason).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from fleetloop.cli.output import console, emit
from fleetloop.cli.validate_args import ANY_INT, POSITIVE_FLOAT, POSITIVE_INT
from fleetloop.platform.errors import NotFoundError, UserInputError
from fleetloop.platform.runs import run_record
from fleetloop.platform.settings import Settings, load_settings

__all__ = ["GENESIS_REASON", "bootstrap", "bootstrap_cmd"]

GENESIS_REASON = "genesis release: initial model, imitation of the expert on clear-weather driving"


def bootstrap(
    settings: Settings,
    *,
    force: bool = False,
    seed: int = 0,
    vehicles: int | None = None,
    ticks: int = 300,
    max_train_s: float = 60.0,
    epochs: int | None = None,
    reason: str = GENESIS_REASON,
    actor: str | None = None,
) -> dict[str, Any]:
    """Train, register as a new version and promote to production (see the module docstring).

    ``epochs`` overrides the bootstrap's epoch count; training stops at ``epochs`` or ``max_train_s``, whichever
    comes first (a run that must not depend on the machine's load gives a generous ``max_train_s``)."""
    # Imported when bootstrapping: edge_agent.bootstrap loads torch (~6 s measured) for every `fleetloop` start.
    from fleetloop.edge_agent.bootstrap import BootstrapConfig, bootstrap_initial_model, collect_expert_frames
    from fleetloop.edge_agent.model_artifact import read_metadata
    from fleetloop.pipelines.replay import REPLAY_FRAMES, replay_path, sample_frames, write_replay_set
    from fleetloop.platform.registry import Stage, open_registry

    vehicles = BootstrapConfig().vehicles if vehicles is None else vehicles
    if vehicles < 1 or ticks < 1 or not max_train_s > 0:
        raise UserInputError("--vehicles and --ticks must be positive counts and --max-train-seconds positive")
    reg = open_registry(settings)
    name = settings.model_name
    try:
        prod = reg.production(name)
    except NotFoundError:
        prod = None
    if prod is not None and not force:
        return {
            "model": name,
            "changed": False,
            "production": prod.version,
            "message": f"{name} v{prod.version} is already in production; nothing to do (--force retrains and "
            "replaces it)",
        }
    out_dir = Path(settings.state_dir) / "models" / "bootstrap"
    base = BootstrapConfig()
    config = BootstrapConfig(
        weather="clear",
        seed=seed,
        vehicles=vehicles,
        ticks=ticks,
        output_dir=out_dir,
        imitation=replace(base.imitation, max_seconds=max_train_s, epochs=epochs or base.imitation.epochs),
    )
    data = collect_expert_frames(config)
    path, metrics = bootstrap_initial_model(config, data)
    meta = read_metadata(path)
    # The frames the model learnt from, sampled for the fine-tunes to replay (pipelines.replay, ADR 0199).
    source = {"role": "initial", "weather": "clear", "scenario": config.scenario, "seed": str(seed)}
    replay = write_replay_set(settings.state_dir, sample_frames(data, REPLAY_FRAMES, seed), source)
    del data
    registry_meta = {
        **meta.registry_metadata(),
        "role": "initial",
        "weather": "clear",
        "seed": seed,
        "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
    }
    info = reg.register(name, path, registry_meta, reason="initial model by imitation of the expert", actor=actor)
    why = reason if prod is None else f"{reason} (forced over v{prod.version})"
    records = reg.promote(name, info.version, Stage.PRODUCTION, reason=why, force=prod is not None, actor=actor)
    return {
        "model": name,
        "changed": True,
        "version": info.version,
        "production": info.version,
        "replaced": None if prod is None else prod.version,
        "genesis": any(r.genesis for r in records),
        "artifact": str(path),
        "metrics": {k: v for k, v in metrics.items() if k != "loss_curve"},
        "transitions": [r.to_stage for r in records],
        "replay": {**replay.brief(), "path": str(replay_path(settings.state_dir))},
    }


def _render(d: dict[str, Any]) -> None:
    if not d["changed"]:
        console.print(d["message"], highlight=False)
        return
    m = d["metrics"]
    kind = "genesis release" if d["genesis"] else f"forced release replacing v{d['replaced']}"
    details = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, float))
    console.print(f"{d['model']} v{d['version']} is in production ({kind}); {details}", highlight=False)
    r = d["replay"]
    console.print(
        f"kept {r['frames']:,} of its training frames ({r['hazard_rate']:.0%} hazards) for the fine-tunes to "
        f"replay: {r['path']}",
        highlight=False,
    )


def bootstrap_cmd(
    force: bool = typer.Option(False, "--force", help="Retrain and replace the production version."),
    seed: int = typer.Option(
        0, "--seed", click_type=ANY_INT, help="Seed of data collection, initialisation and training."
    ),
    vehicles: int | None = typer.Option(
        None,
        "--vehicles",
        click_type=POSITIVE_INT,
        help="Vehicles driven by the expert to collect data (default: the bootstrap recipe's).",
    ),
    ticks: int = typer.Option(
        300, "--ticks", click_type=POSITIVE_INT, help="Ticks (0.1 s) of expert driving collected."
    ),
    max_train_seconds: float = typer.Option(
        60.0, "--max-train-seconds", click_type=POSITIVE_FLOAT, help="Wall-clock training budget (seconds)."
    ),
    reason: str = typer.Option(GENESIS_REASON, "--reason", help="Why; recorded in the transition log."),
    actor: str | None = typer.Option(None, "--actor", help="Who, for the log (default: user@host)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Train the initial model on clear weather, register it and release it to production (genesis)."""
    settings = load_settings()
    params = {"force": force, "vehicles": vehicles, "ticks": ticks, "max_train_seconds": max_train_seconds}
    with run_record(settings, command="model bootstrap", params=params, seed=seed) as rec:
        with console.status("collecting expert driving and training the initial model..."):
            result = bootstrap(
                settings,
                force=force,
                seed=seed,
                vehicles=vehicles,
                ticks=ticks,
                max_train_s=max_train_seconds,
                reason=reason,
                actor=actor,
            )
        rec.summary = result
    emit(result, as_json, _render)
