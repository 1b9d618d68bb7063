"""The validate stage: closed-loop evaluation of a candidate beside production on the frozen held-out suite,
the gates, and registration with lineage.

    model.trained -> candidate artifact (MLflow run artifact or a file) -> verified load (schema, NaN)
    baseline: the production model (alias ``production``), or the fallback alone when there is none
    every slice x seed of the suite, both models, through the fleet runner (no telemetry sink)
    the whole Euro NCAP AEB matrix in every condition of the suite, both models (one batched run each)
    gates.decide(candidate, baseline, target conditions, NCAP points)  (pure)
    the verdict recorded: ``<state_dir>/pipelines/validation/<run>.json`` (decision, table, the registration)
    register the candidate once per training run (metrics, lineage: training run, dataset hashes, parent
    version, suite hash) -> stage ``staging`` when it passed, else ``rejected`` with the reasons
    the report logged to the training run, which is tagged validated LAST (the commit point) -> ``model.validated``

A crash or an MLflow outage at any step leaves the training run untagged, so the next run validates it again:
the recorded verdict is reused when the candidate file, the suite and the baseline are the same, and the
version registered from that training run is found and finished, never registered twice (docs/pipelines.md,
docs/adr/0036). A candidate trained on too few frames (its artifact's ``frames`` metric below
``min_train_frames``) is not evaluated: the stage says so and registers nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
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
    NcapScores,
    RunMetrics,
    SliceMetrics,
    SuiteMetrics,
    decide,
)
from fleetloop.pipelines.models import VALIDATION_TAG, fetch_candidate, load_production
from fleetloop.pipelines.suite import NCAP_CCR, HeldOutSuite, SuiteSlice, frozen_suite
from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.bus.events import ModelValidated
from fleetloop.platform.errors import DataError, NotFoundError, UserInputError
from fleetloop.platform.logs import log_context
from fleetloop.platform.metrics import gauge
from fleetloop.platform.registry import Stage, open_registry
from fleetloop.platform.tracking import open_tracking
from fleetloop.sim.ncap import GROUPS

if TYPE_CHECKING:
    from torch import nn

    from fleetloop.edge_agent.model_artifact import LoadedPolicy
    from fleetloop.pipelines.event_stage import EventStageReport
    from fleetloop.platform.bus.events import ModelTrained
    from fleetloop.platform.registry import ModelVersionInfo, Registry
    from fleetloop.platform.settings import Settings
    from fleetloop.platform.tracking import Tracking

__all__ = [
    "FALLBACK_ONLY",
    "VALIDATE_STEPS",
    "ValidateConfig",
    "ValidationOutcome",
    "evaluate_on_suite",
    "ncap_on_suite",
    "ncap_table",
    "run_slice",
    "run_validate_stage",
    "validate_candidate",
    "validation_table",
]

log = logging.getLogger(__name__)
FALLBACK_ONLY = "fallback-only"
VERDICTS = gauge(
    "fleetloop_pipeline_validation_verdict_timestamp_seconds",
    "Unix time a candidate version got its verdict (passed or rejected) from the validate stage.",
    ["model", "version", "verdict"],
)
_LABEL = "model"  # the version label the runner gives the evaluated model
VALIDATE_STEPS = ("verdict", "registered", "marked")
"""What ``validate_candidate``'s ``on_step`` hears, in order: the verdict is recorded in the report file (nothing in
MLflow yet); the version is registered and staged; the training run carries the report and is tagged validated
(the commit point)."""


@dataclass(frozen=True)
class ValidateConfig:
    """How validate runs.

    Attributes:
        gates: the gate margins.
        suite: the suite template (stored and frozen under the state directory on first use).
        device: torch device of the closed-loop runs.
        torch_threads: intra-op threads (1 is fastest for the small batches of a suite on a shared CPU).
        min_train_frames: a central candidate trained on fewer frames is not validated, nor registered.
        ncap: drive the whole Euro NCAP AEB matrix in every condition of the suite for both models and gate on
            its points per group and condition (docs/adr/0117); False leaves that gate out (said in the notes).
    """

    gates: GateConfig = field(default_factory=GateConfig)
    suite: HeldOutSuite | None = None
    device: str = "cpu"
    torch_threads: int = 1
    min_train_frames: int = 512
    ncap: bool = True


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


def ncap_on_suite(policy: LoadedPolicy | None, label: str, suite: HeldOutSuite, device: str = "cpu") -> NcapScores:
    """The whole Euro NCAP AEB matrix in every condition of ``suite`` for one policy (None: the fallback alone;
    the arbiter calibrated to the policy): its points per condition and group, the mean over the suite's seeds
    (one batched run each). One seed's points move by up to 2 points a group on sensor noise alone (ADR 0192)."""
    # torch and the fleet runner load only when a validation runs (as in run_slice)
    from fleetloop.edge_agent.ncap_run import drive_ncap_matrix, score_conditions

    catalogue = {s.condition.name: s.condition.patches for s in suite.slices}
    sums: dict[str, dict[str, float]] = {}
    max_points: dict[str, float] = {}
    for seed in suite.seeds:
        rows = drive_ncap_matrix(policy, tuple(catalogue), catalogue=catalogue, seed=seed, device=device)
        for cond, groups in score_conditions(rows, totals=()).items():
            acc = sums.setdefault(cond, dict.fromkeys(GROUPS, 0.0))
            for g in GROUPS:
                acc[g] += groups[g].points
                max_points[g] = groups[g].max_points
    n = len(suite.seeds)
    points = {cond: {g: v / n for g, v in groups.items()} for cond, groups in sums.items()}
    return NcapScores(label, points, max_points)


