"""Batched policy inference for the whole fleet, with latency modelled in simulated time.

Two layers:

- ``InferenceEngine.infer(inputs, slots)``: pure batched compute. Vehicles are grouped by the model slot they run
  (one slot per loaded model version); each group runs in chunks of at most ``max_batch`` vehicles, with the radar
  dimension trimmed to the chunk's last valid target (padding / bucketing to 1, 2, 4 or 8 slots so few shapes
  occur); outputs are scattered back to vehicle order. On CUDA, host inputs go through pinned staging buffers with
  non-blocking copies. A model that raises is caught per version: its vehicles get ``STATUS_MODEL_FAILURE`` and
  the error is kept as an ``InferenceFailure`` in ``PolicyOutput.failures`` (``raise_failures=True`` raises it
  instead). NaN / Inf outputs get ``STATUS_INVALID_OUTPUT``. Nothing invalid is ever marked ``valid``.
- ``InferenceEngine.tick(inputs, slots, tick, ...)``: the lockstep simulation's call. Each vehicle's on-board
  inference takes a simulated latency from ``LatencyModel`` (base + per radar target + counter-based jitter +
  injected spikes); it does not depend on how the simulator batches vehicles, so results do not depend on batch
  size or shard count. The command applied at tick t comes from the observation of tick ``t - age`` with
  ``age = floor(latency / tick_s)`` (pipelined inference: a late model acts on a stale observation); a latency
  above ``deadline_s`` (or a stale tick not yet seen) is a deadline miss, ``STATUS_DEADLINE_MISSED``, which the
  arbiter hands to the fallback. The engine keeps the last few ticks of inputs for this (references, no copy).

Dynamic batching (``max_batch``, ``max_wait_s``) is about wall-clock throughput: ``DynamicBatcher`` merges
requests that arrive apart (shards or vehicles submitting asynchronously) until a batch is full or its oldest
request has waited ``max_wait_s``. In the lockstep simulation every vehicle submits at once each tick, so a batch is
flushed as soon as the tick's requests are in and ``max_wait_s`` never delays it; only ``max_batch`` splits it.
Wall-clock latency per call is measured and reported beside the simulated one (``wall_latency_stats``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fleetloop.edge_agent.features import RADAR_SLOTS, PolicyInputs
from fleetloop.edge_agent.policy import nonfinite_parameters
from fleetloop.sim import rng
from fleetloop.sim.compile import compile_graph

__all__ = [
    "NO_MODEL",
    "STATUS_DEADLINE_MISSED",
    "STATUS_INVALID_OUTPUT",
    "STATUS_MODEL_FAILURE",
    "STATUS_NAMES",
    "STATUS_NO_MODEL",
    "STATUS_OK",
    "DynamicBatcher",
    "EngineConfig",
    "InferenceEngine",
    "InferenceFailure",
    "LatencyModel",
    "PolicyOutput",
    "radar_bucket",
]

NO_MODEL = -1  # slot value of a vehicle that runs no model
STATUS_OK = 0
STATUS_INVALID_OUTPUT = 1  # NaN / Inf in the output
STATUS_MODEL_FAILURE = 2  # the model raised
STATUS_NO_MODEL = 3  # no model loaded for the vehicle's slot
STATUS_DEADLINE_MISSED = 4  # simulated latency above the deadline
STATUS_NAMES = ("ok", "invalid_output", "model_failure", "no_model", "deadline_missed")
STREAM_LATENCY = 101  # counter-based randomness stream of the latency jitter (sim streams are < 100)
RADAR_BUCKETS = (1, 2, 4, RADAR_SLOTS)


class InferenceFailure(RuntimeError):
    """A model raised during inference; ``version`` names it, ``__cause__`` is the original error.

    The arbiter maps it (``STATUS_MODEL_FAILURE``) to ``invalid_output``.
    """

    def __init__(self, version: str, cause: BaseException) -> None:
        super().__init__(f"model {version!r} failed during inference: {type(cause).__name__}: {cause}")
        self.version = version


@dataclass(frozen=True)
class PolicyOutput:
    """One tick's policy outputs in vehicle order ([B] tensors on the inputs' device).

    ``accel_mps2``, ``hazard_prob`` and ``uncertainty_mps2`` are 0 where ``valid`` is False; ``status`` says why
    (``STATUS_*``). ``obs_age_ticks`` is how many ticks old the observation the output acted on is;
    ``latency_s`` the simulated latency (0 from ``infer``).
    """

    accel_mps2: torch.Tensor
    hazard_prob: torch.Tensor
    uncertainty_mps2: torch.Tensor
    valid: torch.Tensor  # bool
    status: torch.Tensor  # int8, STATUS_*
    latency_s: torch.Tensor
    obs_age_ticks: torch.Tensor  # int64
    failures: dict[str, InferenceFailure] = field(default_factory=dict)

    @property
    def deadline_missed(self) -> torch.Tensor:
        """[B] bool: the output came too late and must not be used."""
        return self.status == STATUS_DEADLINE_MISSED

    def status_counts(self) -> dict[str, int]:
        """Vehicles per status name."""
        counts = torch.bincount(self.status.to(torch.int64).cpu(), minlength=len(STATUS_NAMES)).tolist()
        return dict(zip(STATUS_NAMES, counts, strict=True))


@dataclass(frozen=True)
class LatencyModel:
    """Simulated on-board inference latency per vehicle per tick [s].

    ``base_s + per_target_s * valid radar targets + jitter_s * u + spike`` with u uniform in [0, 1) drawn from
    (seed, vehicle id, tick) so it never depends on batching; ``spike_s`` [B] comes from fault injection.
    """

    base_s: float = 0.012
    """Fixed cost of one on-board forward pass [s]."""
    per_target_s: float = 0.0005
    """Extra cost per valid radar target [s]."""
    jitter_s: float = 0.008
    """Uniform jitter amplitude [s]."""

    def __post_init__(self) -> None:
        if min(self.base_s, self.per_target_s, self.jitter_s) < 0:
            raise ValueError(f"latency terms must be >= 0 s, got {self}")

    def latency_s(
        self, inputs: PolicyInputs, vehicle_ids: torch.Tensor, tick: int, seed: int, spike_s: torch.Tensor | None
    ) -> torch.Tensor:
        """[B] float32 simulated latency of each vehicle's inference at ``tick``."""
        targets = inputs.radar_mask.sum(-1).to(torch.float32)
        key = rng.vehicle_key(seed, vehicle_ids.to(inputs.device), tick, STREAM_LATENCY)
        u = rng.uniform(key, (1,)).squeeze(-1)
        lat = self.base_s + self.per_target_s * targets + self.jitter_s * u
        if spike_s is not None:
            lat = lat + spike_s.to(lat.device, torch.float32)
        return lat


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and times inference."""

    max_batch: int = 16384
    """Largest batch one forward call gets; larger groups are split."""
    max_wait_s: float = 0.002
    """Longest a request waits for its batch to fill (asynchronous callers only, see ``DynamicBatcher``) [s]."""
    device: str = "auto"
    """"auto" (CUDA when available), "cpu" or "cuda[:n]"."""
    tick_s: float = 0.1
    """Simulated tick length [s]."""
    deadline_s: float = 0.1
    """An output whose simulated latency exceeds this is a deadline miss [s]."""
    latency: LatencyModel = field(default_factory=LatencyModel)
    """Simulated latency model."""
    wall_window: int = 4096
    """How many recent per-call wall-clock latencies are kept for p50 / p99."""
    compile: bool = False
    """Run each model's forward as a ``torch.compile``d graph with dynamic batch and radar sizes (ADR 0101):
    outputs within rounding of eager; a model's first call compiles (seconds; inductor's disk cache after)."""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_s < 0 or self.tick_s <= 0 or self.deadline_s <= 0:
            raise ValueError("max_wait_s must be >= 0 s, tick_s and deadline_s > 0 s")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device {self.device!r} invalid; use 'auto', 'cpu' or 'cuda[:n]'")

    @property
    def max_age_ticks(self) -> int:
        """Oldest observation (in ticks) an output within the deadline can act on."""
        return math.floor(self.deadline_s / self.tick_s + 1e-9)


def radar_bucket(extent: int) -> int:
    """Radar slots a chunk is padded / trimmed to: the smallest bucket >= its last valid target (min 1)."""
    for b in RADAR_BUCKETS:
        if extent <= b:
            return b
    return RADAR_SLOTS


class InferenceEngine:
    """Holds loaded policies by version and runs them batched over the fleet (see the module docstring)."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        dev = self.config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        self._models: dict[int, tuple[str, nn.Module]] = {}
        self._slot_of: dict[str, int] = {}
        self._history: deque[PolicyInputs] = deque(maxlen=self.config.max_age_ticks + 1)
        self._history_tick: int | None = None
        self._wall_s: deque[float] = deque(maxlen=self.config.wall_window)
        self._staging: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}
        self._tick_inputs: PolicyInputs | None = None  # what the last ``tick``'s outputs acted on

    # --- models -------------------------------------------------------------------------------------------
    def add_model(self, version: str, model: nn.Module) -> int:
        """Load ``model`` as ``version`` (eval mode, on the engine's device); returns its slot.

        Refuses a model with NaN / Inf weights (``ValueError`` naming them); replacing a version keeps its slot.
        """
        bad = nonfinite_parameters(model)
        if bad:
            raise ValueError(f"model {version!r} has NaN/Inf weights in {', '.join(bad)}; refusing to load it")
        model = model.to(self.device).eval().requires_grad_(False)
        slot = self._slot_of.get(version)
        if slot is None:
            slot = max(self._models, default=-1) + 1
            self._slot_of[version] = slot
        self._models[slot] = (version, model)
        return slot

    def remove_model(self, version: str) -> None:
        """Unload ``version``; vehicles still on its slot get ``STATUS_NO_MODEL``."""
        slot = self._slot_of.pop(version, None)
        if slot is not None:
            del self._models[slot]

    def slot(self, version: str | None) -> int:
        """The slot of a loaded version (``NO_MODEL`` for None); ``KeyError`` listing the loaded ones otherwise."""
        if version is None:
            return NO_MODEL
        if version not in self._slot_of:
            raise KeyError(f"model version {version!r} is not loaded; loaded: {sorted(self._slot_of) or 'none'}")
        return self._slot_of[version]

    def slots_for(self, versions: Sequence[str | None]) -> torch.Tensor:
        """[B] int64 slots for per-vehicle version names."""
        return torch.tensor([self.slot(v) for v in versions], dtype=torch.int64)

    def model(self, version: str) -> nn.Module:
        """The loaded model of ``version`` (e.g. for fault injection)."""
        return self._models[self.slot(version)][1]

    @property
    def versions(self) -> dict[str, int]:
        """Loaded version -> slot."""
        return dict(self._slot_of)

    # --- batched compute ----------------------------------------------------------------------------------
    def _to_device(self, t: torch.Tensor, name: str) -> torch.Tensor:
        if self.device.type != "cuda" or t.device.type == "cuda":
            return t.to(self.device)
        key = (name, tuple(t.shape), t.dtype)
        buf = self._staging.get(key)
        if buf is None:
            if len(self._staging) > 64:  # bounded: shapes vary with group sizes
                self._staging.clear()
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self._staging[key] = buf
        buf.copy_(t)
        # Safe to reuse the staging buffer next call: results are copied back (synchronising) before we return.
        return buf.to(self.device, non_blocking=True)

    def _run_chunk(self, model: nn.Module, chunk: PolicyInputs) -> torch.Tensor:
        chunk = chunk.trim_radar(radar_bucket(chunk.radar_extent()))
        names = ("camera", "lidar", "radar", "radar_mask", "ego")
        args = [self._to_device(t, n) for t, n in zip(chunk.tensors(), names, strict=True)]
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = compile_graph(_forward, dynamic=True)(model, *args) if self.config.compile else model(*args)
        out = out.to(chunk.device)  # synchronises on CUDA, so the wall time below is complete
        self._wall_s.append(time.perf_counter() - t0)
        return out

    def infer(self, inputs: PolicyInputs, slots: torch.Tensor, *, raise_failures: bool = False) -> PolicyOutput:
        """One batched call per model version (split at ``max_batch``), outputs in vehicle order.

        ``slots`` [B] int64 (from ``slot`` / ``slots_for``; ``NO_MODEL`` for none).
        """
        b = inputs.batch
        slots = slots.to(inputs.device)
        if tuple(slots.shape) != (b,):
            raise ValueError(f"slots must have shape ({b},) (one per vehicle), got {tuple(slots.shape)}")
        out = torch.zeros(b, 3, device=inputs.device)
        status = torch.full((b,), STATUS_NO_MODEL, dtype=torch.int8, device=inputs.device)
        failures: dict[str, InferenceFailure] = {}
        # Slots are small ints (NO_MODEL = -1): a count per slot finds the present ones without sorting the fleet.
        present = (torch.nonzero(torch.bincount(slots + 1)).squeeze(-1) - 1).tolist() if b else []
        for s in present:
            if s not in self._models:
                continue
            version, model = self._models[s]
            idx = torch.nonzero(slots == s).squeeze(-1) if len(present) > 1 else None
            group = inputs if idx is None else inputs.index(idx)
            try:
                parts = [
                    self._run_chunk(model, group.index(slice(i, i + self.config.max_batch)))
                    for i in range(0, group.batch, self.config.max_batch)
                ]
            except Exception as e:
                failure = InferenceFailure(version, e)
                failure.__cause__ = e
                if raise_failures:
                    raise failure from e
                failures[version] = failure
                code = torch.tensor(STATUS_MODEL_FAILURE, dtype=torch.int8, device=inputs.device)
                if idx is None:
                    status.fill_(STATUS_MODEL_FAILURE)
                else:
                    status[idx] = code
                continue
            res = parts[0] if len(parts) == 1 else torch.cat(parts)
            ok = torch.isfinite(res).all(-1)
            st = torch.where(ok, STATUS_OK, STATUS_INVALID_OUTPUT).to(torch.int8)
            if idx is None:
                out, status = res, st
            else:
                out[idx] = res
                status[idx] = st
        valid = status == STATUS_OK
        out = torch.where(valid.unsqueeze(-1), out, torch.zeros_like(out))  # NaN never leaves the engine
        zeros = torch.zeros(b, device=inputs.device)
        return PolicyOutput(
            accel_mps2=out[:, 0],
            hazard_prob=out[:, 1],
            uncertainty_mps2=out[:, 2],
            valid=valid,
            status=status,
            latency_s=zeros,
            obs_age_ticks=torch.zeros(b, dtype=torch.int64, device=inputs.device),
            failures=failures,
        )

    # --- lockstep simulation ------------------------------------------------------------------------------
    def reset_history(self) -> None:
        """Forget past inputs (call when the vehicles or their order change)."""
        self._history.clear()
        self._history_tick = None

    def tick(
        self,
        inputs: PolicyInputs,
        slots: torch.Tensor,
        tick: int,
        vehicle_ids: torch.Tensor,
        seed: int,
        spike_s: torch.Tensor | None = None,
    ) -> PolicyOutput:
        """The simulated tick: latency, stale observations and deadline misses on top of ``infer``.

        Call once per tick with the same vehicles in the same order (``reset_history`` otherwise); ``spike_s`` [B]
        adds injected latency [s]. The latency is drawn from ``(seed, vehicle id, tick)``.
        """
        if self._history and (self._history[-1].batch != inputs.batch or self._history_tick != tick - 1):
            self.reset_history()
        self._history.append(inputs)
        self._history_tick = tick
        lat = self.config.latency.latency_s(inputs, vehicle_ids, tick, seed, spike_s)
        age = torch.floor(lat / self.config.tick_s + 1e-6).to(torch.int64)
        missed = (lat > self.config.deadline_s) | (age >= len(self._history))
        age = torch.where(missed, torch.zeros_like(age), age)
        eff = inputs
        if bool((age > 0).any()):
            eff = _gather_history(list(self._history), age)
        self._tick_inputs = eff
        res = self.infer(eff, slots)
        status = torch.where(missed & (res.status == STATUS_OK), STATUS_DEADLINE_MISSED, res.status).to(torch.int8)
        valid = status == STATUS_OK
        keep = valid.to(torch.float32)
        return PolicyOutput(
            accel_mps2=res.accel_mps2 * keep,
            hazard_prob=res.hazard_prob * keep,
            uncertainty_mps2=res.uncertainty_mps2 * keep,
            valid=valid,
            status=status,
            latency_s=lat,
            obs_age_ticks=age,
            failures=res.failures,
        )

    def take_tick_inputs(self) -> PolicyInputs | None:
        """The inputs the last ``tick``'s outputs acted on (stale ones included), once; None when no tick ran since
        the last call. Shadow mode runs a candidate on exactly these: one more ``infer`` over its vehicles."""
        out, self._tick_inputs = self._tick_inputs, None
        return out

    # --- wall clock ---------------------------------------------------------------------------------------
    def wall_latency_stats(self) -> dict[str, float]:
        """Wall-clock seconds per forward call over the recent window: count, p50_s, p99_s, mean_s."""
        if not self._wall_s:
            return {"count": 0.0, "p50_s": math.nan, "p99_s": math.nan, "mean_s": math.nan}
        a = np.fromiter(self._wall_s, dtype=np.float64)
        return {
            "count": float(a.size),
            "p50_s": float(np.percentile(a, 50)),
            "p99_s": float(np.percentile(a, 99)),
            "mean_s": float(a.mean()),
        }


