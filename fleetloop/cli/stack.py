"""`fleetloop up | down | status`: the local stack through the generic service launcher."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from fleetloop.cli.output import console, emit
from fleetloop.cli.services import NOT_INSTALLED, not_installed, services_to_start, stack_services
from fleetloop.platform import launcher
from fleetloop.platform.settings import load_settings

__all__ = ["register"]

_STYLE = {
    "running": "green",
    "external": "cyan",
    "stopped": "dim",
    NOT_INSTALLED: "dim",
    "unhealthy": "yellow",
    "half-dead": "red",
    "crashed": "red",
}


def _targets(state_dir: Any) -> list[dict[str, Any]]:
    try:
        from fleetloop.platform.metrics import list_targets
    except ImportError:
        return []
    listing = list_targets(state_dir)
    found: list[dict[str, Any]] = [
        {"name": t.name, "address": t.address, "labels": dict(t.labels)} for t in listing.targets
    ]
    found += [{"file": str(path), "unreadable": why} for path, why in listing.unreadable]
    return found


def _render_status(d: dict[str, Any]) -> None:
    table = Table(title=f"fleetloop stack ({d['state_dir']})")
    for col in ("service", "state", "address", "pid", "since", "detail"):
        table.add_column(col)
    for s in d["services"]:
        style = _STYLE.get(s["state"], "")
        table.add_row(
            s["name"],
            f"[{style}]{s['state']}[/]",
            s["address"],
            str(s["pid"] or ""),
            s["started_at"] or "",
            s["detail"],
        )
    console.print(table)
    if d.get("metrics_targets"):
        console.print(f"metrics exporters: {len(d['metrics_targets'])} registered")


def up(
    service: list[str] = typer.Argument(None, help="Services to start (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Start the local stack (Kafka in KRaft mode, MLflow, Prometheus) and wait until each answers a real call."""
    settings = load_settings()
    # Optional services this machine lacks are reported, not started (named ones fail with how to install them).
    absent = [] if service else [st for spec in services_to_start() if (st := not_installed(settings, spec))]
    if not as_json:
        for st in absent:
            console.print(f"  {st.name}: [dim]{NOT_INSTALLED}[/] ({st.detail})", highlight=False)
    with console.status("starting the stack...") as spinner:

        def on_event(name: str, state: str) -> None:
            spinner.update(f"{name}: {state}...")
            if state != "starting" and not as_json:
                console.print(f"  {name}: [{_STYLE.get(state, '')}]{state}[/]")

        results = launcher.up(settings, services_to_start(service, settings), on_event=on_event) + absent
    data = {
        "state_dir": str(settings.state_dir),
        "services": [r.to_dict() for r in results],
        "healthy": all(r.healthy for r in results if r.state != NOT_INSTALLED),
    }
    emit(data, as_json, _render_status)


def down(
    service: list[str] = typer.Argument(None, help="Services to stop (default: all)."),
    purge: bool = typer.Option(False, "--purge", help="Also delete the services' data and logs."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before purging."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Stop the local stack: every service's whole process tree; `--purge` also removes its data."""
    settings = load_settings()
    specs = launcher.select(stack_services(), service) if service else stack_services()
    if purge and not yes:
        names = ", ".join(s.name for s in specs)
        typer.confirm(f"Delete all data of {names} under {settings.state_dir / 'services'}?", abort=True)
    results = launcher.down(settings, specs, purge=purge)
    data = {"state_dir": str(settings.state_dir), "services": [r.__dict__ for r in results]}

    def render(d: dict[str, Any]) -> None:
        for r in d["services"]:
            extra = f", {len(r['pids'])} process(es)" if r["pids"] else ""
            extra += f", purged {', '.join(r['purged'])}" if r["purged"] else ""
            console.print(f"  {r['name']}: {r['action']}{extra}")

    emit(data, as_json, render)


def status(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show each service's state, address and health (a real protocol call), and metrics exporters."""
    settings = load_settings()
    results = [not_installed(settings, s) or launcher.status(settings, [s])[0] for s in stack_services()]
    data = {
        "state_dir": str(settings.state_dir),
        "services": [r.to_dict() for r in results],
        # On-demand services (pipeline stages) count only while they run; optional ones this machine lacks, never.
        "healthy": all(r.healthy for r in results if (r.required or r.state != "stopped") and r.state != NOT_INSTALLED),
        "kafka_bootstrap": settings.bootstrap_servers,
        "mlflow_tracking_uri": settings.tracking_uri,
        "prometheus_uri": settings.prometheus_uri,
        "metrics_targets": _targets(settings.state_dir),
    }
    emit(data, as_json, _render_status)
    if not data["healthy"]:
        raise typer.Exit(4)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