def ncap_table(candidate: NcapScores, baseline: NcapScores) -> list[dict[str, Any]]:
    """One row per condition x group: the candidate's and the baseline's Euro NCAP points."""
    return [
        {
            "condition": cond,
            "group": group,
            "candidate": candidate.points[cond][group],
            "baseline": base,
            "max_points": baseline.max_points[group],
        }
        for cond, groups in baseline.points.items()
        for group, base in groups.items()
    ]


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
    ncap_table: list[dict[str, Any]] = field(default_factory=list)
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
    on_step: Callable[[str], None] | None = None,
) -> ValidationOutcome:
    """Evaluate, gate, register and stage the candidate of ``event``; see the module docstring.

    Safe to run again after a failure at any step: the verdict recorded for the same candidate, suite and
    baseline is reused, the version registered from the same training run is completed, never made twice.
    ``on_step`` hears each of :data:`VALIDATE_STEPS` as it is reached (progress, and where tests stop a server).
    """
    from fleetloop.edge_agent.model_artifact import load_artifact

    cfg = cfg or ValidateConfig()
    step = on_step or (lambda _step: None)
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
        registry = registry or open_registry(settings, tracking=tracking)
        cand_sha = hashlib.sha256(cand_path.read_bytes()).hexdigest()
        report_path = _report_path(settings.state_dir, event.run_id or "federated")
        report = _recorded_verdict(report_path, event, suite, cand_sha, _baseline_label(registry, event.model_name))
        if report is None:
            report = _judge(event, cand, cand_sha, suite, cfg, registry, Path(tmp), on_run)
            write_text_atomic(report_path, json.dumps(report, indent=1, default=str, allow_nan=True))
        step("verdict")
        info = _register_and_stage(registry, event, cand_path, report)
        step("registered")
        if event.run_id:  # federated candidates have no training run to mark
            tracking.log_artifact(event.run_id, report_path, "validation")
            tracking.set_tag(event.run_id, VALIDATION_TAG, "passed" if report["decision"]["passed"] else "rejected")
        step("marked")
    decision = report["decision"]
    verdict = "passed" if decision["passed"] else "rejected"
    VERDICTS.labels(model=event.model_name, version=str(info.version), verdict=verdict).set(time.time())
    with log_context(model_version=f"{event.model_name}/{info.version}", dataset=",".join(event.dataset_ids) or None):
        log.info("validation verdict: %s (%s)", verdict, "; ".join(decision["reasons"]) or "every gate passed")
    out.status = "validated"
    out.version = info.version
    out.stage = info.stage.value if info.stage is not None else None
    out.passed = bool(decision["passed"])
    out.reasons = list(decision["reasons"])
    out.baseline = report["baseline"]
    out.target_conditions = list(report["target_conditions"])
    out.report_path = str(report_path)
    out.table = report["table"]
    out.ncap_table = report.get("ncap_table", [])
    out.decision = decision
    out.wall_s = time.perf_counter() - t0
    out.event = ModelValidated(
        model_name=event.model_name,
        version=int(info.version),
        passed=out.passed,
        report_uri=report_path.resolve().as_uri(),
        reasons=tuple(out.reasons),
        source="validate",
    )
    return out


def _baseline_label(registry: Registry, name: str) -> str:
    """What a verdict taken now would be against: ``v<production version>``, or the fallback alone."""
    try:
        return f"v{registry.production(name).version}"
    except NotFoundError:
        return FALLBACK_ONLY


def _recorded_verdict(
    path: Path, event: ModelTrained, suite: HeldOutSuite, cand_sha: str, baseline: str
) -> dict[str, Any] | None:
    """The verdict an earlier, interrupted validation recorded for this very candidate (same file), suite and
    baseline, or None (then the candidate is evaluated again)."""
    if not event.run_id or not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        same = (
            report.get("candidate_sha256") == cand_sha
            and report["suite"]["hash"] == suite.content_hash
            and report["baseline"] == baseline
            and "registration" in report
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"validation report {path} is unreadable ({e}); delete it to validate afresh") from e
    return report if same else None


