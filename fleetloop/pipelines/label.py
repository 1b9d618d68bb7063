"""The label stage: the vehicle's hindsight labeller run over lake segments, audited against ground truth.

Pure parts (list in / list out, no I/O):

- :func:`label_columns` sorts telemetry frames per vehicle in tick order and runs
  ``fleetloop.edge_agent.labeller.hindsight_labels`` (the same function the vehicle runs on its buffer); a frame
  is labelled only from the frames of the same vehicle that follow it. Uploads are trigger clips, so a frame
  whose horizon is not in the lake is marked ``label_valid = False`` (and not trained on) unless the hazard
  already materialised. Telemetry carries no fallback stage, so the labeller's "fallback went to full
  braking" cue is absent here; the others (perceived gap / TTC, hard braking, needed deceleration) are not.
- :func:`audit_labels` measures label quality against the ground-truth audit table (joined on vehicle id and
  seq, read for this only): hazard precision / recall / F1 against the truth (in-path TTC below 3 s or the
  expert braking harder than 2 m/s², the bootstrap's definition) and the MAE of the target acceleration
  against the expert's command, on valid labels.
- :func:`data_conditions` counts frames per data condition from the vehicles' *own* estimates
  (``est_visibility_m`` below 200 m: fog; ``est_friction`` below 0.7: rain; else clear).

:func:`label_pending` labels every lake segment that has no labelled dataset yet (together, so a vehicle's
frames that span segments are labelled in tick order), writes one labelled dataset per segment and returns
the ``labels.ready`` events; :func:`run_label` is the Kafka shell that does this on ``dataset.sealed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetloop.edge_agent.labeller import REQUIRED as LABELLER_REQUIRED
from fleetloop.edge_agent.labeller import LabelConfig, hindsight_labels
from fleetloop.pipelines.datasets import (
    LABEL_COLUMNS,
    labelled_dir,
    read_ground_truth,
    write_labelled,
)
from fleetloop.pipelines.event_stage import run_event_stage
from fleetloop.pipelines.lake import load_manifests, read_segment
from fleetloop.pipelines.lake.quarantine import isolate_failures, lake_quarantine, quarantine_segment
from fleetloop.platform.bus.events import DatasetSealed, LabelsReady
from fleetloop.platform.bus.schemas import radar_valid
from fleetloop.platform.errors import DataError

if TYPE_CHECKING:
    from fleetloop.pipelines.event_stage import EventStageReport
    from fleetloop.pipelines.lake import Manifest
    from fleetloop.platform.settings import Settings

__all__ = [
    "FOG_ESTIMATE_M",
    "RAIN_FRICTION",
    "LabelQuality",
    "LabelReport",
    "audit_labels",
    "data_conditions",
    "label_columns",
    "label_pending",
    "run_label",
]

FOG_ESTIMATE_M = 200.0  # [m] own visibility estimate below this: the frame is fog data
RAIN_FRICTION = 0.7  # [-] own friction estimate below this: the frame is rain data
TRUTH_HAZARD_TTC_S = 3.0  # [s] bootstrap.HAZARD_TTC_S
TRUTH_HAZARD_DECEL_MPS2 = 2.0  # [m/s²] bootstrap.HAZARD_REQUIRED_DECEL_MPS2 (the expert's emergency onset)
# The labeller's own inputs, read from the lake: the vehicle id keys the sort, and the radar mask travels as
# ``radar_valid_bits`` (expanded below); the applied command is an optional input the lake always has.
_LABELLER_INPUTS = (*(c for c in LABELLER_REQUIRED if c not in ("vehicle_id", "radar_valid")), "command_accel_mps2")


def label_columns(cols: Mapping[str, np.ndarray], cfg: LabelConfig | None = None) -> dict[str, np.ndarray]:
    """Telemetry frames (any order) -> the same frames sorted by (vehicle, tick) with ``LABEL_COLUMNS`` added.

    Raises ``DataError`` naming missing columns or a vehicle that repeats a tick."""

    cfg = cfg or LabelConfig()
    need = ["vehicle_id", "seq", *_LABELLER_INPUTS, "radar_valid_bits"]
    missing = [c for c in need if c not in cols]
    if missing:
        raise DataError(f"label needs telemetry columns {missing}; is this a telemetry.frames table?")
    n = len(cols["vehicle_id"])
    if n == 0:
        out = {k: np.asarray(v)[:0] for k, v in cols.items()}
        out.update({c: np.zeros(0, dtype=np.bool_ if c == "label_valid" else np.float32) for c in LABEL_COLUMNS})
        return out
    names, code = np.unique(np.asarray(cols["vehicle_id"]).astype(str), return_inverse=True)
    tick = np.asarray(cols["tick"]).astype(np.int64)
    order = np.lexsort((tick, code))
    code, tick = code[order], tick[order]
    dup = (code[1:] == code[:-1]) & (tick[1:] == tick[:-1])
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(f"vehicle {names[code[i]]} has two frames at tick {tick[i]}; collect should have deduplicated")
    sorted_cols = {k: np.asarray(v)[order] for k, v in cols.items()}
    frames: dict[str, object] = {k: sorted_cols[k] for k in _LABELLER_INPUTS}
    frames["vehicle_id"] = code.astype(np.int64)
    frames["tick"] = tick
    frames["radar_valid"] = radar_valid(sorted_cols["radar_valid_bits"])
    labels = hindsight_labels(cfg, frames)
    sorted_cols["label_target_accel_mps2"] = labels.target_accel_mps2.numpy().astype(np.float32)
    sorted_cols["label_hazard"] = labels.hazard.numpy().astype(np.float32)
    sorted_cols["label_needed_decel_mps2"] = labels.needed_decel_mps2.numpy().astype(np.float32)
    sorted_cols["label_confidence"] = labels.confidence.numpy().astype(np.float32)
    sorted_cols["label_valid"] = labels.valid.numpy().astype(bool)
    return sorted_cols


def data_conditions(cols: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, int]:
    """Frames per data condition (``fog``, ``rain``, ``clear``) from the vehicles' own estimates."""
    vis = np.asarray(cols.get("est_visibility_m", np.full(len(cols["vehicle_id"]), np.inf)), dtype=np.float32)
    fric = np.asarray(cols.get("est_friction", np.ones(len(vis))), dtype=np.float32)
    m = np.ones(len(vis), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    fog = (vis < FOG_ESTIMATE_M) & m
    rain = ~fog & (fric < RAIN_FRICTION) & m
    return {"fog": int(fog.sum()), "rain": int(rain.sum()), "clear": int((m & ~fog & ~rain).sum())}


@dataclass(frozen=True)
class LabelQuality:
    """Label quality against ground truth (frames matched on vehicle id and seq).

    ``hazard_*`` over valid labels; ``target_accel_mae_mps2``: mean |label target - expert command| [m/s²]."""

    frames: int
    matched: int
    valid: int
    hazard_precision: float
    hazard_recall: float
    hazard_f1: float
    truth_hazard_rate: float
    label_hazard_rate: float
    target_accel_mae_mps2: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def audit_labels(labelled: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray]) -> LabelQuality:
    """Compare labels with the ground-truth audit rows of the same frames (``groundtruth.frames`` columns)."""
    n = len(labelled.get("vehicle_id", ()))
    if n == 0 or len(truth.get("vehicle_id", ())) == 0:
        nan = math.nan
        return LabelQuality(n, 0, 0, nan, nan, nan, nan, nan, nan)
    # Join on (vehicle_id, seq) with a sorted key array (frames are few per vehicle; vectorised).
    names = np.unique(
        np.concatenate([np.asarray(labelled["vehicle_id"]).astype(str), np.asarray(truth["vehicle_id"]).astype(str)])
    )

    def keys(cols: Mapping[str, np.ndarray]) -> np.ndarray:
        vid = np.searchsorted(names, np.asarray(cols["vehicle_id"]).astype(str)).astype(np.int64)
        return vid * (1 << 32) + np.asarray(cols["seq"]).astype(np.int64)

    kl, kt = keys(labelled), keys(truth)
    order = np.argsort(kt, kind="stable")
    pos = np.searchsorted(kt[order], kl)
    pos = np.clip(pos, 0, len(kt) - 1)
    hit = kt[order][pos] == kl
    ti = order[pos[hit]]
    valid = np.asarray(labelled["label_valid"]).astype(bool)[hit]
    label_h = np.asarray(labelled["label_hazard"])[hit][valid] > 0.5
    ttc = np.asarray(truth["true_ttc_s"], dtype=np.float32)[ti][valid]
    expert = np.asarray(truth["expert_accel_mps2"], dtype=np.float32)[ti][valid]
    truth_h = (ttc < TRUTH_HAZARD_TTC_S) | (expert < -TRUTH_HAZARD_DECEL_MPS2)
    tp = int((label_h & truth_h).sum())
    prec = tp / int(label_h.sum()) if label_h.any() else math.nan
    rec = tp / int(truth_h.sum()) if truth_h.any() else math.nan
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else math.nan
    target = np.asarray(labelled["label_target_accel_mps2"], dtype=np.float32)[hit][valid]
    mae = float(np.abs(target - expert).mean()) if len(target) else math.nan
    k = len(truth_h)
    return LabelQuality(
        frames=n,
        matched=int(hit.sum()),
        valid=int(valid.sum()),
        hazard_precision=prec,
        hazard_recall=rec,
        hazard_f1=f1,
        truth_hazard_rate=float(truth_h.mean()) if k else math.nan,
        label_hazard_rate=float(label_h.mean()) if k else math.nan,
        target_accel_mae_mps2=mae,
    )


