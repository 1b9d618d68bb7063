"""`fleetloop runs list | show ID`: look back at the record every command leaves."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich import box
from rich.syntax import Syntax
from rich.table import Table

from fleetloop.cli.output import console, emit, err_console
from fleetloop.cli.validate_args import COUNT
from fleetloop.platform.runs import find_run, list_runs
from fleetloop.platform.settings import load_settings

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)

_STYLE = {"ok": "green", "failed": "red", "interrupted": "yellow", "running": "cyan", "lost": "magenta"}


def format_duration(duration_s: float | None) -> str:
    """A duration for people: ``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; empty when unknown."""
    if duration_s is None:
        return ""
    if duration_s < 10:
        return f"{duration_s:.2f} s"
    if duration_s < 60:
        return f"{duration_s:.1f} s"
    minutes, seconds = divmod(round(duration_s), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _started(text: str) -> str:
    # 2026-01-14T12:03:01.123Z -> 2026-01-14 12:03:01: the column says UTC; --json keeps the precision.
    return text.replace("T", " ")[:19]


def _status(status: str) -> str:
    style = _STYLE.get(status, "")
    return f"[{style}]{status}[/]" if style else status


@app.command("list")
def list_cmd(
    limit: int = typer.Option(20, "--limit", "-n", click_type=COUNT, help="Show the newest N runs (0 for all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of records."),
) -> None:
    """List recent runs, newest first: id, command, status, start (UTC), duration, seed."""
    settings = load_settings()
    listing = list_runs(settings.state_dir, limit=limit or None)
    for path, why in listing.unreadable:
        err_console.print(f"[yellow]warning:[/] skipped unreadable run record {path}: {why}", highlight=False)
    data = [rec.as_dict() for rec in listing.records]

    def render(rows: list[dict[str, Any]]) -> None:
        if not rows:
            console.print(f"no runs recorded under {settings.state_dir / 'runs'} yet")
            return
        table = Table(title="fleetloop runs (newest first)", box=box.SIMPLE_HEAD, pad_edge=False)
        # On a narrow terminal the command and the start time wrap; the id stays whole, to be copied.
        table.add_column("id", no_wrap=True)
        table.add_column("command", min_width=10)
        table.add_column("status", no_wrap=True)
        table.add_column("started (UTC)", min_width=10)
        table.add_column("duration", no_wrap=True, justify="right")
        table.add_column("seed", no_wrap=True, justify="right")
        for r in rows:
            table.add_row(
                r["id"],
                r["command"],
                _status(r["status"]),
                _started(r["started_utc"]),
                format_duration(r["duration_s"]),
                "" if r["seed"] is None else str(r["seed"]),
            )
        console.print(table)

    emit(data, as_json, render)


@app.command("show")
def show_cmd(
    run_id: str = typer.Argument(..., metavar="ID", help="A run id, or a prefix of one that matches a single run."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as one JSON object."),
) -> None:
    """Show one run: status, seed, versions, parameters, summary and, if it failed, the error."""
    settings = load_settings()
    record = find_run(settings.state_dir, run_id).as_dict()

    def render(r: dict[str, Any]) -> None:
        head = Table(show_header=False, title=f"run {r['id']}")
        head.add_column("field", style="bold")
        head.add_column("value")
        head.add_row("command", r["command"])
        head.add_row("status", _status(r["status"]))
        head.add_row("started (UTC)", r["started_utc"])
        head.add_row("ended (UTC)", r["ended_utc"] or "")
        head.add_row("duration", format_duration(r["duration_s"]))
        head.add_row("seed", "" if r["seed"] is None else str(r["seed"]))
        head.add_row("host / pid", f"{r['host'] or '?'} / {r['pid'] or '?'}")
        if r["argv"]:
            head.add_row("argv", " ".join(r["argv"]))
        if r["error"]:
            head.add_row("error", f"[red]{r['error'].get('type')}: {r['error'].get('message')}[/]")
        console.print(head)
        for section in ("params", "summary", "versions"):
            console.print(f"[bold]{section}[/]")
            if r[section]:
                console.print(Syntax(json.dumps(r[section], indent=2, sort_keys=True), "json", theme="ansi_dark"))
            else:
                console.print("  (none)", style="dim")

    emit(record, as_json, render)
