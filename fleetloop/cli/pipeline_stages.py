"""The label, train and validate stages for `fleetloop pipeline run`, as :class:`StageCommand` entries.

Wire them with ``pipeline_stages.register(pipeline.STAGES)`` (after collect and groundtruth, in loop order).
``validate`` here validates every training run of ``fleetloop-train`` not yet validated (tag
``fleetloop.validation`` unset), newest last: a run an interrupted validation left untagged is found again.
MLflow calls retry for ``mlflow_retry_s``, saying so in the progress line and on stderr; then the stage fails
with ServiceUnavailable (exit 4), naming the server and what to run.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from fleetloop.cli.output import console
from fleetloop.cli.pipeline import Progress, StageCommand
from fleetloop.platform.settings import Settings
from fleetloop.platform.tracking import Tracking, open_tracking, say_on_stderr

__all__ = ["STAGE_COMMANDS", "register", "train_stage", "validate_stage"]


def _run_label(settings: Settings, progress: Progress) -> dict[str, Any]:
    from fleetloop.pipelines.label import label_pending

    progress("label: labelling new lake segments")
    report, events = label_pending(settings.state_dir)
    if events:
        from fleetloop.platform.bus.producer import BusProducer
        from fleetloop.platform.bus.topics import PIPELINE_EVENTS

        with BusProducer(settings, client_id="label") as p:
            for ev in events:
                p.send(PIPELINE_EVENTS, ev, key=ev.dataset_id)
            p.flush()
    return {**report.as_dict(), "events_emitted": len(events)}


_TRAIN_STEPS = {
    "trained": "train: logging the candidate to MLflow",
    "run_started": "train: logging params, metrics and the model",
    "logged": "train: recording the datasets as consumed",
}
_VALIDATE_STEPS = {"verdict": "registering and staging the candidate", "registered": "marking the run validated"}


def _steps(progress: Progress, texts: dict[str, str], prefix: str = "") -> Progress:
    """A stage's ``on_step``: the step's progress line, when it has one."""

    def on_step(step: str) -> None:
        if step in texts:
            progress(prefix + texts[step])

    return on_step


def _tracking(settings: Settings, progress: Progress) -> Tracking:
    """Tracking whose retry notices show in the progress line and stay on stderr."""

    def on_retry(message: str) -> None:
        say_on_stderr(message)
        progress(message)

    return open_tracking(settings, check=False, on_retry=on_retry)


def train_stage(settings: Settings, progress: Progress, cfg: Any = None) -> dict[str, Any]:
    """The train stage once (``cfg``: a ``TrainConfig``, default the stage's own)."""
    from fleetloop.pipelines.train import run_train

    progress("train: fine-tuning on new labelled data")
    tracking = _tracking(settings, progress)
    out = run_train(settings, cfg, tracking=tracking, on_step=_steps(progress, _TRAIN_STEPS))
    if out.events:
        from fleetloop.platform.bus.producer import BusProducer
        from fleetloop.platform.bus.topics import PIPELINE_EVENTS

        with BusProducer(settings, client_id="train") as p:
            for ev in out.events:
                p.send(PIPELINE_EVENTS, ev, key=ev.run_id)
            p.flush()
    return out.as_dict()


def validate_stage(settings: Settings, progress: Progress, cfg: Any = None) -> dict[str, Any]:
    """Validate every unvalidated candidate once (``cfg``: a ``ValidateConfig``, default the stage's own)."""
    from fleetloop.pipelines.models import unvalidated_candidates
    from fleetloop.pipelines.validate import validate_candidate

    tracking = _tracking(settings, progress)
    tracking.check()
    results = []
    name = settings.model_name
    for ev in unvalidated_candidates(tracking, name, source="pipeline-run", model=name):

        def on_run(slice_name: str, seed: int, r: str = ev.run_id) -> None:
            progress(f"validate {r[:8]}: {slice_name} seed {seed}")

        on_step = _steps(progress, _VALIDATE_STEPS, f"validate {ev.run_id[:8]}: ")
        out = validate_candidate(settings, ev, cfg, tracking=tracking, on_run=on_run, on_step=on_step)
        results.append(out.as_dict())
    return {"validated": results, "candidates": len(results)}


def _render_label(d: dict[str, Any]) -> None:
    t = Table(title="label", box=box.SIMPLE_HEAD, show_header=False)
    held = f", {d['skipped_quarantined']:,} already quarantined" if d.get("skipped_quarantined") else ""
    t.add_row("segments labelled", f"{d['segments']:,} ({d['skipped_already_labelled']:,} already labelled{held})")
    t.add_row("frames / valid labels", f"{d['frames']:,} / {d['labelled_valid']:,}")
    q = d.get("quality", {})
    if q.get("matched"):
        t.add_row(
            "label quality vs ground truth",
            f"hazard precision {q['hazard_precision'] or 0:.2f}, recall {q['hazard_recall'] or 0:.2f}; "
            f"target accel MAE {q['target_accel_mae_mps2'] or 0:.2f} m/s²",
        )
    t.add_row("conditions (own estimates)", ", ".join(f"{k} {v:,}" for k, v in d.get("conditions", {}).items()))
    console.print(t)
    _render_quarantined(d, "segment", held)


def _render_train(d: dict[str, Any]) -> None:
    t = Table(title="train", box=box.SIMPLE_HEAD, show_header=False)
    t.add_row("status", d["status"] + (f": {d['reason']}" if d["reason"] else ""))
    if d["status"] == "trained":
        m = d["metrics"]
        t.add_row("frames / datasets", f"{d['frames']:,} / {len(d['dataset_ids'])}")
        t.add_row("parent version", str(d["parent_version"] or "none (from scratch)"))
        r = d.get("replay") or {}
        t.add_row(
            "replayed",
            f"{r['frames']:,} frames the first model learnt from, {r['share']:.0%} of the label loss"
            if r.get("frames")
            else str(r.get("reason", "nothing")),
        )
        t.add_row("loss first -> last", f"{m.get('loss_first') or 0:.3f} -> {m.get('loss_last') or 0:.3f}")
        t.add_row("MLflow run", str(d["run_id"]))
    for r in d.get("recovered", []):
        t.add_row("recovered candidate", f"run {r['run_id']} (logged before an interruption; announced again)")
    console.print(t)
    _render_quarantined(d, "labelled dataset", "")


def _render_quarantined(d: dict[str, Any], what: str, held_before: str) -> None:
    """What a stage set aside this run, why, and where to look."""
    for q in d.get("quarantined", []):
        console.print(
            f"[yellow]quarantined[/] {what} {q['segment_id']}: {q['reason']} ({q['message']})", highlight=False
        )
    if d.get("quarantined") or held_before:
        console.print("  the rest went on; see what is set aside: `fleetloop lake quarantine list`", highlight=False)


def _fmt(r: dict[str, Any]) -> str:
    x = r["collisions_plus_near_misses"]
    if x["per_1000_km"] is None:
        return "-"
    return f"{x['per_1000_km']:.0f} [{x['ci_low']:.0f}-{x['ci_high']:.0f}]"


def _render_validate(d: dict[str, Any]) -> None:
    if not d["validated"]:
        console.print("validate: no unvalidated candidate")
    for out in d["validated"]:
        t = Table(
            title=f"validate {out['model_name']} v{out['version']}: {out['stage'] or out['status']}",
            box=box.SIMPLE_HEAD,
        )
        for col in ("slice", "candidate coll+nm /1000 km [95% CI]", f"{out['baseline']}", "progress cand / base"):
            t.add_column(col)
        for row in out["table"]:
            c, b = row["candidate"], row["baseline"]
            pc, pb = c["progress_vs_expert"]["mean"], b["progress_vs_expert"]["mean"]
            t.add_row(row["slice"], _fmt(c), _fmt(b), f"{pc or 0:.3f} / {pb or 0:.3f}")
        console.print(t)
        _render_ncap_points(out.get("ncap_table", []), out["baseline"])
        for r in out["reasons"] or ([out["reason"]] if out["reason"] else []):
            console.print(f"  [red]x[/] {r}")


def _render_ncap_points(rows: list[dict[str, Any]], baseline: str) -> None:
    """Euro NCAP points (the mean over the suite's seeds), candidate / baseline, one row per condition, one column
    per group; a loss in red."""
    if not rows:
        return
    groups = list(dict.fromkeys(r["group"] for r in rows))
    t = Table(title=f"Euro NCAP points (mean over the suite's seeds), candidate / {baseline}", box=box.SIMPLE_HEAD)
    t.add_column("condition")
    for g in groups:
        t.add_column(f"{g} (of {next(r['max_points'] for r in rows if r['group'] == g):g})", justify="right")
    for cond in dict.fromkeys(r["condition"] for r in rows):
        cells = []
        for g in groups:
            r = next(r for r in rows if r["condition"] == cond and r["group"] == g)
            cell = f"{r['candidate']:.2f} / {r['baseline']:.2f}"
            cells.append(f"[red]{cell}[/]" if r["candidate"] < r["baseline"] else cell)
        t.add_row(cond, *cells)
    console.print(t)


STAGE_COMMANDS: tuple[StageCommand, ...] = (
    StageCommand("label", "hindsight labels over the lake, audited against ground truth", _run_label, _render_label),
    StageCommand("train", "fine-tune production on new labelled data (MLflow run)", train_stage, _render_train),
    StageCommand(
        "validate", "held-out suite, gates, registration as staging / rejected", validate_stage, _render_validate
    ),
)


def register(stages: dict[str, StageCommand]) -> None:
    """Add label, train and validate to the pipeline CLI's stage table (in loop order)."""
    for s in STAGE_COMMANDS:
        stages[s.name] = s