def _forward(model: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``model(*args)``: what the engine compiles (the module is an argument, so one wrapper serves every version;
    dynamo guards on it and compiles a version's first call)."""
    return model(*args)


def _gather_history(history: list[PolicyInputs], age: torch.Tensor) -> PolicyInputs:
    """Per vehicle, the inputs of ``age`` ticks ago (history[-1] is now)."""
    r = max(h.radar.shape[1] for h in history)
    stacked = [torch.stack(ts) for ts in zip(*(h.trim_radar(r).tensors() for h in history), strict=True)]
    pick = (len(history) - 1 - age).to(stacked[0].device)
    rows = torch.arange(age.shape[0], device=pick.device)
    return PolicyInputs(*(t[pick, rows] for t in stacked))


@dataclass
class _Pending:
    request_id: int
    size: int
    arrived_s: float


class DynamicBatcher:
    """Merges asynchronously arriving requests into batches of at most ``max_batch`` items.

    Pure logic on a clock the caller supplies: ``submit`` a request of ``size`` items at ``now_s``; ``poll(now_s)``
    returns the batches ready to run (lists of request ids): full ones at once, partial ones when their oldest
    request has waited ``max_wait_s``. ``flush`` returns everything (the lockstep tick: all requests are in).
    A request larger than ``max_batch`` is run alone, split by the engine.
    """

    def __init__(self, max_batch: int, max_wait_s: float) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0 s, got {max_batch}, {max_wait_s}")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: deque[_Pending] = deque()
        self._queued_items = 0

    def submit(self, request_id: int, size: int, now_s: float) -> list[list[int]]:
        """Queue a request; returns the batches that became full."""
        self._queue.append(_Pending(request_id, size, now_s))
        self._queued_items += size
        out = []
        while self._queued_items >= self.max_batch:
            out.append(self._take())
        return out

    def next_deadline_s(self) -> float | None:
        """When the oldest queued request times out (None if the queue is empty)."""
        return self._queue[0].arrived_s + self.max_wait_s if self._queue else None

    def poll(self, now_s: float) -> list[list[int]]:
        """Batches whose oldest request has waited ``max_wait_s`` by ``now_s``."""
        out = []
        while self._queue and now_s >= self._queue[0].arrived_s + self.max_wait_s:
            out.append(self._take())
        return out

    def flush(self) -> list[list[int]]:
        """Everything queued, in batches."""
        out = []
        while self._queue:
            out.append(self._take())
        return out

    def _take(self) -> list[int]:
        batch: list[int] = []
        items = 0
        while self._queue and (not batch or items + self._queue[0].size <= self.max_batch):
            p = self._queue.popleft()
            batch.append(p.request_id)
            items += p.size
        self._queued_items -= items
        return batch
