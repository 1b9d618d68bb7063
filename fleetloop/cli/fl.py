"""`fleetloop fl round | serve`: federated rounds over the vehicles' on-board buffers, on Flower's simulation
engine (Ray) or its deployment engine (a SuperLink and one SuperNode per vehicle).

    fleetloop fl round --rounds 3 --clients 10 --strategy fedmedian [--fraction 0.5]
                       [--byzantine 0.2 --attack sign-flip|scale|noise|alie] [--dropout 0.1]
                       [--dp server-fixed --noise-multiplier 1.0 --clipping-norm 1.0] [--restart]
                       [--deployment] [--json] [--plot rounds.png]
    fleetloop fl serve --clients 3 [--json]

`fl serve` starts the deployment engine's servers as a launcher service (``flower``; `fleetloop down` stops them);
`fl round --deployment` submits the run to that SuperLink and follows its status until it ends: a failed run is
an error with its reason and exit code, never exit 0.

Before anything starts: the settings and the strategy are checked (exit 2 on what cannot work, warnings on what
will not do what was asked). Then the rounds run with a progress bar; the summary says what each round did,
which vehicles took part or were dropped and why, the held-out metrics and the privacy spent. The global model
is announced as ``model.trained`` (origin "federated") when the validate stage runs (`fleetloop pipeline serve`),
and the command waits for its verdict; otherwise `fleetloop pipeline run --stage validate` finds it (its MLflow run
follows the candidate contract, ``fleetloop.platform.candidates``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetloop.cli.output import console, emit, err_console
from fleetloop.cli.validate_args import NON_NEGATIVE_FLOAT, POSITIVE_FLOAT, POSITIVE_INT, SHARE, UNIT_INTERVAL
from fleetloop.federation import serve as flower
from fleetloop.federation.config import ATTACKS, DP_MODES, STRATEGIES, ClientTrainConfig, DpConfig, RoundsConfig
from fleetloop.federation.serve import ServedVehicle, read_vehicles, write_vehicles
from fleetloop.pipelines.serve import service_name, stage_specs
from fleetloop.platform import launcher
from fleetloop.platform.errors import SetupError
from fleetloop.platform.logs import log_context
from fleetloop.platform.settings import Settings, load_settings

if TYPE_CHECKING:
    from fleetloop.federation.deployment import DeploymentTarget
    from fleetloop.federation.runner import Preflight
    from fleetloop.federation.server_app import RoundReport

__all__ = ["app", "federate"]

app = typer.Typer(no_args_is_help=True)


def _validate_running(settings: Settings) -> bool:
    specs = [s for s in stage_specs() if s.name == service_name("validate")]
    return any(st.healthy for st in launcher.status(settings, specs))


def _announce_and_wait(settings: Settings, event: Any, wait_s: float) -> dict[str, Any]:
    """Publish ``model.trained`` and wait for validate's report of this run when the validate stage runs."""
    if not _validate_running(settings):
        return {
            "announced": False,
            "verdict": None,
            "how": "no validate stage is running, nothing announced: `fleetloop pipeline run --stage validate` "
            f"validates this candidate (MLflow run {event.run_id}, {event.artifact_uri}); with `fleetloop pipeline "
            "serve` running, the next call announces its candidate and waits for the verdict",
        }
    from fleetloop.platform.bus.producer import BusProducer
    from fleetloop.platform.bus.topics import PIPELINE_EVENTS

    with BusProducer(settings, client_id="federation") as p:
        p.send(PIPELINE_EVENTS, event, key=event.run_id)
        p.flush()
    report = Path(settings.state_dir) / "pipelines" / "validation" / f"{event.run_id}.json"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not report.exists():
        time.sleep(1.0)
    if not report.exists():
        return {
            "announced": True,
            "verdict": None,
            "how": f"no verdict within {wait_s:.0f} s; see `fleetloop model list`",
        }
    decision = json.loads(report.read_text()).get("decision", {})
    return {"announced": True, "verdict": decision, "how": str(report)}