@dataclass
class LabelReport:
    """What one label run did (``fleetloop pipeline run`` prints it)."""

    segments: int = 0
    frames: int = 0
    labelled_valid: int = 0
    datasets: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, int] = field(default_factory=dict)
    skipped_already_labelled: int = 0
    skipped_quarantined: int = 0
    """Segments set aside by an earlier run (``fleetloop lake quarantine list``)."""
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    """Segments this run could not label and set aside: id, reason, message."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_pending(
    state_dir: Path,
    cfg: LabelConfig | None = None,
    *,
    only: Sequence[str] | None = None,
    table: str = "telemetry",
) -> tuple[LabelReport, list[LabelsReady]]:
    """Label every sealed lake segment of ``table`` without a labelled dataset (or just the ids in ``only``).

    Segments are labelled together, per vehicle in tick order; each gets its own labelled dataset with a
    content hash and its label quality (when the ground-truth table has its frames). Returns the report and the
    ``labels.ready`` events to emit (one per new dataset).

    A segment the labeller refuses (``DataError``) is quarantined with its reason and the others are labelled
    without it; quarantined segments are skipped, released ones are taken again even outside ``only``."""

    report = LabelReport()
    done = {p.stem for p in labelled_dir(state_dir).glob("*.json")} if labelled_dir(state_dir).is_dir() else set()
    quarantine = lake_quarantine(state_dir, table)
    held, released = quarantine.held_ids(), quarantine.released_ids()
    manifests: list[Manifest] = []
    for m in load_manifests(state_dir, table):
        if only is not None and m.segment_id not in only and m.segment_id not in released:
            continue
        if m.segment_id in done:
            report.skipped_already_labelled += 1
            continue
        if m.segment_id in held:
            report.skipped_quarantined += 1
            continue
        manifests.append(m)
    if not manifests:
        return report, []
    # In the order they were written (ids sort by the second only): of two segments that clash, the later one
    # is set aside.
    manifests.sort(key=lambda m: (m.created_at_s, m.segment_id))
    parts = {m.segment_id: read_segment(m.parquet_path) for m in manifests}
    manifests, labelled, refused = isolate_failures(
        manifests, lambda ms: _label_together([parts[m.segment_id] for m in ms], cfg)
    )
    for m, err in refused:
        report.quarantined.append(quarantine_segment(state_dir, m, "label", err).brief())
    if labelled is None:
        return report, []
    truth = read_ground_truth(state_dir)
    quality = audit_labels(labelled, truth) if truth else None
    report.segments = len(manifests)
    report.frames = len(labelled["vehicle_id"])
    report.labelled_valid = int(labelled["label_valid"].sum())
    report.quality = quality.as_dict() if quality else {"note": "no ground-truth audit table in the lake"}
    report.conditions = data_conditions(labelled, labelled["label_valid"])
    events = []
    for i, m in enumerate(manifests):
        rows = labelled["_segment"] == i
        part = {k: v[rows] for k, v in labelled.items() if k != "_segment"}
        q = audit_labels(part, truth).as_dict() if truth else {}
        ds = write_labelled(
            state_dir,
            m.segment_id,
            part,
            source_sha256=m.content_sha256,
            conditions=data_conditions(part, part["label_valid"]),
            quality=q,
        )
        report.datasets.append(
            {"dataset": ds.dataset_id, "rows": ds.rows, "valid": ds.valid_rows, "sha256": ds.content_sha256}
        )
        events.append(
            LabelsReady(
                dataset_id=ds.dataset_id,
                labels_uri=Path(ds.path).resolve().as_uri(),
                n_labelled=ds.valid_rows,
                source="label",
            )
        )
    quarantine.clear_released(m.segment_id for m in manifests)
    return report, events


def _label_together(parts: Sequence[Mapping[str, np.ndarray]], cfg: LabelConfig | None) -> dict[str, np.ndarray]:
    """Segments' columns labelled together (a vehicle's frames in one lend the others their horizon), with
    ``_segment`` = the index of the part each row came from."""
    seg_of = np.concatenate([np.full(len(p["vehicle_id"]), i, dtype=np.int32) for i, p in enumerate(parts)])
    drop = ("_kafka_partition", "_kafka_offset")
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k not in drop}
    cols["_segment"] = seg_of
    return label_columns(cols, cfg)


def run_label(
    settings: Settings,
    cfg: LabelConfig | None = None,
    *,
    group_id: str = "fleetloop-label",
    idle_timeout_s: float | None = 2.0,
    stop: Any = None,
) -> EventStageReport:
    """Label the segments announced by ``dataset.sealed`` as a consumer-group member; emit ``labels.ready``."""

    def handle(events: Sequence[Any]) -> list[Any]:
        ids = [e.dataset_id for e in events if isinstance(e, DatasetSealed)]
        if not ids:
            return []
        _, out = label_pending(settings.state_dir, cfg, only=ids)
        return out

    return run_event_stage(
        settings,
        "label",
        handle,
        wants=("dataset.sealed",),
        group_id=group_id,
        batched=True,  # segments labelled together see each other's later frames; label_pending is idempotent
        idle_timeout_s=idle_timeout_s,
        stop=stop,
    )
