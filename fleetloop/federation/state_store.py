"""A federation's state between calls, so that a later ``fleetloop fl round`` continues the same federation.

What persists, in ``<state_dir>/federation/<model>/state.npz`` (one file, replaced atomically after every round,
so Ctrl-C leaves the last finished round): the round counter, the global weights, the strategy's own state
(FedAdam's first and second moments; an adaptive DP wrapper's clipping norm), the privacy releases so far, the
vehicles that took part, and the model the federation started from (version, weights, hand-over calibration). A
saved state made with another strategy is refused (its moments would mean nothing to the new one) unless the
caller restarts.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetloop.platform.atomic import write_bytes_atomic
from fleetloop.platform.errors import DataError

__all__ = [
    "FederationState",
    "capture_strategy_state",
    "load_state",
    "restore_strategy_state",
    "save_state",
    "state_path",
]

_FORMAT = 1
_MOMENTS = ("m_t", "v_t")


def state_path(state_dir: Path, model_name: str) -> Path:
    """``<state_dir>/federation/<model_name>/state.npz``."""
    return Path(state_dir) / "federation" / model_name / "state.npz"


@dataclass
class FederationState:
    """Where a federation stands after its last finished round."""

    strategy: str
    server_round: int
    arrays: dict[str, np.ndarray]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """``PolicyConfig.to_dict()`` of the model the weights belong to."""
    parent_version: str | None = None
    participants: list[int] = field(default_factory=list)
    privacy_releases: int = 0
    strategy_state: dict[str, Any] = field(default_factory=dict)
    """``capture_strategy_state``'s output: moment dicts of arrays and scalar attributes."""
    parent_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """The weights the federation started from: the candidate's calibration is measured against them."""
    parent_calibration: dict[str, float] = field(default_factory=dict)
    """The parent's recorded hand-over calibration (``edge_agent.calibration``); empty when it had none."""


def capture_strategy_state(strategy: Any) -> dict[str, Any]:
    """The state a strategy carries from round to round: FedOpt's moments, a DP wrapper's clipping norm."""
    out: dict[str, Any] = {}
    inner = getattr(strategy, "strategy", strategy)
    for name in _MOMENTS:
        moments = getattr(inner, name, None)
        if moments:
            out[name] = {k: np.asarray(v) for k, v in moments.items()}
    if inner is not strategy and hasattr(strategy, "clipping_norm"):
        out["clipping_norm"] = float(strategy.clipping_norm)
    return out


def restore_strategy_state(strategy: Any, saved: dict[str, Any]) -> None:
    """Put ``capture_strategy_state``'s output back into a freshly built strategy of the same kind."""
    inner = getattr(strategy, "strategy", strategy)
    for name in _MOMENTS:
        if name in saved:
            setattr(inner, name, {k: np.array(v) for k, v in saved[name].items()})
    if "clipping_norm" in saved and inner is not strategy:
        strategy.clipping_norm = float(saved["clipping_norm"])


def save_state(path: Path, state: FederationState) -> Path:
    """Write ``state`` to ``path`` atomically (one ``.npz``: arrays plus a JSON header)."""
    arrays: dict[str, np.ndarray] = {f"w/{k}": v for k, v in state.arrays.items()}
    arrays.update({f"p/{k}": v for k, v in state.parent_arrays.items()})
    scalars: dict[str, Any] = {}
    for key, value in state.strategy_state.items():
        if isinstance(value, dict):
            arrays.update({f"s/{key}/{k}": v for k, v in value.items()})
        else:
            scalars[key] = value
    header = {
        "format": _FORMAT,
        "strategy": state.strategy,
        "server_round": state.server_round,
        "parent_version": state.parent_version,
        "hyperparameters": state.hyperparameters,
        "participants": sorted(set(state.participants)),
        "privacy_releases": state.privacy_releases,
        "strategy_scalars": scalars,
        "parent_calibration": state.parent_calibration,
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, buf.getvalue())


def load_state(path: Path) -> FederationState | None:
    """The saved state at ``path``, or None when there is none; ``DataError`` when it is unreadable."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
        header = json.loads(files.pop("header").tobytes())
        if header.get("format") != _FORMAT:
            raise ValueError(f"format {header.get('format')}, expected {_FORMAT}")
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"federation state {path} is unreadable ({e}); delete it or pass --restart") from e
    weights = {k[2:]: v for k, v in files.items() if k.startswith("w/")}
    parent = {k[2:]: v for k, v in files.items() if k.startswith("p/")}
    strategy_state: dict[str, Any] = dict(header["strategy_scalars"])
    for k, v in files.items():
        if k.startswith("s/"):
            _, group, name = k.split("/", 2)
            strategy_state.setdefault(group, {})[name] = v
    return FederationState(
        strategy=header["strategy"],
        server_round=int(header["server_round"]),
        arrays=weights,
        hyperparameters=dict(header["hyperparameters"]),
        parent_version=header["parent_version"],
        participants=list(header["participants"]),
        privacy_releases=int(header["privacy_releases"]),
        strategy_state=strategy_state,
        parent_arrays=parent,
        parent_calibration={k: float(v) for k, v in header.get("parent_calibration", {}).items()},
    )