_ENGINES = {
    "simulation": "Flower's simulation engine on Ray",
    "deployment": "the SuperLink and SuperNodes of `fleetloop fl serve`",
}


def _render(d: dict[str, Any]) -> None:
    t = Table(
        title=f"federated rounds {d['first_round']}-{d['last_round']} of {d['model_name']} ({d['strategy']})",
        box=box.SIMPLE_HEAD,
    )
    for col in ("round", "sampled", "valid", "dropped", "stragglers", "aggregated", "held-out MSE", "hazard acc"):
        t.add_column(col, justify="right")
    for r in d["rounds"]:
        dropped = ", ".join(f"{k} {n}" for k, n in sorted(r["dropped"].items())) or "0"
        mse, acc = r["heldout"].get("heldout_accel_mse"), r["heldout"].get("heldout_hazard_acc")
        t.add_row(
            str(r["server_round"]),
            str(r["sampled"]),
            str(len(r["participants"])),
            dropped,
            str(r["stragglers"]),
            "yes" if r["aggregated"] else f"[yellow]no[/] ({r['reason']})",
            "-" if mse is None else f"{mse:.4f}",
            "-" if acc is None else f"{acc:.3f}",
        )
    console.print(t)
    b, a = d["heldout_before"].get("heldout_accel_mse"), d["heldout_after"].get("heldout_accel_mse")
    if b is not None and a is not None:
        console.print(f"held-out command MSE: {b:.4f} -> {a:.4f} (m/s²)² on the server's held-out vehicles")
    console.print(f"vehicles aggregated so far: {len(d['participants'])}; parent version: {d['parent_version']}")
    console.print(f"engine: {d['engine']} ({_ENGINES[d['engine']]})")
    if d["skipped_vehicles"]:
        console.print(f"buffers skipped: {d['skipped_vehicles']}")
    if d["attackers"]:
        console.print(f"injected attackers ({d['attack']}): {d['attackers']}")
    p = d["privacy"]
    if p.get("mode", "off") != "off":
        eps = p.get("epsilon")
        spent = f"epsilon {eps:.3f} at delta {p['delta']:g}" if eps is not None else p["accounting"]
        console.print(f"privacy ({p['mode']}): {p['releases']} release(s), {spent}")
    console.print(f"model: {d['artifact_path']} (MLflow run {d['run_id']})")
    v = d["validation"]
    if v["verdict"] is not None:
        console.print(f"validate: {'[green]passed[/]' if v['verdict'].get('passed') else '[red]rejected[/]'}")
    else:
        console.print(v["how"])


