"""`fleetloop watch`: a live terminal dashboard of the fleet, the data loop and the alerts.

It reads Prometheus' HTTP API when a Prometheus answers, else every registered exporter directly
(:mod:`fleetloop.platform.metrics.query`); this module only renders. ``--once`` shows one snapshot
(``--json``: one JSON document), ``--svg FILE.svg`` saves one as a terminal screenshot, ``--plot FILE.png`` draws
the last ``--minutes`` of the main series from Prometheus' history.
"""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fleetloop.cli.output import console, emit
from fleetloop.cli.validate_args import POSITIVE_FLOAT
from fleetloop.platform.errors import ServiceUnavailable, UserInputError
from fleetloop.platform.metrics.query import HISTORY_QUERIES, History, Snapshot, Watcher, query_history
from fleetloop.platform.settings import load_settings

__all__ = ["plot_history", "render_snapshot", "save_svg", "watch_cmd"]

SOURCES = ("auto", "prometheus", "exporters")


def _clock(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%H:%M:%S UTC")


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _table(title: str, *columns: str) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    return t


def render_snapshot(s: Snapshot) -> RenderableType:
    """The dashboard of one snapshot: a header, then one table per part (empty parts say so in one line)."""
    up = len(s.targets) - len(s.targets_down)
    head = Text.assemble(
        ("fleetloop watch", "bold"),
        f"  {_clock(s.taken_at_s)}  source: {s.source} ({s.source_url})  targets: {up} up",
        (f", {len(s.targets_down)} down" if s.targets_down else "", "bold red"),
    )
    parts: list[RenderableType] = [head]
    if s.source_note:
        parts.append(Text(s.source_note, style="yellow"))
    parts.append(
        Text.assemble(
            ("fleet throughput ", "bold"),
            f"{_num(s.vehicle_steps_per_s)} vehicle-steps/s  ({_num(s.vehicle_steps)} vehicle-steps counted)",
        )
    )

    if s.safety:
        t = _table("safety per model version and condition", "version / condition", "km", "coll", "near", "/1,000 km")
        for r in s.safety:
            style = "red" if r.collisions else ""
            t.add_row(
                f"{r.model_version} / {r.condition}",
                _num(r.km, 1),
                str(r.collisions),
                str(r.near_misses),
                Text(_num(r.per_1000_km, 1), style=style),
            )
        parts.append(t)
    else:
        parts.append(Text("safety: no fleet simulation exports yet (`fleetloop sim run`)", style="dim"))

    if s.fallback_reasons:
        t = _table("fallback activations by reason", "reason", "activations")
        for reason, n in sorted(s.fallback_reasons.items(), key=lambda kv: -kv[1]):
            t.add_row(reason, _num(n))
        parts.append(t)

    t = _table("pipeline", "what", "value")
    for table, n in s.pipeline_records.items():
        t.add_row(f"rows collected: {table}", _num(n))
    for key, n in s.dead_letters.items():
        t.add_row(Text(f"dead letters: {key}", style="red"), _num(n))
    for key, n in s.consumer_lag.items():
        t.add_row(f"lag: {key}", _num(n))
    for v in s.verdicts:
        style = "green" if v.verdict == "passed" else "red"
        t.add_row(f"verdict: {v.model} v{v.version} ({_clock(v.at_s)})", Text(v.verdict, style=style))
    for key, wave in s.rollout_waves.items():
        t.add_row(f"rollout wave: {key}", _num(wave))
    parts.append(t if t.row_count else Text("pipeline: no stage exports yet (`fleetloop pipeline run`)", style="dim"))

    if s.alerts is None:
        parts.append(Text("alerts: unknown without Prometheus (`fleetloop up prometheus`)", style="dim"))
    elif s.alerts:
        t = _table("alerts", "alert", "state", "summary")
        for a in s.alerts:
            style = "bold red" if a.state == "firing" and a.severity == "critical" else "yellow"
            t.add_row(Text(a.name, style=style), a.state, a.summary)
        parts.append(t)
    else:
        parts.append(Text("alerts: none firing", style="green"))

    if s.targets_down or s.unreadable_targets:
        t = _table("targets down", "process (pid)", "instance", "why")
        for d in s.targets_down:
            t.add_row(f"{d.process} ({d.pid or '-'})", d.instance, Text(d.error or "", style="red"))
        for line in s.unreadable_targets:
            t.add_row("unreadable target file", "", line)
        parts.append(t)
    return Group(*parts)


def save_svg(snapshot: Snapshot, path: Path, width: int = 112) -> None:
    """The dashboard of ``snapshot`` as a terminal screenshot (SVG), as ``fleetloop watch`` draws it."""
    recorder = Console(record=True, width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor")
    recorder.print(render_snapshot(snapshot))
    recorder.save_svg(str(path), title="fleetloop watch")


def plot_history(history: History, path: Path) -> None:
    """One PNG: a panel per series of ``HISTORY_QUERIES`` that has data, over the history's time span (the panels
    without data are named under the figure)."""
    # Imported here: matplotlib costs about a second (measured), and only --plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    titles = [t for t in HISTORY_QUERIES if any(history.panels.get(t, {}).values())] or list(HISTORY_QUERIES)[:1]
    fig, axes = plt.subplots(len(titles), 1, figsize=(9, 2.3 * len(titles)), sharex=True, squeeze=False)
    for ax, title in zip(axes[:, 0], titles, strict=True):
        lines = history.panels.get(title, {})
        for name, points in sorted(lines.items()):
            if points:
                xs = [datetime.fromtimestamp(t, UTC) for t, _ in points]
                ax.plot(xs, [v for _, v in points], label=name, linewidth=1.4)
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel(HISTORY_QUERIES[title][2], fontsize=8)
        ax.grid(alpha=0.3)
        if not lines:
            ax.text(0.5, 0.5, "no data in this window", transform=ax.transAxes, ha="center", color="grey")
        elif set(lines) != {"total"}:
            ax.legend(fontsize=7, loc="upper left", ncol=2)
    short = history.end_s - history.start_s <= 600  # [s] minutes alone would repeat on the ticks of a short span
    axes[-1, 0].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if short else "%H:%M", tz=UTC))
    axes[-1, 0].set_xlabel("time (UTC)")
    minutes = (history.end_s - history.start_s) / 60
    fig.suptitle(
        f"fleetloop: the last {minutes:.0f} minutes (rates over {history.window_s:.0f} s, "
        f"safety over {history.safety_window_s:.0f} s)",
        fontsize=11,
    )
    left_out = [t for t in HISTORY_QUERIES if t not in titles]
    if left_out:
        fig.text(0.01, 0.005, "no data in this window: " + ", ".join(left_out), fontsize=8, color="grey")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def watch_cmd(
    once: bool = typer.Option(False, "--once", help="Show one snapshot and exit."),
    as_json: bool = typer.Option(False, "--json", help="Print one snapshot as one JSON document (implies --once)."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of the last --minutes here (needs Prometheus)."),
    svg: Path | None = typer.Option(None, "--svg", help="Write one snapshot here as a terminal screenshot (SVG)."),
    minutes: float = typer.Option(15.0, "--minutes", click_type=POSITIVE_FLOAT, help="Minutes --plot covers."),
    interval_s: float = typer.Option(
        2.0, "--interval", click_type=POSITIVE_FLOAT, help="Seconds between refreshes of the live dashboard."
    ),
    source: str = typer.Option(
        "auto", "--source", help="auto (Prometheus while it answers, else the exporters), prometheus or exporters."
    ),
) -> None:
    """A live dashboard: fleet throughput, safety rates, fallback reasons, the pipeline, alerts (Ctrl-C ends)."""
    if source not in SOURCES:
        raise UserInputError(f"unknown --source {source!r}; valid: {', '.join(SOURCES)}")
    settings = load_settings()
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise UserInputError(f"--plot writes a PNG; give a file name ending in .png, not {plot.name!r}")
        history = query_history(settings, minutes)  # SetupError (exit 3) without Prometheus
        plot_history(history, plot)
        lines = sum(len(p) for p in history.panels.values())
        summary: dict[str, Any] = {"plot": str(plot), "minutes": minutes, "lines": lines, "empty": history.empty}
        emit(summary, as_json, lambda d: console.print(f"wrote {d['plot']}: {d['lines']} lines over {minutes:g} min"))
        return
    watcher = Watcher(settings, source)  # type: ignore[arg-type]  # checked against SOURCES above
    if svg is not None:
        if svg.suffix.lower() != ".svg":
            raise UserInputError(f"--svg writes an SVG; give a file name ending in .svg, not {svg.name!r}")
        shot = watcher.poll()
        save_svg(shot, svg)
        written = {"svg": str(svg), "source": shot.source, "targets": len(shot.targets)}
        emit(written, as_json, lambda d: console.print(f"wrote {d['svg']} (a snapshot from {d['source']})"))
        return
    if once or as_json:
        snapshot = watcher.poll()
        emit(snapshot.to_dict(), as_json, lambda _d: console.print(render_snapshot(snapshot)))
        return

    def frame() -> RenderableType:
        try:
            return render_snapshot(watcher.poll())
        except ServiceUnavailable as e:  # --source prometheus while it is down: say so, ask again next refresh
            return Text(f"{_clock(time.time())}  {e}; asking again every {interval_s:g} s", style="bold red")

    with Live(frame(), console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                time.sleep(interval_s)
                live.update(frame(), refresh=True)
        except KeyboardInterrupt:
            pass  # Ctrl-C ends the watch; nothing to clean up
