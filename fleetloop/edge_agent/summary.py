"""What a fleet run amounts to: exposure, safety events per 1,000 km, fallback activations by reason, latency,
progress against the expert, per model version and driving condition. Pure aggregation, mergeable across shards.

Two layers:

- ``SummaryAccumulator`` (torch, on the shard's device): every tick the runner adds one row of numbers per vehicle
  (``COLUMNS``), grouped by (model version index, condition code), with one ``index_add_``; latencies go into
  fixed log-spaced histograms (``LATENCY_EDGES_S``), so percentiles of merged shards are exact to the bin (2.3 %).
- ``FleetSummary`` (plain Python / numpy): the accumulated sums, counters (uploads, telemetry, inference status)
  and histograms; ``merge`` adds shards, ``to_dict`` derives the rates the CLI prints and ``--json`` emits.

The condition of a vehicle-tick is read from the world's truth at the ego (evaluation only, never sent to a
vehicle): ``fog`` when visibility is below ``FOG_VISIBILITY_M``, else ``night`` when light is below
``NIGHT_LIGHT``, else ``rain`` when it rains, else ``clear``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fleetloop.edge_agent.arbiter import REASON_NAMES

__all__ = [
    "COLUMNS",
    "CONDITIONS",
    "LATENCY_EDGES_S",
    "NO_MODEL_LABEL",
    "FleetSummary",
    "SummaryAccumulator",
    "condition_codes",
    "merge_counts",
]

CONDITIONS = ("clear", "fog", "rain", "night")
FOG_VISIBILITY_M = 200.0  # [m] below this the ego is in fog
NIGHT_LIGHT = 0.5  # [-] ambient light below this is night
RAIN_MIN = 0.05  # [-] rain intensity above this is rain
NO_MODEL_LABEL = "none"  # version label of vehicles that run no model (fallback only)
MAX_VERSIONS = 16  # model versions one run can hold at once (the OTA seam switches among few)
REASONS = REASON_NAMES[1:]
EVENT_COLUMNS = ("collisions", "near_misses", "hard_brakes", "phantom_brakes", "harsh_jerks")
COLUMNS = (
    "vehicle_ticks",
    "distance_m",
    "expert_distance_m",
    *EVENT_COLUMNS,
    "impact_speed_sum_mps",
    "model_ticks",
    "fallback_ticks",
    "deadline_misses",
    *(f"activations.{r}" for r in REASONS),
)
COL = {name: i for i, name in enumerate(COLUMNS)}
# Latency histogram: 1 µs .. 10 s, 300 log-spaced bins (each 5.5 % wide), plus under/overflow.
LATENCY_EDGES_S = np.logspace(-6, 1, 301)
_EDGES_T = torch.tensor(LATENCY_EDGES_S, dtype=torch.float64)


def condition_codes(visibility_m: torch.Tensor, light: torch.Tensor, rain: torch.Tensor) -> torch.Tensor:
    """[B] int64 index into ``CONDITIONS`` from the true conditions at each ego (evaluation only)."""
    code = torch.zeros(visibility_m.shape, dtype=torch.int64, device=visibility_m.device)
    code = torch.where(rain > RAIN_MIN, torch.full_like(code, 2), code)
    code = torch.where(light < NIGHT_LIGHT, torch.full_like(code, 3), code)
    return torch.where(visibility_m < FOG_VISIBILITY_M, torch.full_like(code, 1), code)


def _histogram(values_s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Counts [len(edges) + 1] of ``values_s`` in ``LATENCY_EDGES_S`` (bin 0: below the first edge); with
    ``mask``, of the values where it is set (no boolean indexing: no device sync)."""
    v = values_s.detach().to(torch.float64).reshape(-1)
    idx = torch.bucketize(v, _edges(v.device))
    n = len(LATENCY_EDGES_S) + 1
    if mask is None:
        return torch.bincount(idx, minlength=n)
    idx = torch.where(mask.reshape(-1), idx, n)  # masked-out values go to a bin past the end, dropped
    return torch.bincount(idx, minlength=n + 1)[:n]


def _edges(device: torch.device) -> torch.Tensor:
    cache: dict[torch.device, torch.Tensor] = _edges.__dict__.setdefault("cache", {})
    if device not in cache:
        cache[device] = _EDGES_T.to(device)
    return cache[device]