def _judge(
    event: ModelTrained,
    cand: LoadedPolicy,
    cand_sha: str,
    suite: HeldOutSuite,
    cfg: ValidateConfig,
    registry: Registry,
    workdir: Path,
    on_run: Callable[[str, int], None] | None,
) -> dict[str, Any]:
    """Candidate and baseline on every slice x seed of the suite, the gates, and the verdict report: the decision,
    the table and the registration it calls for (metadata, stage, reason)."""
    import torch

    from fleetloop.edge_agent.arbiter import ArbiterConfig

    meta = cand.metadata
    prod, prod_version = load_production(registry, event.model_name, workdir)
    old_threads = torch.get_num_threads()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    try:
        c_thr = ArbiterConfig.for_model(meta).max_uncertainty
        c_metrics = evaluate_on_suite(cand.model, "candidate", suite, cfg.device, on_run, c_thr)
        b_label = f"v{prod_version}" if prod_version else FALLBACK_ONLY
        b_model = None if prod is None else prod.model
        b_thr = None if prod is None else ArbiterConfig.for_model(prod.metadata).max_uncertainty
        b_metrics = evaluate_on_suite(b_model, b_label, suite, cfg.device, on_run, b_thr)
        ncap = None
        if cfg.ncap:
            c_ncap = ncap_on_suite(cand, "candidate", suite, cfg.device)
            if on_run is not None:
                on_run("euro ncap matrix, candidate", suite.seeds[0])
            b_ncap = ncap_on_suite(prod, b_label, suite, cfg.device)
            if on_run is not None:
                on_run(f"euro ncap matrix, {b_label}", suite.seeds[0])
            ncap = (c_ncap, b_ncap)
    finally:
        torch.set_num_threads(old_threads)
    targets = [c for c in meta.notes.get("target_conditions", "").split(",") if c] or [
        "clear",
        "fog",
        "rain",
        "night",
    ]
    decision = decide(c_metrics, b_metrics, targets, cfg.gates, ncap)
    registration = {
        "metadata": _registry_metadata(meta, event, suite, decision, b_label, c_metrics, b_metrics, ncap),
        "stage": (Stage.STAGING if decision.passed else Stage.REJECTED).value,
        "reason": f"passed the gates on {suite.name}" if decision.passed else "; ".join(decision.reasons)[:2000],
    }
    return {
        "model_name": event.model_name,
        "training_run_id": event.run_id,
        "origin": event.origin,
        "candidate_sha256": cand_sha,
        "baseline": b_label,
        "suite": {"name": suite.name, "hash": suite.content_hash, "runs_per_model": suite.runs},
        "target_conditions": targets,
        "decision": decision.as_dict(),
        "table": validation_table(c_metrics, b_metrics),
        "ncap_table": [] if ncap is None else ncap_table(*ncap),
        "registration": registration,
    }


def _register_and_stage(
    registry: Registry, event: ModelTrained, cand_path: Path, report: dict[str, Any]
) -> ModelVersionInfo:
    """Register the candidate once per training run and move it to the verdict's stage; a version an interrupted
    run left as candidate is staged now, one already past candidate (someone moved it on) is left as it is."""
    reg = report["registration"]
    info, _created = registry.register_once(
        event.model_name,
        cand_path,
        reg["metadata"],
        reason=f"candidate of run {event.run_id} ({event.origin})",
        actor="validate",
    )
    target = Stage(reg["stage"])
    if info.stage in (Stage.CANDIDATE, target):  # promoting to where it is completes an interrupted promotion
        registry.promote(event.model_name, info.version, target, reason=reg["reason"], actor="validate")
        info = registry.get(event.model_name, info.version)
    return info


def _registry_metadata(
    meta: Any,
    event: ModelTrained,
    suite: HeldOutSuite,
    decision: GateDecision,
    baseline: str,
    cand: SuiteMetrics,
    base: SuiteMetrics,
    ncap: tuple[NcapScores, NcapScores] | None = None,
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
    if ncap is not None:  # every group's points summed, per condition: the gate itself is per group
        out["validation"]["euro_ncap_points"] = {
            cond: {"candidate": sum(ncap[0].points[cond].values()), "baseline": sum(groups.values())}
            for cond, groups in ncap[1].points.items()
        }
    out["train_metrics"] = {k: v for k, v in meta.metrics.items() if isinstance(v, float) and math.isfinite(v)}
    return out


def _report_path(state_dir: Path, run_id: str) -> Path:
    folder = Path(state_dir) / "pipelines" / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{run_id}.json"


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
