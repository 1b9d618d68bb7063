"""`fleetloop lake inspect | prune`: what the collect stage has put in the Parquet lake, and retention."""

from __future__ import annotations

from typing import Any

import typer
from rich import box
from rich.table import Table

from fleetloop.cli.output import console, emit
from fleetloop.cli.validate_args import COUNT, NON_NEGATIVE_FLOAT
from fleetloop.platform.settings import load_settings

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def render_summary(d: dict[str, Any]) -> None:
    """The lake summary for people: totals, partitions, conditions, triggers."""
    if not d["segments"]:
        console.print(f"the {d['table']} table at {d['path']} is empty; run `fleetloop pipeline run --stage collect`")
        return
    head = Table(show_header=False, title=f"lake table {d['table']}", box=box.SIMPLE_HEAD)
    head.add_column("field", style="bold")
    head.add_column("value")
    for label, value in (
        ("path", d["path"]),
        ("rows (frames)", f"{d['rows']:,}"),
        ("vehicles", f"{d['vehicles']:,}"),
        (
            "segments",
            f"{d['segments']:,}"
            + (f"  ({d['unannounced_segments']} not yet announced)" if d["unannounced_segments"] else ""),
        ),
        ("size", _mib(d["size_bytes"])),
        ("ingested (UTC)", f"{d['first_ingest_utc']} .. {d['last_ingest_utc']}"),
    ):
        head.add_row(label, str(value))
    console.print(head)
    parts = Table(title="partitions (upload hour, UTC)", box=box.SIMPLE_HEAD)
    for col in ("partition", "segments", "rows", "size"):
        parts.add_column(col, justify="left" if col == "partition" else "right")
    for p in d["partitions"]:
        parts.add_row(p["partition"], str(p["segments"]), f"{p['rows']:,}", _mib(p["size_bytes"]))
    console.print(parts)
    for title, counts in (("conditions (vehicles' visibility estimate)", d["visibility"]), ("triggers", d["triggers"])):
        if not counts:
            continue
        t = Table(title=title, box=box.SIMPLE_HEAD)
        t.add_column("bucket")
        t.add_column("frames", justify="right")
        t.add_column("share", justify="right")
        for k, v in counts.items():
            t.add_row(k, f"{v:,}", f"{100 * v / max(d['rows'], 1):.1f} %")
        console.print(t)


@app.command("inspect")
def inspect_cmd(
    table: str = typer.Option("telemetry", "--table", help="Lake table: telemetry or groundtruth."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Partitions, rows, vehicles, conditions, trigger counts and bytes of a lake table (from its manifests)."""
    from dataclasses import asdict

    from fleetloop.pipelines.lake import inspect_lake

    settings = load_settings()
    emit(asdict(inspect_lake(settings.state_dir, table)), as_json, render_summary)


@app.command("prune")
def prune_cmd(
    max_age_h: float = typer.Option(
        None, "--max-age-hours", click_type=NON_NEGATIVE_FLOAT, help="Delete partitions older than this [h]."
    ),
    max_bytes: int = typer.Option(
        None, "--max-bytes", click_type=COUNT, help="Then delete oldest partitions above this size [B]."
    ),
    table: str = typer.Option("telemetry", "--table", help="Lake table: telemetry or groundtruth."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Apply retention: delete whole old partitions (never the newest) and say how many rows went."""
    from dataclasses import asdict

    from fleetloop.pipelines.lake import LakeRetention, prune_lake

    settings = load_settings()
    # Settings fields win when the options are not given (once the lead adds them; see docs/pipelines.md).
    age = max_age_h if max_age_h is not None else getattr(settings, "lake_max_age_h", None)
    size = max_bytes if max_bytes is not None else getattr(settings, "lake_max_bytes", None)
    result = prune_lake(settings.state_dir, table, LakeRetention(age, size))

    def render(r: dict[str, Any]) -> None:
        if not r["partitions"]:
            console.print("nothing to delete: every partition is within the retention")
            return
        for p in r["partitions"]:
            console.print(f"deleted {p} ({r['reasons'][p]})")
        console.print(f"{r['segments']} segments, {r['rows']:,} rows, {_mib(r['size_bytes'])} deleted")

    emit(asdict(result), as_json, render)


if __name__ == "__main__":
    app()
