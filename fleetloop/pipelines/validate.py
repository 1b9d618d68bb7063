"""The validate stage: closed-loop evaluation of a candidate beside production on the frozen held-out suite,
the gates, and registration with lineage.

    model.trained -> candidate artifact (MLflow run artifact or a file) -> verified load (schema, NaN)
    baseline: the production model (alias ``production``), or the fallback alone when there is none
    every slice x seed of the suite, both models, through the fleet runner (no telemetry sink)
    gates.decide(candidate, baseline, target conditions)  (pure)
    register the candidate (metrics, lineage: training run, dataset hashes, parent version, suite hash)
    -> stage ``staging`` when it passed, else ``rejected`` with the reasons -> ``model.validated``

A candidate trained on too few frames (its artifact's ``frames`` metric below ``min_train_frames``) is not
evaluated: the stage says so and registers nothing. The full report (the validation table with intervals)
is written to ``<state_dir>/pipelines/validation/<run>.json`` and logged to the training run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetloop.pipelines.gates import (
    EVENT_KEYS,
    GateConfig,
    GateDecision,
    RunMetrics,
    SliceMetrics,
    SuiteMetrics,
    decide,
)
from fleetloop.pipelines.models import VALIDATION_TAG, fetch_candidate, load_production
from fleetloop.pipelines.suite import NCAP_CCR, HeldOutSuite, SuiteSlice, frozen_suite
from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.bus.events import ModelValidated
from fleetloop.platform.errors import UserInputError
from fleetloop.platform.registry import Stage, open_registry
from fleetloop.platform.tracking import open_tracking

if TYPE_CHECKING:
    from torch import nn

    from fleetloop.pipelines.event_stage import EventStageReport
    from fleetloop.platform.bus.events import ModelTrained
    from fleetloop.platform.registry import Registry
    from fleetloop.platform.settings import Settings
    from fleetloop.platform.tracking import Tracking

__all__ = [
    "FALLBACK_ONLY",
    "ValidateConfig",
    "ValidationOutcome",
    "evaluate_on_suite",
    "run_slice",
    "run_validate_stage",
    "validate_candidate",
    "validation_table",
]

FALLBACK_ONLY = "fallback-only"
_LABEL = "model"  # the version label the runner gives the evaluated model


@dataclass(frozen=True)
class ValidateConfig:
    """How validate runs.

    Attributes:
        gates: the gate margins.
        suite: the suite template (stored and frozen under the state directory on first use).
        device: torch device of the closed-loop runs.
        torch_threads: intra-op threads (1 is fastest for the small batches of a suite on a shared CPU).
        min_train_frames: a central candidate trained on fewer frames is not validated, nor registered.
    """

    gates: GateConfig = field(default_factory=GateConfig)
    suite: HeldOutSuite | None = None
    device: str = "cpu"
    torch_threads: int = 1
    min_train_frames: int = 512


def run_slice(
    model: nn.Module | None, s: SuiteSlice, seed: int, device: str = "cpu", max_uncertainty_mps2: float | None = None
) -> RunMetrics:
    """Drive one slice with one seed through the fleet runner (model + fallback + arbiter; the fallback alone
    when ``model`` is None) and sum what happened."""
    from fleetloop.edge_agent.fleet import FleetConfig, FleetRunner
    from fleetloop.sim import euro_ncap_matrix

    scenario: Any = tuple(euro_ncap_matrix()) if s.scenario == NCAP_CCR else s.scenario
    cfg = FleetConfig(
        scenario=scenario,
        weather=s.condition.weather(),  # the suite's steady intermediate intensities, not a training preset
        seed=seed,
        device=device,
        progress_reference=True,
        ground_truth_audit=False,
        max_uncertainty_mps2=max_uncertainty_mps2,
    )
    models = None if model is None else {_LABEL: model}
    runner = FleetRunner(cfg, range(s.vehicles), models, None if model is None else _LABEL)
    summary = runner.run(s.ticks)
    total = summary.totals()
    d = summary.to_dict()
    counts = {k: int(d["events"].get(k, 0)) for k in EVENT_KEYS if k != "fallback_activations"}
    counts["fallback_activations"] = int(sum(d["fallback_activations"].values()))
    p99 = d["latency"]["simulated_p99_ms"]
    return RunMetrics(
        km=total["distance_m"] / 1000.0,
        expert_km=total["expert_distance_m"] / 1000.0,
        counts=counts,
        impact_speed_sum_mps=float(total["impact_speed_sum_mps"]),
        sim_latency_p99_s=None if p99 is None else p99 / 1000.0,
        deadline_misses=int(total["deadline_misses"]),
        vehicle_ticks=int(total["vehicle_ticks"]),
    )


def evaluate_on_suite(
    model: nn.Module | None,
    label: str,
    suite: HeldOutSuite,
    device: str = "cpu",
    on_run: Callable[[str, int], None] | None = None,
    max_uncertainty_mps2: float | None = None,
) -> SuiteMetrics:
    """Every slice x seed of ``suite`` for one model (None: the fallback alone), under the arbiter threshold
    calibrated to that model (``ArbiterConfig.for_model``)."""
    slices = []
    for s in suite.slices:
        runs = []
        for seed in suite.seeds:
            runs.append(run_slice(model, s, seed, device, max_uncertainty_mps2))
            if on_run is not None:
                on_run(s.name, seed)
        slices.append(SliceMetrics(s.name, s.condition.data_condition, tuple(runs)))
    return SuiteMetrics(label, tuple(slices))


def validation_table(candidate: SuiteMetrics, baseline: SuiteMetrics) -> list[dict[str, Any]]:
    """One row per slice: candidate vs baseline rates with 95 % intervals, progress, impact speed."""
    rows = []
    for sc in candidate.slices:
        rows.append({"slice": sc.slice, "candidate": sc.summary(), "baseline": baseline.slice(sc.slice).summary()})
    return rows


@dataclass
class ValidationOutcome:
    """What validate did: ``validated`` (registered, staged or rejected) or ``skipped`` (nothing registered)."""

    status: str
    reason: str = ""
    model_name: str = ""
    version: str | None = None
    stage: str | None = None
    passed: bool = False
    reasons: list[str] = field(default_factory=list)
    baseline: str = ""
    suite_name: str = ""
    suite_hash: str = ""
    target_conditions: list[str] = field(default_factory=list)
    report_path: str | None = None
    table: list[dict[str, Any]] = field(default_factory=list)
    decision: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    event: ModelValidated | None = None

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["event"] = None if self.event is None else {"version": self.event.version, "passed": self.event.passed}
        return d


def validate_candidate(
    settings: Settings,
    event: ModelTrained,
    cfg: ValidateConfig | None = None,
    *,
    registry: Registry | None = None,
    tracking: Tracking | None = None,
    on_run: Callable[[str, int], None] | None = None,
) -> ValidationOutcome:
    """Evaluate, gate, register and stage the candidate of ``event``; see the module docstring."""
    import torch

    from fleetloop.edge_agent.model_artifact import load_artifact

    cfg = cfg or ValidateConfig()
    # Opening does not contact MLflow: a local candidate of a federated round needs no server until registration.
    tracking = tracking or open_tracking(settings, check=False)
    t0 = time.perf_counter()
    suite = frozen_suite(settings.state_dir, cfg.suite)
    out = ValidationOutcome(
        status="skipped", model_name=event.model_name, suite_name=suite.name, suite_hash=suite.content_hash
    )
    with tempfile.TemporaryDirectory(prefix="fleetloop-validate-") as tmp:
        cand_path = fetch_candidate(tracking, event.artifact_uri, Path(tmp) / "candidate")
        cand = load_artifact(cand_path)
        meta = cand.metadata
        frames = meta.metrics.get("frames")
        if event.origin == "central" and (frames is None or frames < cfg.min_train_frames):
            out.reason = (
                f"candidate trained on {0 if frames is None else int(frames)} frames, fewer than the "
                f"{cfg.min_train_frames} a validation needs; not evaluated, nothing registered"
            )
            return out
        if suite.content_hash in meta.training_data_hashes:
            raise UserInputError(
                "the candidate lists the held-out suite among its training data; it cannot be validated"
            )
        registry = registry or open_registry(settings)
        prod, prod_version = load_production(registry, event.model_name, Path(tmp))
        old_threads = torch.get_num_threads()
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        try:
            from fleetloop.edge_agent.arbiter import ArbiterConfig

            c_thr = ArbiterConfig.for_model(cand.metadata).max_uncertainty
            c_metrics = evaluate_on_suite(cand.model, "candidate", suite, cfg.device, on_run, c_thr)
            b_label = f"v{prod_version}" if prod_version else FALLBACK_ONLY
            b_model = None if prod is None else prod.model
            b_thr = None if prod is None else ArbiterConfig.for_model(prod.metadata).max_uncertainty
            b_metrics = evaluate_on_suite(b_model, b_label, suite, cfg.device, on_run, b_thr)
        finally:
            torch.set_num_threads(old_threads)
        targets = [c for c in meta.notes.get("target_conditions", "").split(",") if c] or [
            "clear",
            "fog",
            "rain",
            "night",
        ]
        decision = decide(c_metrics, b_metrics, targets, cfg.gates)
        table = validation_table(c_metrics, b_metrics)
        report = {
            "model_name": event.model_name,
            "training_run_id": event.run_id,
            "origin": event.origin,
            "baseline": b_label,
            "suite": {"name": suite.name, "hash": suite.content_hash, "runs_per_model": suite.runs},
            "target_conditions": targets,
            "decision": decision.as_dict(),
            "table": table,
        }
        report_path = _write_report(settings.state_dir, event.run_id or "federated", report)
        _log_report(tracking, event.run_id, report_path, decision)
        info = registry.register(
            event.model_name,
            cand_path,
            _registry_metadata(meta, event, suite, decision, b_label, c_metrics, b_metrics),
            reason=f"candidate of run {event.run_id} ({event.origin})",
            actor="validate",
        )
        if decision.passed:
            registry.promote(
                event.model_name,
                info.version,
                Stage.STAGING,
                reason=f"passed the gates on {suite.name}",
                actor="validate",
            )
        else:
            registry.promote(
                event.model_name,
                info.version,
                Stage.REJECTED,
                reason="; ".join(decision.reasons)[:2000],
                actor="validate",
            )
    out.status = "validated"
    out.version = info.version
    out.stage = "staging" if decision.passed else "rejected"
    out.passed = decision.passed
    out.reasons = list(decision.reasons)
    out.baseline = b_label
    out.target_conditions = targets
    out.report_path = str(report_path)
    out.table = table
    out.decision = decision.as_dict()
    out.wall_s = time.perf_counter() - t0
    out.event = ModelValidated(
        model_name=event.model_name,
        version=int(info.version),
        passed=decision.passed,
        report_uri=report_path.resolve().as_uri(),
        reasons=tuple(decision.reasons),
        source="validate",
    )
    return out


def _registry_metadata(
    meta: Any,
    event: ModelTrained,
    suite: HeldOutSuite,
    decision: GateDecision,
    baseline: str,
    cand: SuiteMetrics,
    base: SuiteMetrics,
) -> dict[str, Any]:
    def rate(m: SuiteMetrics, keys: Sequence[str]) -> float | None:
        km = m.km
        return round(sum(m.count(k) for k in keys) * 1000.0 / km, 3) if km > 0 else None

    out = meta.registry_metadata()
    out["training_run_id"] = event.run_id or meta.training_run_id
    out["origin"] = event.origin
    out["dataset_ids"] = list(event.dataset_ids)
    out["validation"] = {
        "passed": decision.passed,
        "reasons": [r[:300] for r in decision.reasons][:20],
        "suite": suite.name,
        "suite_hash": suite.content_hash,
        "baseline": baseline,
        "candidate_km": round(cand.km, 3),
        "collisions_plus_near_misses_per_1000_km": {
            "candidate": rate(cand, ("collisions", "near_misses")),
            "baseline": rate(base, ("collisions", "near_misses")),
        },
        "phantom_brakes_per_1000_km": {
            "candidate": rate(cand, ("phantom_brakes",)),
            "baseline": rate(base, ("phantom_brakes",)),
        },
    }
    out["train_metrics"] = {k: v for k, v in meta.metrics.items() if isinstance(v, float) and math.isfinite(v)}
    return out


def _write_report(state_dir: Path, run_id: str, report: dict[str, Any]) -> Path:
    folder = Path(state_dir) / "pipelines" / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(folder / f"{run_id}.json", json.dumps(report, indent=1, default=str, allow_nan=True))


def _log_report(tracking: Tracking, run_id: str, path: Path, decision: GateDecision) -> None:
    """Attach the report to the training run (federated candidates have none) and mark the run judged."""
    if not run_id:
        return
    tracking.log_artifact(run_id, path, "validation")
    tracking.set_tag(run_id, VALIDATION_TAG, "passed" if decision.passed else "rejected")


def run_validate_stage(
    settings: Settings,
    cfg: ValidateConfig | None = None,
    *,
    group_id: str = "fleetloop-validate",
    idle_timeout_s: float | None = 2.0,
    stop: Any = None,
    on_outcome: Callable[[ValidationOutcome], None] | None = None,
) -> EventStageReport:
    """On ``model.trained`` (central or federated): validate each candidate; emit ``model.validated``."""
    from fleetloop.pipelines.event_stage import run_event_stage

    def handle(events: Sequence[Any]) -> list[Any]:
        outs = []
        for ev in events:
            outcome = validate_candidate(settings, ev, cfg)
            if on_outcome is not None:
                on_outcome(outcome)
            if outcome.event is not None:
                outs.append(outcome.event)
        return outs

    return run_event_stage(
        settings,
        "validate",
        handle,
        wants=("model.trained",),
        group_id=group_id,
        idle_timeout_s=idle_timeout_s,
        stop=stop,
    )