class SummaryAccumulator:
    """Per-group sums on the shard's device; ``add`` once per tick, ``result`` at the end (or any time)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.sums = torch.zeros(MAX_VERSIONS * len(CONDITIONS), len(COLUMNS), dtype=torch.float64, device=self.device)
        self.sim_latency = torch.zeros(len(LATENCY_EDGES_S) + 1, dtype=torch.int64, device=self.device)
        self.wall_latency = np.zeros(len(LATENCY_EDGES_S) + 1, dtype=np.int64)

    def add(
        self, version_index: torch.Tensor, condition: torch.Tensor, rows: torch.Tensor, *, checked: bool = False
    ) -> None:
        """Add ``rows`` [B, len(COLUMNS)] of the vehicles with ``version_index`` [B] and ``condition`` [B].

        ``checked``: the caller guarantees ``version_index < MAX_VERSIONS`` (skips a device sync per call).
        """
        if rows.shape[-1] != len(COLUMNS):
            raise ValueError(f"rows must have {len(COLUMNS)} columns ({', '.join(COLUMNS)}), got {rows.shape[-1]}")
        if not checked and bool((version_index >= MAX_VERSIONS).any()):
            raise ValueError(f"at most {MAX_VERSIONS} model versions per run")
        group = version_index.to(torch.int64) * len(CONDITIONS) + condition.to(torch.int64)
        self.sums.index_add_(0, group.to(self.device), rows.to(self.device, torch.float64))

    def add_sim_latency(self, latency_s: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Simulated inference latencies [s] of the vehicles that ran a model this tick (those where ``mask`` [B]
        is set, when given)."""
        if latency_s.numel():
            self.sim_latency += _histogram(latency_s, mask).to(self.device)

    def add_wall_latency(self, seconds: float) -> None:
        """One measured wall-clock inference call [s]."""
        # the bin torch.bucketize (right=False) gives: edges[i - 1] < v <= edges[i]
        v = float(np.float32(seconds))  # as the float32 tensor it used to be
        self.wall_latency[int(np.searchsorted(LATENCY_EDGES_S, v, side="left"))] += 1

    def result(
        self, versions: Sequence[str], vehicles: int, ticks: int, dt_s: float, counts: Mapping[str, Any] | None = None
    ) -> FleetSummary:
        """The sums so far as a ``FleetSummary``; ``versions[i]`` names version index i."""
        sums = self.sums.cpu().numpy().reshape(MAX_VERSIONS, len(CONDITIONS), len(COLUMNS))
        groups: dict[str, dict[str, dict[str, float]]] = {}
        for vi, label in enumerate(versions):
            for ci, cond in enumerate(CONDITIONS):
                row = sums[vi, ci]
                if row[COL["vehicle_ticks"]] > 0:
                    groups.setdefault(label, {})[cond] = {c: float(row[k]) for k, c in enumerate(COLUMNS)}
        return FleetSummary(
            vehicles=vehicles,
            ticks=ticks,
            dt_s=dt_s,
            groups=groups,
            sim_latency_hist=self.sim_latency.cpu().numpy().astype(np.int64),
            wall_latency_hist=self.wall_latency.copy(),
            counts=dict(counts or {}),
        )


