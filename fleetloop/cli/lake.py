"""`fleetloop lake inspect | prune | quarantine`: what the collect stage has put in the Parquet lake, retention,
and the segments (or labelled datasets) a stage set aside."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.table import Table

from fleetloop.cli.output import console, emit
from fleetloop.cli.validate_args import COUNT, NON_NEGATIVE_FLOAT
from fleetloop.platform.settings import Settings, load_settings

if TYPE_CHECKING:
    from fleetloop.pipelines.lake.quarantine import QuarantineStore

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)
quarantine_app = typer.Typer(no_args_is_help=True)
app.add_typer(
    quarantine_app, name="quarantine", help="Segments and labelled datasets a stage set aside: list, release, drop."
)
LIST_COMMAND = "fleetloop lake quarantine list"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def render_summary(d: dict[str, Any]) -> None:
    """The lake summary for people: totals, partitions, conditions, triggers."""
    if not d["segments"]:
        held = d.get("quarantined_segments", 0)
        console.print(
            f"the {d['table']} table at {d['path']} is empty; run `fleetloop pipeline run --stage collect`"
            if not held
            else f"the {d['table']} table holds only quarantined segments ({held}); see `{LIST_COMMAND}`"
        )
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
    if d.get("quarantined_segments"):
        label = "quarantined (not counted above)"
        value = f"{d['quarantined_segments']:,} segment(s), {d['quarantined_rows']:,} rows; see `{LIST_COMMAND}`"
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
        None, "--max-age-hours", click_type=NON_NEGATIVE_FLOAT, help="Delete partitions older than this (hours)."
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


def _stores(settings: Settings) -> list[QuarantineStore]:
    # Imported here, as the other commands do: the lake brings numpy, 250 ms measured on every `fleetloop` start.
    from fleetloop.pipelines.datasets import labelled_quarantine
    from fleetloop.pipelines.lake.quarantine import lake_quarantine_stores

    return [*lake_quarantine_stores(settings.state_dir), labelled_quarantine(settings.state_dir)]


def _find(id_or_prefix: str) -> tuple[QuarantineStore, str]:
    """The store holding the one record ``id_or_prefix`` names, and its whole id (exit 2 when none does)."""
    from fleetloop.pipelines.lake.quarantine import find_record

    store, record = find_record(_stores(load_settings()), id_or_prefix)
    return store, record.segment_id


def _utc_s(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_quarantine(d: dict[str, Any]) -> None:
    """The quarantine for people: one row per item, what to do next."""
    records = d["records"]
    if not records:
        console.print("nothing is quarantined: every stage could process all of its input")
        return
    t = Table(title=f"quarantined ({len(records)})", box=box.SIMPLE_HEAD)
    for col in ("id", "table", "stage", "reason", "frames", "since (UTC)", "status"):
        t.add_column(col, justify="right" if col == "frames" else "left")
    for r in records:
        status = r["status"] + ("" if r["files_present"] else ", data gone (pruned?)")
        t.add_row(
            r["segment_id"],
            r["table"],
            r["stage"],
            r["reason"],
            f"{r['frames']:,}",
            _utc_s(r["quarantined_at_s"]),
            status,
        )
    console.print(t)
    for r in records:
        console.print(f"  {r['segment_id']}: {r['message']}", highlight=False)
    console.print(
        "release one (the next run of its stage tries it again): `fleetloop lake quarantine release ID`; "
        "delete its data for good: `fleetloop lake quarantine drop ID`",
        highlight=False,
    )


@quarantine_app.command("list")
def quarantine_list_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Every segment or labelled dataset a stage set aside, with the stage, the reason and when."""
    settings = load_settings()
    records = sorted((r.as_dict() for s in _stores(settings) for r in s.records()), key=lambda r: r["quarantined_at_s"])
    by_reason: dict[str, int] = {}
    for r in records:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    emit({"records": records, "count": len(records), "by_reason": by_reason}, as_json, render_quarantine)


@quarantine_app.command("release")
def quarantine_release_cmd(
    segment_id: str = typer.Argument(..., help=f"Id (or a unique prefix) from `{LIST_COMMAND}`."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Put a quarantined item back into the stream: the next run of its stage processes it again."""
    store, segment_id = _find(segment_id)
    released = store.release(segment_id)

    def render(r: dict[str, Any]) -> None:
        console.print(
            f"released {r['table']}/{r['segment_id']} ({r['frames']:,} frames, set aside by {r['stage']}: "
            f"{r['reason']}); the next {r['stage']} run takes it again "
            f"(`fleetloop pipeline run --stage {r['stage']}`, or a running `pipeline serve` member's next batch)",
            highlight=False,
        )

    emit(released.as_dict(), as_json, render)


@quarantine_app.command("drop")
def quarantine_drop_cmd(
    segment_id: str = typer.Argument(..., help=f"Id (or a unique prefix) from `{LIST_COMMAND}`."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Delete a quarantined item's files and its record, for good."""
    from dataclasses import asdict

    store, segment_id = _find(segment_id)
    result = store.drop(segment_id)

    def render(r: dict[str, Any]) -> None:
        console.print(
            f"dropped {r['table']}/{r['segment_id']}: {r['frames']:,} frames, {r['files_deleted']} files, "
            f"{_mib(r['bytes_deleted'])} deleted; its record is gone",
            highlight=False,
        )

    emit(asdict(result), as_json, render)


if __name__ == "__main__":
    app()
