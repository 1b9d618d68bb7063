"""The train stage: fine-tune the production model on labelled fleet data; one MLflow run per candidate.

    labelled datasets not yet trained on  ->  policy features (the vehicle's own) + hindsight targets
    production model from the registry (alias ``production``; from scratch only when there is none)
    train_imitation (the same function the bootstrap and the federated client use), seeded
    artifact with lineage (parent version, dataset hashes, MLflow run id)  ->  MLflow run in ``fleetloop-train``
    ->  ``model.trained``

Too little data (fewer valid labelled frames than ``TrainConfig.min_frames``) is not an error: the stage says
so, logs nothing and registers nothing, and the datasets wait for more.

The hand-off is a journal, ``<state_dir>/pipelines/train-consumed.json``: the datasets candidates were trained on
(so the next candidate trains on new data only; its parent already learnt the old) and the run now being
logged. Intent first: once the MLflow run exists, its id and datasets are journalled as pending; the datasets
count as consumed only after the run is FINISHED (its model, params, metrics and dataset tags all logged). A
rerun settles a pending run first: FINISHED -> its datasets are marked consumed and its ``model.trained`` is
announced again (``recovered``), never trained twice; anything else (a crash or an outage while logging) -> the
run is marked FAILED and its datasets train again. What each step leaves: docs/pipelines.md.

Training runs on the CPU: ``edge_agent.imitation.train_imitation`` keeps its bootstrap weights and sampling
there, and a few thousand frames of a loop turn train in seconds.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetloop.pipelines.datasets import (
    LabelledDataset,
    labelled_by_id,
    labelled_quarantine,
    list_labelled,
    policy_inputs_from_telemetry,
    quarantine_labelled,
    read_labelled,
)
from fleetloop.pipelines.models import (
    ARTIFACT_DIR,
    ARTIFACT_FILE,
    DATASET_IDS_TAG,
    MODEL_TAG,
    TRAIN_EXPERIMENT,
    candidate_uri,
    load_production,
)
from fleetloop.platform.atomic import write_text_atomic
from fleetloop.platform.bus.events import ModelTrained
from fleetloop.platform.errors import DataError, NotFoundError
from fleetloop.platform.registry import open_registry
from fleetloop.platform.tracking import open_tracking

if TYPE_CHECKING:
    import torch

    from fleetloop.edge_agent.model_artifact import LoadedPolicy
    from fleetloop.edge_agent.policy import FusionPolicy
    from fleetloop.pipelines.event_stage import EventStageReport
    from fleetloop.platform.registry import Registry
    from fleetloop.platform.settings import Settings
    from fleetloop.platform.tracking import Tracking

__all__ = [
    "TRAIN_STEPS",
    "TrainConfig",
    "TrainOutcome",
    "TrainingSet",
    "build_training_set",
    "consumed_datasets",
    "consumed_path",
    "fine_tune",
    "pending_runs",
    "run_train",
    "run_train_stage",
    "target_conditions",
]

DATASET_HASHES_TAG = "fleetloop.dataset_hashes"
TARGET_SHARE = 0.2  # a non-clear condition with at least this share of the frames is a target of the candidate
TRAIN_STEPS = ("trained", "run_started", "logged", "recorded")
"""What ``run_train``'s ``on_step`` hears, in order: the model is trained (nothing recorded yet); its MLflow run
exists and is journalled as pending; params, metrics and the model are logged (the run is about to be FINISHED);
the run is FINISHED and its datasets are marked consumed (the commit point)."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and limits of the train stage (logged as MLflow params)."""

    seed: int = 0
    """Seeds the train/validation split, bootstrap resamples, batch order and (from scratch) the weights."""
    epochs: int = 8
    """Passes over the training frames (a pass over a loop turn's uploads takes a fraction of a second)."""
    batch_size: int = 512
    """Frames per optimiser step."""
    lr: float = 1e-3
    """AdamW learning rate (lower than the bootstrap's: this is a fine-tune)."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    val_fraction: float = 0.1
    """Share of frames held out for validation metrics."""
    max_seconds: float = 300.0
    """Wall-clock budget of the optimisation [s]."""
    min_frames: int = 512
    """Fewest valid labelled frames worth a candidate; fewer: the stage says so and stops."""
    confidence_weighting: bool = True
    """Weight each frame's loss by its label confidence (the share of its horizon that was seen)."""
    anchor_weight: float = 10.0
    """Self-distillation toward the frozen parent (production) model on every frame, so the candidate moves only
    where the hindsight labels pull it (0: off; no effect when training from scratch). 10 with 8 epochs (ADR 0195,
    0197, 0199; 30 and 4 epochs before, ADR 0093)."""
    balance_hazard: bool = True
    """Reweight frames so hazard labels carry ``hazard_share`` of the label loss (trigger clips are mostly hazards)."""
    hazard_share: float = 0.5
    """With ``balance_hazard``: the share of the uploads' label loss on hazard frames (ADR 0195, 0197, 0199:
    without replay, 0.5 taught the candidate to brake on weaker evidence everywhere and 0.35 was kept; with the
    replayed frames holding clear driving, 0.5 of the uploads' 60 %, 30 % of the whole label loss)."""
    replay_share: float = 0.4
    """The share of the label loss's weight on replayed frames (``pipelines.replay``: frames the first model learnt
    from, so the fine-tune does not unlearn clear driving; ADR 0199); 0: the uploads alone."""
    torch_threads: int = 0
    """Intra-op threads for torch (0: leave the default)."""
    experiment: str = TRAIN_EXPERIMENT
    """MLflow experiment of the training runs."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.min_frames < 2:
            raise ValueError("epochs and batch_size must be >= 1, min_frames >= 2")
        if not 0 <= self.val_fraction < 1 or not self.lr > 0 or not self.max_seconds > 0:
            raise ValueError("val_fraction must be in [0, 1), lr and max_seconds > 0")
        if not self.anchor_weight >= 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if not 0 < self.hazard_share < 1:
            raise ValueError(f"hazard_share must be in (0, 1), got {self.hazard_share}")
        if not 0 <= self.replay_share < 1:
            raise ValueError(f"replay_share must be in [0, 1), got {self.replay_share}")


@dataclass(frozen=True)
class TrainingSet:
    """Tensors ``train_imitation`` takes, plus where they came from."""

    data: dict[str, torch.Tensor]
    dataset_ids: tuple[str, ...]
    dataset_hashes: tuple[str, ...]
    conditions: dict[str, int]

    @property
    def frames(self) -> int:
        return int(self.data["accel_mps2"].shape[0]) if self.data else 0

    def with_replay(self, replay: Mapping[str, torch.Tensor]) -> TrainingSet:
        """These frames and ``replay``'s (``pipelines.replay``: inputs, ``accel_mps2``, ``hazard``), the latter
        marked ``replay`` and weighted 1 where these frames carry a label confidence."""
        import torch

        n, m = self.frames, int(replay["accel_mps2"].shape[0])
        own = {**self.data, "replay": torch.zeros(n, dtype=torch.bool)}
        other = {**replay, "replay": torch.ones(m, dtype=torch.bool)}
        if "weight" in own:
            other["weight"] = torch.ones(m)
        data = {k: torch.cat([own[k], other[k].to(own[k].dtype)]) for k in own}
        return TrainingSet(data, self.dataset_ids, self.dataset_hashes, self.conditions)


def build_training_set(
    datasets: Sequence[LabelledDataset],
    confidence_weighting: bool = True,
    on_refused: Callable[[LabelledDataset, DataError], None] | None = None,
) -> TrainingSet:
    """Valid labelled frames of ``datasets`` as policy features + targets (files checked against their hashes).

    With ``on_refused``, a dataset that cannot be read (``DataError``) is handed to it and left out; without,
    the error propagates."""
    import torch

    parts, kept = [], []
    for ds in datasets:
        try:
            parts.append(read_labelled(ds))
            kept.append(ds)
        except DataError as e:
            if on_refused is None:
                raise
            on_refused(ds, e)
    datasets = kept
    parts = [{k: v[np.asarray(p["label_valid"], dtype=bool)] for k, v in p.items()} for p in parts]
    parts = [p for p in parts if len(p["vehicle_id"])]
    conditions: dict[str, int] = {}
    for ds in datasets:
        for k, v in ds.conditions.items():
            conditions[k] = conditions.get(k, 0) + int(v)
    ids = tuple(ds.dataset_id for ds in datasets)
    hashes = tuple(ds.content_sha256 for ds in datasets)
    if not parts:
        return TrainingSet({}, ids, hashes, conditions)
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    data = policy_inputs_from_telemetry(cols).as_dict()
    data["accel_mps2"] = torch.from_numpy(np.asarray(cols["label_target_accel_mps2"], dtype=np.float32))
    data["hazard"] = torch.from_numpy(np.asarray(cols["label_hazard"], dtype=np.float32))
    if confidence_weighting:
        data["weight"] = torch.from_numpy(np.asarray(cols["label_confidence"], dtype=np.float32))
    return TrainingSet(data, ids, hashes, conditions)


def target_conditions(conditions: Mapping[str, int]) -> list[str]:
    """The data conditions a candidate should improve: non-clear ones with >= ``TARGET_SHARE`` of the frames;
    ``clear`` when there are none."""
    total = sum(conditions.values())
    out = sorted(c for c, n in conditions.items() if c != "clear" and total and n / total >= TARGET_SHARE)
    return out or ["clear"]


def fine_tune(parent: FusionPolicy | None, ts: TrainingSet, cfg: TrainConfig) -> tuple[Any, Any]:
    """Copy of ``parent`` (or a fresh model, seeded) trained on ``ts``, anchored to a frozen copy of ``parent``
    (``cfg.anchor_weight``); returns (model, ``ImitationMetrics``)."""
    import copy

    import torch

    from fleetloop.edge_agent.imitation import ImitationConfig, train_imitation
    from fleetloop.edge_agent.policy import FusionPolicy, PolicyConfig

    if ts.frames < 2:
        raise DataError(f"cannot train on {ts.frames} frames")
    anchor: FusionPolicy | None = None
    if parent is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = FusionPolicy(PolicyConfig())
    else:
        model = copy.deepcopy(parent).cpu()  # type: ignore[assignment]
        model.requires_grad_(True)
        if cfg.anchor_weight > 0:
            anchor = copy.deepcopy(parent).cpu().eval()  # type: ignore[assignment]
            anchor.requires_grad_(False)
    icfg = ImitationConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        val_fraction=cfg.val_fraction,
        max_seconds=cfg.max_seconds,
        anchor_weight=cfg.anchor_weight if anchor is not None else 0.0,
        balance_hazard=cfg.balance_hazard,
        hazard_share=cfg.hazard_share,
        replay_share=cfg.replay_share,
    )
    metrics = train_imitation(model, ts.data, icfg, cfg.seed, anchor=anchor)
    return model, metrics


def uncertainty_calibration(
    model: FusionPolicy, parent: LoadedPolicy | None, data: dict[str, Any], cfg: TrainConfig
) -> dict[str, float]:
    """The candidate's ``val_uncertainty_p*`` metrics (``edge_agent.calibration``), measured on the frames the
    training held out: the parent's calibration carried over, scaled by how the candidate's uncertainty compares
    with the parent's there (the uploads are hazard-heavy clips, so their raw quantiles would be on another scale).
    """
    from fleetloop.edge_agent.calibration import carried_calibration  # torch: see the module's lazy imports
    from fleetloop.edge_agent.imitation import split_holdout

    frames = split_holdout(data, cfg.val_fraction, cfg.seed)[1] if cfg.val_fraction > 0 else data
    if int(frames["accel_mps2"].shape[0]) == 0:
        frames = data
    if parent is None:
        return carried_calibration(model, frames)
    return carried_calibration(model, frames, parent.model, dict(parent.metadata.metrics))


@dataclass
class TrainOutcome:
    """What the train stage did: ``trained`` (with the run and the event) or ``skipped`` (with the reason); either
    may also carry ``recovered``: candidates an earlier, interrupted train had logged, announced again."""

    status: str
    reason: str = ""
    frames: int = 0
    dataset_ids: list[str] = field(default_factory=list)
    dataset_hashes: list[str] = field(default_factory=list)
    conditions: dict[str, int] = field(default_factory=dict)
    parent_version: str | None = None
    run_id: str | None = None
    artifact_uri: str | None = None
    device: str = "cpu"
    """Where it trained (the CPU; see the module docstring)."""
    metrics: dict[str, float] = field(default_factory=dict)
    loss_curve: list[float] = field(default_factory=list)
    event: ModelTrained | None = None
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    """Labelled datasets this run could not read and set aside: id, reason, message."""
    recovered: list[ModelTrained] = field(default_factory=list)
    replay: dict[str, Any] = field(default_factory=dict)
    """The replayed frames (``frames``, ``sha256``, ``share``, ``source``) or why there were none (``reason``)."""

    @property
    def events(self) -> list[ModelTrained]:
        """The ``model.trained`` events to send: the recovered candidates', then this run's."""
        return [*self.recovered, *([] if self.event is None else [self.event])]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["event"] = None if self.event is None else {"run_id": self.event.run_id, "uri": self.event.artifact_uri}
        d["recovered"] = [{"run_id": e.run_id, "uri": e.artifact_uri} for e in self.recovered]
        d["metrics"] = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.metrics.items()
        }
        return d


def consumed_path(state_dir: Path) -> Path:
    """The train journal: ``{"datasets": [consumed ids], "pending": {run_id: [dataset ids]}}``."""
    return Path(state_dir) / "pipelines" / "train-consumed.json"


def _read_journal(state_dir: Path) -> tuple[set[str], dict[str, list[str]]]:
    p = consumed_path(state_dir)
    if not p.exists():
        return set(), {}
    try:
        raw = json.loads(p.read_text())
        pending = {str(k): [str(i) for i in v] for k, v in raw.get("pending", {}).items()}
        return set(raw["datasets"]), pending
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{p} is unreadable ({e}); fix or delete it (then every dataset counts as new)") from e


def _write_journal(state_dir: Path, consumed: set[str], pending: Mapping[str, Sequence[str]]) -> None:
    p = consumed_path(state_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    body = {"datasets": sorted(consumed), "pending": {k: list(v) for k, v in sorted(pending.items())}}
    write_text_atomic(p, json.dumps(body))


def consumed_datasets(state_dir: Path) -> set[str]:
    """Ids of labelled datasets a logged (FINISHED) candidate was already trained on."""
    return _read_journal(state_dir)[0]


def pending_runs(state_dir: Path) -> dict[str, list[str]]:
    """Training runs started but not known to be FINISHED (a crash or an outage interrupted them): run id ->
    the datasets it trains on. The next ``run_train`` settles them first."""
    return _read_journal(state_dir)[1]


def _journal_pending(state_dir: Path, run_id: str, ids: Sequence[str]) -> None:
    consumed, pending = _read_journal(state_dir)
    _write_journal(state_dir, consumed, {**pending, run_id: list(ids)})


def _mark_consumed(state_dir: Path, run_id: str, ids: Sequence[str]) -> None:
    """The commit point of a candidate: its datasets consumed and its run no longer pending, in one write."""
    consumed, pending = _read_journal(state_dir)
    pending.pop(run_id, None)
    _write_journal(state_dir, consumed | set(ids), pending)


def _settle_pending(state_dir: Path, tracking: Tracking, model_name: str) -> list[ModelTrained]:
    """Finish what an interrupted train left: a FINISHED pending run -> its datasets consumed, its event again; any
    other (RUNNING after a crash, FAILED, gone) -> marked FAILED, its datasets free to train again. Contacts
    MLflow only when something is pending."""
    recovered = []
    for run_id, ids in pending_runs(state_dir).items():
        try:
            run = tracking.get_run(run_id)
        except NotFoundError:
            run = None
        if run is not None and run.status == "FINISHED":
            _mark_consumed(state_dir, run_id, ids)
            name = run.tags.get(MODEL_TAG, model_name)
            recovered.append(
                ModelTrained(
                    model_name=name,
                    run_id=run_id,
                    artifact_uri=candidate_uri(run_id),
                    origin="central",
                    dataset_ids=tuple(ids),
                    source="train",
                )
            )
            continue
        if run is not None and run.status == "RUNNING":  # abandoned by a crash: one train runs per state dir
            tracking.end_run(run_id, "FAILED")
        consumed, pending = _read_journal(state_dir)
        pending.pop(run_id, None)
        _write_journal(state_dir, consumed, pending)
    return recovered


def run_train(
    settings: Settings,
    cfg: TrainConfig | None = None,
    *,
    dataset_ids: Sequence[str] | None = None,
    registry: Registry | None = None,
    tracking: Tracking | None = None,
    model_name: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Fine-tune production on the labelled datasets not yet trained on (or ``dataset_ids``); see the module doc.

    ``on_step`` hears each of :data:`TRAIN_STEPS` as it is reached (progress, and where tests stop a server)."""
    import torch

    from fleetloop.edge_agent.features import INPUT_SCHEMA_VERSION
    from fleetloop.edge_agent.model_artifact import ArtifactMetadata, hash_tensors, save_artifact
    from fleetloop.edge_agent.policy import ARCHITECTURE

    cfg = cfg or TrainConfig()
    name = model_name or settings.model_name
    quarantine = labelled_quarantine(settings.state_dir)
    step = on_step or (lambda _step: None)
    # Opening does not contact MLflow: with nothing pending and too little data, no server is needed.
    tracking = tracking or open_tracking(settings, check=False)
    recovered = _settle_pending(settings.state_dir, tracking, name)
    if dataset_ids is not None:
        datasets = labelled_by_id(settings.state_dir, dataset_ids)
    else:
        used = consumed_datasets(settings.state_dir) | quarantine.held_ids()
        datasets = [d for d in list_labelled(settings.state_dir) if d.dataset_id not in used]
    valid = sum(d.valid_rows for d in datasets)
    base = TrainOutcome(
        status="skipped",
        frames=valid,
        dataset_ids=[d.dataset_id for d in datasets],
        dataset_hashes=[d.content_sha256 for d in datasets],
        recovered=recovered,
    )
    if valid < cfg.min_frames:
        base.reason = (
            f"too little labelled data: {valid} valid frames in {len(datasets)} new dataset(s), "
            f"a candidate needs at least {cfg.min_frames}; nothing trained, nothing logged"
        )
        return base
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)

    def set_aside(ds: LabelledDataset, err: DataError) -> None:
        base.quarantined.append(quarantine_labelled(settings.state_dir, ds, "train", err).brief())

    ts = build_training_set(datasets, cfg.confidence_weighting, on_refused=set_aside)
    if ts.frames < cfg.min_frames:
        base.reason = f"too little labelled data: {ts.frames} valid frames, need {cfg.min_frames}"
        return base
    registry = registry or open_registry(settings, tracking=tracking)  # ServiceUnavailable if MLflow is down
    train_set, replay = _with_replay(settings.state_dir, ts, cfg)
    with tempfile.TemporaryDirectory(prefix="fleetloop-train-") as tmp:
        parent, parent_version = load_production(registry, name, Path(tmp))
        t0 = time.perf_counter()
        model, metrics = fine_tune(None if parent is None else parent.model, train_set, cfg)
        train_s = time.perf_counter() - t0
        calibration = uncertainty_calibration(model, parent, ts.data, cfg)
        targets = target_conditions(ts.conditions)
        step("trained")
        run_tags = {"fleetloop.stage": "train", MODEL_TAG: name}
        with tracking.run(cfg.experiment, run_name=f"train-{name}", tags=run_tags) as run_id:
            _journal_pending(settings.state_dir, run_id, ts.dataset_ids)  # intent first: see the module docstring
            step("run_started")
            meta = ArtifactMetadata(
                architecture=ARCHITECTURE,
                hyperparameters=model.config.to_dict(),
                input_schema_version=INPUT_SCHEMA_VERSION,
                parent_version=parent_version,
                training_data_hashes=(*ts.dataset_hashes, *([replay["sha256"]] if replay.get("frames") else [])),
                training_run_id=run_id,
                metrics={**metrics.as_dict(), **calibration, "frames": float(ts.frames), "train_wall_s": train_s},
                notes={
                    "role": "candidate",
                    "origin": "central",
                    "target_conditions": ",".join(targets),
                    "dataset_ids": ",".join(ts.dataset_ids),
                    "from_scratch": str(parent is None).lower(),
                },
            )
            path = save_artifact(Path(tmp) / ARTIFACT_FILE, model, meta)
            params = {
                **{f"train.{k}": v for k, v in asdict(cfg).items()},
                "data.frames": ts.frames,
                "data.datasets": len(ts.dataset_ids),
                "data.tensor_hash": hash_tensors(ts.data),
                "data.target_conditions": ",".join(targets),
                "data.replay_frames": replay.get("frames", 0),
                "data.replay_sha256": replay.get("sha256", "none"),
                "parent_version": parent_version or "none (from scratch)",
                "device": "cpu",
            }
            for k, v in ts.conditions.items():
                params[f"data.condition.{k}"] = v
            _log(tracking, run_id, params, metrics, train_s, ts)
            tracking.log_artifact(run_id, path, ARTIFACT_DIR)
            step("logged")
    _mark_consumed(settings.state_dir, run_id, ts.dataset_ids)
    quarantine.clear_released(ts.dataset_ids)
    step("recorded")
    uri = candidate_uri(run_id)
    event = ModelTrained(
        model_name=name, run_id=run_id, artifact_uri=uri, origin="central", dataset_ids=ts.dataset_ids, source="train"
    )
    return TrainOutcome(
        status="trained",
        frames=ts.frames,
        dataset_ids=list(ts.dataset_ids),
        dataset_hashes=list(ts.dataset_hashes),
        conditions=ts.conditions,
        parent_version=parent_version,
        run_id=run_id,
        artifact_uri=uri,
        metrics={**metrics.as_dict(), "train_wall_s": train_s},
        loss_curve=list(metrics.loss_curve),
        event=event,
        quarantined=base.quarantined,
        recovered=recovered,
        replay=replay,
    )


