"""Labelled datasets on disk, and the features a model trains on, built from telemetry columns.

A labelled dataset is one Parquet file per sealed lake segment, ``<state_dir>/datasets/labelled/<id>.parquet``,
holding the segment's telemetry columns (per-frame arrays as fixed-size binary with dtype / shape metadata,
the lake's convention, so :func:`fleetloop.pipelines.lake.read_segment` reads it) plus the label columns
``LABEL_COLUMNS``, and a JSON sidecar ``<id>.json`` (rows, valid rows, content hash, label quality) written after
the Parquet file is durable: the sidecar is the commit point, a Parquet file without one is ignored.

:func:`policy_inputs_from_telemetry` turns telemetry columns into ``PolicyInputs`` with the vehicle's own
feature function (``features_from_observation``), so a model trains on exactly what it will see on board.
:func:`read_ground_truth` reads the ground-truth audit table, for the label stage's quality audit only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetloop.pipelines.lake import read_segment, read_table
from fleetloop.pipelines.lake.quarantine import QUARANTINE_DIRNAME, QuarantineRecord, QuarantineStore
from fleetloop.platform.atomic import write_bytes_atomic
from fleetloop.platform.errors import DataError

__all__ = [
    "GROUND_TRUTH_TABLE",
    "LABEL_COLUMNS",
    "LabelledDataset",
    "labelled_by_id",
    "labelled_dir",
    "labelled_quarantine",
    "list_labelled",
    "policy_inputs_from_telemetry",
    "quarantine_labelled",
    "read_ground_truth",
    "read_labelled",
    "write_labelled",
]

LABEL_COLUMNS = (
    "label_target_accel_mps2",
    "label_hazard",
    "label_needed_decel_mps2",
    "label_confidence",
    "label_valid",
)
_SIDECAR_VERSION = 1
GROUND_TRUTH_TABLE = "groundtruth"
"""The lake table of the ground-truth audit topic (collected by the groundtruth stage, read by label only)."""
LABELLED_TABLE = "labelled"  # the ``table`` of a labelled dataset's quarantine record


def labelled_dir(state_dir: Path) -> Path:
    """``<state_dir>/datasets/labelled``."""
    return Path(state_dir) / "datasets" / "labelled"


def labelled_quarantine(state_dir: Path) -> QuarantineStore:
    """Labelled datasets a stage set aside: ``<state_dir>/datasets/labelled/_quarantine``."""
    return QuarantineStore(labelled_dir(state_dir) / QUARANTINE_DIRNAME, LABELLED_TABLE)


def quarantine_labelled(state_dir: Path, ds: LabelledDataset, stage: str, error: BaseException) -> QuarantineRecord:
    """Set a labelled dataset aside; its sidecar (the commit point) and Parquet file stay until dropped."""
    sidecar = labelled_dir(state_dir) / f"{ds.dataset_id}.json"
    return labelled_quarantine(state_dir).quarantine(
        ds.dataset_id, stage=stage, error=error, frames=ds.rows, files=(sidecar, ds.path)
    )


@dataclass(frozen=True)
class LabelledDataset:
    """A labelled dataset's sidecar: where it is, what it holds, its content hash and label quality."""

    dataset_id: str
    path: str
    rows: int
    valid_rows: int
    content_sha256: str
    source_sha256: str = ""
    """The lake segment's hash it was labelled from."""
    conditions: dict[str, int] = field(default_factory=dict)
    """Valid frames per data condition, from the vehicles' own estimates."""
    quality: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "sidecar_version": _SIDECAR_VERSION}, sort_keys=True).encode()

    @staticmethod
    def from_file(path: Path) -> LabelledDataset:
        try:
            d = json.loads(path.read_bytes())
            if d.pop("sidecar_version") != _SIDECAR_VERSION:
                raise ValueError("unsupported sidecar version")
            return LabelledDataset(**d)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise DataError(f"labelled dataset sidecar {path} is unreadable ({e}); delete it to relabel") from e


