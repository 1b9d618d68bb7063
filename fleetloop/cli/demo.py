"""`fleetloop demo`: the fleet's story once, told by the same step functions the commands use (cli/demo_steps.py).

    fleetloop demo [--quick] [--seed N] [--json]

Each step says what it does and why, shows progress while it runs and ends with one line for people. Libraries'
chatter goes to ``<state_dir>/logs/demo.log``. ``--json`` prints one JSON document; the same ``--seed`` on a fresh
state directory gives the same numbers. A failing step stops the demo with the error's message and exit code;
the stack stays up either way (`fleetloop down` stops it).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fleetloop.cli.demo_federated import FL_BUFFER_SECONDS, step_federated
from fleetloop.cli.demo_report import before_after, render_before_after, where_next
from fleetloop.cli.demo_rollouts import step_canary, step_degraded
from fleetloop.cli.demo_steps import (
    BETTER_CANDIDATE_RULE,
    MIN_DEMO_VEHICLES,
    DemoPlan,
    plan_for,
    step_data_loop,
    step_drive,
    step_genesis,
    step_stack,
)
from fleetloop.cli.demo_timeline import plot_timeline
from fleetloop.cli.output import emit
from fleetloop.cli.validate_args import ANY_INT, NON_NEGATIVE_FLOAT, at_least
from fleetloop.platform.runs import run_record
from fleetloop.platform.settings import Settings, load_settings

__all__ = ["STORY", "app"]

app = typer.Typer()

# key -> (title, what it does and why: one sentence)
STORY: dict[str, tuple[str, str]] = {
    "stack": (
        "Start the stack",
        "Kafka carries the fleet's uploads, MLflow tracks runs and models, ota-repo serves signed releases.",
    ),
    "genesis": (
        "Release the genesis model to the fleet",
        "The fleet needs a first model: imitation of the expert in clear weather, signed and assigned to every "
        "vehicle through OTA.",
    ),
    "before": (
        "The fleet drives into fog",
        "Clear weather first, then a fog bank rolls in: the genesis model never saw fog; the vehicles upload what "
        "surprised them (near misses, fallback activations) through Kafka.",
    ),
    "data loop": (
        "The data loop turns",
        "The uploads become hindsight-labelled data, a fine-tuned candidate learns from the fog, and validate "
        "judges it against production on the frozen held-out suite.",
    ),
    "federated": (
        "A federated round",
        "The vehicles train on their own on-board buffers and the server aggregates a second candidate, validated "
        "the same way.",
    ),
    "release": (
        "The better candidate through canary waves to production",
        f"The rule: {BETTER_CANDIDATE_RULE}; `ota rollout` hands it to the rollout controller, which grows it wave "
        "by wave while the fleet drives again (same seed, same fog), judging each wave against matched vehicles "
        "still on production.",
    ),
    "degraded": (
        "A degraded model is rolled back",
        "A copy of production made worse in fog only (the documented regression procedure) goes out the same way: "
        "the controller must notice and roll it back on its own, with the evidence.",
    ),
}


class _Teller:
    """Runs the story's steps: the header, a transient progress line on stderr, the closing line."""

    def __init__(self, out: Console, err: Console, quiet: bool, t0: float) -> None:
        self.out, self.err, self.quiet, self.t0 = out, err, quiet, t0
        self.results: dict[str, dict[str, Any]] = {}
        self.spans: list[dict[str, Any]] = []

    def step(self, key: str, fn: Callable[[Callable[[str], None], Callable[[int, int], None]], dict[str, Any]]) -> Any:
        title, why = STORY[key]
        n = list(STORY).index(key) + 1
        if not self.quiet:
            self.out.print(f"\n[bold]{n}. {title}[/]  [dim]{why}[/]", highlight=False)
        start = time.monotonic()
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.err, transient=True, disable=self.quiet) as progress:
            task = progress.add_task(title, total=None)

            def say(msg: str) -> None:
                progress.update(task, description=msg)

            def on_tick(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total, description=f"{title}: tick {done:,} of {total:,}")

            try:
                result = fn(say, on_tick)
            except BaseException:
                if not self.quiet:
                    self.out.print(f"   [red]x {title} failed[/] after {time.monotonic() - start:.0f} s")
                raise
        end = time.monotonic()
        result["seconds"] = round(end - start, 1)
        self.results[key] = result
        self.spans.append(
            {"title": title, "start_s": start - self.t0, "end_s": end - self.t0, "skipped": bool(result.get("skipped"))}
        )
        if not self.quiet:
            mark = "[dim]-[/]" if result.get("skipped") else "[green]ok[/]"
            self.out.print(f"   {mark} {result['line']} [dim]({end - start:.0f} s)[/]", highlight=False)
        return result


