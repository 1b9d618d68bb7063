"""The replay set: a sample of the frames the fleet's first model learnt from, kept in the lake for every fine-tune.

A loop turn's uploads are fog hazards almost to a frame; a fine-tune on them alone teaches the model to brake on
weaker evidence everywhere, and nothing in the uploads holds clear driving where it was (ADR 0199). Replaying a
sample of the parent's own training frames beside the uploads, with a fixed share of the label loss
(``TrainConfig.replay_share``), is the standard remedy for such forgetting (rehearsal).

``model bootstrap`` writes the set from the expert frames it trained the initial model on::

    <state_dir>/datasets/replay/replay.safetensors   the PolicyInputs fields + accel_mps2, hazard [N]; the header's
                                                     metadata says where the frames came from and their hash

A forced bootstrap replaces it with the new genesis model's frames. The train stage reads it (hash checked) and
says when there is none or it cannot be used; it never stops a turn: the candidate then trains on the uploads
alone, and the outcome says why.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetloop.platform.atomic import write_bytes_atomic
from fleetloop.platform.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["REPLAY_FRAMES", "ReplaySet", "read_replay_set", "replay_path", "sample_frames", "write_replay_set"]

REPLAY_FRAMES = 20_000
"""Frames kept (about 18 MB): a loop turn uploads 10-25 thousand labelled frames, so the replay is of its size."""
_META_KEY = "fleetloop.replay"
_KEYS = ("camera", "lidar", "radar", "radar_mask", "ego", "accel_mps2", "hazard")


@dataclass(frozen=True)
class ReplaySet:
    """What a replay set holds and where it came from."""

    frames: int
    hazard_rate: float
    sha256: str
    """``hash_tensors`` of the frames (checked on every read)."""
    source: dict[str, str]
    """Where the frames came from (the bootstrap's weather, scenario, seed, model role)."""

    def brief(self) -> dict[str, Any]:
        return asdict(self)


def replay_path(state_dir: Path) -> Path:
    """``<state_dir>/datasets/replay/replay.safetensors``."""
    return Path(state_dir) / "datasets" / "replay" / "replay.safetensors"


def sample_frames(data: dict[str, torch.Tensor], frames: int, seed: int) -> dict[str, torch.Tensor]:
    """At most ``frames`` of ``data``'s frames, drawn without replacement (fixed by ``seed``), in their order."""
    import torch

    n = int(data["accel_mps2"].shape[0])
    if n <= frames:
        return dict(data)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:frames].sort().values
    return {k: v[pick] for k, v in data.items()}


def write_replay_set(state_dir: Path, data: dict[str, torch.Tensor], source: dict[str, str]) -> ReplaySet:
    """Write ``data`` (PolicyInputs fields + accel_mps2, hazard) as the lake's replay set, replacing any."""
    from safetensors.torch import save

    from fleetloop.edge_agent.model_artifact import hash_tensors

    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise ValueError(f"a replay set needs {', '.join(_KEYS)}; missing {', '.join(missing)}")
    tensors = {k: data[k].detach().cpu().contiguous() for k in _KEYS}
    frames = int(tensors["accel_mps2"].shape[0])
    info = ReplaySet(
        frames=frames,
        hazard_rate=float(tensors["hazard"].float().mean()) if frames else 0.0,
        sha256=hash_tensors(tensors),
        source={str(k): str(v) for k, v in source.items()},
    )
    path = replay_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, save(tensors, metadata={_META_KEY: json.dumps(info.brief())}))
    return info


def read_replay_set(state_dir: Path) -> tuple[dict[str, torch.Tensor], ReplaySet] | None:
    """The lake's replay set and its description, or None when there is none.

    Raises ``DataError`` (saying what to do) when the file is unreadable or its frames do not match their hash."""
    from safetensors import SafetensorError, safe_open

    from fleetloop.edge_agent.model_artifact import hash_tensors

    path = replay_path(state_dir)
    if not path.exists():
        return None
    fix = "delete it (fine-tunes then train on the uploads alone) or write it anew: `fleetloop model bootstrap --force`"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[_META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
        info = ReplaySet(
            frames=int(meta["frames"]),
            hazard_rate=float(meta["hazard_rate"]),
            sha256=str(meta["sha256"]),
            source=dict(meta["source"]),
        )
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"the replay set {path} is unreadable ({e}); {fix}") from e
    missing = [k for k in _KEYS if k not in tensors]
    if missing:
        raise DataError(f"the replay set {path} lacks {', '.join(missing)}; {fix}")
    actual = hash_tensors(tensors)
    if actual != info.sha256:
        raise DataError(f"the replay set {path} does not match its hash ({actual} vs {info.sha256}); {fix}")
    return tensors, info