def merge_counts(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Sum nested dicts of numbers key by key (keys missing on one side count as 0)."""
    out: dict[str, Any] = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, Mapping) and isinstance(out[k], Mapping):
            out[k] = merge_counts(out[k], v)
        elif isinstance(v, int | float) and isinstance(out[k], int | float):
            out[k] = out[k] + v
        else:
            raise ValueError(f"cannot merge {k!r}: {out[k]!r} and {v!r}")
    return out


def _percentile_s(hist: np.ndarray, q: float) -> float | None:
    """The q-th percentile [s] of a ``LATENCY_EDGES_S`` histogram (geometric bin centre); None when empty."""
    total = int(hist.sum())
    if total == 0:
        return None
    k = int(np.searchsorted(np.cumsum(hist), q / 100.0 * total, side="left"))
    if k == 0:
        return float(LATENCY_EDGES_S[0])
    if k >= len(LATENCY_EDGES_S):
        return float(LATENCY_EDGES_S[-1])
    return float(math.sqrt(LATENCY_EDGES_S[k - 1] * LATENCY_EDGES_S[k]))


def _add_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    out = dict.fromkeys(COLUMNS, 0.0)
    for r in rows:
        for k in COLUMNS:
            out[k] += float(r.get(k, 0.0))
    return out


def _derive(s: Mapping[str, float], dt_s: float) -> dict[str, Any]:
    """Readable metrics from summed columns."""
    km = s["distance_m"] / 1000.0
    per = 1000.0 / km if km > 0 else math.nan
    events = {c: round(s[c]) for c in EVENT_COLUMNS}
    ticks = s["vehicle_ticks"]
    return {
        "vehicle_hours": ticks * dt_s / 3600.0,
        "km": km,
        "events": events,
        "per_1000_km": {c: events[c] * per for c in EVENT_COLUMNS},
        "collisions_plus_near_misses_per_1000_km": (events["collisions"] + events["near_misses"]) * per,
        "mean_impact_speed_kmh": (s["impact_speed_sum_mps"] * 3.6 / events["collisions"])
        if events["collisions"]
        else None,
        "fallback_activations": {r: round(s[f"activations.{r}"]) for r in REASONS},
        "fallback_activations_per_1000_km": sum(s[f"activations.{r}"] for r in REASONS) * per,
        "fallback_share": s["fallback_ticks"] / ticks if ticks else math.nan,
        "deadline_misses": round(s["deadline_misses"]),
        "progress_vs_expert": (s["distance_m"] / s["expert_distance_m"]) if s["expert_distance_m"] > 0 else None,
    }


@dataclass
class FleetSummary:
    """Summed results of a run (or of several shards after ``merge``).

    ``groups[version][condition]`` holds the summed ``COLUMNS``; ``counts`` nested counters (uploads, telemetry
    sent / lost by reason, inference status, buffer overwrites) that merge by addition.
    """

    vehicles: int
    ticks: int
    dt_s: float
    groups: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    sim_latency_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_EDGES_S) + 1, np.int64))
    wall_latency_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_EDGES_S) + 1, np.int64))
    counts: dict[str, Any] = field(default_factory=dict)

    def merge(self, other: FleetSummary) -> FleetSummary:
        """The summary of both runs' vehicles (shards of one run: same ticks; vehicles add up)."""
        if abs(self.dt_s - other.dt_s) > 1e-12:
            raise ValueError(f"cannot merge runs with different ticks ({self.dt_s} s vs {other.dt_s} s)")
        groups: dict[str, dict[str, dict[str, float]]] = {}
        for src in (self.groups, other.groups):
            for v, by_cond in src.items():
                for c, row in by_cond.items():
                    prev = groups.setdefault(v, {}).get(c)
                    groups[v][c] = _add_rows([row] if prev is None else [prev, row])
        return FleetSummary(
            vehicles=self.vehicles + other.vehicles,
            ticks=max(self.ticks, other.ticks),
            dt_s=self.dt_s,
            groups=groups,
            sim_latency_hist=self.sim_latency_hist + other.sim_latency_hist,
            wall_latency_hist=self.wall_latency_hist + other.wall_latency_hist,
            counts=merge_counts(self.counts, other.counts),
        )

    @staticmethod
    def merge_all(parts: Sequence[FleetSummary]) -> FleetSummary:
        """Merge shard summaries (at least one)."""
        if not parts:
            raise ValueError("nothing to merge: no shard summaries")
        out = parts[0]
        for p in parts[1:]:
            out = out.merge(p)
        return out

    def totals(self) -> dict[str, float]:
        """All groups summed."""
        return _add_rows([row for by_cond in self.groups.values() for row in by_cond.values()])

    def to_dict(self) -> dict[str, Any]:
        """Everything a person or a script wants from the run, JSON-ready."""
        total = self.totals()
        by_version = {v: _derive(_add_rows(list(bc.values())), self.dt_s) for v, bc in self.groups.items()}
        by_condition: dict[str, Any] = {}
        for cond in CONDITIONS:
            rows = [bc[cond] for bc in self.groups.values() if cond in bc]
            if rows:
                by_condition[cond] = _derive(_add_rows(rows), self.dt_s)
        by_vc = {f"{v}/{c}": _derive(row, self.dt_s) for v, bc in self.groups.items() for c, row in bc.items()}

        def ms(hist: np.ndarray, q: float) -> float | None:
            p = _percentile_s(hist, q)
            return None if p is None else p * 1000.0

        return {
            "vehicles": self.vehicles,
            "ticks": self.ticks,
            "simulated_s": self.ticks * self.dt_s,
            "vehicle_steps": int(total["vehicle_ticks"]),
            **_derive(total, self.dt_s),
            "latency": {
                "simulated_p50_ms": ms(self.sim_latency_hist, 50),
                "simulated_p99_ms": ms(self.sim_latency_hist, 99),
                "simulated_samples": int(self.sim_latency_hist.sum()),
                "wall_p50_ms": ms(self.wall_latency_hist, 50),
                "wall_p99_ms": ms(self.wall_latency_hist, 99),
                "wall_calls": int(self.wall_latency_hist.sum()),
                "wall_note": "wall-clock seconds per batched inference call (one per shard per tick)",
            },
            "by_version": by_version,
            "by_condition": by_condition,
            "by_version_condition": by_vc,
            "counts": self.counts,
        }

    def to_state(self) -> dict[str, Any]:
        """Lossless plain-data form (to send between processes)."""
        return {
            "vehicles": self.vehicles,
            "ticks": self.ticks,
            "dt_s": self.dt_s,
            "groups": self.groups,
            "sim_latency_hist": self.sim_latency_hist.tolist(),
            "wall_latency_hist": self.wall_latency_hist.tolist(),
            "counts": self.counts,
        }

    @staticmethod
    def from_state(d: Mapping[str, Any]) -> FleetSummary:
        """Inverse of ``to_state``."""
        return FleetSummary(
            vehicles=int(d["vehicles"]),
            ticks=int(d["ticks"]),
            dt_s=float(d["dt_s"]),
            groups={v: {c: dict(r) for c, r in bc.items()} for v, bc in d["groups"].items()},
            sim_latency_hist=np.asarray(d["sim_latency_hist"], dtype=np.int64),
            wall_latency_hist=np.asarray(d["wall_latency_hist"], dtype=np.int64),
            counts=dict(d["counts"]),
        )