@contextlib.contextmanager
def _chatter_to(log_path: Path) -> Iterator[None]:
    """Libraries' prints, logging and warnings go to ``log_path`` for the block; the demo's consoles keep theirs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(log_path, "a", encoding="utf-8") as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        saved = root.handlers[:], root.level
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            logging.captureWarnings(False)
            root.handlers[:], _ = saved
            root.setLevel(saved[1])


def tell_story(settings: Settings, plan: DemoPlan, seed: int, run_id: str, teller: _Teller) -> dict[str, Any]:
    """The story, step by step; returns the machine form (also the run record's summary)."""
    t = teller
    t.step("stack", lambda say, _tick: step_stack(settings, say))
    genesis = t.step("genesis", lambda say, _tick: step_genesis(settings, plan, seed, say))
    before = t.step(
        "before",
        lambda _say, tick: step_drive(settings, plan, seed, f"{run_id}-before", tick, buffer_seconds=FL_BUFFER_SECONDS),
    )
    loop = t.step("data loop", lambda say, _tick: step_data_loop(settings, plan, seed, say))
    fed = t.step("federated", lambda say, _tick: step_federated(settings, plan, seed, say))
    candidates = loop["candidates"] + fed["candidates"]
    release = t.step(
        "release", lambda say, tick: step_canary(settings, plan, seed, candidates, f"{run_id}-after", tick, say)
    )
    after = before if release["promoted"] is None else release
    degraded = t.step(
        "degraded", lambda say, tick: step_degraded(settings, plan, seed, f"{run_id}-degraded", tick, say)
    )
    drives = {"before": before} if after is before else {"before": before, "after": after}
    drives["degraded"] = degraded
    png = plot_timeline(Path(settings.state_dir) / "demo" / "timeline.png", t.spans, drives)
    return {
        "plan": plan.__dict__,
        "steps": t.results,
        "before_after": before_after(before, after, degraded),
        "production": {"before": genesis["production"], "after": release["promoted"] or genesis["production"]},
        "timeline_png": str(png),
    }


def _render(d: dict[str, Any], out: Console, settings: Settings) -> None:
    out.print()
    degraded = d["steps"]["degraded"].get("degraded")
    render_before_after(out, d["before_after"], d["production"]["before"], d["production"]["after"], degraded)
    out.print(f"timeline of the story: {d['timeline_png']}", highlight=False)
    out.print(f"the demo took {d['wall_s']:.0f} s; libraries' messages: {d['log']}", highlight=False)
    out.print("where to look next:")
    for line in where_next(settings):
        out.print(f"  {line}", highlight=False)


@app.callback(invoke_without_command=True)
def demo(
    quick: bool = typer.Option(False, "--quick", help="A reduced story: small fleet, short drives, tiny suite."),
    vehicles: int | None = typer.Option(
        None,
        click_type=at_least(MIN_DEMO_VEHICLES, int),
        help=f"Vehicles of each drive ({MIN_DEMO_VEHICLES} or more: a canary wave of 25 % needs matched baseline "
        "vehicles beside it; 4 vehicles let a degraded model through on too little evidence).",
    ),
    minutes: float | None = typer.Option(None, click_type=at_least(0.1, float), help="Simulated minutes a drive."),
    fog_onset: float | None = typer.Option(
        None, "--fog-onset", click_type=NON_NEGATIVE_FLOAT, help="When the fog rolls in [simulated s] (half-way)."
    ),
    seed: int = typer.Option(0, click_type=ANY_INT, help="Seed of every step (same seed, same numbers)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """See the fleet's story once on the embedded defaults: genesis, fog, the data loop, a better model."""
    settings = load_settings()
    plan = plan_for(quick, vehicles, minutes, fog_onset)
    out, err = Console(file=sys.stdout, soft_wrap=True), Console(file=sys.stderr)
    log_path = Path(settings.state_dir) / "logs" / "demo.log"
    t0 = time.monotonic()
    with run_record(settings, command="demo", params={**plan.__dict__}, seed=seed) as rec:
        if not as_json:
            out.print(
                f"[bold]fleetloop demo[/] ({'quick' if quick else 'full'}: {plan.vehicles} vehicles, "
                f"{plan.minutes:g} simulated min a drive, fog at {plan.fog_onset_s:g} s, seed {seed})",
                highlight=False,
            )
        with _chatter_to(log_path):
            d = tell_story(settings, plan, seed, rec.id, _Teller(out, err, as_json, t0))
        d.update(run_id=rec.id, seed=seed, log=str(log_path), wall_s=round(time.monotonic() - t0, 1))
        rec.summary = {k: v for k, v in d.items() if k != "steps"}
    emit(d, as_json, lambda x: _render(x, out, settings))