def _with_replay(state_dir: Path, ts: TrainingSet, cfg: TrainConfig) -> tuple[TrainingSet, dict[str, Any]]:
    """``ts`` with the lake's replay set when ``cfg.replay_share`` asks for one, and what was replayed (``frames``,
    ``sha256``, ``share``, ``source``) or why nothing was (``frames`` 0, ``reason``): a missing or damaged set
    never stops a turn (``pipelines.replay``)."""
    from fleetloop.pipelines.replay import read_replay_set

    if cfg.replay_share <= 0:
        return ts, {"frames": 0, "reason": "replay is off (replay_share 0)"}
    try:
        found = read_replay_set(state_dir)
    except DataError as e:
        return ts, {"frames": 0, "reason": str(e)}
    if found is None:
        why = "no replay set in the lake (`fleetloop model bootstrap` writes one); trained on the uploads alone"
        return ts, {"frames": 0, "reason": why}
    data, info = found
    return ts.with_replay(data), {**info.brief(), "share": cfg.replay_share}


def _log(
    tracking: Tracking, run_id: str, params: Mapping[str, Any], metrics: Any, train_s: float, ts: TrainingSet
) -> None:
    # Only finite metrics go to MLflow; the artifact's metadata keeps them all.
    scalars = {k: float(v) for k, v in metrics.as_dict().items() if math.isfinite(float(v))}
    scalars["train_wall_s"] = train_s
    tags = {
        DATASET_HASHES_TAG: json.dumps(list(ts.dataset_hashes)),
        DATASET_IDS_TAG: json.dumps(list(ts.dataset_ids)),
    }
    tracking.log(run_id, params=params, metrics=scalars, series={"epoch_loss": metrics.loss_curve}, tags=tags)
    lineage = {"dataset_ids": list(ts.dataset_ids), "dataset_hashes": list(ts.dataset_hashes)}
    tracking.log_dict(run_id, lineage, "data/lineage.json")


def run_train_stage(
    settings: Settings,
    cfg: TrainConfig | None = None,
    *,
    group_id: str = "fleetloop-train",
    idle_timeout_s: float | None = 2.0,
    stop: Any = None,
    on_outcome: Any = None,
) -> EventStageReport:
    """On ``labels.ready``: train a candidate once enough new labelled data has arrived; emit ``model.trained``."""
    from fleetloop.pipelines.event_stage import run_event_stage

    def handle(events: Sequence[Any]) -> list[Any]:
        outcome = run_train(settings, cfg)
        if on_outcome is not None:
            on_outcome(outcome)
        return list(outcome.events)

    return run_event_stage(
        settings,
        "train",
        handle,
        wants=("labels.ready",),
        group_id=group_id,
        batched=True,  # one run over all new labelled data per poll; run_train skips what a run already used
        idle_timeout_s=idle_timeout_s,
        stop=stop,
    )
