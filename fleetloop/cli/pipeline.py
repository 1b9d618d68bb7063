"""`fleetloop pipeline run [--stage NAME] [--json]`: run data-loop stages once over what is available.

Each stage is a :class:`StageCommand` in :data:`STAGES`, in loop order; ``run`` without ``--stage`` runs them
all. Later stages (label, train, validate) join by adding an entry: a runner that takes the settings and a
progress callback and returns a JSON-able summary, and a renderer for people.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer
from rich import box
from rich.table import Table

from fleetloop.cli.output import console, emit, err_console
from fleetloop.cli.validate_args import at_least
from fleetloop.pipelines.serve import SERVE_STAGES, service_name, stage_specs
from fleetloop.platform import launcher
from fleetloop.platform.errors import UserInputError
from fleetloop.platform.logs import bind_log_context
from fleetloop.platform.metrics import start_exporter
from fleetloop.platform.settings import Settings, load_settings

__all__ = ["STAGES", "StageCommand", "app"]

app = typer.Typer(no_args_is_help=True)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StageCommand:
    """One stage as the CLI runs it: ``run(settings, progress) -> summary``, ``render(summary)`` for people."""

    name: str
    help: str
    run: Callable[[Settings, Progress], dict[str, Any]]
    render: Callable[[dict[str, Any]], None]


def _collect_progress(progress: Progress) -> Callable[[Any], None]:
    return lambda r: progress(f"{r.table}: {r.rows_collected:,} rows in {r.segments_sealed} segments")


# The stages are imported when run: importing label (torch, ~6 s measured) would slow every `fleetloop` start.
def _run_collect(settings: Settings, progress: Progress) -> dict[str, Any]:
    from fleetloop.pipelines.collect import run_collect

    return run_collect(settings, on_progress=_collect_progress(progress)).as_dict()


def _run_groundtruth(settings: Settings, progress: Progress) -> dict[str, Any]:
    from fleetloop.pipelines.ground_truth import run_ground_truth

    return run_ground_truth(settings, on_progress=_collect_progress(progress)).as_dict()


_DUPLICATE_CAUSE = {
    "redelivered": " (Kafka, after a crash or rebalance)",
    "transport_retry": " (the same upload sent again)",
    "duplicate_seq": " (the vehicle reused a seq)",
}


def render_collect(d: dict[str, Any]) -> None:
    """A collect summary for people: rows in, duplicates removed and dead letters by reason, segments."""
    t = Table(title=f"{d['stage']} -> lake table {d['table']}", show_header=False, box=box.SIMPLE_HEAD)
    t.add_column("what", style="bold")
    t.add_column("count", justify="right")
    t.add_row("records read", f"{d['records']:,}")
    t.add_row("frames in", f"{d['frames_in']:,}")
    t.add_row("rows collected", f"[green]{d['rows_collected']:,}[/]")
    t.add_row("duplicates removed", f"{d['duplicates_removed_total']:,}")
    for reason, n in sorted(d["duplicates_removed"].items()):
        t.add_row(f"  {reason}{_DUPLICATE_CAUSE.get(reason, '')}", f"{n:,}")
    style = "red" if d["dead_lettered_total"] else ""
    t.add_row("dead-lettered", f"[{style}]{d['dead_lettered_total']:,}[/]" if style else "0")
    for reason, n in sorted(d["dead_lettered"].items()):
        t.add_row(f"  {reason}", f"{n:,}")
    t.add_row("segments sealed", f"{d['segments_sealed']:,}")
    if d["recovered_announcements"]:
        t.add_row("announced after a crash", f"{d['recovered_announcements']:,}")
    if d["orphans_removed"]:
        t.add_row("crash orphans removed", f"{d['orphans_removed']:,}")
    if d["commit_failures"]:
        t.add_row("offset commits failed (safe: redelivery is deduplicated)", f"{d['commit_failures']:,}")
    t.add_row("throughput", f"{d['frames_per_s']:,.0f} frames/s over {d['wall_s']:.1f} s")
    console.print(t)


STAGES: dict[str, StageCommand] = {
    s.name: s
    for s in (
        StageCommand("collect", "telemetry -> Parquet lake (dedup, dead letters)", _run_collect, render_collect),
        StageCommand("groundtruth", "ground-truth audit topic -> its own lake table", _run_groundtruth, render_collect),
    )
}


@app.command("run")
def run_cmd(
    stage: list[str] = typer.Option(
        None, "--stage", "-s", help=f"Stage(s) to run, in loop order by default: {', '.join(STAGES)}."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: stage name -> summary."),
) -> None:
    """Process what is available once, stage by stage, and print a summary of each."""
    from fleetloop.platform.runs import run_record

    names = stage or list(STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise UserInputError(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    settings = load_settings()
    start_exporter(settings, "pipeline")  # its counters (records, dead letters, verdicts) for `fleetloop watch`
    results: dict[str, dict[str, Any]] = {}
    with run_record(settings, command="pipeline run", params={"stages": names}) as rec:
        for name in names:
            cmd = STAGES[name]
            bind_log_context(stage=name)
            if as_json:
                results[name] = cmd.run(settings, lambda _msg: None)
            else:
                with console.status(f"{name}: starting") as status:
                    results[name] = cmd.run(settings, lambda msg, s=status: s.update(msg))  # type: ignore[misc]
            rec.summary = results
    if as_json:
        emit(results, True, lambda _d: None)
        return
    for name, summary in results.items():
        STAGES[name].render(summary)
    if any(r.get("stopped_by") == "no_partitions_assigned" for r in results.values()):
        err_console.print("[yellow]note:[/] no partitions were assigned; is another member of the group running?")


@app.command("serve")
def serve_cmd(
    stage: list[str] = typer.Option(None, "--stage", "-s", help="Stage service(s) to start; all by default."),
    min_new_frames: int = typer.Option(
        None,
        "--min-new-frames",
        click_type=at_least(2),
        help="Train a candidate once this many new valid labelled frames have arrived.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the services' status as JSON."),
) -> None:
    """Run the stages unattended as services of the launcher (`fleetloop down` stops them)."""
    names = stage or list(SERVE_STAGES)
    unknown = [n for n in names if n not in SERVE_STAGES]
    if unknown:
        raise UserInputError(f"unknown stage(s) {unknown}; known: {', '.join(SERVE_STAGES)}")
    if min_new_frames is not None and min_new_frames < 2:
        raise UserInputError("--min-new-frames must be at least 2")
    settings = load_settings()
    specs = launcher.select(stage_specs(min_new_frames), [service_name(n) for n in names])
    statuses = launcher.up(settings, specs)
    out = [st.to_dict() for st in statuses]
    if as_json:
        emit(out, True, lambda _d: None)
        return
    t = Table(title="pipeline services", box=box.SIMPLE_HEAD)
    for col in ("service", "state", "pid", "detail"):
        t.add_column(col)
    for st in statuses:
        t.add_row(st.name, st.state, str(st.pid or ""), st.detail)
    console.print(t)


if __name__ == "__main__":
    app()
