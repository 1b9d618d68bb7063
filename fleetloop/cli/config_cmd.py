"""`fleetloop config show`: the effective settings and where each came from."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from fleetloop.cli.output import console, emit
from fleetloop.platform.settings import Settings, load_settings

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)


@app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Print the effective settings (environment, config file, defaults) after validation."""
    settings = load_settings()
    data = settings.public_dict()

    def render(d: dict[str, Any]) -> None:
        table = Table(title="fleetloop settings", show_lines=False)
        table.add_column("setting")
        table.add_column("value")
        table.add_column("about", style="dim")
        for key, value in d.items():
            field = Settings.model_fields.get(key)
            table.add_row(key, str(value), field.description if field and field.description else "derived")
        console.print(table)

    emit(data, as_json, render)
