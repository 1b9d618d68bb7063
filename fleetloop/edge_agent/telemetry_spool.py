"""The telemetry spool: uploads the broker did not take, kept on disk for the next run to deliver (ADR 0082).

One file per spill, ``<state_dir>/telemetry-outbox/<time ns>-<pid>-<random>-<frames>.npz``, holding the frames'
vehicle ids, every telemetry column (``tel/<name>``), the ground-truth columns when there are any (``gt/<name>``)
and the fleet tag their vehicle keys carry. Written atomically (temp file + rename), so a reader never sees half a
file; the frame count in the name lets ``frames_waiting`` answer without reading the files.

numpy and the standard library only: the runner's shards write here on the vehicle side.
"""

from __future__ import annotations

import io
import os
import secrets
import time
from pathlib import Path

import numpy as np

from fleetloop.edge_agent.telemetry import UploadedFrames
from fleetloop.platform.atomic import write_bytes_atomic

__all__ = ["SPOOL_DIRNAME", "TelemetrySpool"]

SPOOL_DIRNAME = "telemetry-outbox"


class TelemetrySpool:
    """Spooled upload files in ``directory`` (created on the first write)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @classmethod
    def of_state_dir(cls, state_dir: str | Path) -> TelemetrySpool:
        """The spool of a state directory: ``<state_dir>/telemetry-outbox``."""
        return cls(Path(state_dir) / SPOOL_DIRNAME)

    def write(self, frames: UploadedFrames, fleet_tag: str) -> Path:
        """Persist ``frames`` (keys ``vehicle_key(id, fleet_tag)``); returns the file."""
        arrays = {"vehicle_ids": frames.vehicle_ids, "fleet_tag": np.array(fleet_tag)}
        arrays.update({f"tel/{k}": v for k, v in frames.telemetry.items()})
        if frames.ground_truth is not None:
            arrays.update({f"gt/{k}": v for k, v in frames.ground_truth.items()})
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **arrays)
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}-{frames.n_frames}.npz"
        return write_bytes_atomic(self.directory / name, buf.getbuffer())

    def files(self) -> list[Path]:
        """The spooled files, oldest first (temp files of a writer in progress excluded)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("*.npz") if not p.name.startswith("."))

    def frames_waiting(self) -> int:
        """Frames in the spool, from the file names."""
        return sum(_frames_in_name(p) for p in self.files())

    @staticmethod
    def read(path: Path) -> tuple[str, UploadedFrames]:
        """(fleet tag, frames) of one spooled file; raises ``ValueError`` / ``OSError`` when it is damaged."""
        with np.load(path, allow_pickle=False) as z:
            tel = {k[4:]: z[k] for k in z.files if k.startswith("tel/")}
            gt = {k[3:]: z[k] for k in z.files if k.startswith("gt/")}
            ids, tag = z["vehicle_ids"], str(z["fleet_tag"])
        if not tel or any(v.shape[0] != ids.shape[0] for v in (*tel.values(), *gt.values())):
            raise ValueError(f"{path.name}: columns do not match the {ids.shape[0]} vehicle ids")
        return tag, UploadedFrames(ids, tel, gt or None)


def _frames_in_name(path: Path) -> int:
    try:
        return int(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0