def write_labelled(
    state_dir: Path,
    dataset_id: str,
    columns: Mapping[str, np.ndarray],
    *,
    source_sha256: str = "",
    conditions: Mapping[str, int] | None = None,
    quality: Mapping[str, Any] | None = None,
) -> LabelledDataset:
    """Write one labelled dataset (Parquet, then the sidecar); returns the sidecar."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in ("vehicle_id", *LABEL_COLUMNS) if c not in columns]
    if missing:
        raise DataError(f"labelled dataset {dataset_id} lacks columns {missing}")
    n = len(columns["vehicle_id"])
    fields, arrays = [], []
    for name in sorted(columns):
        arr = np.asarray(columns[name])
        if len(arr) != n:
            raise DataError(f"labelled dataset {dataset_id}: column {name} has {len(arr)} rows, not {n}")
        if name == "vehicle_id":
            arrays.append(pa.array([str(v) for v in arr], pa.string()))
            fields.append(pa.field(name, pa.string(), nullable=False))
        elif arr.ndim > 1:
            a = np.ascontiguousarray(arr)
            width = a.dtype.itemsize * int(np.prod(a.shape[1:]))
            arrays.append(
                pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(a.view(np.uint8))])
            )
            meta = {b"dtype": a.dtype.str.encode(), b"shape": json.dumps(list(a.shape[1:])).encode()}
            fields.append(pa.field(name, pa.binary(width), nullable=False, metadata=meta))
        else:
            arrays.append(pa.array(arr))
            fields.append(pa.field(name, arrays[-1].type, nullable=False))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    folder = labelled_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset_id}.parquet"
    write_bytes_atomic(path, data)
    valid = np.asarray(columns["label_valid"]).astype(bool)
    side = LabelledDataset(
        dataset_id=dataset_id,
        path=str(path),
        rows=n,
        valid_rows=int(valid.sum()),
        content_sha256="sha256:" + hashlib.sha256(data).hexdigest(),
        source_sha256=source_sha256,
        conditions=dict(conditions or {}),
        quality=dict(quality or {}),
    )
    write_bytes_atomic(folder / f"{dataset_id}.json", side.to_json())
    return side


def list_labelled(state_dir: Path) -> list[LabelledDataset]:
    """Every committed labelled dataset (those with a sidecar), by id."""
    folder = labelled_dir(state_dir)
    if not folder.is_dir():
        return []
    return [LabelledDataset.from_file(p) for p in sorted(folder.glob("*.json"))]


def labelled_by_id(state_dir: Path, dataset_ids: Sequence[str]) -> list[LabelledDataset]:
    """The labelled datasets with these ids (``DataError`` names the missing ones)."""
    folder = labelled_dir(state_dir)
    out, missing = [], []
    for d in dataset_ids:
        p = folder / f"{d}.json"
        if p.exists():
            out.append(LabelledDataset.from_file(p))
        else:
            missing.append(d)
    if missing:
        raise DataError(f"no labelled dataset for {missing}; run the label stage first")
    return out


def read_labelled(ds: LabelledDataset, verify: bool = True) -> dict[str, np.ndarray]:
    """The dataset's columns; ``verify`` checks the file against its content hash first."""
    path = Path(ds.path)
    if verify:
        try:
            digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise DataError(f"labelled dataset {ds.dataset_id} is missing ({e}); relabel it") from e
        if digest != ds.content_sha256:
            raise DataError(f"labelled dataset {ds.dataset_id} does not match its hash {ds.content_sha256}; relabel it")
    return read_segment(path)


def read_ground_truth(state_dir: Path, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """The whole ground-truth table as numpy columns (with ``vehicle_id``), for the label-quality audit; join
    it to telemetry on ``(vehicle_id, seq)``."""
    return read_table(state_dir, GROUND_TRUTH_TABLE, columns)


def policy_inputs_from_telemetry(cols: Mapping[str, np.ndarray]) -> Any:
    """``PolicyInputs`` of telemetry frames: ``fleetloop.edge_agent.buffer.policy_inputs_from_frames``, the function
    the vehicle's federated client uses on its buffer."""
    # Imported here: it loads torch (~6 s measured), which the lake commands reading datasets do not need.
    from fleetloop.edge_agent.buffer import policy_inputs_from_frames
    from fleetloop.platform.bus.schemas import radar_valid

    if "radar_valid" not in cols:
        cols = {**cols, "radar_valid": radar_valid(np.asarray(cols["radar_valid_bits"]))}
    return policy_inputs_from_frames(cols)