def _plot(d: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["server_round"] for r in d["rounds"]]
    mse = [r["heldout"].get("heldout_accel_mse") for r in d["rounds"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, mse, marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out command MSE [(m/s²)²]")
    ax.set_title(f"{d['strategy']}: held-out quality per round")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def federate(
    settings: Settings,
    cfg: RoundsConfig,
    *,
    deployment: bool = False,
    verdict_wait_s: float = 600.0,
    on_start: Callable[[Preflight], None] | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
) -> dict[str, Any]:
    """What `fl round` does, as a JSON-ready summary: the preflight (its warnings to stderr), the rounds on the
    simulation engine or (``deployment``) on the SuperLink `fl serve` runs, the candidate announced and its verdict
    awaited where the validate stage runs. The demo's federated step calls it too."""
    # torch, Flower and Ray's runtime load here (seconds), not for every `fleetloop` start
    from fleetloop.federation.runner import preflight, run_rounds

    target = _served(settings) if deployment else None
    pre = preflight(settings, cfg)
    for w in pre.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if on_start is not None:
        on_start(pre)
    with contextlib.redirect_stdout(sys.stderr):  # Flower's and Ray's chatter never reaches the JSON on stdout
        result = run_rounds(settings, cfg, checked=pre, on_round=on_round, deployment=target)
    d = result.as_dict()
    d["engine"] = "simulation" if target is None else "deployment"
    d["attack"] = cfg.attack
    d["validation"] = _announce_and_wait(settings, result.event, verdict_wait_s)
    return d


def _served(settings: Settings) -> DeploymentTarget:
    """The running SuperLink's vehicles; SetupError when `fl serve` is not running."""
    from fleetloop.federation.deployment import DeploymentTarget  # imports Flower (seconds): only with --deployment

    (st,) = launcher.status(settings, [flower.SPEC])
    vehicles = read_vehicles(settings)
    if not st.healthy or not vehicles:
        raise SetupError(
            f"no SuperLink with vehicles runs at {flower.superlink_address(settings)} ({st.state}: {st.detail}); "
            "start it with `fleetloop fl serve --clients N`, or drop --deployment for the simulation engine"
        )
    return DeploymentTarget(vehicles)


@app.command("round")
def round_cmd(
    rounds: int = typer.Option(
        3, "--rounds", click_type=POSITIVE_INT, help="Rounds to run (a later call continues the federation)."
    ),
    clients: int = typer.Option(10, "--clients", click_type=POSITIVE_INT, help="Vehicles taking part."),
    strategy: str = typer.Option("fedavg", "--strategy", help=f"One of {', '.join(STRATEGIES)}."),
    fraction: float = typer.Option(
        1.0, "--fraction", click_type=SHARE, help="Share of the vehicles sampled per round."
    ),
    byzantine: float = typer.Option(
        0.0, "--byzantine", click_type=UNIT_INTERVAL, help="Share of vehicles that attack (tests, benchmarks)."
    ),
    attack: str = typer.Option("sign-flip", "--attack", help=f"Their attack: {', '.join(ATTACKS)}."),
    dropout: float = typer.Option(
        0.0, "--dropout", click_type=UNIT_INTERVAL, help="Chance a sampled vehicle goes offline in a round."
    ),
    dp: str = typer.Option("off", "--dp", help=f"Differential privacy: {', '.join(DP_MODES)}."),
    noise_multiplier: float = typer.Option(
        1.0, "--noise-multiplier", click_type=NON_NEGATIVE_FLOAT, help="DP noise std over the clipping norm."
    ),
    clipping_norm: float = typer.Option(
        1.0, "--clipping-norm", click_type=POSITIVE_FLOAT, help="DP clipping norm of an update."
    ),
    timeout_s: float = typer.Option(
        120.0, "--round-timeout", click_type=POSITIVE_FLOAT, help="Replies later than this are dropped (seconds)."
    ),
    epochs: int = typer.Option(
        2, "--local-epochs", click_type=POSITIVE_INT, help="Local passes over a vehicle's labelled frames."
    ),
    parent_anchor: float = typer.Option(
        ClientTrainConfig().parent_anchor_weight,
        "--parent-anchor",
        click_type=NON_NEGATIVE_FLOAT,
        help="Pull each local update towards the model the federation started from, as the central fine-tune "
        "pulls towards its parent (0: off; unused under FedProx, whose mu anchors to the global model).",
    ),
    local_balance: bool = typer.Option(
        ClientTrainConfig().balance_hazard,
        "--local-balance/--no-local-balance",
        help="Weight a vehicle's hazard and normal frames equally in its local training.",
    ),
    initial_model: Path | None = typer.Option(None, "--initial-model", help="Start from this artifact."),
    restart: bool = typer.Option(False, "--restart", help="Start a new federation, ignoring the saved state."),
    deployment: bool = typer.Option(
        False,
        "--deployment",
        help="Run on the SuperLink and SuperNodes `fleetloop fl serve` started (Flower's deployment engine) "
        "instead of the simulation engine; the exit status is the run's outcome.",
    ),
    verdict_wait_s: float = typer.Option(
        600.0, "--verdict-wait", click_type=NON_NEGATIVE_FLOAT, help="How long to wait for validate (seconds)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    plot: Path | None = typer.Option(None, "--plot", help="Write held-out quality per round to this PNG."),
) -> None:
    """Run federated rounds: vehicles train on their own buffers, the server aggregates and evaluates."""
    settings = load_settings()
    cfg = RoundsConfig(
        rounds=rounds,
        clients=clients,
        strategy=strategy,
        fraction=fraction,
        byzantine=byzantine,
        attack=attack,
        dropout=dropout,
        round_timeout_s=timeout_s,
        initial_model=initial_model,
        restart=restart,
        local=ClientTrainConfig(epochs=epochs, parent_anchor_weight=parent_anchor, balance_hazard=local_balance),
        dp=DpConfig(mode=dp, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm),
    )
    engine = "the SuperLink's vehicles" if deployment else "Ray and the vehicles"
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err_console, transient=True
    ) as progress:
        task = progress.add_task(f"{cfg.strategy}: checking the vehicles' buffers", total=cfg.rounds)

        def on_start(pre: Preflight) -> None:
            progress.update(task, description=f"{cfg.strategy}: starting {engine} ({len(pre.clients)} clients)")

        def on_round(r: RoundReport) -> None:
            with log_context(round=r.server_round):
                logging.getLogger(__name__).info("round done: %d vehicles aggregated", len(r.participants))
            progress.update(
                task, advance=1, description=f"round {r.server_round}: {len(r.participants)} vehicles aggregated"
            )

        d = federate(
            settings, cfg, deployment=deployment, verdict_wait_s=verdict_wait_s, on_start=on_start, on_round=on_round
        )
    if plot is not None:
        _plot(d, plot)
        d["plot"] = str(plot)
    emit(d, as_json, _render)


@app.command("serve")
def serve_cmd(
    clients: int = typer.Option(
        3, "--clients", click_type=POSITIVE_INT, help="Vehicles served, one SuperNode each (held-out ones never)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Start Flower's deployment engine: a SuperLink and one SuperNode per vehicle, each reading its own on-board
    buffer (`fleetloop fl round --deployment` runs on them; `fleetloop down` stops them)."""
    from fleetloop.federation.runner import preflight  # torch and Flower (seconds): only when a command needs them

    settings = load_settings()
    pre = preflight(settings, RoundsConfig(clients=clients))
    vehicles = [ServedVehicle(v.vehicle_id, str(v.path.resolve())) for v in pre.clients]
    (st,) = launcher.status(settings, [flower.SPEC])
    restarted = st.healthy and read_vehicles(settings) != vehicles
    if restarted:
        launcher.down(settings, [flower.SPEC])
    write_vehicles(settings, vehicles)
    (up,) = launcher.up(settings, [flower.SPEC])
    d = {
        "service": up.name,
        "state": up.state,
        "superlink": up.address,
        "restarted_for_new_vehicles": restarted,
        "supernodes": [v.__dict__ for v in vehicles],
        "heldout_vehicles": [v.vehicle_id for v in pre.heldout],
        "transport": "insecure (plain HTTP) on loopback only; not for a network",
        "runtime_dependency_installation": "off",
        "warnings": pre.warnings,
    }
    emit(d, as_json, _render_serve)


def _render_serve(d: dict[str, Any]) -> None:
    ids = ", ".join(str(v["vehicle_id"]) for v in d["supernodes"])
    console.print(
        f"Flower SuperLink {d['state']} at {d['superlink']}"
        f"{' (restarted for the new vehicles)' if d['restarted_for_new_vehicles'] else ''}"
    )
    console.print(f"{len(d['supernodes'])} SuperNodes, one per vehicle, each on its own buffer: vehicles {ids}")
    console.print(f"held out for the server's evaluation (not served): {d['heldout_vehicles']}")
    console.print(f"{d['transport']}; runtime dependency installation {d['runtime_dependency_installation']}")
    console.print("next: `fleetloop fl round --deployment --clients N`; `fleetloop down` stops them")
